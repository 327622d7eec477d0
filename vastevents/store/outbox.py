"""The outbox: chat messages waiting to be sent, and the thread each instance's messages go under.

A notifier handler queues a message with :meth:`Outbox.queue` inside the transaction that marks its event
delivered (``ctx.in_delivery``), so an event is never "delivered" without its message, nor queued twice. A
periodic sender then takes the :meth:`pending` rows in order and records the outcome: ``sent`` (never sent
again), another attempt later, or dropped (``failed`` for a permanent refusal, ``expired`` past its age limit).
Messages folded into another one (a flap) or into a digest (a burst) leave the queue the same way.
No secret is ever stored here: a channel is a name, never a webhook URL.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from vastevents.store._codec import iso, time
from vastevents.store._db import Conn, Database, Migration

MIGRATIONS = (
    Migration(
        "outbox",
        1,
        (
            """CREATE TABLE outbox (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                handler TEXT NOT NULL,
                key TEXT NOT NULL,
                channel TEXT NOT NULL,
                thread_key TEXT,
                instance_id INTEGER,
                kind TEXT NOT NULL,
                severity TEXT NOT NULL,
                payload TEXT NOT NULL,
                state TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                created_at TEXT NOT NULL,
                hold_until TEXT,
                next_attempt TEXT NOT NULL,
                sent_at TEXT,
                last_error TEXT,
                UNIQUE (handler, key)
            )""",
            "CREATE INDEX outbox_by_state ON outbox (handler, state, id)",
            """CREATE TABLE outbox_threads (
                handler TEXT NOT NULL,
                channel TEXT NOT NULL,
                thread_key TEXT NOT NULL,
                ts TEXT NOT NULL,
                PRIMARY KEY (handler, channel, thread_key)
            )""",
        ),
    ),
    Migration("outbox", 2, ("CREATE INDEX outbox_pending ON outbox (handler) WHERE state = 'pending'",)),
)

PENDING, SENT, FAILED, EXPIRED, FOLDED, DIGESTED = "pending", "sent", "failed", "expired", "folded", "digested"
"""Row states: only ``pending`` rows are ever sent."""

_COLUMNS = (
    "id, handler, key, channel, thread_key, instance_id, kind, severity, payload, state, attempts, created_at,"
    " hold_until, next_attempt, sent_at, last_error"
)


@dataclass(frozen=True)
class OutboxMessage:
    """One queued message; ``payload`` is what the transport sends (e.g. ``{"text": ..., "blocks": [...]}``)."""

    id: int
    handler: str
    key: str
    channel: str
    thread_key: str | None
    instance_id: int | None
    kind: str
    severity: str
    payload: dict[str, Any]
    state: str
    attempts: int
    created_at: datetime
    hold_until: datetime | None
    next_attempt: datetime
    sent_at: datetime | None
    last_error: str | None


def _select(where: str) -> str:
    """A query for whole rows; `where` is fixed SQL of this module (values always go as parameters)."""
    return f"SELECT {_COLUMNS} FROM outbox {where}"  # noqa: S608 - a fixed column list and fixed conditions


_INSERT = (
    f"INSERT INTO outbox ({_COLUMNS.removeprefix('id, ')})"  # noqa: S608 - a fixed column list
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, NULL, NULL) ON CONFLICT (handler, key) DO NOTHING"
)


def _message(row: Sequence[Any]) -> OutboxMessage:
    (id_, handler, key, channel, thread_key, instance_id, kind, severity, payload, state, attempts, created_at,
     hold_until, next_attempt, sent_at, last_error) = row  # fmt: skip
    return OutboxMessage(
        id=int(id_),
        handler=handler,
        key=key,
        channel=channel,
        thread_key=thread_key,
        instance_id=instance_id,
        kind=kind,
        severity=severity,
        payload=json.loads(payload),
        state=state,
        attempts=int(attempts),
        created_at=datetime.fromisoformat(created_at),
        hold_until=time(hold_until),
        next_attempt=datetime.fromisoformat(next_attempt),
        sent_at=time(sent_at),
        last_error=last_error,
    )


class Outbox:
    """Queued chat messages per handler, and the parent message (``ts``) of each instance's thread."""

    MIGRATIONS: ClassVar[Sequence[Migration]] = MIGRATIONS

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- inside a delivery's transaction ----------------------------------------------------------------------

    def queue(
        self,
        conn: Conn,
        *,
        handler: str,
        key: str,
        channel: str,
        payload: dict[str, Any],
        created_at: datetime,
        thread_key: str | None = None,
        instance_id: int | None = None,
        kind: str = "note",
        severity: str = "info",
        hold_until: datetime | None = None,
    ) -> None:
        """Queue a message; a second one with the same (handler, key) is ignored (a redelivered event)."""
        params = (handler, key, channel, thread_key, instance_id, kind, severity, json.dumps(payload), PENDING,
                  iso(created_at), iso(hold_until), iso(created_at))  # fmt: skip
        conn.execute(_INSERT, params)

    def last_of_kinds(self, conn: Conn, handler: str, instance_id: int, kinds: Sequence[str]) -> OutboxMessage | None:
        """The newest message of `instance_id` whose kind is one of `kinds` (e.g. its last down or up notice)."""
        marks = ", ".join("?" for _ in kinds)
        row = conn.execute(
            _select(f"WHERE handler = ? AND instance_id = ? AND kind IN ({marks}) ORDER BY id DESC LIMIT 1"),
            (handler, instance_id, *kinds),
        ).fetchone()
        return _message(row) if row is not None else None

    def set_state(self, conn: Conn, message_id: int, state: str) -> None:
        conn.execute("UPDATE outbox SET state = ? WHERE id = ?", (state, message_id))

    # --- the sender -------------------------------------------------------------------------------------------

    def pending(self, handler: str) -> list[OutboxMessage]:
        """Every message still to send, oldest first."""
        rows = self.db.query(_select("WHERE handler = ? AND state = ? ORDER BY id"), (handler, PENDING))
        return [_message(row) for row in rows]

    def backlog(self) -> dict[str, int]:
        """How many messages each handler still has to send."""
        rows = self.db.query("SELECT handler, COUNT(*) FROM outbox WHERE state = 'pending' GROUP BY handler")
        return {str(handler): int(count) for handler, count in rows}

    def sent_since(self, handler: str, channel: str, since: datetime) -> int:
        """How many messages went to `channel` at or after `since`."""
        rows = self.db.query(
            "SELECT sent_at FROM outbox WHERE handler = ? AND channel = ? AND state = ? AND sent_at IS NOT NULL",
            (handler, channel, SENT),
        )
        return sum(1 for (sent_at,) in rows if datetime.fromisoformat(sent_at) >= since)

    def mark_sent(self, message: OutboxMessage, at: datetime, *, thread_ts: str | None = None) -> None:
        """Sent (2xx): never sent again; `thread_ts` becomes the parent of the message's thread if it has none."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET state = ?, sent_at = ?, attempts = attempts + 1, last_error = NULL WHERE id = ?",
                (SENT, iso(at), message.id),
            )
            if thread_ts is not None and message.thread_key is not None:
                conn.execute(
                    "INSERT INTO outbox_threads (handler, channel, thread_key, ts) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (handler, channel, thread_key) DO NOTHING",
                    (message.handler, message.channel, message.thread_key, thread_ts),
                )

    def retry_later(self, message: OutboxMessage, next_attempt: datetime, error: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt = ?, last_error = ? WHERE id = ?",
                (iso(next_attempt), error, message.id),
            )

    def drop(self, message: OutboxMessage, state: str, error: str) -> None:
        """Take a message off the queue for good (``failed`` or ``expired``), keeping why."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE outbox SET state = ?, last_error = ? WHERE id = ?", (state, error, message.id))

    def digest(
        self,
        members: Sequence[OutboxMessage],
        *,
        key: str,
        payload: dict[str, Any],
        created_at: datetime,
        severity: str,
    ) -> OutboxMessage:
        """Replace `members` (one handler, one channel) by one new pending message, atomically."""
        first = members[0]
        with self.db.transaction() as conn:
            for member in members:
                self.set_state(conn, member.id, DIGESTED)
            self.queue(conn, handler=first.handler, key=key, channel=first.channel, payload=payload,
                       created_at=created_at, severity=severity)  # fmt: skip
            row = conn.execute(_select("WHERE handler = ? AND key = ?"), (first.handler, key)).fetchone()
        return _message(row)

    def thread_ts(self, handler: str, channel: str, thread_key: str) -> str | None:
        """The ``ts`` of the parent message of `thread_key`'s thread in `channel`, once one was sent."""
        rows = self.db.query(
            "SELECT ts FROM outbox_threads WHERE handler = ? AND channel = ? AND thread_key = ?",
            (handler, channel, thread_key),
        )
        return str(rows[0][0]) if rows else None

    def messages(self, handler: str | None = None) -> list[OutboxMessage]:
        """Every row (any state), oldest first: for inspection and tests."""
        if handler is None:
            return [_message(row) for row in self.db.query(_select("ORDER BY id"))]
        rows = self.db.query(_select("WHERE handler = ? ORDER BY id"), (handler,))
        return [_message(row) for row in rows]
