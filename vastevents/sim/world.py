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
from vastevents.sim import billing, faults, views, volumes
from vastevents.sim.lifecycle import Lifecycle
from vastevents.sim.market import HOURS_PER_MONTH, OFFER_FIELDS, generate_machines, machines_from_specs, offer_row
from vastevents.sim.matching import matches, sort_rows
from vastevents.sim.model import DEFAULT_PULL_S, Ask, Machine, SimError, SimInstance, SimVolume, Step, Storm
from vastevents.sim.params import env_param, number_param, price_param
from vastevents.sim.templates import Templates

_USER_VERBS = frozenset({"stop", "start", "reboot", "destroy"})  # what the owner does, scripted
ACTIONS = frozenset({*faults.FAULTS, *_USER_VERBS, "flap"})
_SEARCH_CONTROLS = frozenset({"order", "type", "limit", "allocated_storage", "disable_bundling", "extra_ids"})

logger = logging.getLogger("vastevents.sim")


class World(Lifecycle):
    """All simulated state. Not thread-safe: the Simulator serialises access with its lock."""

    # ----------------------------------------------------------------- construction and persistence

    @classmethod
    def generate(cls, *, seed: int, hosts: int, origin: float, flaky: float = 0.0) -> World:
        """A deterministic market of `hosts` hosts (one or two machines each) from `seed`; `flaky`: the share of
        the cheaper machines that misbehave (see :func:`~vastevents.sim.market.make_flaky`)."""
        return cls(generate_machines(seed=seed, hosts=hosts, origin=origin, flaky=flaky), origin=origin)

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
            "pending_reprices": self.pending_reprices,
            "next_ask_id": self.next_ask_id,
            "next_instance_id": self.next_instance_id,
            "next_key_id": self.next_key_id,
            "attached_keys": self.attached_keys,
            "volumes": [asdict(v) for v in self.volumes.values()],
            "next_volume_id": self.next_volume_id,
            "templates": self.templates.to_list(),
            "env_vars": self.env_vars,
            "api_keys": self.api_keys,
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
        world.pending_reprices = [float(f) for f in data.get("pending_reprices", [])]
        world.next_ask_id = int(data["next_ask_id"])
        world.next_instance_id = int(data["next_instance_id"])
        world.next_key_id = int(data["next_key_id"])
        world.attached_keys = {int(k): str(v) for k, v in data.get("attached_keys", {}).items()}
        world.volumes = {v["id"]: SimVolume(**v) for v in data.get("volumes", [])}
        world.next_volume_id = int(data.get("next_volume_id", world.next_volume_id))
        if "templates" in data:
            world.templates = Templates.from_list(data["templates"])
        world.env_vars = dict(data.get("env_vars", {}))
        world.api_keys = list(data.get("api_keys", []))
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
        """Rent an ask (`PUT /asks/{id}/`). Returns the new id and, for a low bid, a failure body.

        A template (``template_hash_id`` or ``template_id``) gives the image, docker options and onstart the
        request leaves out; ``volume_info`` makes a volume from an offer of the same machine, or links one.
        """
        if self.pending_races and ask_id in self.asks:
            self.pending_races -= 1
            self.rented_elsewhere(self.asks[ask_id])
        ask = self.asks.get(ask_id)
        if ask is None or self.machines[ask.machine_id].offline:
            raise SimError(404, "no_such_ask", f"Instance type {ask_id} is no longer available.")
        if self.pending_reprices:  # the host changed its price between the search and this create
            machine = self.machines[ask.machine_id]
            factor = self.pending_reprices.pop(0)
            machine.dph_per_gpu = round(machine.dph_per_gpu * factor, 4)
            machine.min_bid_per_gpu = round(machine.min_bid_per_gpu * factor, 4)
        template = self.templates.for_create(body, now=self.now)
        image = body.get("image") or (template.full_image if template else None)
        if not isinstance(image, str) or not image.strip():
            raise SimError(400, "invalid_args", "image is required (or a template: template_hash_id, template_id).")
        disk = number_param(body.get("disk"), (template and template.recommended_disk_space) or 10.0, what="disk")
        if not 0 < disk <= self.machines[ask.machine_id].disk_space:
            raise SimError(400, "invalid_args", f"disk must be between 0 and the machine's free space, got {disk}")
        price = price_param(body["price"]) if body.get("price") is not None else None
        env = {**self.env_vars, **env_param(template.env if template else None), **env_param(body.get("env"))}
        label = body.get("label")
        onstart = body.get("onstart") or (template.onstart if template else None)
        volume = volumes.for_create(self, ask, body.get("volume_info"))
        inst = self.new_instance(
            ask,
            image=image.strip(),
            disk=disk,
            label=str(label) if label is not None else None,
            onstart=str(onstart) if onstart else None,
            env=env,
            bid_price=price,
            runtype=str(body.get("runtype") or (template.runtype if template else None) or "ssh"),
            pull_s=number_param(body.get("_pull_s"), DEFAULT_PULL_S, what="_pull_s"),
        )
        if template is not None:
            inst.template_id, inst.template_hash_id, inst.template_name = template.id, template.hash_id, template.name
        if volume is not None:
            inst.volume_id, inst.mount_path = volume[0].id, volume[1]
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

    def launch(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any] | None]:
        """``launch instance``: rent the first offer the query ``q`` finds (in its order), with the rest of `body`."""
        query = body.get("q")
        if not isinstance(query, Mapping):
            raise SimError(400, "invalid_args", "q must be a search query object")
        offers = self.search({**query, "limit": 1})
        if not offers:
            raise SimError(404, "no_such_ask", "No offer matches the launch query.")
        return self.create(int(offers[0]["id"]), body)

    def update_template(self, instance_id: int, body: Mapping[str, Any]) -> None:
        """``update instance``: recreate the container from a new template or image, env, onstart (args ignored)."""
        inst = self.instance(instance_id)
        template = self.templates.for_create(body, now=self.now)
        image = body.get("image") or (template.full_image if template else None)
        if template is None and not any(body.get(k) for k in ("image", "env", "onstart")):
            raise SimError(
                400, "invalid_args", "give a template (template_id, template_hash_id), image, env or onstart"
            )
        if template is not None:
            inst.template_id, inst.template_hash_id, inst.template_name = template.id, template.hash_id, template.name
            inst.env = {**self.env_vars, **env_param(template.env)}
            inst.onstart = template.onstart
        if isinstance(image, str) and image.strip():
            inst.image, inst.stuck_msg = image.strip(), None
        if body.get("env") is not None:
            inst.env = {**inst.env, **env_param(body.get("env"))}
        if body.get("onstart") is not None:
            inst.onstart = str(body["onstart"]) or None
        self.recycle(instance_id)

    def prepay(self, instance_id: int, amount: Any) -> dict[str, float]:
        """Move `amount` of credit into the instance's deposit for a discount on its GPU price (see billing)."""
        inst = self.instance(instance_id)
        paid = number_param(amount, 0.0, what="amount")
        if inst.is_bid:
            raise SimError(400, "invalid_args", "only on-demand instances can be prepaid, not interruptible ones")
        if not 0 < paid <= self.balance():
            raise SimError(400, "invalid_args", f"amount must be between 0 and the balance {self.balance():.2f}")
        months = (inst.deposit + paid) / (billing.gpu_rate(self.machines[inst.machine_id], inst) * HOURS_PER_MONTH)
        if inst.prepaid_at is None:
            inst.prepaid_at = self.now
        inst.deposit += paid
        inst.discount_rate = billing.discount_for(months)
        return {"timescale": months, "discount_rate": inst.discount_rate}

    # ----------------------------------------------------------------- views

    def instance_row(self, inst: SimInstance, *, ssh_host: str = "127.0.0.1") -> dict[str, Any]:
        row = views.instance_row(self.machines[inst.machine_id], inst, now=self.now, wire=self.wire, ssh_host=ssh_host)
        if inst.volume_id is not None:
            volume = self.volumes[inst.volume_id]
            row["volume_info"] = [{"id": volume.id, "name": volume.name, "mount_path": inst.mount_path,
                                   "total_space": volume.size, "avail_space": None}]  # fmt: skip
        return row

    def charges(self, inst: SimInstance) -> billing.Charges:
        """What `inst` has cost: the GPU price while running, storage for the whole life, a deposit's discount.

        Accrued per second of the clients' clock (see :mod:`~vastevents.sim.wiretime`).
        """
        cost = billing.charges(self.machines[inst.machine_id], inst, now=self.now)
        span = self.wire.span
        return billing.Charges(span(cost.gpu), span(cost.storage), span(cost.from_deposit))

    def charge_item(self, inst: SimInstance) -> dict[str, Any]:
        return views.charge_item(inst, self.charges(inst), now=self.now, wire=self.wire)

    def charge_items(self) -> list[dict[str, Any]]:
        """Every instance's and volume's ``/charges`` item, live or ended."""
        items = [self.charge_item(inst) for inst in self.all_instances()]
        return items + [volumes.charge_item(self, v) for v in sorted(self.volumes.values(), key=lambda v: v.id)]

    def all_instances(self) -> list[SimInstance]:
        return sorted([*self.instances.values(), *self.ended.values()], key=lambda i: i.id)

    def spend(self) -> float:
        """All charges so far, instances' and volumes'."""
        return sum(self.charges(inst).total for inst in self.all_instances()) + sum(
            volumes.charges(self, v) for v in self.volumes.values()
        )

    def balance(self) -> float:
        """Credit left: the starting credit less what was charged and what sits in deposits unspent."""
        unspent = sum(inst.deposit - self.charges(inst).from_deposit for inst in self.all_instances())
        return self.credit - self.spend() - unspent


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
