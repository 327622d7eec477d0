"""What an instance costs: the GPU price while it runs, storage for its whole life (stopped too); a prepaid
deposit buys a discount on the GPU price from the moment it is paid until it is used up (Vast's reserved
pricing: 20% for a month's worth, 30% for three months')."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

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


def discount_for(months: float) -> float:
    """Vast's default prepay discount: 20% for one month's worth, 30% for three, in between linearly."""
    return 0.2 * min(months, 1.0) + 0.05 * min(max(months - 1.0, 0.0), 2.0)


def _running_seconds(inst: SimInstance, start: float, end: float) -> float:
    """Seconds the instance was running between `start` and `end`."""
    total = 0.0
    for (since, status), (until, _) in itertools.pairwise([*inst.history, (end, "end")]):
        if status == "running":
            total += max(0.0, min(until, end) - max(since, start))
    return total


@dataclass(frozen=True)
class Charges:
    gpu: float  # $ for GPU time (discounted while a deposit lasts)
    storage: float
    from_deposit: float  # the part of `gpu` the instance's deposit paid

    @property
    def total(self) -> float:
        return self.gpu + self.storage


def charges(machine: Machine, inst: SimInstance, *, now: float) -> Charges:
    """What the instance has cost up to `now`, or up to its end once destroyed or vanished."""
    end = inst.ended_at if inst.ended_at is not None else now
    rate = gpu_rate(machine, inst) / 3600.0
    storage = (end - inst.created_at) * storage_rate(machine, inst) / 3600.0
    if inst.prepaid_at is None:
        return Charges(_running_seconds(inst, inst.created_at, end) * rate, storage, 0.0)
    before = _running_seconds(inst, inst.created_at, inst.prepaid_at) * rate
    after = _running_seconds(inst, inst.prepaid_at, end) * rate
    discounted = after * (1.0 - inst.discount_rate)
    if discounted <= inst.deposit:
        return Charges(before + discounted, storage, discounted)
    # The deposit ran out: what it paid bought deposit / (1 - rate) of full-price time, the rest is full price.
    covered = inst.deposit / (1.0 - inst.discount_rate)
    return Charges(before + inst.deposit + (after - covered), storage, inst.deposit)
