"""Recovery state, one row per dead instance: what died, what the policy decided, and what replaced it. An
instance that resumed (outbid then rebid, a host back) may die again: its row then tells of the new death.

The row is written before anything is rented and moved to ``renting`` by an atomic claim, so a redelivered
event or a second runner finds the recovery already under way and never rents twice. A label is a job's
lineage: every instance that replaced another keeps the original's label, so restarts are counted per label.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from vastevents.events import Cause
from vastevents.store._codec import iso, time
from vastevents.store._db import Conn, Database, Migration

MIGRATIONS = (
    Migration(
        "recoveries",
        1,
        (
            """CREATE TABLE recoveries (
                dead_id INTEGER PRIMARY KEY,
                label TEXT NOT NULL,
                cause TEXT NOT NULL,
                reason TEXT NOT NULL,
                status TEXT NOT NULL,
                failures INTEGER NOT NULL DEFAULT 0,
                original TEXT NOT NULL,
                new_id INTEGER,
                started_at TEXT NOT NULL,
                due_at TEXT
            )""",
            "CREATE INDEX recoveries_label ON recoveries (label)",
        ),
    ),
)


class RecoveryStatus(StrEnum):
    WAITING = "waiting"
    """Left alone for a while (a paused bid instance may resume by itself); replaced when ``due_at`` passes."""
    PENDING = "pending"
    """An attempt is due at ``due_at`` (the first one at once, later ones after a backoff)."""
    RENTING = "renting"
    """An attempt is under way (or was, when the watcher died: then it is reconciled by label)."""
    RECOVERED = "recovered"
    RESUMED = "resumed"
    FAILED = "failed"
    ALERTED = "alerted"


OPEN = (RecoveryStatus.WAITING, RecoveryStatus.PENDING, RecoveryStatus.RENTING)


@dataclass(frozen=True)
class Recovery:
    dead_id: int
    label: str
    cause: Cause | None
    """Why it died (``preempted``, ``outbid``, ``host_unfit``); None for a row an older vastevents wrote."""
    reason: str
    status: RecoveryStatus
    failures: int
    original: dict[str, Any]
    """The dead instance's row as last seen: what the replacement must match."""
    new_id: int | None
    started_at: datetime
    due_at: datetime | None


_COLUMNS = "dead_id, label, cause, reason, status, failures, original, new_id, started_at, due_at"
_SELECT = f"SELECT {_COLUMNS} FROM recoveries"  # noqa: S608 - a fixed column list
_REOPEN = ", ".join(f"{column} = excluded.{column}" for column in _COLUMNS.split(", ")[1:])
_INSERT = (
    f"INSERT INTO recoveries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608 - fixed column lists
    f" ON CONFLICT (dead_id) DO UPDATE SET {_REOPEN} WHERE recoveries.status = '{RecoveryStatus.RESUMED.value}'"
)


def _row(r: tuple[Any, ...]) -> Recovery:
    started = time(r[8])
    assert started is not None
    status = RecoveryStatus(r[4])
    return Recovery(
        int(r[0]), r[1], Cause.stored(r[2]), r[3], status, int(r[5]), json.loads(r[6]), r[7], started, time(r[9])
    )


class Recoveries:
    MIGRATIONS: ClassVar[Sequence[Migration]] = MIGRATIONS

    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def insert(conn: Conn, recovery: Recovery) -> None:
        """Write a new recovery in `conn`'s transaction: nothing if one exists for that instance, unless that one
        ended with the instance ``resumed`` (it died again since: the row now tells of this death)."""
        conn.execute(
            _INSERT,
            (
                recovery.dead_id,
                recovery.label,
                recovery.cause.value if recovery.cause is not None else "",
                recovery.reason,
                recovery.status,
                recovery.failures,
                json.dumps(recovery.original),
                recovery.new_id,
                iso(recovery.started_at),
                iso(recovery.due_at),
            ),
        )

    def open(self, recovery: Recovery) -> None:
        with self.db.transaction() as conn:
            self.insert(conn, recovery)

    def get(self, dead_id: int) -> Recovery | None:
        rows = self.db.query(_SELECT + " WHERE dead_id = ?", (dead_id,))
        return _row(rows[0]) if rows else None

    def claim(self, dead_id: int, status: RecoveryStatus) -> bool:
        """Move the recovery from `status` to ``renting``; False if it was not in `status` (someone else has it)."""
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE recoveries SET status = ? WHERE dead_id = ? AND status = ? RETURNING dead_id",
                (RecoveryStatus.RENTING, dead_id, status),
            )
            return cursor.fetchone() is not None

    def update(
        self,
        dead_id: int,
        status: RecoveryStatus,
        *,
        due_at: datetime | None = None,
        new_id: int | None = None,
        failures: int | None = None,
        reason: str | None = None,
    ) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE recoveries SET status = ?, due_at = ?, new_id = COALESCE(?, new_id),"
                " failures = COALESCE(?, failures), reason = COALESCE(?, reason) WHERE dead_id = ?",
                (status, iso(due_at), new_id, failures, reason, dead_id),
            )

    def unfinished(self) -> list[Recovery]:
        """Every recovery still waiting, due or under way, oldest first."""
        rows = self.db.query(_SELECT + " WHERE status IN (?, ?, ?) ORDER BY started_at, dead_id", OPEN)
        return [_row(r) for r in rows]

    def lineage(self, label: str) -> list[Recovery]:
        """Every recovery of one label (one job's lineage), oldest first."""
        rows = self.db.query(_SELECT + " WHERE label = ? ORDER BY started_at, dead_id", (label,))
        return [_row(r) for r in rows]
