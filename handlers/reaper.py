"""The ``reaper`` handler: finds owned instances that leak money and destroys them after a grace period.

[handlers.reaper]
use = "reaper"
idle_ttl = "30m"        # owned, and no active job claims it for this long ("none" turns the rule off)
exited_ttl = "1h"       # owned, and stopped/exited (billing storage) for this long
max_lifetime = "none"   # owned, and alive this long since it was created (or first seen), e.g. "2d"
gpu_idle_ttl = "none"   # owned, running, and gpu_util below gpu_idle_below (%) on every pass for this long
gpu_idle_below = 1.0
grace = "10m"           # warn when a rule first matches, destroy only this much later
dry_run = false         # only report what would be reaped

Rules, over the last complete instance list, owned instances only (label starting with ``[vast] label_prefix``):

- *unclaimed*: a job claims an instance through its label ``"<prefix>:job-<id>"`` until a ``job_finished`` or
  ``job_failed`` event is journaled for it. An owned instance without a job label is unclaimed since it was
  created (Vast's ``start_date``, else first sight); a job's instance from the end of its job.
- *exited*: stopped or exited since we saw it change (it still bills storage), whatever the reason.
- *too old*: alive longer than ``max_lifetime`` since it was created (the same start).
- *gpu idle*: running with ``gpu_util`` below ``gpu_idle_below`` on every pass since it first was (kept in
  the store, so a restart does not reset it; a pass that sees it busy or not running starts it over).

A match older than its rule's TTL is warned about (notifier, once per match, kept in the store) and destroyed with
``ctx.destroy`` once it is older than TTL + ``grace``; each destroy journals ``reaped`` with the reason.
The pass runs every minute. ``last_pass`` keeps what the last pass found, for ``vastevents reap``. Over a
read-only store (``vastevents reap --dry-run``) a pass only reports: it warns nobody and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from vastevents import (
    Context,
    Database,
    Duration,
    Handler,
    HandlerOptions,
    InstanceView,
    Migration,
    every,
    format_duration,
    job_id_of,
)

REAPED = "reaped"
Rule = Literal["unclaimed", "exited", "too old", "gpu idle"]


class ReaperMemory:
    """The ``reaper`` component: since when each running owned instance has shown an idle GPU, and which
    warnings were sent (so a restart or a new team leader does not send them again)."""

    MIGRATIONS: ClassVar[Sequence[Migration]] = (
        Migration(
            "reaper", 1, ("CREATE TABLE reaper_gpu_idle (instance_id INTEGER PRIMARY KEY, since TEXT NOT NULL)",)
        ),
        Migration(
            "reaper",
            2,
            (
                "CREATE TABLE reaper_warned (instance_id INTEGER NOT NULL, rule TEXT NOT NULL,"
                " PRIMARY KEY (instance_id, rule))",
            ),
        ),
    )

    def __init__(self, db: Database) -> None:
        self.db = db

    def update(self, idle: Iterable[int], now: datetime) -> dict[int, datetime]:
        """Keep exactly the `idle` ids (new ones idle since `now`); since when each has been idle."""
        ids = set(idle)
        with self.db.transaction() as conn:
            known = self._known()
            for gone in set(known) - ids:
                conn.execute("DELETE FROM reaper_gpu_idle WHERE instance_id = ?", (gone,))
            for new in ids - set(known):
                conn.execute("INSERT INTO reaper_gpu_idle (instance_id, since) VALUES (?, ?)", (new, now.isoformat()))
        return self.idle_since(ids, now)

    def idle_since(self, idle: Iterable[int], now: datetime) -> dict[int, datetime]:
        """Since when each of the `idle` ids has been idle (`now` for one not kept yet), writing nothing."""
        known = self._known()
        return {instance_id: known.get(instance_id, now) for instance_id in sorted(set(idle))}

    def _known(self) -> dict[int, datetime]:
        rows = self.db.query("SELECT instance_id, since FROM reaper_gpu_idle")
        return {int(r[0]): datetime.fromisoformat(r[1]) for r in rows}

    def first_warning(self, instance_id: int, rule: str) -> bool:
        """True the first time (instance, rule) is warned about, recording it."""
        with self.db.transaction() as conn:
            row = conn.execute(
                "INSERT INTO reaper_warned (instance_id, rule) VALUES (?, ?) ON CONFLICT DO NOTHING RETURNING rule",
                (instance_id, rule),
            ).fetchone()
        return row is not None

    def keep_warnings(self, matched: Iterable[tuple[int, str]]) -> None:
        """Forget the warnings of every (instance, rule) that no longer matches: a new match warns again."""
        keep = set(matched)
        with self.db.transaction() as conn:
            for instance_id, rule in conn.execute("SELECT instance_id, rule FROM reaper_warned").fetchall():
                if (int(instance_id), str(rule)) not in keep:
                    conn.execute("DELETE FROM reaper_warned WHERE instance_id = ? AND rule = ?", (instance_id, rule))


JOB_ENDS = ("job_finished", "job_failed")


class ReaperOptions(HandlerOptions):
    idle_ttl: Duration | None = 1800.0
    exited_ttl: Duration | None = 3600.0
    max_lifetime: Duration | None = None
    gpu_idle_ttl: Duration | None = None
    gpu_idle_below: float = Field(default=1.0, ge=0, le=100)
    grace: Duration = Field(default=600.0, ge=0)
    dry_run: bool = False

    @field_validator("idle_ttl", "exited_ttl", "max_lifetime", "gpu_idle_ttl", mode="before")
    @classmethod
    def _none_turns_off(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() in ("none", "off") else value


@dataclass(frozen=True)
class Finding:
    """One owned instance a rule matched: how long past the rule's start it is, and what the pass did."""

    instance_id: int
    label: str | None
    rule: Rule
    reason: str
    age_s: float
    action: Literal["warned", "reaped", "would reap", "already gone"]

    def to_json(self) -> dict[str, object]:
        return {
            "instance_id": self.instance_id,
            "label": self.label,
            "rule": self.rule,
            "reason": self.reason,
            "age_s": self.age_s,
            "action": self.action,
        }


class ReaperHandler(Handler[ReaperOptions]):
    Options = ReaperOptions
    emits = (REAPED,)

    def __init__(self, options: ReaperOptions | None = None) -> None:
        super().__init__(options)
        self.last_pass: list[Finding] = []

    @every("1m")
    async def reap(self, ctx: Context) -> None:
        now = ctx.clock.now()
        found: list[Finding] = []
        owned = [view for view in ctx.store.load_snapshot().views.values() if ctx.owns(view.instance)]
        memory = ctx.store.repository(ReaperMemory)
        looking = ctx.store.read_only  # `vastevents reap --dry-run`: report what it finds, change nothing
        idle_ids = [v.instance.id for v in owned if self._gpu_idle(v)]
        idle = memory.idle_since(idle_ids, now) if looking else memory.update(idle_ids, now)
        for view in owned:
            match = self._match(view, now, idle.get(view.instance.id), ctx)
            if match is None:
                continue
            rule, reason, age, ttl = match
            label = view.instance.label
            if age < ttl + self.options.grace:
                if not looking and memory.first_warning(view.instance.id, rule):
                    left = format_duration(ttl + self.options.grace - age)
                    await ctx.notify(f"instance {view.instance.id} ({label}) {reason}; reaped in {left}")
                found.append(Finding(view.instance.id, label, rule, reason, age, "warned"))
            elif self.options.dry_run or looking:
                found.append(Finding(view.instance.id, label, rule, reason, age, "would reap"))
            else:
                ctx.logger.warning("reaping instance %d (%s): %s", view.instance.id, label, reason)
                existed = await ctx.destroy(view.instance)
                await ctx.emit(REAPED, instance=view.instance, detail=reason, key=f"reaped:{view.instance.id}")
                found.append(
                    Finding(view.instance.id, label, rule, reason, age, "reaped" if existed else "already gone")
                )
        if not looking:
            memory.keep_warnings((f.instance_id, f.rule) for f in found if f.action == "warned")
        self.last_pass = found

    def _gpu_idle(self, view: InstanceView) -> bool:
        util = view.instance.gpu_util
        return (
            self.options.gpu_idle_ttl is not None
            and view.state.value == "running"
            and util is not None
            and (util < self.options.gpu_idle_below)
        )

    def _match(
        self, view: InstanceView, now: datetime, idle_since: datetime | None, ctx: Context
    ) -> tuple[Rule, str, float, float] | None:
        """(rule, reason, seconds since the rule's start, the rule's TTL) of the first rule that matches."""
        options, instance = self.options, view.instance
        born = _born(view)
        if options.max_lifetime is not None:
            age = (now - born).total_seconds()
            if age >= options.max_lifetime:
                return "too old", f"alive {format_duration(age)}, past max_lifetime", age, options.max_lifetime
        if options.exited_ttl is not None and instance.state.value in ("stopped", "exited"):
            age = (now - view.since).total_seconds()
            if age >= options.exited_ttl:
                return (
                    "exited",
                    f"{instance.state.value} for {format_duration(age)}, billing storage",
                    age,
                    options.exited_ttl,
                )
        if options.gpu_idle_ttl is not None and idle_since is not None:
            age = (now - idle_since).total_seconds()
            if age >= options.gpu_idle_ttl:
                return "gpu idle", f"GPU idle for {format_duration(age)} while running", age, options.gpu_idle_ttl
        if options.idle_ttl is not None:
            unclaimed = self._unclaimed_since(view, born, ctx)
            if unclaimed is not None:
                age = (now - unclaimed[0]).total_seconds()
                if age >= options.idle_ttl:
                    return "unclaimed", f"{unclaimed[1]} for {format_duration(age)}", age, options.idle_ttl
        return None

    @staticmethod
    def _unclaimed_since(view: InstanceView, born: datetime, ctx: Context) -> tuple[datetime, str] | None:
        job = job_id_of(view.instance.label)
        if job is None:
            return born, "no job claims it"
        ends = [e for name in JOB_ENDS for e in ctx.store.events(instance_id=view.instance.id, name=name)]
        if not ends:
            return None
        return max(e.at for e in ends), f"job {job} ended"


def _born(view: InstanceView) -> datetime:
    """When the instance was created (Vast's ``start_date``), or first seen if that is earlier or unknown."""
    if view.instance.start_date is None:
        return view.first_seen
    return min(view.first_seen, datetime.fromtimestamp(view.instance.start_date, UTC))
