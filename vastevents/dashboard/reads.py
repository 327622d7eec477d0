"""What the dashboard's pages show, read from a store opened read-only: a page of rows at a time, on indexes.

A component no watcher has created yet (no jobs handler ever ran, no team) reads as empty until one does: the
dashboard runs for days, so each is looked for again until it is there. Nothing here writes.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from vastevents._logging import redact
from vastevents.config import Config
from vastevents.costs import Charge, CostReport, GroupBy, build_report
from vastevents.events import Event
from vastevents.models import Instance
from vastevents.store import Database, Jobs, Journal, Migration, effects, journal, snapshots
from vastevents.store.effects import Effects
from vastevents.store.hosts import HostRecord, Hosts
from vastevents.store.jobs import Job
from vastevents.store.ledger import Interval, Ledger, hourly_rate
from vastevents.store.outbox import Outbox
from vastevents.store.recoveries import Recoveries, Recovery
from vastevents.store.snapshots import Snapshots
from vastevents.store.team import Member, TeamMembers
from vastevents.team import MISSED_BEATS, alive, no_watcher

PAGE = 50
"""Rows per page of every list."""
TIMELINE = 200
"""The newest events a job's page shows."""
LOG_TAIL_BYTES = 16 * 1024

COMPONENTS: dict[str, Sequence[Migration]] = {
    "journal": journal.MIGRATIONS,
    "snapshot": snapshots.MIGRATIONS,
    "effects": effects.MIGRATIONS,
    "jobs": Jobs.MIGRATIONS,
    "ledger": Ledger.MIGRATIONS,
    "hosts": Hosts.MIGRATIONS,
    "outbox": Outbox.MIGRATIONS,
    "team": TeamMembers.MIGRATIONS,
    "recoveries": Recoveries.MIGRATIONS,
}
"""Each component the dashboard reads, with the migrations that say which schema it expects."""

_SECRET_FIELD = re.compile(r"token|secret|passw|api_?key|private|credential|ssh_key|env|onstart|jupyter", re.I)


def safe_instance(instance: Instance | None) -> dict[str, Any] | None:
    """An instance row as JSON with every field that may hold a secret (tokens, env, onstart scripts) masked."""
    if instance is None:
        return None
    return {
        key: ("***" if value is not None and _SECRET_FIELD.search(key) else value)
        for key, value in instance.model_dump(mode="json").items()
    }


def safe_event(event: Event) -> dict[str, Any]:
    """The ``events --json`` object of `event`, secrets masked (see :func:`safe_instance`)."""
    data = event.to_json()
    data["instance"] = safe_instance(event.instance)
    data["detail"] = redact(data["detail"]) if data["detail"] else None
    return data


def is_owned(label: str | None, prefix: str) -> bool:
    return bool(prefix and label and label.startswith(prefix))


@dataclass(frozen=True)
class Budget:
    what: str
    limit_usd: float
    spend_usd: float


@dataclass(frozen=True)
class Overview:
    now: datetime
    snapshot_at: datetime | None
    instances: list[Instance]
    by_state: list[tuple[str, int]]
    dph_total: float
    dph_owned: float
    today_usd: float
    total_usd: float
    budgets: list[Budget]
    members: list[tuple[Member, bool]]
    no_watcher: str | None
    """What to say when no watcher was heard from lately."""
    backlog: dict[str, int]
    jobs_by_status: dict[str, int]
    recent: list[Event]
    billing: bool


@dataclass(frozen=True)
class JobRow:
    job: Job
    phase: str | None
    cause: str | None
    runtime_s: float


@dataclass(frozen=True)
class JobPage:
    row: JobRow
    timeline: list[Event]
    recoveries: list[Recovery]
    log_tail: str | None
    log_note: str


class Reads:
    """The dashboard's queries over one read-only database."""

    def __init__(self, db: Database, config: Config) -> None:
        self.db = db
        self.config = config
        self.journal = Journal(db)
        self.jobs = Jobs(db)
        self.ledger = Ledger(db)
        self.hosts = Hosts(db)
        self.outbox = Outbox(db)
        self.snapshots = Snapshots(db)
        self.team = TeamMembers(db)
        self.recoveries = Recoveries(db)
        self.effects = Effects(db)
        self._present: set[str] = set()

    def has(self, component: str) -> bool:
        """True once a watcher has created `component` (a StoreError if it needs an upgrade first)."""
        if component not in self._present:
            if self.db.lacks(COMPONENTS[component]):
                return False
            self._present.add(component)
        return True

    def last_event_id(self) -> int:
        return self.journal.last_id() if self.has("journal") else 0

    # --- pages --------------------------------------------------------------------------------------------

    def overview(self, now: datetime) -> Overview:
        snapshot = self.snapshots.load() if self.has("snapshot") else None
        instances = sorted(snapshot.instances(), key=lambda i: i.id) if snapshot is not None else []
        prefix = self.config.vast.label_prefix
        intervals = self.ledger.intervals() if self.has("ledger") else []
        midnight = datetime.combine(now.astimezone(UTC).date(), datetime.min.time(), UTC)
        owned = [i for i in intervals if is_owned(i.label, prefix)]
        watch = self.config.watch.interval
        members = self.team.members() if self.has("team") else []
        leader = self.team.leader(now - timedelta(seconds=MISSED_BEATS * watch)) if members else None
        return Overview(
            now=now,
            snapshot_at=snapshot.taken_at if snapshot is not None else None,
            instances=instances,
            by_state=sorted(Counter(i.state.value for i in instances).items()),
            dph_total=sum(hourly_rate(i) for i in instances),
            dph_owned=sum(hourly_rate(i) for i in instances if is_owned(i.label, prefix)),
            today_usd=sum(i.cost_usd(now, since=midnight) for i in intervals),
            total_usd=sum(i.cost_usd(now) for i in intervals),
            budgets=self._budgets(owned, now, midnight),
            members=[(m, alive(m, leader, now, self.config.team.failover)) for m in members],
            no_watcher=no_watcher(watch) if leader is None else None,
            backlog=self.outbox.backlog() if self.has("outbox") else {},
            jobs_by_status=self.jobs.counts() if self.has("jobs") else {},
            recent=self.journal.page(limit=10) if self.has("journal") else [],
            billing=self._billing_options() is not None,
        )

    def job_rows(self, page: int, now: datetime) -> list[JobRow]:
        if not self.has("jobs"):
            return []
        return self._rows(self.jobs.page(offset=(page - 1) * PAGE, limit=PAGE + 1), now)

    def job(self, job_id: int, now: datetime) -> JobPage | None:
        if not self.has("jobs") or (job := self.jobs.get(job_id)) is None:
            return None
        recoveries = self.recoveries.lineage(job.label) if self.has("recoveries") and job.label else []
        instance_ids = {job.instance_id} | {r.dead_id for r in recoveries} | {r.new_id for r in recoveries}
        ids = sorted(i for i in instance_ids if i is not None)
        timeline = self.journal.page(instance_ids=ids, limit=TIMELINE)
        tail, note = _log_tail(job)
        return JobPage(self._rows([job], now)[0], timeline, recoveries, tail, note)

    def events(
        self, *, name: str | None, instance: int | None, since: datetime | None, until: datetime | None, page: int
    ) -> list[Event]:
        if not self.has("journal"):
            return []
        return self.journal.page(
            name=name,
            instance_ids=[instance] if instance is not None else None,
            since=since,
            until=until,
            offset=(page - 1) * PAGE,
            limit=PAGE + 1,
        )

    def cost(
        self,
        *,
        since: datetime,
        until: datetime,
        by: GroupBy,
        now: datetime,
        charged: dict[int, Charge] | None,
        listed: set[int] | None,
        charges_error: str | None,
    ) -> CostReport:
        ledger = self.has("ledger")
        intervals = self.ledger.intervals(since=since, until=until) if ledger else []
        known = self.ledger.instances() if ledger else {}
        in_range = {i.instance_id for i in intervals} | set(charged or {})
        return build_report(
            intervals,
            {k: v for k, v in known.items() if k in in_range},
            now=now,
            by=by,
            since=since,
            until=until,
            charged=charged,
            listed=listed,
            charges_error=charges_error,
        )

    def first_spend(self) -> datetime | None:
        """When the ledger's first interval starts (where a cost range may begin)."""
        if not self.has("ledger"):
            return None
        rows = self.db.query("SELECT MIN(start_at) FROM ledger_intervals")
        return datetime.fromisoformat(rows[0][0]) if rows and rows[0][0] else None

    def host_records(self, page: int, now: datetime) -> list[HostRecord]:
        if not self.has("hosts"):
            return []
        return self.hosts.records(now, offset=(page - 1) * PAGE, limit=PAGE + 1)

    # --- helpers ------------------------------------------------------------------------------------------

    def _rows(self, jobs: list[Job], now: datetime) -> list[JobRow]:
        phases = {}
        for daemon in self.effects.daemons() if self.has("effects") else []:
            if isinstance(job_id := daemon.state.get("job"), int) and isinstance(daemon.state.get("phase"), str):
                phases[job_id] = str(daemon.state["phase"])
        return [
            JobRow(
                job,
                phases.get(job.id) if not job.done else None,
                _text(getattr(job, "cause", None)),
                job.runtime_s(now),
            )
            for job in jobs
        ]

    def _billing_options(self) -> dict[str, Any] | None:
        return next((h.options() for h in self.config.handlers.values() if h.use == "billing"), None)

    def _budgets(self, owned: list[Interval], now: datetime, midnight: datetime) -> list[Budget]:
        options = self._billing_options() or {}
        found = []
        if (total := _number(options.get("budget_usd"))) is not None:
            found.append(Budget("total budget", total, sum(i.cost_usd(now) for i in owned)))
        if (daily := _number(options.get("daily_budget_usd"))) is not None:
            spent = sum(i.cost_usd(now, since=midnight) for i in owned)
            found.append(Budget(f"daily budget ({midnight.date()})", daily, spent))
        return found


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    return str(value) if value is not None else None


def _log_tail(job: Job) -> tuple[str | None, str]:
    """The end of a job's downloaded log when it is on this machine, and a note saying where it is."""
    if not job.results_dir:
        return None, "no log downloaded yet"
    log = Path(job.results_dir) / "job.log"
    try:
        with log.open("rb") as file:
            size = file.seek(0, 2)
            file.seek(max(0, size - LOG_TAIL_BYTES))
            data = file.read()
    except OSError:
        return None, f"the log is downloaded on the machine that ran the job ({log}), not on this one"
    cut = "…\n" if size > LOG_TAIL_BYTES else ""
    return cut + redact(data.decode("utf-8", errors="replace")), f"the last {min(size, LOG_TAIL_BYTES)} bytes of {log}"


def default_range(now: datetime, first: datetime | None) -> tuple[datetime, datetime]:
    """The last 7 UTC days up to the end of today (or from the first spend if that is later)."""
    end = datetime.combine(now.astimezone(UTC).date() + timedelta(days=1), datetime.min.time(), UTC)
    start = end - timedelta(days=7)
    if first is not None:
        start = max(start, datetime.combine(first.astimezone(UTC).date(), datetime.min.time(), UTC))
    return start, end
