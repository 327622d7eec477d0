"""What an instance costs: the GPU price while it runs, storage for its whole life (stopped too)."""

from __future__ import annotations

import itertools

from vastevents.sim.market import HOURS_PER_MONTH
from vastevents.sim.model import Machine, SimInstance


def gpu_rate(machine: Machine, inst: SimInstance) -> float:
    """$/h for the instance's GPUs: its bid, else the machine's on-demand price."""
    if inst.bid_price is not None:
        return inst.bid_price
    return machine.dph_per_gpu * inst.num_gpus


def storage_rate(machine: Machine, inst: SimInstance) -> float:
    """$/h for the instance's disk."""
    return machine.storage_cost * inst.disk / HOURS_PER_MONTH


def charges(machine: Machine, inst: SimInstance, *, now: float) -> tuple[float, float]:
    """(gpu $, storage $) accrued up to `now`, or up to its end once destroyed or vanished."""
    end = inst.ended_at if inst.ended_at is not None else now
    rate = gpu_rate(machine, inst)
    gpu = 0.0
    points = [*inst.history, (end, "end")]
    for (start, status), (stop, _) in itertools.pairwise(points):
        if status == "running":
            gpu += (min(stop, end) - start) / 3600.0 * rate
    storage = (end - inst.created_at) / 3600.0 * storage_rate(machine, inst)
    return gpu, storage
