"""The billing ledger: one interval per instance per observed state, with the rate it bills at.

Intervals start and end at the moments we observe a change (the event's ``at``): running bills ``dph_total``
per hour (GPU and storage), every other live state bills storage only (``storage_cost x disk / 720`` per hour,
as Vast bills disk from creation to destruction), and an instance gone from the list bills nothing. A rate
change in the same state (a bid change) or a new label opens a new interval too.

An observation made for an event carries a key (the event id); one whose key is already recorded changes
nothing, so a redelivered event never bills twice. Handlers write observations with
``ctx.in_delivery`` so they commit together with the delivery mark.

After a gap (the watcher was down for longer than the caller's ``gap``), the moments in between were not
seen, so the ledger reconstructs them from what it knew when it last looked (the last complete list,
:meth:`Ledger.sweep`) and what the row says now (``start_date``, status), always on the side of what it may have
cost: a change to a dearer state (loading to running) is dated at the start of the gap, a change to a cheaper
one (running to exited, gone) at its end, and an instance rented during the gap is billed from its
``start_date`` at the rate it shows.

Those guesses err high, by up to the whole gap at the GPU price. The ledger remembers each stretch it did not see
(``ledger_unseen``: after a gap, or a sweep whose last complete list is too old because polls failed) and
:meth:`Ledger.settle` corrects them with Vast's own charges once these cover the stretch: the GPU time counted
beyond the GPU part Vast charged is taken out of the unseen stretches, never more, never elsewhere. Until then (and
for a store older than the ``gpu_rate`` column) the ledger stays on the side of cost, so budgets act early rather
than late; where inside a stretch the instance did not run is not known, so a settled stretch is placed at its
start (the total is right, the moment may not be).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar

from vastevents.models import Instance, State
from vastevents.store._codec import iso, time
from vastevents.store._db import Conn, Database, Migration

HOURS_PER_MONTH = 720.0
"""Vast prices disk per GB per month of 30 days."""

FRESH_STATES = frozenset({State.SCHEDULING.value, State.CREATED.value, State.LOADING.value})
"""States an instance is in right after it was rented: first seen in one, the ledger covers its whole life."""

_JOB_LABEL = re.compile(r":job-([A-Za-z0-9_.-]+)$")
_SOURCE = re.compile(r"instance[-_ ]?(\d+)$")

UNSEEN = "unseen"
"""The state of a stretch a settlement took out of a running interval: within time the ledger did not see, Vast's
GPU charges show the instance was not running (which state it was in instead is not known)."""

MIGRATIONS = (
    Migration(
        "ledger",
        1,
        (
            """CREATE TABLE ledger_intervals (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                instance_id INTEGER NOT NULL,
                label TEXT,
                job_id TEXT,
                state TEXT NOT NULL,
                rate REAL NOT NULL,
                start_at TEXT NOT NULL,
                end_at TEXT
            )""",
            "CREATE INDEX ledger_intervals_instance ON ledger_intervals (instance_id, end_at)",
            """CREATE TABLE ledger_instances (
                instance_id INTEGER PRIMARY KEY,
                first_seen TEXT NOT NULL,
                first_state TEXT NOT NULL,
                label TEXT,
                job_id TEXT,
                gone_at TEXT
            )""",
            "CREATE TABLE ledger_marks (key TEXT PRIMARY KEY)",
        ),
    ),
    Migration(
        "ledger",
        2,
        (
            "CREATE INDEX ledger_intervals_start ON ledger_intervals (start_at)",
            "CREATE INDEX ledger_intervals_end ON ledger_intervals (end_at)",
        ),
    ),
    Migration("ledger", 3, ("CREATE TABLE ledger_swept (id INTEGER PRIMARY KEY, swept_at TEXT NOT NULL)",)),
    Migration(
        "ledger",
        4,
        (
            "ALTER TABLE ledger_intervals ADD COLUMN gpu_rate REAL",
            """CREATE TABLE ledger_unseen (
                instance_id INTEGER NOT NULL,
                start_at TEXT NOT NULL,
                end_at TEXT NOT NULL,
                PRIMARY KEY (instance_id, start_at)
            )""",
        ),
    ),
)


def hourly_rate(instance: Instance) -> float:
    """What `instance` bills per hour in its current state: ``dph_total`` running, else storage only."""
    if instance.state is State.RUNNING:
        return instance.dph_total or 0.0
    return storage_rate(instance)


def storage_rate(instance: Instance) -> float:
    return (instance.storage_cost or 0.0) * (instance.disk_space or 0.0) / HOURS_PER_MONTH


def gpu_rate(instance: Instance) -> float:
    """The part of :func:`hourly_rate` that is not storage: what Vast's charges list as GPU time."""
    return max(0.0, hourly_rate(instance) - storage_rate(instance))


def job_id_of(label: str | None) -> str | None:
    """The job id of a job's instance label (``"<prefix>:job-<id>"``), else None."""
    found = _JOB_LABEL.search(label or "")
    return found.group(1) if found else None


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _swept(conn: Conn) -> datetime | None:
    """When the ledger last took in a complete list."""
    row = conn.execute("SELECT swept_at FROM ledger_swept WHERE id = 1").fetchone()
    return datetime.fromisoformat(row[0]) if row is not None else None


def _unseen_since(conn: Conn, at: datetime, gap: float | None) -> datetime | None:
    """The start of the gap before `at`, if the last complete list is more than `gap` seconds older; else None."""
    if gap is None:
        return None
    swept = _swept(conn)
    return swept if swept is not None and (at - swept).total_seconds() > gap else None


def _created(instance: Instance) -> datetime | None:
    """When the instance was rented, as its row says (``start_date``, seconds since the epoch)."""
    return datetime.fromtimestamp(instance.start_date, UTC) if instance.start_date is not None else None


def _unseen(conn: Conn, instance_id: int, start: datetime, end: datetime) -> None:
    """Remember that the ledger guessed what `instance_id` did between `start` and `end` (it did not see it)."""
    if end <= start:
        return
    conn.execute(
        "INSERT INTO ledger_unseen (instance_id, start_at, end_at) VALUES (?, ?, ?)"
        " ON CONFLICT (instance_id, start_at) DO UPDATE SET end_at = excluded.end_at"
        " WHERE excluded.end_at > ledger_unseen.end_at",
        (instance_id, iso(start), iso(end)),
    )


def _ended(conn: Conn, instance_id: int, at: datetime) -> None:
    """The instance's billing ended at `at` (it was gone by the time the ledger noticed, later)."""
    conn.execute("DELETE FROM ledger_intervals WHERE instance_id = ? AND start_at > ?", (instance_id, iso(at)))
    conn.execute(
        "UPDATE ledger_intervals SET end_at = ? WHERE instance_id = ? AND (end_at IS NULL OR end_at > ?)",
        (iso(at), instance_id, iso(at)),
    )
    conn.execute("UPDATE ledger_instances SET gone_at = ? WHERE instance_id = ?", (iso(at), instance_id))


def gpu_charges(items: Iterable[Mapping[str, Any]]) -> dict[int, tuple[float, datetime]]:
    """Per instance id, what Vast's charge items say it paid for GPU time, and until when they count.

    An instance item carries ``metadata.instance_id`` (or ``instance_id``, or a ``source`` like ``instance-123``), an
    ``end`` (unix seconds) and sub-items by kind (``gpu``, ``storage``/``disk``, ``bandwidth``); one without a ``gpu``
    sub-item or an ``end`` says nothing about GPU time and is left out."""
    out: dict[int, tuple[float, datetime]] = {}
    for item in items:
        metadata = item.get("metadata") if isinstance(item.get("metadata"), Mapping) else {}
        found = item.get("instance_id") or (metadata or {}).get("instance_id")
        if found is None:
            match = _SOURCE.search(str(item.get("source") or ""))
            found = match.group(1) if match else None
        parts = [p for p in item.get("items") or [] if isinstance(p, Mapping) and p.get("type") == "gpu"]
        if found is None or not parts or item.get("end") is None:
            continue
        try:
            instance_id = int(found)
            amount = sum(float(p.get("amount") or 0.0) for p in parts)
            until = datetime.fromtimestamp(float(item["end"]), UTC)
        except (TypeError, ValueError, OverflowError, OSError):
            continue
        before = out.get(instance_id)
        out[instance_id] = (amount, until) if before is None else (before[0] + amount, max(before[1], until))
    return out


@dataclass(frozen=True)
class Interval:
    """One stretch of one instance in one state at one rate; ``end`` None while it is still open."""

    instance_id: int
    label: str | None
    job_id: str | None
    state: str
    rate_usd_h: float
    start: datetime
    end: datetime | None

    def cost_usd(self, now: datetime, since: datetime | None = None, until: datetime | None = None) -> float:
        """Accrued cost up to `now` (an open interval runs until then), only the part within [since, until]."""
        start = max(self.start, since) if since is not None else self.start
        end = self.end if self.end is not None else now
        end = min(end, until) if until is not None else end
        return max(0.0, (end - start).total_seconds()) / 3600.0 * self.rate_usd_h

    def by_day(self, now: datetime, since: datetime | None = None, until: datetime | None = None) -> dict[date, float]:
        """The accrued cost within [`since`, `until`) split at UTC midnights."""
        out: dict[date, float] = {}
        start = _utc(max(self.start, since) if since is not None else self.start)
        end = _utc(self.end if self.end is not None else now)
        end = min(end, _utc(until)) if until is not None else end
        per_second = self.rate_usd_h / 3600.0
        while start < end:
            day = start.date()
            stop = min(datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC), end)
            out[day] = (stop - start).total_seconds() * per_second
            start = stop
        return out


@dataclass(frozen=True)
class LedgerInstance:
    """What the ledger knows of one instance: when and in which state it was first seen, where it went."""

    instance_id: int
    first_seen: datetime
    first_state: str
    label: str | None
    job_id: str | None
    gone_at: datetime | None

    @property
    def observed_only(self) -> bool:
        """True if it was already past loading at first sight: it billed before we saw it ("observed since")."""
        return self.first_state not in FRESH_STATES


class Ledger:
    """The ``ledger`` component: intervals, the instances they belong to, and the keys already recorded."""

    MIGRATIONS: ClassVar[Sequence[Migration]] = MIGRATIONS

    def __init__(self, db: Database) -> None:
        self.db = db

    def observe(
        self,
        conn: Conn,
        instance_id: int,
        instance: Instance | None,
        at: datetime,
        *,
        key: str | None = None,
        gap: float | None = None,
    ) -> bool:
        """Record that `instance_id` is `instance` (None: gone) from `at` on; False if `key` was recorded already.

        The open interval is closed at `at` and a new one opened when the state, rate or label changed; when the
        last complete list is more than `gap` seconds older than `at`, the change is dated as the module says.
        """
        if key is not None:
            marked = conn.execute(
                "INSERT INTO ledger_marks (key) VALUES (?) ON CONFLICT (key) DO NOTHING RETURNING key", (key,)
            ).fetchone()
            if marked is None:
                return False
        return self._observe(conn, instance_id, instance, at, _unseen_since(conn, at, gap))

    def _observe(
        self, conn: Conn, instance_id: int, instance: Instance | None, at: datetime, unseen: datetime | None
    ) -> bool:
        """`unseen`: the start of the gap before `at` in which nothing was observed, or None."""
        start = at
        row = conn.execute(
            "SELECT id, state, rate, label, start_at FROM ledger_intervals WHERE instance_id = ? AND end_at IS NULL",
            (instance_id,),
        ).fetchone()
        if row is not None:
            opened = datetime.fromisoformat(row[4])
            at = start = max(at, opened)  # an observation older than the open interval (a late retry) never overlaps
            if unseen is not None:
                _unseen(conn, instance_id, max(unseen, opened), at)
            if instance is not None and (row[1], row[2], row[3]) == (
                instance.state.value,
                hourly_rate(instance),
                instance.label,
            ):
                return True
            if unseen is not None and instance is not None and hourly_rate(instance) > float(row[2]):
                start = max(unseen, opened)  # dearer since some moment of the gap: billed from its start
            conn.execute("UPDATE ledger_intervals SET end_at = ? WHERE id = ?", (iso(start), row[0]))
        if instance is None:
            conn.execute("UPDATE ledger_instances SET gone_at = ? WHERE instance_id = ?", (iso(at), instance_id))
            return True
        first_state = instance.state.value
        created = _created(instance)
        if row is None and unseen is not None and created is not None and unseen <= created < at:
            start, first_state = created, State.SCHEDULING.value  # rented during the gap: its whole life is billed
            _unseen(conn, instance_id, created, at)
        label, job_id = instance.label, job_id_of(instance.label)
        conn.execute(
            "INSERT INTO ledger_intervals (instance_id, label, job_id, state, rate, start_at, gpu_rate)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (instance_id, label, job_id, instance.state.value, hourly_rate(instance), iso(start), gpu_rate(instance)),
        )
        conn.execute(
            "INSERT INTO ledger_instances (instance_id, first_seen, first_state, label, job_id) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (instance_id) DO UPDATE SET label = excluded.label, job_id = excluded.job_id, gone_at = NULL",
            (instance_id, iso(start), first_state, label, job_id),
        )
        return True

    def sweep(
        self, instances: Iterable[Instance], at: datetime, *, gap: float | None = None, blind: float | None = None
    ) -> None:
        """Bring the ledger in line with a complete list at `at`: rate changes, instances no event told us of.

        Instances the ledger has open but the list lacks are closed; listed ones whose rate or label changed
        without a status change (a bid change) get a new interval. `at` is remembered as the last moment the
        ledger knew every instance's state (the start of a gap, see ``gap`` in :meth:`observe`). When the last
        complete list is more than `gap` or `blind` seconds older (the watcher was down, or its polls failed),
        what each instance did in between is remembered as not seen, for :meth:`settle` (`blind` changes no
        dating: a watcher that stayed up dates what it sees when it sees it).
        """
        listed = {instance.id: instance for instance in instances}
        with self.db.transaction() as conn:
            unseen = _unseen_since(conn, at, gap)
            since = unseen or _unseen_since(conn, at, blind)
            if since is not None:  # every instance the ledger had meanwhile: what it did then is not known
                spans = conn.execute(
                    "SELECT instance_id, MIN(start_at) FROM ledger_intervals"
                    " WHERE start_at < ? AND (end_at IS NULL OR end_at > ?) GROUP BY instance_id",
                    (iso(at), iso(since)),
                ).fetchall()
                for instance_id, first in spans:
                    _unseen(conn, int(instance_id), max(since, datetime.fromisoformat(first)), at)
            rows = conn.execute("SELECT instance_id FROM ledger_intervals WHERE end_at IS NULL").fetchall()
            open_ids = {int(r[0]) for r in rows}
            for instance_id in sorted(open_ids | set(listed)):
                self._observe(conn, instance_id, listed.get(instance_id), at, unseen)
            swept = _swept(conn)
            if swept is None or swept < at:
                conn.execute(
                    "INSERT INTO ledger_swept (id, swept_at) VALUES (1, ?)"
                    " ON CONFLICT (id) DO UPDATE SET swept_at = excluded.swept_at",
                    (iso(at),),
                )

    def unseen(self) -> list[tuple[int, datetime, datetime]]:
        """The stretches (instance id, start, end) the ledger guessed and has not settled with Vast's charges yet."""
        rows = self.db.query("SELECT instance_id, start_at, end_at FROM ledger_unseen ORDER BY instance_id, start_at")
        return [(int(r[0]), datetime.fromisoformat(r[1]), datetime.fromisoformat(r[2])) for r in rows]

    def settle(self, items: Iterable[Mapping[str, Any]]) -> list[int]:
        """Correct what the ledger guessed with what Vast charged for GPU time (`items`: ``/charges`` results).

        After a gap the ledger bills every stretch it did not see as dear as it may have been. Once the charges of
        an instance cover its unseen stretches (their ``end`` is past them), the GPU time the ledger counts beyond
        the GPU time Vast charged is taken out of those stretches (earliest first): a dearer state's start moves
        later, a running interval gives up the part it was not running. Only ever down to the charges, never
        below, and never outside a stretch the ledger did not see. The instances settled.
        """
        charged = gpu_charges(items)
        settled = []
        with self.db.transaction() as conn:
            spans: dict[int, list[tuple[datetime, datetime]]] = {}
            rows = conn.execute("SELECT instance_id, start_at, end_at FROM ledger_unseen ORDER BY start_at").fetchall()
            for instance_id, start, end in rows:
                spans.setdefault(int(instance_id), []).append(
                    (datetime.fromisoformat(start), datetime.fromisoformat(end))
                )
            for instance_id, mine in sorted(spans.items()):
                if instance_id not in charged:
                    continue
                amount, until = charged[instance_id]
                last = max(mine, key=lambda span: span[1])
                gone = conn.execute(
                    "SELECT gone_at FROM ledger_instances WHERE instance_id = ?", (instance_id,)
                ).fetchone()
                if gone is not None and gone[0] is not None and last[0] <= until < last[1] == time(gone[0]):
                    _ended(conn, instance_id, until)  # gone unseen: Vast stopped charging it then
                elif until < last[1]:
                    continue  # the charges do not reach the end of what the ledger did not see yet
                self._settle(conn, instance_id, mine, amount, until)
                conn.execute("DELETE FROM ledger_unseen WHERE instance_id = ?", (instance_id,))
                settled.append(instance_id)
        return settled

    def _settle(
        self, conn: Conn, instance_id: int, spans: list[tuple[datetime, datetime]], charged: float, until: datetime
    ) -> None:
        columns = "SELECT id, state, rate, start_at, end_at, gpu_rate, label, job_id FROM ledger_intervals"
        query = columns + " WHERE instance_id = ? ORDER BY start_at, id"
        rows = conn.execute(query, (instance_id,)).fetchall()
        if any(r[5] is None for r in rows):
            return  # recorded before the ledger kept the GPU part of a rate: nothing to compare
        ours = 0.0
        for r in rows:
            start, end = datetime.fromisoformat(r[3]), min(time(r[4]) or until, until)
            ours += float(r[5]) * max(0.0, (end - start).total_seconds()) / 3600.0
        excess = ours - charged  # $ of GPU time the ledger counts and Vast did not charge
        for low, high in spans:
            for r in conn.execute(query, (instance_id,)).fetchall():
                if excess <= 1e-12:
                    return
                gpu = float(r[5])
                start, end = datetime.fromisoformat(r[3]), min(time(r[4]) or until, until, high)
                cut = max(start, low)
                if gpu <= 0 or end <= cut:
                    continue
                took = min((end - cut).total_seconds(), excess * 3600.0 / gpu)
                self._carve(conn, instance_id, r, cut, cut + timedelta(seconds=took))
                excess -= took * gpu / 3600.0

    def _carve(self, conn: Conn, instance_id: int, row: Sequence[Any], cut: datetime, resume: datetime) -> None:
        """Bill [`cut`, `resume`) of interval `row` (a running one) at its storage part only."""
        interval_id, state, rate, start_at, end_at, gpu, label, job_id = row
        start, storage = datetime.fromisoformat(start_at), float(rate) - float(gpu)
        before = conn.execute(
            "SELECT id, gpu_rate FROM ledger_intervals WHERE instance_id = ? AND end_at = ? AND id <> ?",
            (instance_id, iso(start), interval_id),
        ).fetchone()
        insert = (
            "INSERT INTO ledger_intervals (instance_id, label, job_id, state, rate, start_at, end_at, gpu_rate)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        if cut == start and before is not None and not before[1]:  # the cheaper state before it lasted longer
            conn.execute("UPDATE ledger_intervals SET end_at = ? WHERE id = ?", (iso(resume), before[0]))
        else:
            conn.execute(insert, (instance_id, label, job_id, UNSEEN, storage, iso(cut), iso(resume), 0.0))
        end = time(end_at)
        if cut > start:  # the part before the cut stays as it was; the rest resumes after it
            conn.execute("UPDATE ledger_intervals SET end_at = ? WHERE id = ?", (iso(cut), interval_id))
            if end is None or resume < end:
                conn.execute(insert, (instance_id, label, job_id, state, rate, iso(resume), end_at, gpu))
        elif end is not None and resume >= end:
            conn.execute("DELETE FROM ledger_intervals WHERE id = ?", (interval_id,))
        else:
            conn.execute("UPDATE ledger_intervals SET start_at = ? WHERE id = ?", (iso(resume), interval_id))

    def intervals(
        self, *, instance_id: int | None = None, since: datetime | None = None, until: datetime | None = None
    ) -> list[Interval]:
        """Intervals of one instance, or all; only those that overlap [`since`, `until`) when given."""
        columns = "SELECT instance_id, label, job_id, state, rate, start_at, end_at FROM ledger_intervals"
        clauses: list[str] = []
        params: list[object] = []
        if instance_id is not None:
            clauses.append("instance_id = ?")
            params.append(instance_id)
        if since is not None:
            clauses.append("(end_at IS NULL OR end_at > ?)")
            params.append(iso(since))
        if until is not None:
            clauses.append("start_at < ?")
            params.append(iso(until))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.db.query(columns + where + " ORDER BY instance_id, start_at, id", params)
        return [
            Interval(int(r[0]), r[1], r[2], str(r[3]), float(r[4]), datetime.fromisoformat(r[5]), time(r[6]))
            for r in rows
        ]

    def instances(self) -> dict[int, LedgerInstance]:
        rows = self.db.query(
            "SELECT instance_id, first_seen, first_state, label, job_id, gone_at FROM ledger_instances"
            " ORDER BY instance_id"
        )
        return {
            int(r[0]): LedgerInstance(int(r[0]), datetime.fromisoformat(r[1]), str(r[2]), r[3], r[4], time(r[5]))
            for r in rows
        }
