"""Host history: how each of our rentals went, per machine and host, so offers can be chosen by evidence.

One row per instance we saw: its machine and host, whether it was a bid (and how far above ``min_bid``), the
price it billed, when it was created, first running and first answering SSH, how long it ran, how often it was
outbid or taken back, whether a job's start failed there (preflight, SSH, a stuck load), and how its job ended.

The rows are folded from the journal (``appeared``, transitions, ``preempted``, ``stuck_loading``, ``vanished``,
``job_started``, ``job_finished``, ``job_failed`` with its cause) up to a cursor kept in the same transaction, so
every event counts exactly once whoever folds it and whenever (a watcher, ``run``, a restart after a crash); the
jobs handler adds the moment SSH first answered, which no event carries. A read-only store folds what the cursor
has not reached in memory, so ``hosts --history`` shows everything journaled without writing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, ClassVar

from vastevents.choosing import HostStats
from vastevents.events import APPEARED, PREEMPTED, STUCK_LOADING, VANISHED, Cause, Event
from vastevents.models import State
from vastevents.store._codec import iso, time
from vastevents.store._db import Conn, Database, Migration
from vastevents.store.journal import Journal

MIGRATIONS = (
    Migration(
        "history",
        1,
        (
            """CREATE TABLE host_rentals (
                instance_id INTEGER PRIMARY KEY,
                machine_id INTEGER,
                host_id INTEGER,
                job TEXT,
                fresh INTEGER NOT NULL DEFAULT 0,
                is_bid INTEGER NOT NULL DEFAULT 0,
                dph_total REAL,
                created_at TEXT,
                running_at TEXT,
                ssh_at TEXT,
                running_since TEXT,
                running_s REAL NOT NULL DEFAULT 0,
                outbids INTEGER NOT NULL DEFAULT 0,
                interruptions INTEGER NOT NULL DEFAULT 0,
                outbid_margins TEXT NOT NULL DEFAULT '[]',
                preflight_failures INTEGER NOT NULL DEFAULT 0,
                failed_start INTEGER NOT NULL DEFAULT 0,
                started INTEGER NOT NULL DEFAULT 0,
                outcome TEXT,
                ended_at TEXT
            )""",
            "CREATE INDEX host_rentals_machine ON host_rentals (machine_id)",
            "CREATE TABLE host_history_cursor (id INTEGER PRIMARY KEY, event_id INTEGER NOT NULL)",
            "INSERT INTO host_history_cursor (id, event_id) VALUES (1, 0)",
        ),
    ),
)

_JOB_LABEL = re.compile(r":job-([A-Za-z0-9_.-]+)$")
_FRESH = frozenset({State.SCHEDULING.value, State.CREATED.value, State.LOADING.value})
_BATCH = 1000
_OUTCOMES = {"job_finished": "finished", "job_failed": "failed"}


@dataclass
class _Rental:
    """One instance as the history keeps it (mutable while a fold runs; stored as one row)."""

    instance_id: int
    machine_id: int | None = None
    host_id: int | None = None
    job: str | None = None
    fresh: bool = False
    """First seen while still being set up, so its creation-to-running time is known."""
    is_bid: bool = False
    dph_total: float | None = None
    created_at: datetime | None = None
    running_at: datetime | None = None
    ssh_at: datetime | None = None
    running_since: datetime | None = None
    running_s: float = 0.0
    outbids: int = 0
    interruptions: int = 0
    outbid_margins: list[float] = field(default_factory=list)
    preflight_failures: int = 0
    failed_start: bool = False
    started: bool = False
    outcome: str | None = None
    ended_at: datetime | None = None

    def ran(self, now: datetime) -> float:
        """Seconds it has been running, the open stretch up to `now` included."""
        open_s = (now - self.running_since).total_seconds() if self.running_since is not None else 0.0
        return self.running_s + max(0.0, open_s)

    def apply(self, event: Event) -> None:
        """Fold one journaled event about this instance."""
        view = event.instance
        if view is not None:
            self._learn(event, view.label, view.machine_id, view.host_id, bool(view.is_bid), view.start_date)
            if view.state is State.RUNNING and view.dph_total is not None:
                self.dph_total = view.dph_total
        if event.new == State.RUNNING.value and self.running_since is None:
            self.running_since = event.at
            self.running_at = self.running_at or event.at
        elif (event.old == State.RUNNING.value or event.name == VANISHED) and self.running_since is not None:
            self.running_s += max(0.0, (event.at - self.running_since).total_seconds())
            self.running_since = None
        if event.name == VANISHED:
            self.ended_at = event.at
        elif event.name == PREEMPTED:
            if self.is_bid:
                self.outbids += 1
                if view is not None and view.min_bid and view.dph_base:
                    self.outbid_margins.append(view.dph_base / view.min_bid - 1.0)
            else:
                self.interruptions += 1
        elif event.name == STUCK_LOADING:
            self.failed_start = self.job is not None
        elif event.name == "job_started":
            self.started = True
        elif event.name == "job_failed" and event.cause is Cause.HOST_UNFIT:
            self.preflight_failures += 1
            self.failed_start = True
        elif event.name in _OUTCOMES and event.cause is not Cause.CANCELLED:
            self.outcome = _OUTCOMES[event.name]

    def _learn(
        self, event: Event, label: str | None, machine: int | None, host: int | None, bid: bool, start: float | None
    ) -> None:
        if self.created_at is None:  # first sight
            self.fresh = event.name == APPEARED and event.new in _FRESH and not event.catch_up
            created = datetime.fromtimestamp(start, event.at.tzinfo) if start and self.fresh else None
            self.created_at = created if created is not None and created <= event.at else event.at
        self.machine_id = machine if machine is not None else self.machine_id
        self.host_id = host if host is not None else self.host_id
        self.is_bid = bid
        found = _JOB_LABEL.search(label or "")
        self.job = found.group(1) if found else self.job


_COLUMNS = tuple(f.name for f in fields(_Rental))
_TIMES = frozenset({"created_at", "running_at", "ssh_at", "running_since", "ended_at"})


def _row(rental: _Rental) -> tuple[Any, ...]:
    values: list[Any] = []
    for name in _COLUMNS:
        value = getattr(rental, name)
        if name in _TIMES:
            value = iso(value)
        elif name == "outbid_margins":
            value = json.dumps(value)
        elif isinstance(value, bool):
            value = int(value)
        values.append(value)
    return tuple(values)


def _load(row: Sequence[Any]) -> _Rental:
    data = dict(zip(_COLUMNS, row, strict=True))
    for name in _TIMES:
        data[name] = time(data[name])
    data["outbid_margins"] = list(json.loads(data["outbid_margins"]))
    for name in ("fresh", "is_bid", "failed_start", "started"):
        data[name] = bool(data[name])
    return _Rental(**data)


@dataclass(frozen=True)
class HostHistory:
    """The host-history repository: :meth:`stats` per machine, :meth:`ssh_ready` from the jobs handler."""

    MIGRATIONS: ClassVar[Sequence[Migration]] = MIGRATIONS

    db: Database

    def ssh_ready(self, instance_id: int, at: datetime) -> None:
        """SSH first answered on `instance_id` at `at` (a later call changes nothing)."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO host_rentals (instance_id, ssh_at) VALUES (?, ?)"
                " ON CONFLICT (instance_id) DO UPDATE SET ssh_at = COALESCE(host_rentals.ssh_at, excluded.ssh_at)",
                (instance_id, iso(at)),
            )

    def catch_up(self, journal: Journal) -> int:
        """Fold every event journaled since the last fold; the id of the last one folded."""
        with self.db.transaction() as conn:
            # The no-op update takes the cursor's row lock first (PostgreSQL), so two folds run one after the other.
            (cursor,) = conn.execute(
                "UPDATE host_history_cursor SET event_id = event_id WHERE id = 1 RETURNING event_id"
            ).fetchone()
            cursor = int(cursor)
            while batch := journal.after(cursor, _BATCH):
                changed = self._fold(conn, batch, {})
                conn.executemany(_UPSERT, [_row(rental) for rental in changed.values()])
                cursor = batch[-1].id
            conn.execute("UPDATE host_history_cursor SET event_id = ? WHERE id = 1", (cursor,))
            return cursor

    def stats(self, journal: Journal, now: datetime, machines: Iterable[int] | None = None) -> dict[int, HostStats]:
        """What each machine's rentals showed up to `now` (only `machines`' when given), by machine id; folds what
        is new first (in memory only, on a read-only store)."""
        wanted = sorted(set(machines)) if machines is not None else None
        if not self.db.read_only:
            self.catch_up(journal)
            rentals = self._rentals(wanted)
        else:
            rentals = {r.instance_id: r for r in self._rentals(None).values()}
            (cursor,) = self.db.query("SELECT event_id FROM host_history_cursor WHERE id = 1")[0]
            pending = journal.after(int(cursor), 1 << 30)
            rentals.update(self._fold(None, pending, rentals))
            if wanted is not None:
                rentals = {k: r for k, r in rentals.items() if r.machine_id in wanted}
        return _summarize(rentals.values(), now)

    def _rentals(self, machines: Sequence[int] | None) -> dict[int, _Rental]:
        select = f"SELECT {', '.join(_COLUMNS)} FROM host_rentals"  # noqa: S608 - a fixed column list
        if machines is None:
            rows = self.db.query(select + " WHERE machine_id IS NOT NULL")
        elif not machines:
            return {}
        else:
            rows = self.db.query(f"{select} WHERE machine_id IN ({', '.join('?' for _ in machines)})", machines)
        return {rental.instance_id: rental for rental in map(_load, rows)}

    def _fold(self, conn: Conn | None, events: Sequence[Event], known: dict[int, _Rental]) -> dict[int, _Rental]:
        """Apply `events` to their instances' rentals (from `known`, else the table through `conn`)."""
        changed: dict[int, _Rental] = {}
        for event in events:
            if event.instance_id is None:
                continue
            rental = changed.get(event.instance_id) or known.get(event.instance_id)
            if rental is None and conn is not None:
                row = conn.execute(
                    f"SELECT {', '.join(_COLUMNS)} FROM host_rentals WHERE instance_id = ?",  # noqa: S608
                    (event.instance_id,),
                ).fetchone()
                rental = _load(row) if row is not None else None
            rental = rental or _Rental(event.instance_id)
            rental.apply(event)
            changed[event.instance_id] = rental
        return changed


_UPSERT = (
    f"INSERT INTO host_rentals ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"  # noqa: S608
    " ON CONFLICT (instance_id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in _COLUMNS if name not in ("instance_id", "ssh_at"))
    + ", ssh_at = COALESCE(host_rentals.ssh_at, excluded.ssh_at)"  # the jobs handler's, never overwritten
)


def _summarize(rentals: Iterable[_Rental], now: datetime) -> dict[int, HostStats]:
    grouped: dict[int, list[_Rental]] = {}
    for rental in rentals:
        if rental.machine_id is not None:
            grouped.setdefault(rental.machine_id, []).append(rental)
    return {machine: _stats(machine, found, now) for machine, found in sorted(grouped.items())}


def _stats(machine: int, rentals: Sequence[_Rental], now: datetime) -> HostStats:
    def seconds(start: datetime | None, end: datetime | None) -> float | None:
        return (end - start).total_seconds() if start is not None and end is not None else None

    to_running = [seconds(r.created_at, r.running_at) for r in rentals if r.fresh]
    to_ssh = [seconds(r.running_at, r.ssh_at) for r in rentals]
    return HostStats(
        machine_id=machine,
        host_id=next((r.host_id for r in reversed(rentals) if r.host_id is not None), None),
        rentals=len(rentals),
        job_rentals=sum(1 for r in rentals if r.job is not None),
        failed_starts=sum(1 for r in rentals if r.failed_start),
        failed_start_s=sum(r.ran(now) for r in rentals if r.failed_start),
        s_to_running=tuple(s for s in to_running if s is not None and s >= 0),
        s_to_ssh=tuple(s for s in to_ssh if s is not None and s >= 0),
        bid_hours=sum(r.ran(now) for r in rentals if r.is_bid) / 3600.0,
        outbids=sum(r.outbids for r in rentals),
        on_demand_hours=sum(r.ran(now) for r in rentals if not r.is_bid) / 3600.0,
        interruptions=sum(r.interruptions for r in rentals),
        outbid_margins=tuple(m for r in rentals for m in r.outbid_margins),
        preflight_failures=sum(r.preflight_failures for r in rentals),
        jobs_finished=sum(1 for r in rentals if r.outcome == "finished"),
        jobs_failed=sum(1 for r in rentals if r.outcome == "failed"),
        dph_paid=tuple(r.dph_total for r in rentals if r.dph_total is not None),
    )
