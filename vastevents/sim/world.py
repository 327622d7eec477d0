"""The simulated Vast world: the scenario's timeline over the instance lifecycle, the API's entry points.

No I/O and no clock of its own: every entry point takes ``now`` (epoch seconds) and first plays everything
that fell due up to then, in time order (instance transitions, contract expiries, scripted scenario steps).
The state is therefore a pure function of the clock, and a ManualClock drives it completely;
`World.next_due` says when the next of those moments is, so a caller can step a clock from one to the next.
The caller (the Simulator) holds the lock; real sshd processes are behind the `HostBackend` hooks.

The parts: :mod:`~vastevents.sim.lifecycle` (state and transitions), :mod:`~vastevents.sim.faults` (every
scripted action by name), :mod:`~vastevents.sim.billing` and :mod:`~vastevents.sim.views` (charges, rows),
:mod:`~vastevents.sim.market` (machines and offer rows), :mod:`~vastevents.sim.matching` (Vast's filters).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from vastevents.config import parse_duration
from vastevents.sim import billing, faults, views
from vastevents.sim.lifecycle import Lifecycle
from vastevents.sim.market import OFFER_FIELDS, generate_machines, machines_from_specs, offer_row
from vastevents.sim.matching import matches, sort_rows
from vastevents.sim.model import DEFAULT_PULL_S, Ask, Machine, SimError, SimInstance, Step, Storm
from vastevents.sim.params import env_param, number_param, price_param, public_key_param

_USER_VERBS = frozenset({"stop", "start", "reboot", "destroy"})  # what the owner does, scripted
ACTIONS = frozenset({*faults.FAULTS, *_USER_VERBS, "flap"})
_SEARCH_CONTROLS = frozenset({"order", "type", "limit", "allocated_storage", "disable_bundling", "extra_ids"})

logger = logging.getLogger("vastevents.sim")


class World(Lifecycle):
    """All simulated state. Not thread-safe: the Simulator serialises access with its lock."""

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
        world.reschedule_all()
        return world

    # ----------------------------------------------------------------- time

    def advance(self, now: float) -> None:
        """Play everything that fell due up to `now`, in time order (a step before a transition at the same time)."""
        while True:
            transition_at = self.next_transition()
            step_at = self._next_step_at()
            if step_at is not None and step_at <= now and (transition_at is None or step_at <= transition_at):
                step = self.steps[self.steps_done]
                self.now = max(self.now, step_at)
                self.steps_done += 1
                self._play(step)
            elif transition_at is not None and transition_at <= now:
                self.play_transition()
            else:
                break
        self.now = max(self.now, now)

    def next_due(self) -> float | None:
        """The earliest moment after `now` at which the world changes by itself, or None if nothing is pending.

        That is the next scenario step, instance transition (scheduling -> created -> loading -> running, a
        restart or reboot finishing, a flapping host coming back), contract expiry, or fault storm ending.
        What clients do in between (create, stop, ...) can add earlier moments, so ask again after each one.
        """
        storm_ends = [s.end for s in self.storms if s.end > self.now]
        pending = [t for t in (self._next_step_at(), self.next_transition(), *storm_ends) if t is not None]
        return min(pending, default=None)

    def _next_step_at(self) -> float | None:
        return self.origin + self.steps[self.steps_done].at if self.steps_done < len(self.steps) else None

    def _play(self, step: Step) -> None:
        """A scripted step that cannot happen (its instance is gone, no offer fits) is logged and skipped."""
        try:
            self.apply(step.action, step.params)
        except SimError as exc:
            logger.warning("scenario step %s at %ss (%s) skipped: %s", self.steps_done, step.at, step.action, exc.msg)

    @property
    def scenario_end(self) -> float | None:
        return self.origin + max(step.at for step in self.steps) if self.steps else None

    def set_steps(self, steps: Sequence[Step]) -> None:
        """Attach a timeline; flaps expand into their offline and online steps."""
        self.steps = sorted([s for step in steps for s in _expand_flap(step)], key=lambda s: s.at)

    # ----------------------------------------------------------------- scripted and admin actions

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
            if action == "flap":
                return self._flap(params)
            return faults.FAULTS[action](self, params)
        except (TypeError, ValueError) as exc:
            raise SimError(400, "invalid_args", f"{action}: bad parameter ({exc})") from None

    def _flap(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Offline now, back after `duration`, `count` times: the later halves join the timeline."""
        first, *later = _expand_flap(Step(self.now - self.origin, "flap", dict(params)))
        result = self.apply(first.action, first.params)
        self.steps[self.steps_done :] = sorted([*self.steps[self.steps_done :], *later], key=lambda s: s.at)
        return result

    def active_storms(self) -> list[Storm]:
        self.storms = [s for s in self.storms if s.end > self.now]
        return [s for s in self.storms if s.start <= self.now]

    # ----------------------------------------------------------------- the API's entry points

    def search(self, query: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Offers matching a Vast search query (`{field: {op: value}}`, order, type, limit)."""
        kind = str(query.get("type") or "on-demand")
        if kind not in ("on-demand", "bid", "interruptible", "reserved"):
            raise SimError(400, "invalid_args", f"unknown offer type {kind!r}")
        storage = number_param(query.get("allocated_storage"), 5.0, what="allocated_storage")
        filters = {k: v for k, v in query.items() if k not in _SEARCH_CONTROLS}
        unknown = sorted(set(filters) - OFFER_FIELDS)
        if unknown:
            raise SimError(400, "invalid_args", f"Unknown search field(s): {', '.join(unknown)}.")
        rows = [
            offer_row(
                self.machines[ask.machine_id],
                ask,
                now=self.now,
                wire=self.wire,
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

    def create(self, ask_id: int, body: Mapping[str, Any]) -> tuple[int, dict[str, Any] | None]:
        """Rent an ask (`PUT /asks/{id}/`). Returns the new id and, for a low bid, a failure body."""
        if self.pending_races and ask_id in self.asks:
            self.pending_races -= 1
            self.rented_elsewhere(self.asks[ask_id])
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
        price = price_param(body["price"]) if body.get("price") is not None else None
        label = body.get("label")
        onstart = body.get("onstart")
        inst = self.new_instance(
            ask,
            image=image.strip(),
            disk=disk,
            label=str(label) if label is not None else None,
            onstart=str(onstart) if onstart else None,
            env=env_param(body.get("env")),
            bid_price=price,
            runtype=str(body.get("runtype") or "ssh"),
            pull_s=number_param(body.get("_pull_s"), DEFAULT_PULL_S, what="_pull_s"),
        )
        if self.pending_create_errors:
            self.pending_create_errors -= 1
            raise SimError(500, "server_error", "Internal error while creating the instance; please retry.")
        min_bid = self.machines[ask.machine_id].min_bid_per_gpu * ask.num_gpus
        if price is not None and price < min_bid:
            self.unschedule(inst)
            self.set_status(inst, "stopped", "stopped", "stopped", "stopped", f"bid {price} is below minimum {min_bid}")
            failure = {
                "success": False,
                "error": "bid_too_low",
                "msg": f"Your bid of ${price}/h is below the minimum ${min_bid:.4f}/h; the instance is stopped.",
                "new_contract": inst.id,
            }
            return inst.id, failure
        return inst.id, None

    def add_ssh_key(self, public_key: str) -> dict[str, Any]:
        key = public_key_param(public_key)
        record = {
            "id": self.next_key_id,
            "user_id": 1,
            "public_key": key,
            "key": key,
            "created_at": self.wire.iso(self.now),
            "deleted_at": None,
        }
        self.next_key_id += 1
        self.ssh_keys.append(record)
        return record

    def attach_ssh_key(self, instance_id: int, public_key: Any) -> SimInstance:
        """Let `public_key` into one instance too (the caller tells its host)."""
        key = public_key_param(public_key)
        inst = self.instance(instance_id)
        if key not in inst.ssh_keys:
            inst.ssh_keys.append(key)
        return inst

    # ----------------------------------------------------------------- views

    def instance_row(self, inst: SimInstance, *, ssh_host: str = "127.0.0.1") -> dict[str, Any]:
        return views.instance_row(self.machines[inst.machine_id], inst, now=self.now, wire=self.wire, ssh_host=ssh_host)

    def charges(self, inst: SimInstance) -> tuple[float, float]:
        """(gpu $, storage $) charged so far: the GPU price while running, storage for the whole life.

        Accrued per second of the clients' clock (see :mod:`~vastevents.sim.wiretime`).
        """
        gpu, storage = billing.charges(self.machines[inst.machine_id], inst, now=self.now)
        return self.wire.span(gpu), self.wire.span(storage)

    def charge_item(self, inst: SimInstance) -> dict[str, Any]:
        return views.charge_item(inst, self.charges(inst), now=self.now, wire=self.wire)

    def all_instances(self) -> list[SimInstance]:
        return sorted([*self.instances.values(), *self.ended.values()], key=lambda i: i.id)

    def spend(self) -> float:
        return sum(sum(self.charges(inst)) for inst in self.all_instances())


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
