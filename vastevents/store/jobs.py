"""Jobs: one row per ``vastevents run``: its spec, the offers it may rent, where it runs, how it ended.

A job is bound to its instance by label (``<label_prefix>:job-<id>``), so a replacement rented under the same
label after a preemption is recognised as the same job. Statuses (:class:`JobStatus`): ``pending`` (nothing
rented, or the last offer was dropped; claimable once ``retry_at`` has passed), ``creating`` (claimed by a
watcher, renting), ``loading``, ``running``, ``collecting``, then one of ``finished``, ``failed``, ``cancelled``.
A job that failed carries its :class:`~vastevents.events.Cause`; a cancel request (``cancel_requested_at``) is
carried out by the watcher's ``jobs`` handler.

``vastevents run --submit`` queues a job for the team's leader: its upload dir travels through the store as an
archive (``job_inputs``), and the leader claims pending jobs one at a time (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL), so no job is rented twice. Every change is announced on the ``vastevents_jobs`` channel
(PostgreSQL's NOTIFY), which :meth:`Jobs.follow` listens to.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from vastevents.events import Cause
from vastevents.store._codec import iso, time
from vastevents.store._db import Database, Migration


class JobStatus(StrEnum):
    PENDING = "pending"
    CREATING = "creating"
    LOADING = "loading"
    RUNNING = "running"
    COLLECTING = "collecting"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobPhase(StrEnum):
    """Where the watcher's monitor of a running job is (checkpointed in its daemon's state, read by agents and
    the progress lines): each phase is done once, in this order, and resumed where it was after a restart."""

    CONNECT = "connect"
    PREFLIGHT = "preflight"
    UPLOAD = "upload"
    START = "start"
    MONITOR = "monitor"
    COLLECT = "collect"

    @classmethod
    def stored(cls, value: object) -> JobPhase | None:
        """A phase read back from a daemon's state; one this version does not know is None."""
        try:
            return cls(value) if isinstance(value, str) else None
        except ValueError:
            return None


FINAL = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELLED)
CHANNEL = "vastevents_jobs"
MAX_INPUT_BYTES = 256 * 1024 * 1024
"""The largest upload archive a submitted job carries through the store."""

MIGRATIONS = (
    Migration(
        "jobs",
        1,
        (
            """CREATE TABLE jobs (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                label TEXT,
                spec TEXT NOT NULL,
                offers TEXT NOT NULL,
                status TEXT NOT NULL,
                instance_id INTEGER,
                tried TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                exit_code INTEGER,
                results_dir TEXT,
                gpu_name TEXT,
                dph_total REAL,
                cost_usd REAL,
                destroyed INTEGER NOT NULL DEFAULT 0,
                created_at TEXT NOT NULL,
                started_at TEXT,
                finished_at TEXT,
                errors TEXT NOT NULL
            )""",
            "CREATE INDEX jobs_label ON jobs (label)",
        ),
    ),
    Migration(
        "jobs",
        2,
        (
            "ALTER TABLE jobs ADD COLUMN submitted_by TEXT",
            "ALTER TABLE jobs ADD COLUMN claimed_at TEXT",
            "CREATE INDEX jobs_status ON jobs (status)",
            "CREATE TABLE job_inputs (job_id INTEGER PRIMARY KEY, archive BLOB NOT NULL)",
        ),
    ),
    Migration(
        "jobs",
        3,
        (
            "ALTER TABLE jobs ADD COLUMN cause TEXT",
            "ALTER TABLE jobs ADD COLUMN retry_at TEXT",
            "ALTER TABLE jobs ADD COLUMN failures INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE jobs ADD COLUMN drops INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE jobs ADD COLUMN avoid TEXT NOT NULL DEFAULT '[]'",
            "ALTER TABLE jobs ADD COLUMN cancel_requested_at TEXT",
        ),
    ),
    Migration("jobs", 4, ("ALTER TABLE jobs ADD COLUMN terms TEXT NOT NULL DEFAULT '{}'",)),
)


@dataclass(frozen=True)
class Terms:
    """What renting one offer was priced at when the job chose it: its bid ($/h for the GPUs; None: on-demand)
    and what it should bill per hour running (GPUs and disk), to check the instance's own price against."""

    bid: float | None
    dph: float


@dataclass(frozen=True)
class Job:
    id: int
    label: str
    spec: dict[str, Any]
    offers: list[int]
    status: JobStatus
    instance_id: int | None
    tried: list[int]
    attempts: int
    exit_code: int | None
    results_dir: str | None
    gpu_name: str | None
    dph_total: float | None
    cost_usd: float | None
    destroyed: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    errors: list[str] = field(default_factory=list)
    submitted_by: str | None = None
    """``user@host`` of a ``run --submit``; None for a job its own ``run`` drives."""
    claimed_at: datetime | None = None
    cause: Cause | None = None
    """Why it failed (or was cancelled); None while it runs and once it finished."""
    retry_at: datetime | None = None
    """A pending job is not claimed before then (the backoff after a failed search or create)."""
    failures: int = 0
    """Renting attempts in a row that failed on the API (search or create); the backoff grows with them."""
    drops: int = 0
    """Rented instances dropped as unfit (at most the spec's ``max_offers``)."""
    avoid: list[int] = field(default_factory=list)
    """Machines this job does not rent again (an instance there was dropped as unfit)."""
    cancel_requested_at: datetime | None = None
    terms: dict[int, Terms] = field(default_factory=dict)
    """The terms of each of `offers` (an offer without: on-demand, or the spec's own bid)."""

    @property
    def done(self) -> bool:
        return self.status in FINAL

    def runtime_s(self, now: datetime) -> float:
        if self.started_at is None:
            return 0.0
        return ((self.finished_at or now) - self.started_at).total_seconds()

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "label": self.label,
            "status": self.status,
            "instance_id": self.instance_id,
            "gpu_name": self.gpu_name,
            "dph_total": self.dph_total,
            "cost_usd": self.cost_usd,
            "exit_code": self.exit_code,
            "results_dir": self.results_dir,
            "destroyed": self.destroyed,
            "offers_tried": self.tried,
            "attempts": self.attempts,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at) if self.started_at else None,
            "finished_at": iso(self.finished_at) if self.finished_at else None,
            "errors": self.errors,
            "submitted_by": self.submitted_by,
            "cause": self.cause.value if self.cause is not None else None,
        }


_COLUMNS = (
    "id, label, spec, offers, status, instance_id, tried, attempts, exit_code, results_dir, gpu_name, dph_total,"
    " cost_usd, destroyed, created_at, started_at, finished_at, errors, submitted_by, claimed_at, cause, retry_at,"
    " failures, drops, avoid, cancel_requested_at, terms"
)
_SELECT = f"SELECT {_COLUMNS} FROM jobs"  # noqa: S608 - constant column list
_NAMES = tuple(name.strip() for name in _COLUMNS.split(","))
_JSON = ("spec", "offers", "tried", "errors", "avoid")
_TIMES = ("created_at", "started_at", "finished_at", "claimed_at", "retry_at", "cancel_requested_at")


class Jobs:
    MIGRATIONS: ClassVar[Sequence[Migration]] = MIGRATIONS

    def __init__(self, db: Database) -> None:
        self.db = db

    def submit(
        self,
        spec: dict[str, Any],
        offers: list[int],
        label_prefix: str,
        at: datetime,
        *,
        submitted_by: str | None = None,
        inputs: bytes | None = None,
        terms: Mapping[int, Terms] | None = None,
    ) -> Job:
        """A new pending job that may rent `offers` (ask ids, best first, with their `terms`; empty: the claimer
        searches); its label names its id. `inputs` is the upload dir's archive, for a job submitted to another
        machine."""
        if inputs is not None:
            check_inputs(inputs)
        with self.db.transaction() as conn:
            row = conn.execute(
                "INSERT INTO jobs (spec, offers, status, tried, created_at, errors, submitted_by, terms)"
                " VALUES (?, ?, 'pending', '[]', ?, '[]', ?, ?) RETURNING id",
                (json.dumps(spec), json.dumps(offers), iso(at), submitted_by, _terms(terms or {})),
            ).fetchone()
            job_id = int(row[0])
            conn.execute("UPDATE jobs SET label = ? WHERE id = ?", (f"{label_prefix}:job-{job_id}", job_id))
            if inputs is not None:
                conn.execute("INSERT INTO job_inputs (job_id, archive) VALUES (?, ?)", (job_id, inputs))
            self.db.notify(conn, CHANNEL, str(job_id))
        job = self.get(job_id)
        assert job is not None
        return job

    def inputs(self, job_id: int) -> bytes | None:
        """The upload archive a submitted job carries, if any."""
        rows = self.db.query("SELECT archive FROM job_inputs WHERE job_id = ?", (job_id,))
        return bytes(rows[0][0]) if rows else None

    def claim(self, at: datetime, job_id: int | None = None) -> Job | None:
        """Take a pending job due at `at` (that one, or the oldest) to rent for it: ``pending`` → ``creating``,
        atomically.

        None when none is pending and due, or another watcher's claim holds it.
        """
        which, params = (" AND id = ?", (job_id,)) if job_id is not None else ("", ())
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT id FROM jobs WHERE status = 'pending' AND (retry_at IS NULL OR retry_at <= ?)"  # noqa: S608
                f"{which} ORDER BY id LIMIT 1 {self.db.skip_locked}",
                (iso(at), *params),
            ).fetchone()
            if row is None:
                return None
            return self.update(int(row[0]), status=JobStatus.CREATING, claimed_at=at)

    def release(self, job_id: int, retry_at: datetime | None = None, *, failed: bool = False) -> Job:
        """A claim given back: ``pending`` again, claimable from `retry_at` (with `failed`, one more failure)."""
        with self.db.transaction():
            job = self.get(job_id)
            assert job is not None
            failures = job.failures + 1 if failed else job.failures
            return self.update(job_id, status=JobStatus.PENDING, instance_id=None, retry_at=retry_at, failures=failures)

    def request_cancel(self, job_id: int, at: datetime) -> Job | None:
        """Ask the watcher running the job to cancel it (it destroys what the job rented and journals
        ``job_failed`` with cause ``cancelled``); None if there is no such job. A job already done stays as it is.
        """
        with self.db.transaction():
            job = self.get(job_id)
            if job is None or job.done or job.cancel_requested_at is not None:
                return job
            return self.update(job_id, cancel_requested_at=at)

    def get(self, job_id: int) -> Job | None:
        rows = self.db.query(_SELECT + " WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def by_label(self, label: str | None) -> Job | None:
        if not label:
            return None
        rows = self.db.query(_SELECT + " WHERE label = ?", (label,))
        return _job(rows[0]) if rows else None

    def page(self, *, offset: int = 0, limit: int = 50) -> list[Job]:
        """One page of jobs, newest first (on the primary key)."""
        rows = self.db.query(_SELECT + " ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset))
        return [_job(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """How many jobs are in each status."""
        return {str(status): int(n) for status, n in self.db.query("SELECT status, COUNT(*) FROM jobs GROUP BY status")}

    def list(self, *, unfinished: bool = False) -> list[Job]:
        where = " WHERE status NOT IN ('finished', 'failed', 'cancelled')" if unfinished else ""
        return [_job(row) for row in self.db.query(_SELECT + where + " ORDER BY id")]

    def update(self, job_id: int, **changes: Any) -> Job:
        """Set columns (JSON and time columns encoded); the updated job."""
        if not changes:
            raise ValueError("nothing to update")
        unknown = set(changes) - set(_NAMES)
        if unknown:
            raise ValueError(f"jobs have no column {sorted(unknown)[0]!r}")
        values = []
        for key, value in changes.items():
            if isinstance(value, StrEnum):
                value = value.value
            elif key == "terms":
                value = _terms(value)
            elif key in _JSON:
                value = json.dumps(value)
            elif key in _TIMES and value is not None:
                value = iso(value)
            elif key == "destroyed":
                value = int(bool(value))
            values.append(value)
        assignments = ", ".join(f"{key} = ?" for key in changes)
        with self.db.transaction() as conn:
            conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values, job_id))  # noqa: S608 - column names are ours
            self.db.notify(conn, CHANNEL, str(job_id))
            job = self.get(job_id)
        assert job is not None
        return job

    def follow(self, job_id: int, *, poll: float = 1.0) -> Iterator[Job]:
        """The job now, then each time it changes, until it is done (or gone).

        On PostgreSQL a NOTIFY wakes the reader at once (`poll` is then only a safety re-read, 30 s at least);
        on SQLite the row is re-read every `poll` seconds.
        """
        with self.db.listener(CHANNEL) as wait:
            last = None
            while (job := self.get(job_id)) is not None:
                if job != last:
                    yield job
                    last = job
                if job.done:
                    return
                wait(max(poll, 30.0) if self.db.pushes else poll)

    def add_error(self, job_id: int, message: str) -> Job:
        with self.db.transaction():
            job = self.get(job_id)
            assert job is not None
            return self.update(job_id, errors=[*job.errors, message])


def _terms(terms: Mapping[int, Terms]) -> str:
    return json.dumps({str(ask): {"bid": t.bid, "dph": t.dph} for ask, t in terms.items()})


def check_inputs(archive: bytes) -> None:
    """ValueError if `archive` is over what a submitted job may carry through the store."""
    if len(archive) > MAX_INPUT_BYTES:
        raise ValueError(f"the upload archive is {len(archive) >> 20} MiB, over {MAX_INPUT_BYTES >> 20} MiB")


def _job(row: tuple[Any, ...]) -> Job:
    data = dict(zip(_NAMES, row, strict=True))
    for key in _JSON:
        data[key] = json.loads(data[key])
    for key in _TIMES:
        data[key] = time(data[key]) if data[key] else None
    data["destroyed"] = bool(data["destroyed"])
    data["status"] = JobStatus(data["status"])
    data["cause"] = Cause.stored(data["cause"])
    data["terms"] = {int(ask): Terms(t.get("bid"), float(t["dph"])) for ask, t in json.loads(data["terms"]).items()}
    return Job(**data)
