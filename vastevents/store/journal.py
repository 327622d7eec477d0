"""The event journal, per-handler delivery marks and retries.

Exactly once in the journal, at least once to each handler: an event is journaled once (handler-made events
carry an emit key, so re-running the handler after a crash journals nothing twice); a handler is marked for
an event only when it is done with it. A handler's retry (``TemporaryError``) is a row with its attempt count
and due time: until it is due, that handler gets no later event of the same instance (order per instance).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from vastevents.events import Event
from vastevents.store._codec import EVENT_COLUMNS, event_row, iso, load_event, time
from vastevents.store._db import Conn, Database, Migration

MIGRATIONS = (
    Migration(
        "journal",
        1,
        (
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            """CREATE TABLE IF NOT EXISTS events (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                name TEXT NOT NULL,
                instance_id INTEGER,
                old TEXT,
                new TEXT,
                at TEXT NOT NULL,
                catch_up INTEGER NOT NULL,
                raw TEXT,
                detail TEXT NOT NULL,
                instance TEXT
            )""",
            "CREATE INDEX IF NOT EXISTS events_by_instance ON events (instance_id, id)",
            "CREATE TABLE IF NOT EXISTS handlers (name TEXT PRIMARY KEY, delivered_upto INTEGER NOT NULL)",
            """CREATE TABLE IF NOT EXISTS deliveries (
                handler TEXT NOT NULL,
                event_id INTEGER NOT NULL,
                PRIMARY KEY (handler, event_id)
            ) WITHOUT ROWID""",
        ),
    ),
    Migration(
        "journal",
        2,
        (
            "ALTER TABLE events ADD COLUMN emit_key TEXT",
            "CREATE UNIQUE INDEX events_by_emit_key ON events (emit_key) WHERE emit_key IS NOT NULL",
            """CREATE TABLE retries (
                handler TEXT NOT NULL,
                event_id INTEGER NOT NULL,
                attempts INTEGER NOT NULL,
                due_at TEXT NOT NULL,
                error TEXT NOT NULL,
                PRIMARY KEY (handler, event_id)
            ) WITHOUT ROWID""",
        ),
    ),
    Migration("journal", 3, ("ALTER TABLE events ADD COLUMN cause TEXT",)),
    Migration(
        "journal",
        4,
        (
            "CREATE INDEX events_by_name ON events (name, id)",
            "CREATE INDEX events_by_at ON events (at)",
        ),
    ),
)

CHANNEL = "vastevents_events"
"""Announces each journaling transaction (payload: its last event id) to readers that follow the journal."""
JOURNAL_LOCK = 0x6A726E6C  # "jrnl": the advisory lock journal writers take turns on (PostgreSQL)

Write = Callable[[Conn], None]
"""A handler's own store write, run inside the transaction that marks its delivery (unit of work)."""


@dataclass(frozen=True)
class Retry:
    handler: str
    event_id: int
    attempts: int
    due_at: datetime
    error: str


class Journal:
    """Events in id order, the active handlers and what each of them has had."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def insert(self, conn: Conn, events: Sequence[Event]) -> list[Event]:
        """Journal `events` inside the caller's transaction; the events with their ids.

        Writers take turns (two watchers, a ``run --submit`` and an agent may journal into one PostgreSQL store):
        ids are then committed in order, and whoever follows the journal by id (each handler's
        ``delivered_upto``, the dashboard's stream) cannot pass over an event committed after a later one.
        """
        if events:
            self.db.serialize(conn, JOURNAL_LOCK)
        journaled = []
        for event in events:
            row = conn.execute(
                "INSERT INTO events (name, instance_id, old, new, at, catch_up, raw, detail, instance, cause)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                event_row(event),
            ).fetchone()
            journaled.append(event.journaled(int(row[0])))
        if journaled:
            self.db.notify(conn, CHANNEL, str(journaled[-1].id))
        return journaled

    def append(self, events: Sequence[Event]) -> list[Event]:
        with self.db.transaction() as conn:
            return self.insert(conn, events)

    def emit(self, event: Event, key: str | None) -> tuple[Event, bool]:
        """Journal a handler-made event once per `key`: (the journaled event, whether it is new)."""
        with self.db.transaction() as conn:
            if key is not None:
                sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE emit_key = ?"  # noqa: S608 - a fixed column list
                row = conn.execute(sql, (key,)).fetchone()
                if row is not None:
                    return load_event(row), False
            (journaled,) = self.insert(conn, [event])
            conn.execute("UPDATE events SET emit_key = ? WHERE id = ?", (key, journaled.id))
            return journaled, True

    def last_id(self) -> int:
        return int(self.db.query("SELECT COALESCE(MAX(id), 0) FROM events")[0][0])

    def activate(self, handlers: Iterable[str]) -> None:
        """Make these the active handlers: new ones start after the current journal, dropped ones forgotten."""
        names = sorted(set(handlers))
        with self.db.transaction() as conn:
            known = {row[0] for row in conn.execute("SELECT name FROM handlers").fetchall()}
            for name in known - set(names):
                for table in ("deliveries", "retries"):
                    conn.execute(f"DELETE FROM {table} WHERE handler = ?", (name,))  # noqa: S608 - fixed names
                conn.execute("DELETE FROM handlers WHERE name = ?", (name,))
            last = self.last_id()
            conn.executemany(
                "INSERT INTO handlers (name, delivered_upto) VALUES (?, ?)",
                [(name, last) for name in names if name not in known],
            )

    def pending(self, now: datetime | None = None) -> list[tuple[Event, frozenset[str]]]:
        """Events some active handler still needs, in id order, with those handlers.

        With `now`, a handler whose retry of an event is not yet due gets neither that event nor any later
        event of the same instance.
        """
        rows = self.db.query(
            "SELECT e.id, e.name, e.instance_id, e.old, e.new, e.at, e.catch_up, e.raw, e.detail, e.instance,"
            " e.cause, h.name, r.due_at"
            " FROM events e JOIN handlers h ON e.id > h.delivered_upto"
            " LEFT JOIN retries r ON r.handler = h.name AND r.event_id = e.id"
            " WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.handler = h.name AND d.event_id = e.id)"
            " ORDER BY e.id, h.name"
        )
        grouped: dict[int, tuple[Event, set[str]]] = {}
        waiting: set[tuple[str, int | None]] = set()
        for row in rows:
            event_id, instance_id, handler, due_at = row[0], row[2], row[11], time(row[12])
            if (handler, instance_id) in waiting:
                continue
            if now is not None and due_at is not None and due_at > now:
                waiting.add((handler, instance_id))
                continue
            if event_id not in grouped:
                grouped[event_id] = (load_event(row), set())
            grouped[event_id][1].add(handler)
        return [(event, frozenset(handlers)) for event, handlers in grouped.values()]

    def next_retry_due(self) -> datetime | None:
        rows = self.db.query("SELECT MIN(due_at) FROM retries")
        return time(rows[0][0]) if rows else None

    def retry(self, handler: str, event_id: int) -> Retry | None:
        rows = self.db.query(
            "SELECT attempts, due_at, error FROM retries WHERE handler = ? AND event_id = ?", (handler, event_id)
        )
        if not rows:
            return None
        attempts, due_at, error = rows[0]
        return Retry(handler, event_id, int(attempts), datetime.fromisoformat(due_at), error)

    def schedule_retry(self, handler: str, event_id: int, due_at: datetime, error: str) -> int:
        """Count one more failed attempt and set when the next is due; the attempts so far."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO retries (handler, event_id, attempts, due_at, error) VALUES (?, ?, 1, ?, ?)"
                " ON CONFLICT (handler, event_id) DO UPDATE SET attempts = retries.attempts + 1,"
                " due_at = excluded.due_at, error = excluded.error",
                (handler, event_id, iso(due_at), error),
            )
            row = conn.execute(
                "SELECT attempts FROM retries WHERE handler = ? AND event_id = ?", (handler, event_id)
            ).fetchone()
            return int(row[0])

    def mark_delivered(
        self, event_id: int, handler: str, failure: Event | None = None, writes: Sequence[Write] = ()
    ) -> Event | None:
        """Mark one delivery done, run the handler's `writes` and journal its failure, all in one transaction."""
        with self.db.transaction() as conn:
            for write in writes:
                write(conn)
            journaled = self.insert(conn, [failure]) if failure is not None else []
            conn.execute(
                "INSERT INTO deliveries (handler, event_id) VALUES (?, ?) ON CONFLICT DO NOTHING", (handler, event_id)
            )
            conn.execute("DELETE FROM retries WHERE handler = ? AND event_id = ?", (handler, event_id))
            self._compact(conn, handler)
        return journaled[0] if journaled else None

    def _compact(self, conn: Conn, handler: str) -> None:
        """Fold a handler's contiguous marks into its ``delivered_upto`` so marks don't pile up."""
        row = conn.execute("SELECT delivered_upto FROM handlers WHERE name = ?", (handler,)).fetchone()
        if row is None:
            return
        upto = int(row[0])
        first_pending = conn.execute(
            "SELECT MIN(e.id) FROM events e WHERE e.id > ? AND NOT EXISTS"
            " (SELECT 1 FROM deliveries d WHERE d.handler = ? AND d.event_id = e.id)",
            (upto, handler),
        ).fetchone()[0]
        new_upto = (int(first_pending) - 1) if first_pending is not None else self.last_id()
        if new_upto > upto:
            conn.execute("UPDATE handlers SET delivered_upto = ? WHERE name = ?", (new_upto, handler))
            conn.execute("DELETE FROM deliveries WHERE handler = ? AND event_id <= ?", (handler, new_upto))

    def events(
        self,
        *,
        since: int | None = None,
        instance_id: int | None = None,
        name: str | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """Journaled events in id order: after id `since`, of one instance, of one name; the last `limit`."""
        clauses: list[str] = ["id > ?"]
        params: list[object] = [since or 0]
        if instance_id is not None:
            clauses.append("instance_id = ?")
            params.append(instance_id)
        if name is not None:
            clauses.append("name = ?")
            params.append(name)
        select = f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(clauses)}"  # noqa: S608 - fixed clauses
        if limit is None:
            rows = self.db.query(f"{select} ORDER BY id", params)
        else:
            rows = self.db.query(
                f"SELECT * FROM ({select} ORDER BY id DESC LIMIT ?) AS latest ORDER BY id",  # noqa: S608
                [*params, limit],
            )
        return [load_event(row) for row in rows]

    def after(self, event_id: int, limit: int) -> list[Event]:
        """The first `limit` events journaled after id `event_id`, in id order."""
        rows = self.db.query(f"SELECT {EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?", (event_id, limit))  # noqa: S608
        return [load_event(row) for row in rows]

    def page(
        self,
        *,
        name: str | None = None,
        instance_ids: Sequence[int] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> list[Event]:
        """One page of matching events, newest first: of one name, of these instances, at or after `since` and
        before `until`; skipping the `offset` newest. Each filter is served by an index."""
        clauses: list[str] = []
        params: list[object] = []
        if name is not None:
            clauses.append("name = ?")
            params.append(name)
        if instance_ids is not None:
            if not instance_ids:
                return []
            clauses.append(f"instance_id IN ({', '.join('?' for _ in instance_ids)})")
            params.extend(instance_ids)
        if since is not None:
            clauses.append("at >= ?")
            params.append(iso(since))
        if until is not None:
            clauses.append("at < ?")
            params.append(iso(until))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.db.query(
            f"SELECT {EVENT_COLUMNS} FROM events{where} ORDER BY id DESC LIMIT ? OFFSET ?",  # noqa: S608 - fixed clauses
            [*params, limit, offset],
        )
        return [load_event(row) for row in rows]
