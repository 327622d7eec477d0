"""What handlers set in motion and must survive a restart: intents before actions, daemons, periodic runs.

An intent is written before the API call it announces and closed after the result is verified, so a crash
in between leaves an open intent the runtime reconciles on the next start. A daemon row lives as long as
its task should (restarted from its saved state after a restart); a periodic handler's last run decides
when it is due next.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vastevents.store._codec import iso, time
from vastevents.store._db import Database, Migration

MIGRATIONS = (
    Migration(
        "effects",
        1,
        (
            """CREATE TABLE intents (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                handler TEXT NOT NULL,
                action TEXT NOT NULL,
                instance_id INTEGER,
                label TEXT,
                at TEXT NOT NULL,
                outcome TEXT
            )""",
            "CREATE INDEX intents_open ON intents (outcome) WHERE outcome IS NULL",
            """CREATE TABLE daemons (
                handler TEXT NOT NULL,
                name TEXT NOT NULL,
                instance_id INTEGER NOT NULL,
                state TEXT NOT NULL,
                started_at TEXT NOT NULL,
                PRIMARY KEY (handler, name, instance_id)
            ) WITHOUT ROWID""",
            "CREATE TABLE periodic (handler TEXT NOT NULL, name TEXT NOT NULL, last_run TEXT NOT NULL,"
            " PRIMARY KEY (handler, name)) WITHOUT ROWID",
        ),
    ),
    Migration("effects", 2, ("ALTER TABLE periodic ADD COLUMN again_at TEXT",)),
)


@dataclass(frozen=True)
class Intent:
    id: int
    handler: str
    action: str
    instance_id: int | None
    label: str | None
    at: datetime


@dataclass(frozen=True)
class PeriodicRun:
    """A periodic handler's last run (when it started), and when it asked to run again (``TemporaryError``)."""

    last_run: datetime
    again_at: datetime | None = None


@dataclass(frozen=True)
class DaemonRow:
    handler: str
    name: str
    instance_id: int
    state: dict[str, Any]
    started_at: datetime


class Effects:
    def __init__(self, db: Database) -> None:
        self.db = db

    def open_intent(
        self, handler: str, action: str, at: datetime, *, instance_id: int | None = None, label: str | None = None
    ) -> int:
        with self.db.transaction() as conn:
            row = conn.execute(
                "INSERT INTO intents (handler, action, instance_id, label, at) VALUES (?, ?, ?, ?, ?) RETURNING id",
                (handler, action, instance_id, label, iso(at)),
            ).fetchone()
            return int(row[0])

    def close_intent(self, intent_id: int, outcome: str, *, instance_id: int | None = None) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE intents SET outcome = ?, instance_id = COALESCE(?, instance_id) WHERE id = ?",
                (outcome, instance_id, intent_id),
            )

    def open_intents(self) -> list[Intent]:
        rows = self.db.query(
            "SELECT id, handler, action, instance_id, label, at FROM intents WHERE outcome IS NULL ORDER BY id"
        )
        return [Intent(int(r[0]), r[1], r[2], r[3], r[4], datetime.fromisoformat(r[5])) for r in rows]

    def intents(self, instance_id: int) -> list[tuple[str, str | None]]:
        """(action, outcome) of every intent about one instance, oldest first."""
        rows = self.db.query("SELECT action, outcome FROM intents WHERE instance_id = ? ORDER BY id", (instance_id,))
        return [(str(action), outcome) for action, outcome in rows]

    def save_daemon(self, row: DaemonRow) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO daemons (handler, name, instance_id, state, started_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (handler, name, instance_id) DO UPDATE SET state = excluded.state",
                (row.handler, row.name, row.instance_id, json.dumps(row.state), iso(row.started_at)),
            )

    def drop_daemon(self, handler: str, name: str, instance_id: int) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "DELETE FROM daemons WHERE handler = ? AND name = ? AND instance_id = ?", (handler, name, instance_id)
            )

    def daemons(self) -> list[DaemonRow]:
        rows = self.db.query("SELECT handler, name, instance_id, state, started_at FROM daemons ORDER BY started_at")
        return [DaemonRow(r[0], r[1], int(r[2]), json.loads(r[3]), datetime.fromisoformat(r[4])) for r in rows]

    def periodic_run(self, handler: str, name: str) -> PeriodicRun | None:
        rows = self.db.query("SELECT last_run, again_at FROM periodic WHERE handler = ? AND name = ?", (handler, name))
        if not rows:
            return None
        last_run, again_at = rows[0]
        return PeriodicRun(datetime.fromisoformat(last_run), time(again_at))

    def ran(self, handler: str, name: str, at: datetime, *, again_at: datetime | None = None) -> None:
        """Record a run that started `at`; `again_at`: when it asked to run again (else after its period)."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO periodic (handler, name, last_run, again_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (handler, name) DO UPDATE SET last_run = excluded.last_run, again_at = excluded.again_at",
                (handler, name, iso(at), iso(again_at)),
            )
