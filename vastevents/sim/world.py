"""The simulated Vast world: machines, offers, instances, their lifecycle, billing and faults.

No I/O and no clock of its own: every entry point takes ``now`` (epoch seconds) and first plays everything
that fell due up to then, in time order (instance transitions, contract expiries, scripted scenario steps).
The state is therefore a pure function of the clock, and a ManualClock drives it completely.
The caller (the Simulator) holds the lock; real sshd processes are behind the `HostBackend` hooks.
Its values live in :mod:`~vastevents.sim.model`, the generated market and offer rows in
:mod:`~vastevents.sim.market`, and Vast's filter/sort semantics in :mod:`~vastevents.sim.matching`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from vastevents.config import parse_duration
from vastevents.sim.market import HOURS_PER_MONTH, generate_machines, machines_from_specs, offer_row
from vastevents.sim.matching import matches, sort_rows
from vastevents.sim.model import (
    DEFAULT_PULL_S,
    Ask,
    HostBackend,
    Machine,
    SimError,
    SimInstance,
    Step,
    Storm,
    number_param,
)

OCI_PULL_ERROR = (
    "Error response from daemon: failed to create task for container: failed to create shim task: "
    "OCI runtime create failed: image pull failed: manifest unknown: unable to pull image"
)
GPU_BROKEN_MSG = "GPU error: Xid 79, GPU has fallen off the bus; nvidia-smi: Unable to determine the device handle"
DISK_FULL_MSG = "No space left on device: container disk is full"

SCHEDULE_S = 5.0  # null -> created
CREATE_S = 5.0  # created -> loading
RESTART_S = 15.0  # start after stop: loading -> running
REBOOT_S = 20.0  # rebooting -> running

ACTIONS = frozenset(
    {
        "create", "preempt", "outbid", "offline", "online", "flap", "stuck_loading", "no_such_ask",
        "create_error", "rate_limit", "server_error", "gpu_broken", "disk_full", "vanish", "slow", "expire",
        "stop", "start", "reboot", "destroy", "label", "raw_status",
    }
)  # fmt: skip

_USER_VERBS = frozenset({"stop", "start", "reboot", "destroy"})  # what the owner does, scripted

logger = logging.getLogger("vastevents.sim")


def _default_port(instance_id: int) -> int:
    return 20000 + instance_id % 40000


class World:
    """All simulated state. Not thread-safe: the Simulator serialises access with its lock."""

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
        self.next_ask_id = 5_000_001
        self.next_instance_id = 10_000_001
        self.next_key_id = 1
        self.backend: HostBackend | None = None
        self.port_for: Callable[[int], int] = _default_port
        self._heap: list[tuple[float, int, str, int, float]] = []
        self._seq = itertools.count()
        for machine in self.machines.values():
            self._refresh_asks(machine)

    # ----------------------------------------------------------------- construction and persistence

    @classmethod
    def generate(cls, *, seed: int, hosts: int, origin: float) -> World:
        """A deterministic market of `hosts` hosts (one or two machines each) from `seed`."""
        return cls(generate_machines(seed=seed, hosts=hosts, origin=origin), origin=origin)

    @classmethod
    def from_machines(cls, specs: Sequence[Mapping[str, Any]], *, origin: float) -> World:
        """A world from explicit machine specs (scenario files); missing fields get plain defaults."""
        return cls(machines_from_specs(specs, origin=origin), origin=origin)

    def to_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "now": self.now,
            "credit": self.credit,
            "machines": [asdict(m) for m in self.machines.values()],
            "asks": [asdict(a) for a in self.asks.values()],
            "instances": [asdict(i) for i in self.instances.values()],
            "ended": [asdict(i) for i in self.ended.values()],
            "ssh_keys": self.ssh_keys,
            "steps_done": self.steps_done,
            "storms": [asdict(s) for s in self.storms],
            "pending_races": self.pending_races,
            "pending_create_errors": self.pending_create_errors,
            "next_ask_id": self.next_ask_id,
            "next_instance_id": self.next_instance_id,
            "next_key_id": self.next_key_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> World:
        world = cls([], origin=float(data["origin"]), credit=float(data["credit"]))
        world.machines = {m["machine_id"]: Machine(**m) for m in data["machines"]}
        world.now = float(data["now"])
        world.asks = {a["id"]: Ask(**a) for a in data["asks"]}
        world.instances = {i["id"]: _instance_from_dict(i) for i in data["instances"]}
        world.ended = {i["id"]: _instance_from_dict(i) for i in data["ended"]}
        world.ssh_keys = list(data["ssh_keys"])
        world.steps_done = int(data["steps_done"])
        world.storms = [Storm(**s) for s in data["storms"]]
        world.pending_races = int(data["pending_races"])
        world.pending_create_errors = int(data["pending_create_errors"])
        world.next_ask_id = int(data["next_ask_id"])
        world.next_instance_id = int(data["next_instance_id"])
        world.next_key_id = int(data["next_key_id"])
        for inst in world.instances.values():
            if inst.due_at is not None and inst.due_target is not None:
                world._schedule(inst, inst.due_at, inst.due_target)
            world._schedule_expiry(inst)
        return world

    # ----------------------------------------------------------------- time

    def advance(self, now: float) -> None:
        """Play everything that fell due up to `now`, in time order."""
        while True:
            while self._heap and not self._heap_entry_live(self._heap[0]):
                heapq.heappop(self._heap)
            heap_at = self._heap[0][0] if self._heap else None
            step = self.steps[self.steps_done] if self.steps_done < len(self.steps) else None
            step_at = self.origin + step.at if step else None
            if step is not None and step_at is not None and step_at <= now and (heap_at is None or step_at <= heap_at):
                self.now = max(self.now, step_at)
                self.steps_done += 1
                self._play(step)
            elif heap_at is not None and heap_at <= now:
                at, _, kind, instance_id, _ = heapq.heappop(self._heap)
                self.now = max(self.now, at)
                inst = self.instances[instance_id]
                if kind == "due":
                    self._on_due(inst)
                else:
                    self._expire(inst)
            else:
                break
        self.now = max(self.now, now)

    def _play(self, step: Step) -> None:
        """A scripted step that cannot happen (its instance is gone, no offer fits) is logged and skipped."""
        try:
            self.apply(step.action, step.params)
        except SimError as exc:
            logger.warning("scenario step %s at %ss (%s) skipped: %s", self.steps_done, step.at, step.action, exc.msg)

    def _heap_entry_live(self, entry: tuple[float, int, str, int, float]) -> bool:
        _, _, kind, instance_id, token = entry
        inst = self.instances.get(instance_id)
        if inst is None:
            return False
        if kind == "due":
            return inst.due_at is not None and inst.due_token == token
        return inst.end_date == token

    @property
    def scenario_end(self) -> float | None:
        return self.origin + max(step.at for step in self.steps) if self.steps else None

    def set_steps(self, steps: Sequence[Step]) -> None:
        """Attach a timeline; flaps expand into their offline and online steps."""
        self.steps = sorted([s for step in steps for s in _expand_flap(step)], key=lambda s: s.at)

    # ----------------------------------------------------------------- offers

    def _refresh_asks(self, machine: Machine) -> None:
        """Offers follow free capacity: a machine's asks are reissued (new ids) whenever it changes."""
        for ask_id in [a.id for a in self.asks.values() if a.machine_id == machine.machine_id]:
            del self.asks[ask_id]
        free = machine.num_gpus - machine.used_gpus
        size = 1
        while size <= free:
            self.asks[self.next_ask_id] = Ask(self.next_ask_id, machine.machine_id, size)
            self.next_ask_id += 1
            size *= 2

    def search(self, query: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Offers matching a Vast search query (`{field: {op: value}}`, order, type, limit)."""
        kind = str(query.get("type") or "on-demand")
        if kind not in ("on-demand", "bid", "interruptible", "reserved"):
            raise SimError(400, "invalid_args", f"unknown offer type {kind!r}")
        storage = number_param(query.get("allocated_storage"), 5.0, what="allocated_storage")
        filters = {
            ("reliability2" if k == "reliability" else k): v
            for k, v in query.items()
            if k not in ("order", "type", "limit", "allocated_storage", "disable_bundling", "extra_ids")
        }
        rows = [
            offer_row(
                self.machines[ask.machine_id],
                ask,
                now=self.now,
                bid=kind in ("bid", "interruptible"),
                storage_gb=storage,
            )
            for ask in self.asks.values()
            if not self.machines[ask.machine_id].offline
        ]
        rows = [row for row in rows if matches(row, filters)]
        order = query.get("order") or [["score", "desc"]]
        if not isinstance(order, list):
            raise SimError(400, "invalid_args", f"order must be a list of [field, direction] pairs, not {order!r}")
        rows = sort_rows(rows, order)
        limit = int(number_param(query.get("limit"), 64, what="limit"))
        return rows[: max(limit, 0)]

    # ----------------------------------------------------------------- instances

    def _new_instance(
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
        self._refresh_asks(machine)
        self._schedule(inst, self.now + SCHEDULE_S, "created")
        self._schedule_expiry(inst)
        return inst

    def create(self, ask_id: int, body: Mapping[str, Any]) -> tuple[int, dict[str, Any] | None]:
        """Rent an ask (`PUT /asks/{id}/`). Returns the new id and, for a low bid, a failure body."""
        if self.pending_races and ask_id in self.asks:
            self.pending_races -= 1
            self._rented_elsewhere(self.asks[ask_id])
        ask = self.asks.get(ask_id)
        if ask is None or self.machines[ask.machine_id].offline:
            raise SimError(404, "no_such_ask", f"Instance type {ask_id} is no longer available.")
        image = body.get("image")
        if not isinstance(image, str) or not image.strip():
            if not body.get("template_hash_id"):
                raise SimError(400, "invalid_args", "image is required (or template_hash_id).")
            image = f"template/{body['template_hash_id']}"
        disk = number_param(body.get("disk"), 10.0, what="disk")
        if not 0 < disk <= self.machines[ask.machine_id].disk_space:
            raise SimError(400, "invalid_args", f"disk must be between 0 and the machine's free space, got {disk}")
        price = _price(body["price"]) if body.get("price") is not None else None
        label = body.get("label")
        onstart = body.get("onstart")
        inst = self._new_instance(
            ask,
            image=image.strip(),
            disk=disk,
            label=str(label) if label is not None else None,
            onstart=str(onstart) if onstart else None,
            env=_env_dict(body.get("env")),
            bid_price=price,
            runtype=str(body.get("runtype") or "ssh"),
            pull_s=number_param(body.get("_pull_s"), DEFAULT_PULL_S, what="_pull_s"),
        )
        if self.pending_create_errors:
            self.pending_create_errors -= 1
            raise SimError(500, "server_error", "Internal error while creating the instance; please retry.")
        min_bid = self.machines[ask.machine_id].min_bid_per_gpu * ask.num_gpus
        if price is not None and price < min_bid:
            self._unschedule(inst)
            self._set(inst, "stopped", "stopped", "stopped", "stopped", f"bid {price} is below minimum {min_bid}")
            failure = {
                "success": False,
                "error": "bid_too_low",
                "msg": f"Your bid of ${price}/h is below the minimum ${min_bid:.4f}/h; the instance is stopped.",
                "new_contract": inst.id,
            }
            return inst.id, failure
        return inst.id, None

    def _rented_elsewhere(self, ask: Ask) -> None:
        machine = self.machines[ask.machine_id]
        machine.used_gpus += ask.num_gpus
        self._refresh_asks(machine)

    def _schedule(self, inst: SimInstance, at: float, target: str) -> None:
        inst.due_at, inst.due_target = at, target
        inst.due_token += 1
        heapq.heappush(self._heap, (at, next(self._seq), "due", inst.id, inst.due_token))

    def _schedule_expiry(self, inst: SimInstance) -> None:
        heapq.heappush(self._heap, (inst.end_date, next(self._seq), "expire", inst.id, inst.end_date))

    def _unschedule(self, inst: SimInstance) -> None:
        inst.due_at = inst.due_target = None
        inst.due_token += 1

    def _set(self, inst: SimInstance, actual: str | None, intended: str, cur: str, nxt: str, msg: str | None) -> None:
        if actual != inst.actual_status:
            inst.history.append((self.now, actual))
        inst.actual_status, inst.intended_status, inst.cur_state, inst.next_state = actual, intended, cur, nxt
        inst.status_msg = msg

    def _on_due(self, inst: SimInstance) -> None:
        target = inst.due_target
        self._unschedule(inst)
        if target == "created":
            self._set(inst, "created", "running", "stopped", "running", "Container created")
            self._schedule(inst, self.now + CREATE_S, "loading")
        elif target == "loading":
            self._begin_loading(inst, inst.pull_s, f"Pulling image {inst.image}")
        elif target == "running":
            self._set(inst, "running", "running", "running", "running", f"success, running {inst.image}")
            inst.gpu_util = 87.0
            inst.disk_util = max(inst.disk_util, 12.0)
            if self.backend is not None:
                self.backend.instance_up(inst, inst.ssh_keys)

    def _begin_loading(self, inst: SimInstance, seconds: float, msg: str) -> None:
        if inst.stuck_msg:
            self._set(inst, "loading", "running", "running", "running", inst.stuck_msg)
        else:
            self._set(inst, "loading", "running", "running", "running", msg)
            self._schedule(inst, self.now + seconds, "running")

    def _halt(self, inst: SimInstance) -> None:
        self._unschedule(inst)
        inst.paused_due = None
        inst.gpu_util = 0.0
        if self.backend is not None:
            self.backend.instance_down(inst.id)

    def _expire(self, inst: SimInstance) -> None:
        self._halt(inst)
        when = datetime.fromtimestamp(inst.end_date, UTC).isoformat()
        self._set(inst, "exited", "stopped", "stopped", "stopped", f"Contract ended at {when}")

    def _end(self, inst: SimInstance) -> None:
        """Destroyed or vanished: free the GPUs, keep the record for charges."""
        self._halt(inst)
        if self.backend is not None:
            self.backend.instance_gone(inst.id)
        inst.ended_at = self.now
        inst.history.append((self.now, "destroyed"))
        del self.instances[inst.id]
        self.ended[inst.id] = inst
        machine = self.machines[inst.machine_id]
        machine.used_gpus = max(0, machine.used_gpus - inst.num_gpus)
        self._refresh_asks(machine)

    def instance(self, instance_id: int) -> SimInstance:
        inst = self.instances.get(instance_id)
        if inst is None:
            raise SimError(404, "no_such_instance", f"Instance {instance_id} not found.")
        return inst

    def destroy(self, instance_id: int) -> None:
        self._end(self.instance(instance_id))

    def stop(self, instance_id: int) -> None:
        inst = self.instance(instance_id)
        self._halt(inst)
        self._set(inst, "stopped", "stopped", "stopped", "stopped", "Instance stopped")

    def start(self, instance_id: int) -> None:
        inst = self.instance(instance_id)
        if inst.actual_status in ("running", "loading", "rebooting", "created", None):
            return
        if self.machines[inst.machine_id].offline:
            raise SimError(400, "host_offline", f"The host of instance {instance_id} is offline.")
        self._halt(inst)
        self._begin_loading(inst, RESTART_S, "Starting container")

    def reboot(self, instance_id: int) -> None:
        inst = self.instance(instance_id)
        if inst.actual_status != "running":
            raise SimError(400, "invalid_args", f"Instance {instance_id} is not running.")
        self._halt(inst)
        self._set(inst, "rebooting", "running", "running", "running", "Rebooting")
        self._schedule(inst, self.now + REBOOT_S, "running")

    def set_label(self, instance_id: int, label: str | None) -> None:
        self.instance(instance_id).label = label

    def change_bid(self, instance_id: int, price: Any) -> None:
        inst = self.instance(instance_id)
        inst.is_bid, inst.bid_price = True, _price(price)

    # ----------------------------------------------------------------- faults and scripted actions

    def resolve(self, ref: Any) -> SimInstance:
        """An instance by id, exact label, or label suffix after ':' (``job-1`` finds ``vastevents:job-1``)."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            return self.instance(int(ref))
        if isinstance(ref, str):
            live = sorted(self.instances.values(), key=lambda i: i.id, reverse=True)
            for inst in live:
                if inst.label == ref:
                    return inst
            for inst in live:
                if inst.label and inst.label.split(":", 1)[-1] == ref:
                    return inst
        raise SimError(404, "no_such_instance", f"No live instance matches {ref!r}.")

    def _machine_of(self, params: Mapping[str, Any]) -> Machine:
        if "machine" in params or "machine_id" in params:
            machine_id = int(params.get("machine", params.get("machine_id")))
            if machine_id not in self.machines:
                raise SimError(404, "no_such_machine", f"No machine {machine_id}.")
            return self.machines[machine_id]
        return self.machines[self.resolve(params.get("instance")).machine_id]

    def apply(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Run one scripted or admin action at the world's current time; a bad parameter is a 400 naming it."""
        if action not in ACTIONS:
            raise SimError(404, "unknown_action", f"Unknown action {action!r}; known: {', '.join(sorted(ACTIONS))}.")
        try:
            if action in _USER_VERBS:
                inst = self.resolve(params.get("instance"))
                verb: Callable[[int], None] = getattr(self, action)
                verb(inst.id)
                return {"instance": inst.id}
            handler: Callable[[Mapping[str, Any]], dict[str, Any]] = getattr(self, f"_act_{action}")
            return handler(params)
        except (TypeError, ValueError) as exc:
            raise SimError(400, "invalid_args", f"{action}: bad parameter ({exc})") from None

    def _act_create(self, params: Mapping[str, Any]) -> dict[str, Any]:
        ask = self._pick_ask(params)
        bid = params.get("bid")
        machine = self.machines[ask.machine_id]
        if bid is True:
            bid = machine.min_bid_per_gpu * ask.num_gpus * 1.1
        inst = self._new_instance(
            ask,
            image=str(params.get("image", "pytorch/pytorch")),
            disk=float(params.get("disk", 32)),
            label=params.get("label"),
            onstart=params.get("onstart"),
            env=_env_dict(params.get("env")),
            bid_price=float(bid) if bid not in (None, False) else None,
            runtype=str(params.get("runtype", "ssh_direct")),
            pull_s=parse_duration(params.get("pull", DEFAULT_PULL_S)),
        )
        if params.get("stuck"):
            inst.stuck_msg = str(params.get("msg") or OCI_PULL_ERROR)
        return {"new_contract": inst.id}

    def _pick_ask(self, params: Mapping[str, Any]) -> Ask:
        if "ask" in params:
            ask = self.asks.get(int(params["ask"]))
            if ask is None:
                raise SimError(404, "no_such_ask", f"Instance type {params['ask']} is no longer available.")
            return ask
        want_gpus = int(params.get("num_gpus", 1))
        gpu_name = params.get("gpu_name")
        candidates = [
            a
            for a in self.asks.values()
            if a.num_gpus == want_gpus
            and not self.machines[a.machine_id].offline
            and (gpu_name is None or self.machines[a.machine_id].gpu_name == gpu_name)
        ]
        if not candidates:
            raise SimError(404, "no_such_ask", f"No free offer with {want_gpus} GPU(s) {gpu_name or ''}".strip())
        return min(candidates, key=lambda a: (self.machines[a.machine_id].dph_per_gpu, a.id))

    def _act_preempt(self, params: Mapping[str, Any]) -> dict[str, Any]:
        inst = self.resolve(params.get("instance"))
        self._halt(inst)
        if inst.is_bid:
            self._set(inst, "exited", "stopped", "stopped", "stopped", "Instance outbid: a higher bid took the GPUs")
        else:
            self._set(inst, "exited", "running", "stopped", "running", "Host reclaimed the machine")
        return {"instance": inst.id}

    _act_outbid = _act_preempt

    def _act_offline(self, params: Mapping[str, Any]) -> dict[str, Any]:
        machine = self._machine_of(params)
        if machine.offline:
            return {"machine": machine.machine_id}
        machine.offline = True
        for inst in self._on_machine(machine):
            if inst.due_at is not None and inst.due_target is not None:
                inst.paused_due = (inst.due_target, max(0.0, inst.due_at - self.now))
            paused = inst.paused_due
            inst.before_offline = (inst.actual_status, inst.cur_state, inst.next_state, inst.status_msg)
            self._halt(inst)
            inst.paused_due = paused
            self._set(inst, "offline", inst.intended_status, inst.cur_state, inst.next_state, "Host is offline")
        return {"machine": machine.machine_id}

    def _act_flap(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Offline now, back after `duration`, `count` times: the later halves join the timeline."""
        first, *later = _expand_flap(Step(self.now - self.origin, "flap", dict(params)))
        result = self.apply(first.action, first.params)
        self.steps[self.steps_done :] = sorted([*self.steps[self.steps_done :], *later], key=lambda s: s.at)
        return result

    def _act_online(self, params: Mapping[str, Any]) -> dict[str, Any]:
        machine = self._machine_of(params)
        if not machine.offline:
            return {"machine": machine.machine_id}
        machine.offline = False
        for inst in self._on_machine(machine):
            if inst.before_offline is None:
                continue
            actual, cur, nxt, msg = inst.before_offline
            inst.before_offline = None
            self._set(inst, actual, inst.intended_status, cur, nxt, msg)
            if inst.paused_due is not None:
                target, left = inst.paused_due
                inst.paused_due = None
                self._schedule(inst, self.now + left, target)
            if actual == "running" and self.backend is not None:
                self.backend.instance_up(inst, inst.ssh_keys)
        return {"machine": machine.machine_id}

    def _on_machine(self, machine: Machine) -> list[SimInstance]:
        return [i for i in self.instances.values() if i.machine_id == machine.machine_id]

    def _act_stuck_loading(self, params: Mapping[str, Any]) -> dict[str, Any]:
        inst = self.resolve(params.get("instance"))
        inst.stuck_msg = str(params.get("msg") or OCI_PULL_ERROR)
        if inst.actual_status == "loading":
            self._unschedule(inst)
            inst.status_msg = inst.stuck_msg
        return {"instance": inst.id}

    def _act_no_such_ask(self, params: Mapping[str, Any]) -> dict[str, Any]:
        self.pending_races += int(params.get("count", 1))
        return {"pending": self.pending_races}

    def _act_create_error(self, params: Mapping[str, Any]) -> dict[str, Any]:
        self.pending_create_errors += int(params.get("count", 1))
        return {"pending": self.pending_create_errors}

    def _storm(self, kind: str, params: Mapping[str, Any], status: int) -> dict[str, Any]:
        duration = parse_duration(params.get("duration", "30s"))
        storm = Storm(
            kind=kind,
            start=self.now,
            end=self.now + duration,
            status=int(params.get("status", status)),
            delay=float(params.get("delay", 0.0)),
        )
        if kind != "slow" and not 400 <= storm.status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {storm.status}")
        self.storms.append(storm)
        return {"until": storm.end}

    def _act_rate_limit(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return self._storm("rate_limit", params, 429)

    def _act_server_error(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return self._storm("server_error", params, 503)

    def _act_slow(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return self._storm("slow", {"delay": 2.0, **params}, 200)

    def active_storms(self) -> list[Storm]:
        self.storms = [s for s in self.storms if s.end > self.now]
        return [s for s in self.storms if s.start <= self.now]

    def _act_gpu_broken(self, params: Mapping[str, Any]) -> dict[str, Any]:
        inst = self.resolve(params.get("instance"))
        inst.status_msg = GPU_BROKEN_MSG
        inst.gpu_util = 0.0
        return {"instance": inst.id}

    def _act_disk_full(self, params: Mapping[str, Any]) -> dict[str, Any]:
        inst = self.resolve(params.get("instance"))
        inst.status_msg = DISK_FULL_MSG
        inst.disk_util = 100.0
        return {"instance": inst.id}

    def _act_raw_status(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Report a status string Vast may invent one day (until the next lifecycle change), to test tolerance."""
        inst = self.resolve(params.get("instance"))
        status = params.get("status")
        if not isinstance(status, str) or not status:
            raise ValueError("status must be a non-empty string")
        inst.actual_status = status
        return {"instance": inst.id}

    def _act_vanish(self, params: Mapping[str, Any]) -> dict[str, Any]:
        inst = self.resolve(params.get("instance"))
        self._end(inst)
        return {"instance": inst.id}

    def _act_expire(self, params: Mapping[str, Any]) -> dict[str, Any]:
        inst = self.resolve(params.get("instance"))
        inst.end_date = self.now + parse_duration(params.get("after", 0))
        self._schedule_expiry(inst)
        return {"instance": inst.id, "end_date": inst.end_date}

    def _act_label(self, params: Mapping[str, Any]) -> dict[str, Any]:
        self.set_label(self.resolve(params.get("instance")).id, params.get("label"))
        return {}

    # ----------------------------------------------------------------- views

    def instance_row(self, inst: SimInstance, *, ssh_host: str = "127.0.0.1") -> dict[str, Any]:
        m = self.machines[inst.machine_id]
        base = round(self._gpu_rate(inst), 6)
        storage_ph = m.storage_cost * inst.disk / HOURS_PER_MONTH
        port = str(inst.ssh_port)
        return {
            "id": inst.id,
            "actual_status": inst.actual_status,
            "intended_status": inst.intended_status,
            "cur_state": inst.cur_state,
            "next_state": inst.next_state,
            "status_msg": inst.status_msg,
            "label": inst.label,
            "machine_id": m.machine_id,
            "host_id": m.host_id,
            "gpu_name": m.gpu_name,
            "num_gpus": inst.num_gpus,
            "gpu_ram": m.gpu_ram,
            "gpu_totalram": m.gpu_ram * inst.num_gpus,
            "gpu_util": inst.gpu_util,
            "gpu_temp": 55.0 if inst.actual_status == "running" else 0.0,
            "cpu_cores": m.cpu_cores * inst.num_gpus // m.num_gpus,
            "cpu_ram": m.cpu_ram * inst.num_gpus / m.num_gpus,
            "disk_space": inst.disk,
            "disk_util": inst.disk_util,
            "dph_base": base,
            "dph_total": round(base + storage_ph, 6),
            "storage_cost": m.storage_cost,
            "storage_total_cost": round(storage_ph, 6),
            "is_bid": inst.is_bid,
            "min_bid": round(m.min_bid_per_gpu * inst.num_gpus, 4),
            "ssh_host": ssh_host,
            "ssh_port": inst.ssh_port,
            "ssh_idx": "1",
            "public_ipaddr": ssh_host,
            "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": port}]},  # noqa: S104 - Vast's wire shape
            "direct_port_start": inst.ssh_port,
            "direct_port_end": inst.ssh_port,
            "start_date": inst.created_at,
            "end_date": inst.end_date,
            "duration": inst.end_date - self.now,
            "extra_env": [[k, v] for k, v in inst.env.items()],
            "image_uuid": inst.image,
            "image_runtype": inst.runtype,
            "onstart": inst.onstart,
            "reliability2": m.reliability,
            "geolocation": m.geolocation,
            "cuda_max_good": m.cuda_max_good,
            "inet_down": m.inet_down,
            "inet_up": m.inet_up,
            "verification": "verified",
            "template_hash_id": None,
            "uptime_mins": None,
        }

    def _gpu_rate(self, inst: SimInstance) -> float:
        """$/h for the instance's GPUs: its bid, else the machine's on-demand price."""
        if inst.bid_price is not None:
            return inst.bid_price
        return self.machines[inst.machine_id].dph_per_gpu * inst.num_gpus

    def charges(self, inst: SimInstance) -> tuple[float, float]:
        """(gpu $, storage $) accrued: the GPU price while running, storage for the whole life (stopped too)."""
        m = self.machines[inst.machine_id]
        end = inst.ended_at if inst.ended_at is not None else self.now
        gpu_rate = self._gpu_rate(inst)
        gpu = 0.0
        points = [*inst.history, (end, "end")]
        for (start, status), (stop, _) in itertools.pairwise(points):
            if status == "running":
                gpu += (min(stop, end) - start) / 3600.0 * gpu_rate
        storage = (end - inst.created_at) / 3600.0 * m.storage_cost * inst.disk / HOURS_PER_MONTH
        return gpu, storage

    def all_instances(self) -> list[SimInstance]:
        return sorted([*self.instances.values(), *self.ended.values()], key=lambda i: i.id)

    def spend(self) -> float:
        return sum(sum(self.charges(inst)) for inst in self.all_instances())

    def add_ssh_key(self, public_key: str) -> dict[str, Any]:
        key = _public_key(public_key)
        record = {
            "id": self.next_key_id,
            "user_id": 1,
            "public_key": key,
            "key": key,
            "created_at": datetime.fromtimestamp(self.now, UTC).isoformat(),
            "deleted_at": None,
        }
        self.next_key_id += 1
        self.ssh_keys.append(record)
        return record

    def attach_ssh_key(self, instance_id: int, public_key: Any) -> SimInstance:
        """Let `public_key` into one instance too (the caller tells its host)."""
        key = _public_key(public_key)
        inst = self.instance(instance_id)
        if key not in inst.ssh_keys:
            inst.ssh_keys.append(key)
        return inst


def _expand_flap(step: Step) -> list[Step]:
    if step.action != "flap":
        return [step]
    params = dict(step.params)
    duration = parse_duration(params.pop("duration", "60s"))
    steps = []
    for n in range(int(params.pop("count", 1))):
        steps.append(Step(step.at + 2 * n * duration, "offline", params))
        steps.append(Step(step.at + (2 * n + 1) * duration, "online", params))
    return steps


def _instance_from_dict(data: Mapping[str, Any]) -> SimInstance:
    data = dict(data)
    data["history"] = [tuple(h) for h in data["history"]]
    for name in ("paused_due", "before_offline"):
        if data.get(name) is not None:
            data[name] = tuple(data[name])
    return SimInstance(**data)


def _price(value: Any) -> float:
    """A bid in $/h: a positive, finite number (Vast answers ``invalid_price`` otherwise)."""
    try:
        price = float(value)
    except (TypeError, ValueError):
        raise SimError(400, "invalid_price", f"price must be a number, got {value!r}") from None
    if not (math.isfinite(price) and price > 0):
        raise SimError(400, "invalid_price", f"price must be a positive number, got {price}")
    return price


def _public_key(value: Any) -> str:
    """An OpenSSH public key line, stripped; anything else is Vast's ``invalid_args``."""
    if not isinstance(value, str) or not value.strip().startswith(("ssh-", "ecdsa-", "sk-")):
        raise SimError(400, "invalid_args", "ssh_key must be an OpenSSH public key (ssh-ed25519 AAAA...).")
    return value.strip()


def _env_dict(env: Any) -> dict[str, str]:
    """Vast takes env as a dict (CLI) or a docker-style string (``-e A=1 -p 22:22``)."""
    if isinstance(env, Mapping):
        return {str(k): str(v) for k, v in env.items()}
    if isinstance(env, str):
        result: dict[str, str] = {}
        words = env.split()
        for flag, value in itertools.pairwise(words):
            if flag == "-e" and "=" in value:
                name, _, val = value.partition("=")
                result[name] = val
            elif flag == "-p":
                result[f"-p {value}"] = "1"
        return result
    if env is None:
        return {}
    raise SimError(400, "invalid_args", "env must be an object of NAME: value pairs")
