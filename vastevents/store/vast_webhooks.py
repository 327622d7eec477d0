"""Which deliveries of Vast's (incoming) webhooks were already accepted: Vast delivers at least once, a poll is due
once."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import ClassVar

from vastevents.store._codec import iso
from vastevents.store._db import Database, Migration

MIGRATIONS = (
    Migration(
        "webhooks",
        1,
        (
            "CREATE TABLE IF NOT EXISTS webhook_deliveries (event_id TEXT PRIMARY KEY, received_at TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS webhook_deliveries_received ON webhook_deliveries (received_at)",
        ),
    ),
)


class WebhookDeliveries:
    """The event ids of accepted deliveries, kept long enough to outlast Vast's retries."""

    MIGRATIONS: ClassVar[Sequence[Migration]] = MIGRATIONS

    def __init__(self, db: Database) -> None:
        self.db = db

    def first_delivery(self, event_id: str, at: datetime) -> bool:
        """Record `event_id`; True the first time it is seen, False for a repeated delivery."""
        with self.db.transaction() as conn:
            inserted = conn.execute(
                "INSERT INTO webhook_deliveries (event_id, received_at) VALUES (?, ?)"
                " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                (event_id, iso(at)),
            ).fetchone()
            return inserted is not None

    def forget_before(self, moment: datetime) -> None:
        """Drop the ids received before `moment` (Vast's retries of those deliveries are long over)."""
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM webhook_deliveries WHERE received_at < ?", (iso(moment),))

    def count(self) -> int:
        return int(self.db.query("SELECT COUNT(*) FROM webhook_deliveries")[0][0])
