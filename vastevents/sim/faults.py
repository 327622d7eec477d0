"""The faults table: each scripted or admin action by name, as a function of the world and the step's params.

``FAULTS[name](world, params)`` runs the action at ``world.now`` and returns what ``POST /_sim/<name>`` answers.
The owner's own verbs (stop, start, reboot, destroy) and ``flap`` (which adds steps to the timeline) are
dispatched by the World; everything here only changes instances, machines and the fault counters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from vastevents.config import parse_duration
from vastevents.sim.lifecycle import Lifecycle
from vastevents.sim.model import DEFAULT_PULL_S, Ask, Machine, SimError, Storm
from vastevents.sim.params import env_param

OCI_PULL_ERROR = (
    "Error response from daemon: failed to create task for container: failed to create shim task: "
    "OCI runtime create failed: image pull failed: manifest unknown: unable to pull image"
)
GPU_BROKEN_MSG = "GPU error: Xid 79, GPU has fallen off the bus; nvidia-smi: Unable to determine the device handle"
DISK_FULL_MSG = "No space left on device: container disk is full"

Fault = Callable[[Lifecycle, Mapping[str, Any]], dict[str, Any]]


def create(world: Lifecycle, params: Mapping[str, Any]) -> dict[str, Any]:
    """A scripted rental: the cheapest free offer that fits (or ``ask``), ``bid = true`` for a bid a bit above min."""
    ask = _pick_ask(world, params)
    bid = params.get("bid")
    machine = world.machines[ask.machine_id]
    if bid is True:
        bid = machine.min_bid_per_gpu * ask.num_gpus * 1.1
    inst = world.new_instance(
        ask,
        image=str(params.get("image", "pytorch/pytorch")),
        disk=float(params.get("disk", 32)),
        label=params.get("label"),
        onstart=params.get("onstart"),
        env=env_param(params.get("env")),
        bid_price=float(bid) if bid not in (None, False) else None,
        runtype=str(params.get("runtype", "ssh_direct")),
        pull_s=parse_duration(params.get("pull", DEFAULT_PULL_S)),
    )
    if params.get("stuck"):
        inst.stuck_msg = str(params.get("msg") or OCI_PULL_ERROR)
    return {"new_contract": inst.id}


def _pick_ask(world: Lifecycle, params: Mapping[str, Any]) -> Ask:
    if "ask" in params:
        ask = world.asks.get(int(params["ask"]))
        if ask is None:
            raise SimError(404, "no_such_ask", f"Instance type {params['ask']} is no longer available.")
        return ask
    want_gpus = int(params.get("num_gpus", 1))
    gpu_name = params.get("gpu_name")
    candidates = [
        a
        for a in world.asks.values()
        if a.num_gpus == want_gpus
        and not world.machines[a.machine_id].offline
        and (gpu_name is None or world.machines[a.machine_id].gpu_name == gpu_name)
    ]
    if not candidates:
        raise SimError(404, "no_such_ask", f"No free offer with {want_gpus} GPU(s) {gpu_name or ''}".strip())
    return min(candidates, key=lambda a: (world.machines[a.machine_id].dph_per_gpu, a.id))


def preempt(world: Lifecycle, params: Mapping[str, Any]) -> dict[str, Any]:
    """A bid is outbid (every state "stopped"); an on-demand instance's host takes the machine back."""
    inst = world.resolve(params.get("instance"))
    if inst.is_bid:
        world.outbid(inst)
    else:
        world.halt(inst)
        world.set_status(inst, "exited", "running", "stopped", "running", "Host reclaimed the machine")
    return {"instance": inst.id}


def _machine_of(world: Lifecycle, params: Mapping[str, Any], *, ended: bool = False) -> Machine:
    """The machine `params` name, or the one of the instance they name (with `ended`, one destroyed since too)."""
    if "machine" in params or "machine_id" in params:
        machine_id = int(params.get("machine", params.get("machine_id")))
        if machine_id not in world.machines:
            raise SimError(404, "no_such_machine", f"No machine {machine_id}.")
        return world.machines[machine_id]
    return world.machines[world.resolve(params.get("instance"), ended=ended).machine_id]


def offline(world: Lifecycle, params: Mapping[str, Any]) -> dict[str, Any]:
    """The host drops off: its instances show offline, and what was due for them waits until it is back."""
    machine = _machine_of(world, params)
    if machine.offline:
        return {"machine": machine.machine_id}
    machine.offline = True
    for inst in [i for i in world.instances.values() if i.machine_id == machine.machine_id]:
        if inst.due_at is not None and inst.due_target is not None:
            inst.paused_due = (inst.due_target, max(0.0, inst.due_at - world.now))
        paused = inst.paused_due
        inst.before_offline = (inst.actual_status, inst.cur_state, inst.next_state, inst.status_msg)
        world.halt(inst)
        inst.paused_due = paused
        world.set_status(inst, "offline", inst.intended_status, inst.cur_state, inst.next_state, "Host is offline")
    return {"machine": machine.machine_id}


def online(world: Lifecycle, params: Mapping[str, Any]) -> dict[str, Any]:
    """The host is back: its instances resume where they were, paused transitions after the time they had left.
    Named by an instance, the host of one destroyed since comes back too (a flap's return is the machine's)."""
    machine = _machine_of(world, params, ended=True)
    if not machine.offline:
        return {"machine": machine.machine_id}
    machine.offline = False
    for inst in [i for i in world.instances.values() if i.machine_id == machine.machine_id]:
        if inst.before_offline is None:
            continue
        actual, cur, nxt, msg = inst.before_offline
        inst.before_offline = None
        world.set_status(inst, actual, inst.intended_status, cur, nxt, msg)
        if inst.paused_due is not None:
            target, left = inst.paused_due
            inst.paused_due = None
            world.schedule(inst, world.now + left, target)
        if actual == "running":
            world.bring_up(inst)
    return {"machine": machine.machine_id}


def stuck_loading(world: Lifecycle, params: Mapping[str, Any]) -> dict[str, Any]:
    inst = world.resolve(params.get("instance"))
    inst.stuck_msg = str(params.get("msg") or OCI_PULL_ERROR)
    if inst.actual_status == "loading":
        world.unschedule(inst)
        inst.status_msg = inst.stuck_msg
    return {"instance": inst.id}


def no_such_ask(world: Lifecycle, params: Mapping[str, Any]) -> dict[str, Any]:
    """The next `count` creates find their offer just rented by someone else."""
    world.pending_races += int(params.get("count", 1))
    return {"pending": world.pending_races}


def create_error(world: Lifecycle, params: Mapping[str, Any]) -> dict[str, Any]:
    """The next `count` creates answer 500 but leave the instance behind."""
    world.pending_create_errors += int(params.get("count", 1))
    return {"pending": world.pending_create_errors}


def reprice(world: Lifecycle, params: Mapping[str, Any]) -> dict[str, Any]:
    """The next `count` creates find their host's price raised `factor` times since the search (0.5 halves it)."""
    factor = float(params.get("factor", 1.5))
    if factor <= 0:
        raise ValueError(f"factor must be positive, got {factor}")
    world.pending_reprices += [factor] * int(params.get("count", 1))
    return {"pending": len(world.pending_reprices)}


def _storm(world: Lifecycle, kind: str, params: Mapping[str, Any], status: int) -> dict[str, Any]:
    duration = parse_duration(params.get("duration", "30s"))
    storm = Storm(
        kind=kind,
        start=world.now,
        end=world.now + duration,
        status=int(params.get("status", status)),
        delay=float(params.get("delay", 0.0)),
    )
    if kind != "slow" and not 400 <= storm.status <= 599:
        raise ValueError(f"status must be an HTTP error status (400-599), got {storm.status}")
    world.storms.append(storm)
    return {"until": storm.end}


def rate_limit(world: Lifecycle, params: Mapping[str, Any]) -> dict[str, Any]:
    return _storm(world, "rate_limit", params, 429)


def server_error(world: Lifecycle, params: Mapping[str, Any]) -> dict[str, Any]:
    return _storm(world, "server_error", params, 503)


def slow(world: Lifecycle, params: Mapping[str, Any]) -> dict[str, Any]:
    return _storm(world, "slow", {"delay": 2.0, **params}, 200)


def gpu_broken(world: Lifecycle, params: Mapping[str, Any]) -> dict[str, Any]:
    inst = world.resolve(params.get("instance"))
    inst.status_msg = GPU_BROKEN_MSG
    inst.gpu_util = 0.0
    return {"instance": inst.id}


def disk_full(world: Lifecycle, params: Mapping[str, Any]) -> dict[str, Any]:
    inst = world.resolve(params.get("instance"))
    inst.status_msg = DISK_FULL_MSG
    inst.disk_util = 100.0
    return {"instance": inst.id}


def host_key(world: Lifecycle, params: Mapping[str, Any]) -> dict[str, Any]:
    """With ssh hosts: the instance's SSH server presents a new host key (reinstalled, or something in between)."""
    inst = world.resolve(params.get("instance"))
    if world.backend is not None:
        world.backend.rekey(inst.id)
    return {"instance": inst.id}


def ssh_down(world: Lifecycle, params: Mapping[str, Any]) -> dict[str, Any]:
    """With ssh hosts: the instance's SSH server stops (its open sessions too) while the instance shows running and
    its jobs go on, until it comes up again (a restart, the host back online)."""
    inst = world.resolve(params.get("instance"))
    if world.backend is not None:
        world.backend.ssh_down(inst.id)
    return {"instance": inst.id}


def raw_status(world: Lifecycle, params: Mapping[str, Any]) -> dict[str, Any]:
    """Report a status string Vast may invent one day (until the next lifecycle change), to test tolerance."""
    inst = world.resolve(params.get("instance"))
    status = params.get("status")
    if not isinstance(status, str) or not status:
        raise ValueError("status must be a non-empty string")
    inst.actual_status = status
    return {"instance": inst.id}


def vanish(world: Lifecycle, params: Mapping[str, Any]) -> dict[str, Any]:
    """Destroyed elsewhere: gone from the list at once."""
    inst = world.resolve(params.get("instance"))
    world.end(inst)
    return {"instance": inst.id}


def expire(world: Lifecycle, params: Mapping[str, Any]) -> dict[str, Any]:
    """The contract ends `after` from now."""
    inst = world.resolve(params.get("instance"))
    inst.end_date = world.now + parse_duration(params.get("after", 0))
    world.schedule_expiry(inst)
    return {"instance": inst.id, "end_date": inst.end_date}


def label(world: Lifecycle, params: Mapping[str, Any]) -> dict[str, Any]:
    world.set_label(world.resolve(params.get("instance")).id, params.get("label"))
    return {}


FAULTS: dict[str, Fault] = {
    "create": create,
    "preempt": preempt,
    "outbid": preempt,
    "offline": offline,
    "online": online,
    "stuck_loading": stuck_loading,
    "no_such_ask": no_such_ask,
    "create_error": create_error,
    "reprice": reprice,
    "rate_limit": rate_limit,
    "server_error": server_error,
    "slow": slow,
    "gpu_broken": gpu_broken,
    "host_key": host_key,
    "ssh_down": ssh_down,
    "disk_full": disk_full,
    "raw_status": raw_status,
    "vanish": vanish,
    "expire": expire,
    "label": label,
}
