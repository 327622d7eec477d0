"""Instances on a timeline: null -> created -> loading -> running, stop/start, reboot, destroy, contract expiry.

No clock of its own: transitions are kept in a heap of due times, and the World plays them when its ``now``
passes them. The state every part of the world shares (machines, asks, instances, fault counters) lives here
too, so the faults table and the World build on one base.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from vastevents.sim.model import Ask, HostBackend, Machine, SimError, SimInstance, SimVolume, Step, Storm
from vastevents.sim.params import price_param
from vastevents.sim.templates import Templates
from vastevents.sim.wiretime import WireTime

SCHEDULE_S = 5.0  # null -> created
CREATE_S = 5.0  # created -> loading
RESTART_S = 15.0  # start after stop: loading -> running
REBOOT_S = 20.0  # rebooting -> running

# (at, tie-breaker, kind "due" | "expire" | "bid", instance id, token): an entry whose token no longer matches is
# stale ("bid": a competing bid arrives, token the instance's bid_round).
_Entry = tuple[float, int, str, int, float]


def _default_port(instance_id: int) -> int:
    return 20000 + instance_id % 40000


class Lifecycle:
    """The world's state and its instances' transitions. Not thread-safe: the Simulator holds a lock."""

    def __init__(self, machines: Iterable[Machine], *, origin: float, credit: float = 100.0) -> None:
        self.machines: dict[int, Machine] = {m.machine_id: m for m in machines}
        self.origin = origin
        self.credit = credit
        self.now = origin
        self.asks: dict[int, Ask] = {}
        self.instances: dict[int, SimInstance] = {}
        self.ended: dict[int, SimInstance] = {}
        self.ssh_keys: list[dict[str, Any]] = []
        self.steps: list[Step] = []
        self.steps_done = 0
        self.storms: list[Storm] = []
        self.pending_races = 0
        self.pending_create_errors = 0
        self.pending_reprices: list[float] = []  # the next creates find their host's price times these
        self.next_ask_id = 5_000_001
        self.next_instance_id = 10_000_001
        self.next_key_id = 1
        self.attached_keys: dict[int, str] = {}  # id -> key, for keys attached to an instance only
        self.volumes: dict[int, SimVolume] = {}
        self.next_volume_id = 301
        self.templates = Templates(now=origin)
        self.env_vars: dict[str, str] = {}  # the account's "env-vars", set in every new instance
        self.api_keys: list[dict[str, Any]] = []  # keys made with "create api-key" (a hash, never the key)
        self.backend: HostBackend | None = None
        self.port_for: Callable[[int], int] = _default_port
        self.wire = WireTime()  # how times and money look to clients (the Simulator sets it; not saved)
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        for machine in self.machines.values():
            self.refresh_asks(machine)

    # ----------------------------------------------------------------- offers follow capacity

    def refresh_asks(self, machine: Machine) -> None:
        """Offers follow free capacity: a machine's asks are reissued (new ids) whenever it changes."""
        for ask_id in [a.id for a in self.asks.values() if a.machine_id == machine.machine_id]:
            del self.asks[ask_id]
        free = machine.num_gpus - machine.used_gpus
        size = 1
        while size <= free:
            self.asks[self.next_ask_id] = Ask(self.next_ask_id, machine.machine_id, size)
            self.next_ask_id += 1
            size *= 2

    def rented_elsewhere(self, ask: Ask) -> None:
        machine = self.machines[ask.machine_id]
        machine.used_gpus += ask.num_gpus
        self.refresh_asks(machine)

    # ----------------------------------------------------------------- the heap of due transitions

    def schedule(self, inst: SimInstance, at: float, target: str) -> None:
        inst.due_at, inst.due_target = at, target
        inst.due_token += 1
        heapq.heappush(self._heap, (at, next(self._seq), "due", inst.id, inst.due_token))

    def schedule_expiry(self, inst: SimInstance) -> None:
        heapq.heappush(self._heap, (inst.end_date, next(self._seq), "expire", inst.id, inst.end_date))

    def unschedule(self, inst: SimInstance) -> None:
        inst.due_at = inst.due_target = None
        inst.due_token += 1

    def reschedule_all(self) -> None:
        """Rebuild the heap from the instances' own due times (after loading a saved world)."""
        for inst in self.instances.values():
            if inst.due_at is not None and inst.due_target is not None:
                self.schedule(inst, inst.due_at, inst.due_target)
            self.schedule_expiry(inst)
            if inst.actual_status == "running":
                self.arm_competition(inst)

    def next_transition(self) -> float | None:
        """When the earliest pending transition or expiry is due (stale entries are dropped), or None."""
        while self._heap and not self._live(self._heap[0]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def play_transition(self) -> None:
        """Play the earliest pending transition (call after `next_transition` said when)."""
        at, _, kind, instance_id, _ = heapq.heappop(self._heap)
        self.now = max(self.now, at)
        inst = self.instances[instance_id]
        if kind == "due":
            self._on_due(inst)
        elif kind == "bid":
            self._competing_bid(inst)
        else:
            self._expire(inst)

    def _live(self, entry: _Entry) -> bool:
        _, _, kind, instance_id, token = entry
        inst = self.instances.get(instance_id)
        if inst is None:
            return False
        if kind == "due":
            return inst.due_at is not None and inst.due_token == token
        if kind == "bid":
            return inst.bid_round == token and inst.actual_status == "running"
        return inst.end_date == token

    # ----------------------------------------------------------------- transitions

    def new_instance(
        self,
        ask: Ask,
        *,
        image: str,
        disk: float,
        label: str | None,
        onstart: str | None,
        env: Mapping[str, str],
        bid_price: float | None,
        runtype: str,
        pull_s: float,
    ) -> SimInstance:
        """Rent `ask` now: the instance starts scheduling (status null) and is created SCHEDULE_S later."""
        machine = self.machines[ask.machine_id]
        instance_id = self.next_instance_id
        self.next_instance_id += 1
        inst = SimInstance(
            id=instance_id,
            machine_id=machine.machine_id,
            num_gpus=ask.num_gpus,
            image=image,
            disk=disk,
            label=label,
            onstart=onstart,
            env=dict(env),
            is_bid=bid_price is not None,
            bid_price=bid_price,
            runtype=runtype,
            created_at=self.now,
            end_date=machine.end_date,
            ssh_port=self.port_for(instance_id),
            pull_s=pull_s,
            ssh_keys=[k["public_key"] for k in self.ssh_keys],
        )
        inst.history.append((self.now, None))
        self.instances[instance_id] = inst
        machine.used_gpus += ask.num_gpus
        self.refresh_asks(machine)
        self.schedule(inst, self.now + SCHEDULE_S, "created")
        self.schedule_expiry(inst)
        return inst

    def set_status(
        self, inst: SimInstance, actual: str | None, intended: str, cur: str, nxt: str, msg: str | None
    ) -> None:
        if actual != inst.actual_status:
            inst.history.append((self.now, actual))
        inst.actual_status, inst.intended_status, inst.cur_state, inst.next_state = actual, intended, cur, nxt
        inst.status_msg = msg

    def _on_due(self, inst: SimInstance) -> None:
        target = inst.due_target
        self.unschedule(inst)
        if target == "created":
            self.set_status(inst, "created", "running", "stopped", "running", "Container created")
            self.schedule(inst, self.now + CREATE_S, "loading")
        elif target == "loading":
            self._begin_loading(inst, inst.pull_s, f"Pulling image {inst.image}")
        elif target == "running":
            self.set_status(inst, "running", "running", "running", "running", f"success, running {inst.image}")
            inst.gpu_util = 87.0
            inst.disk_util = max(inst.disk_util, 12.0)
            self.bring_up(inst)
            self.arm_competition(inst)
        elif target == "ssh" and self.backend is not None:
            self.backend.instance_up(inst, inst.ssh_keys)

    def bring_up(self, inst: SimInstance) -> None:
        """Start the running instance's container (its sshd), after the machine's SSH delay; never on a machine
        whose SSH never answers."""
        delay = self.machines[inst.machine_id].ssh_delay_s
        if self.backend is None or delay is None:
            return
        if delay > 0:
            self.schedule(inst, self.now + delay, "ssh")
        else:
            self.backend.instance_up(inst, inst.ssh_keys)

    def arm_competition(self, inst: SimInstance) -> None:
        """On a machine where bids compete, when the next competing bid for a running bid instance arrives (drawn
        from a generator seeded by machine, instance and round, so a world replays the same)."""
        every = self.machines[inst.machine_id].outbid_every_s
        if not inst.is_bid or every <= 0:
            return
        inst.bid_round += 1
        rng = random.Random(f"{inst.machine_id}:{inst.id}:{inst.bid_round}")
        at = self.now + rng.expovariate(1.0 / every)
        heapq.heappush(self._heap, (at, next(self._seq), "bid", inst.id, inst.bid_round))

    def _competing_bid(self, inst: SimInstance) -> None:
        """A competing bid priced between the machine's minimum bid and its on-demand price: above ours, we are
        outbid; else we wait for the next one."""
        machine = self.machines[inst.machine_id]
        rng = random.Random(f"{inst.machine_id}:{inst.id}:{inst.bid_round}:price")
        offered = rng.uniform(machine.min_bid_per_gpu, machine.dph_per_gpu) * inst.num_gpus
        if inst.bid_price is not None and offered > inst.bid_price:
            self.outbid(inst, f"Instance outbid: a higher bid (${offered:.4f}/h) took the GPUs")
        else:
            self.arm_competition(inst)

    def outbid(self, inst: SimInstance, msg: str = "Instance outbid: a higher bid took the GPUs") -> None:
        """A bid instance loses its GPUs: every state "stopped", until its bid wins again."""
        self.halt(inst)
        self.set_status(inst, "exited", "stopped", "stopped", "stopped", msg)

    def _begin_loading(self, inst: SimInstance, seconds: float, msg: str) -> None:
        if inst.stuck_msg:
            self.set_status(inst, "loading", "running", "running", "running", inst.stuck_msg)
        else:
            self.set_status(inst, "loading", "running", "running", "running", msg)
            self.schedule(inst, self.now + seconds, "running")

    def halt(self, inst: SimInstance) -> None:
        """Nothing more is due for `inst` and its container stops (its record stays)."""
        self.unschedule(inst)
        inst.paused_due = None
        inst.gpu_util = 0.0
        if self.backend is not None:
            self.backend.instance_down(inst.id)

    def _expire(self, inst: SimInstance) -> None:
        self.halt(inst)
        when = self.wire.iso(inst.end_date)
        self.set_status(inst, "exited", "stopped", "stopped", "stopped", f"Contract ended at {when}")

    def end(self, inst: SimInstance) -> None:
        """Destroyed or vanished: free the GPUs, keep the record for charges."""
        self.halt(inst)
        if self.backend is not None:
            self.backend.instance_gone(inst.id)
        inst.ended_at = self.now
        inst.history.append((self.now, "destroyed"))
        del self.instances[inst.id]
        self.ended[inst.id] = inst
        machine = self.machines[inst.machine_id]
        machine.used_gpus = max(0, machine.used_gpus - inst.num_gpus)
        self.refresh_asks(machine)

    # ----------------------------------------------------------------- what the owner does (API and scripted)

    def instance(self, instance_id: int) -> SimInstance:
        inst = self.instances.get(instance_id)
        if inst is None:
            raise SimError(404, "no_such_instance", f"Instance {instance_id} not found.")
        return inst

    def resolve(self, ref: Any, *, ended: bool = False) -> SimInstance:
        """An instance by id, exact label, or label suffix after ':' (``job-1`` finds ``vastevents:job-1``); with
        `ended`, one destroyed since too (the live ones first)."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            if ended and int(ref) in self.ended:
                return self.ended[int(ref)]
            return self.instance(int(ref))
        if isinstance(ref, str):
            pool = sorted(self.instances.values(), key=lambda i: i.id, reverse=True)
            if ended:
                pool += sorted(self.ended.values(), key=lambda i: i.id, reverse=True)
            for inst in pool:
                if inst.label == ref:
                    return inst
            for inst in pool:
                if inst.label and inst.label.split(":", 1)[-1] == ref:
                    return inst
        raise SimError(404, "no_such_instance", f"No live instance matches {ref!r}.")

    def destroy(self, instance_id: int) -> None:
        self.end(self.instance(instance_id))

    def stop(self, instance_id: int) -> None:
        inst = self.instance(instance_id)
        self.halt(inst)
        self.set_status(inst, "stopped", "stopped", "stopped", "stopped", "Instance stopped")

    def start(self, instance_id: int) -> None:
        inst = self.instance(instance_id)
        if inst.actual_status in ("running", "loading", "rebooting", "created", None):
            return
        if self.machines[inst.machine_id].offline:
            raise SimError(400, "host_offline", f"The host of instance {instance_id} is offline.")
        self.halt(inst)
        self._begin_loading(inst, RESTART_S, "Starting container")

    def reboot(self, instance_id: int) -> None:
        inst = self.instance(instance_id)
        if inst.actual_status != "running":
            raise SimError(400, "invalid_args", f"Instance {instance_id} is not running.")
        self.halt(inst)
        self.set_status(inst, "rebooting", "running", "running", "running", "Rebooting")
        self.schedule(inst, self.now + REBOOT_S, "running")

    def recycle(self, instance_id: int) -> None:
        """Destroy and recreate the container in place: a fresh pull of its image and a fresh filesystem (its
        volume keeps its files); the GPUs stay the instance's."""
        inst = self.instance(instance_id)
        if self.machines[inst.machine_id].offline:
            raise SimError(400, "host_offline", f"The host of instance {instance_id} is offline.")
        self.halt(inst)
        if self.backend is not None:
            self.backend.instance_reset(inst.id)
        self._begin_loading(inst, inst.pull_s, f"Recreating the container: pulling image {inst.image}")

    def set_label(self, instance_id: int, label: str | None) -> None:
        self.instance(instance_id).label = label

    def change_bid(self, instance_id: int, price: Any) -> None:
        """A new price; an outbid instance whose bid reaches the machine's minimum again resumes."""
        inst = self.instance(instance_id)
        inst.is_bid, inst.bid_price = True, price_param(price)
        machine = self.machines[inst.machine_id]
        outbid = inst.actual_status == "exited" and (inst.status_msg or "").startswith("Instance outbid")
        if outbid and not machine.offline and inst.bid_price >= machine.min_bid_per_gpu * inst.num_gpus:
            self._begin_loading(inst, RESTART_S, "Resuming: the bid is winning again")
