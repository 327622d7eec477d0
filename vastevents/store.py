"""Durable state behind a small interface: the snapshot, the event journal and per-handler delivery marks.

The embedded default is one SQLite file in WAL mode. A poll's new snapshot and its events are committed in
one transaction before any handler runs, so a crash at any point loses no event and journals none twice:
after a restart the committed snapshot is the baseline, and events a handler has not been marked for are
delivered again (at least once to handlers, exactly once in the journal).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from vastevents.errors import VastEventsError
from vastevents.events import Event
from vastevents.models import Instance, State
from vastevents.snapshot import InstanceView, Snapshot

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the event core.
    (
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS snapshot (instance_id INTEGER PRIMARY KEY, view TEXT NOT NULL)",
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
        "CREATE TABLE IF NOT EXISTS stop_requests (instance_id INTEGER PRIMARY KEY, at TEXT NOT NULL)",
    ),
)
"""The schema as ordered migrations: entry ``n`` takes a store from version ``n`` to ``n + 1``.

Add tables (jobs, ledger, hosts, outbox, ...) by appending an entry; never edit a released one. The version
lives in ``PRAGMA user_version``; pending migrations run in one transaction when a store is opened.
"""

SCHEMA_VERSION = len(_MIGRATIONS)


class StoreError(VastEventsError):
    """The state file cannot be opened or is not a vastevents store."""


class StaleSnapshot(StoreError):
    """Another watcher committed since this one loaded its snapshot; reload and diff again."""


class Store(Protocol):
    """What the watcher, the CLI and handlers need from durable state."""

    def load_snapshot(self) -> Snapshot: ...

    def commit(self, previous: Snapshot, snapshot: Snapshot, events: Sequence[Event]) -> list[Event]:
        """Replace `previous` by `snapshot` and journal `events`, atomically; the events with their ids."""
        ...

    def append(self, events: Sequence[Event]) -> list[Event]:
        """Journal events that change no snapshot (``handler_failed``, ``poll_failed``)."""
        ...

    def activate(self, handlers: Iterable[str]) -> None:
        """Make these the active handlers: new ones start after the current journal, dropped ones forgotten."""
        ...

    def pending(self) -> list[tuple[Event, frozenset[str]]]:
        """Journaled events some active handler has not been marked for, in id order, with those handlers."""
        ...

    def mark_delivered(self, event_id: int, handler: str, failure: Event | None = None) -> Event | None:
        """Mark one delivery done and journal the handler's failure (if any) in the same transaction."""
        ...

    def events(
        self, *, since: int | None = None, instance_id: int | None = None, name: str | None = None
    ) -> list[Event]:
        """Journaled events in id order: after id `since`, of one instance, of one name."""
        ...

    def request_stop(self, instance_id: int, at: datetime) -> None:
        """Note that we asked to stop this instance, so its stop is not reported as a preemption."""
        ...

    def stop_requests(self) -> frozenset[int]: ...

    def close(self) -> None: ...


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _dump_view(view: InstanceView) -> str:
    return json.dumps(
        {
            "instance": view.instance.model_dump(mode="json"),
            "first_seen": _iso(view.first_seen),
            "since": _iso(view.since),
            "down_since": _iso(view.down_since),
            "flaps": [_iso(at) for at in view.flaps],
            "reported": sorted(view.reported),
        }
    )


def _load_view(text: str) -> InstanceView:
    data = json.loads(text)
    return InstanceView(
        instance=Instance.model_validate(data["instance"]),
        first_seen=datetime.fromisoformat(data["first_seen"]),
        since=datetime.fromisoformat(data["since"]),
        down_since=_time(data.get("down_since")),
        flaps=tuple(datetime.fromisoformat(at) for at in data.get("flaps", [])),
        reported=frozenset(data.get("reported", [])),
    )


def _event_row(event: Event) -> tuple[Any, ...]:
    instance = json.dumps(event.instance.model_dump(mode="json")) if event.instance is not None else None
    return (
        event.name, event.instance_id, event.old, event.new, event.at.isoformat(), int(event.catch_up),
        event.raw, event.detail, instance,
    )  # fmt: skip


def _event(row: sqlite3.Row | tuple[Any, ...]) -> Event:
    event_id, name, instance_id, old, new, at, catch_up, raw, detail, instance = tuple(row)[:10]
    return Event(
        id=event_id,
        name=name,
        instance_id=instance_id,
        old=old,
        new=new,
        at=datetime.fromisoformat(at),
        catch_up=bool(catch_up),
        instance=Instance.model_validate_json(instance) if instance is not None else None,
        raw=raw,
        detail=detail,
    )


class SqliteStore:
    """The :class:`Store` in one SQLite file (WAL mode, synchronous=FULL); ``":memory:"`` for tests."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        in_memory = str(path) == ":memory:"
        try:
            if not in_memory:
                Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                ":memory:" if in_memory else str(Path(path).expanduser()),
                isolation_level=None,
                check_same_thread=False,
                timeout=30.0,
            )
        except (OSError, sqlite3.DatabaseError) as exc:
            raise StoreError(f"cannot open the state file {path}: {exc}") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"cannot open the state file {path}: {exc}") from None
        except StoreError:
            self._db.close()
            raise

    def _migrate(self) -> None:
        """Bring the schema up to :data:`SCHEMA_VERSION` (all pending migrations or none)."""
        with self._transaction() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} was written by a newer vastevents (schema {version}, this one knows"
                    f" {SCHEMA_VERSION}); upgrade vastevents"
                )
            for target, statements in enumerate(_MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {target}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _taken_at(self) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'taken_at'").fetchone()
        return str(row[0]) if row else None

    def load_snapshot(self) -> Snapshot:
        views = {
            int(instance_id): _load_view(text)
            for instance_id, text in self._db.execute("SELECT instance_id, view FROM snapshot")
        }
        return Snapshot(views, _time(self._taken_at()))

    def commit(self, previous: Snapshot, snapshot: Snapshot, events: Sequence[Event]) -> list[Event]:
        with self._transaction() as db:
            if self._taken_at() != _iso(previous.taken_at):
                raise StaleSnapshot("another watcher committed to this store since our last poll")
            gone = [(instance_id,) for instance_id in previous.views.keys() - snapshot.views.keys()]
            db.executemany("DELETE FROM snapshot WHERE instance_id = ?", gone)
            changed = [
                (instance_id, _dump_view(view))
                for instance_id, view in snapshot.views.items()
                if previous.views.get(instance_id) != view
            ]
            db.executemany("INSERT OR REPLACE INTO snapshot (instance_id, view) VALUES (?, ?)", changed)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('taken_at', ?)", (_iso(snapshot.taken_at),))
            done = [
                (instance_id,)
                for instance_id in self.stop_requests()
                if (view := snapshot.get(instance_id)) is None or view.state is not State.RUNNING
            ]
            db.executemany("DELETE FROM stop_requests WHERE instance_id = ?", done)
            return self._insert(events)

    def append(self, events: Sequence[Event]) -> list[Event]:
        with self._transaction():
            return self._insert(events)

    def _insert(self, events: Sequence[Event]) -> list[Event]:
        journaled = []
        for event in events:
            cursor = self._db.execute(
                "INSERT INTO events (name, instance_id, old, new, at, catch_up, raw, detail, instance)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _event_row(event),
            )
            assert cursor.lastrowid is not None
            journaled.append(event.journaled(cursor.lastrowid))
        return journaled

    def _last_id(self) -> int:
        return int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])

    def activate(self, handlers: Iterable[str]) -> None:
        names = sorted(set(handlers))
        with self._transaction() as db:
            known = {row[0] for row in db.execute("SELECT name FROM handlers")}
            for name in known - set(names):
                db.execute("DELETE FROM handlers WHERE name = ?", (name,))
                db.execute("DELETE FROM deliveries WHERE handler = ?", (name,))
            last = self._last_id()
            db.executemany(
                "INSERT INTO handlers (name, delivered_upto) VALUES (?, ?)",
                [(name, last) for name in names if name not in known],
            )

    def pending(self) -> list[tuple[Event, frozenset[str]]]:
        rows = self._db.execute(
            "SELECT e.id, e.name, e.instance_id, e.old, e.new, e.at, e.catch_up, e.raw, e.detail, e.instance, h.name"
            " FROM events e JOIN handlers h ON e.id > h.delivered_upto"
            " WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.handler = h.name AND d.event_id = e.id)"
            " ORDER BY e.id, h.name"
        ).fetchall()
        grouped: dict[int, tuple[Event, set[str]]] = {}
        for row in rows:
            event_id = row[0]
            if event_id not in grouped:
                grouped[event_id] = (_event(row), set())
            grouped[event_id][1].add(row[10])
        return [(event, frozenset(handlers)) for event, handlers in grouped.values()]

    def mark_delivered(self, event_id: int, handler: str, failure: Event | None = None) -> Event | None:
        with self._transaction() as db:
            journaled = self._insert([failure]) if failure is not None else []
            db.execute("INSERT OR IGNORE INTO deliveries (handler, event_id) VALUES (?, ?)", (handler, event_id))
            self._compact(handler)
        return journaled[0] if journaled else None

    def _compact(self, handler: str) -> None:
        """Fold a handler's contiguous marks into its ``delivered_upto`` so marks don't pile up."""
        row = self._db.execute("SELECT delivered_upto FROM handlers WHERE name = ?", (handler,)).fetchone()
        if row is None:
            return
        upto = int(row[0])
        first_pending = self._db.execute(
            "SELECT MIN(e.id) FROM events e WHERE e.id > ? AND NOT EXISTS"
            " (SELECT 1 FROM deliveries d WHERE d.handler = ? AND d.event_id = e.id)",
            (upto, handler),
        ).fetchone()[0]
        new_upto = (int(first_pending) - 1) if first_pending is not None else self._last_id()
        if new_upto > upto:
            self._db.execute("UPDATE handlers SET delivered_upto = ? WHERE name = ?", (new_upto, handler))
            self._db.execute("DELETE FROM deliveries WHERE handler = ? AND event_id <= ?", (handler, new_upto))

    def events(
        self, *, since: int | None = None, instance_id: int | None = None, name: str | None = None
    ) -> list[Event]:
        rows = self._db.execute(
            "SELECT id, name, instance_id, old, new, at, catch_up, raw, detail, instance FROM events"
            " WHERE id > :since AND (:instance_id IS NULL OR instance_id = :instance_id)"
            " AND (:name IS NULL OR name = :name) ORDER BY id",
            {"since": since or 0, "instance_id": instance_id, "name": name},
        )
        return [_event(row) for row in rows]

    def request_stop(self, instance_id: int, at: datetime) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO stop_requests (instance_id, at) VALUES (?, ?)", (instance_id, _iso(at)))

    def stop_requests(self) -> frozenset[int]:
        return frozenset(int(row[0]) for row in self._db.execute("SELECT instance_id FROM stop_requests"))
