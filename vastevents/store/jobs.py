"""Jobs: one row per ``vastevents run``: its spec, the offers it may rent, where it runs, how it ended.

A job is bound to its instance by label (``<label_prefix>:job-<id>``), so a replacement rented under the same
label after a preemption is recognised as the same job. Statuses: ``pending`` (nothing rented, or the last offer
was dropped), ``loading``, ``running``, ``collecting``, then one of ``finished``, ``failed``, ``cancelled``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from vastevents.store._codec import iso, time
from vastevents.store._db import Database, Migration

FINAL = ("finished", "failed", "cancelled")

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
)


@dataclass(frozen=True)
class Job:
    id: int
    label: str
    spec: dict[str, Any]
    offers: list[int]
    status: str
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
        }


_COLUMNS = (
    "id, label, spec, offers, status, instance_id, tried, attempts, exit_code, results_dir, gpu_name, dph_total,"
    " cost_usd, destroyed, created_at, started_at, finished_at, errors"
)
_SELECT = f"SELECT {_COLUMNS} FROM jobs"  # noqa: S608 - constant column list
_NAMES = tuple(name.strip() for name in _COLUMNS.split(","))
_JSON = ("spec", "offers", "tried", "errors")
_TIMES = ("created_at", "started_at", "finished_at")


class Jobs:
    MIGRATIONS: ClassVar[Sequence[Migration]] = MIGRATIONS

    def __init__(self, db: Database) -> None:
        self.db = db

    def submit(self, spec: dict[str, Any], offers: list[int], label_prefix: str, at: datetime) -> Job:
        """A new pending job that may rent `offers` (ask ids, best first); its label names its id."""
        with self.db.transaction() as conn:
            row = conn.execute(
                "INSERT INTO jobs (spec, offers, status, tried, created_at, errors)"
                " VALUES (?, ?, 'pending', '[]', ?, '[]') RETURNING id",
                (json.dumps(spec), json.dumps(offers), iso(at)),
            ).fetchone()
            job_id = int(row[0])
            conn.execute("UPDATE jobs SET label = ? WHERE id = ?", (f"{label_prefix}:job-{job_id}", job_id))
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: int) -> Job | None:
        rows = self.db.query(_SELECT + " WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def by_label(self, label: str | None) -> Job | None:
        if not label:
            return None
        rows = self.db.query(_SELECT + " WHERE label = ?", (label,))
        return _job(rows[0]) if rows else None

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
            if key in _JSON:
                value = json.dumps(value)
            elif key in _TIMES and value is not None:
                value = iso(value)
            elif key == "destroyed":
                value = int(bool(value))
            values.append(value)
        assignments = ", ".join(f"{key} = ?" for key in changes)
        with self.db.transaction() as conn:
            conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values, job_id))  # noqa: S608 - column names are ours
        job = self.get(job_id)
        assert job is not None
        return job

    def add_error(self, job_id: int, message: str) -> Job:
        with self.db.transaction():
            job = self.get(job_id)
            assert job is not None
            return self.update(job_id, errors=[*job.errors, message])


def _job(row: tuple[Any, ...]) -> Job:
    data = dict(zip(_NAMES, row, strict=True))
    for key in _JSON:
        data[key] = json.loads(data[key])
    for key in _TIMES:
        data[key] = time(data[key]) if data[key] else None
    data["destroyed"] = bool(data["destroyed"])
    return Job(**data)
