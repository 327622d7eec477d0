"""Durable state: one database part shared by small repositories, one per concern.

The embedded default is one SQLite file in WAL mode. A poll's new snapshot and its events are committed in
one transaction before any handler runs, so a crash at any point loses no event and journals none twice:
after a restart the committed snapshot is the baseline, and events a handler has not been marked for are
delivered again (at least once to handlers, exactly once in the journal).

Repositories: :class:`Snapshots` (the diff base), :class:`Journal` (events, delivery marks, retries),
:class:`Effects` (intents, daemons, periodic runs); more (jobs, ledger, hosts, outbox) register with
:meth:`SqliteStore.repository`, each bringing its own migrations.

Commands that only look (``events``, ``jobs``, ``cost``, a dashboard, ...) open the store with
``read_only=True``: the backend refuses every write, nothing is migrated, and what was never written (a
store no watcher made yet, a repository whose handler never ran) reads as empty until a writer makes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar, cast

from vastevents.events import Event
from vastevents.snapshot import Snapshot
from vastevents.store._db import (
    FORMAT_VERSION,
    AbsentComponent,
    Conn,
    Database,
    Migration,
    SqliteDatabase,
    StoreError,
)
from vastevents.store.effects import MIGRATIONS as _EFFECTS
from vastevents.store.effects import DaemonRow, Effects, Intent
from vastevents.store.jobs import Job, JobPhase, Jobs, JobStatus, Terms
from vastevents.store.journal import MIGRATIONS as _JOURNAL
from vastevents.store.journal import Journal, Retry, Write
from vastevents.store.snapshots import MIGRATIONS as _SNAPSHOT
from vastevents.store.snapshots import Snapshots, StaleSnapshot

__all__ = [
    "FORMAT_VERSION",
    "Conn",
    "DaemonRow",
    "Database",
    "Effects",
    "Intent",
    "Job",
    "JobPhase",
    "JobStatus",
    "Jobs",
    "Journal",
    "Migration",
    "PostgresStore",
    "Retry",
    "Snapshots",
    "SqlStore",
    "SqliteDatabase",
    "SqliteStore",
    "StaleSnapshot",
    "Store",
    "StoreError",
    "Terms",
    "Write",
    "open_store",
]

CORE_MIGRATIONS: tuple[Migration, ...] = (*_SNAPSHOT, *_JOURNAL, *_EFFECTS)


R = TypeVar("R")
"""A repository class: ``MIGRATIONS`` (its :class:`Migration` steps) and ``__init__(self, db: Database)``."""


class Store(Protocol):
    """What the watcher, the CLI and handlers need from durable state."""

    db: Database
    snapshots: Snapshots
    journal: Journal
    effects: Effects
    read_only: bool

    def load_snapshot(self) -> Snapshot: ...

    def preview(self, snapshot: Snapshot) -> None: ...

    def commit(self, previous: Snapshot, snapshot: Snapshot, events: Sequence[Event]) -> list[Event]: ...

    def append(self, events: Sequence[Event]) -> list[Event]: ...

    def activate(self, handlers: Iterable[str]) -> None: ...

    def pending(self, now: datetime | None = None) -> list[tuple[Event, frozenset[str]]]: ...

    def mark_delivered(
        self, event_id: int, handler: str, failure: Event | None = None, writes: Sequence[Write] = ()
    ) -> Event | None: ...

    def events(
        self,
        *,
        since: int | None = None,
        instance_id: int | None = None,
        name: str | None = None,
        limit: int | None = None,
    ) -> list[Event]: ...

    def request_stop(self, instance_id: int, at: datetime) -> None: ...

    def stop_requests(self) -> frozenset[int]: ...

    def repository(self, kind: type[R]) -> R: ...

    def close(self) -> None: ...


class SqlStore:
    """The :class:`Store` over any :class:`Database` backend (read-only when the database is)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.read_only = db.read_only
        self._absent: list[AbsentComponent] = []
        self._previewed: Snapshot | None = None
        try:
            if not self.read_only:
                self.db.migrate(CORE_MIGRATIONS)
            self.snapshots = Snapshots(self.db if not self.read_only else self._database_for(_SNAPSHOT))
            self.journal = Journal(self.db if not self.read_only else self._database_for(_JOURNAL))
            self.effects = Effects(self.db if not self.read_only else self._database_for(_EFFECTS))
        except StoreError:
            self.close()
            raise
        self._repositories: dict[type[Any], object] = {}

    def repository(self, kind: type[R]) -> R:
        """The one `kind` repository of this store, its migrations applied on first use."""
        if kind not in self._repositories:
            migrations: Sequence[Migration] = getattr(kind, "MIGRATIONS", ())
            self._repositories[kind] = cast(Callable[[Database], object], kind)(self._database_for(migrations))
        return cast(R, self._repositories[kind])

    def _database_for(self, migrations: Sequence[Migration]) -> Database:
        """Where a repository with `migrations` reads and writes: this database, migrated when it is writable;
        when it is read-only and never had those tables, a view that finds nothing until a writer makes them."""
        if not self.read_only:
            self.db.migrate((*CORE_MIGRATIONS, *migrations))
            return self.db
        if not migrations or not self.db.lacks(migrations):
            return self.db
        self._absent.append(AbsentComponent(self.db, migrations))
        return self._absent[-1]

    def load_snapshot(self) -> Snapshot:
        """The last committed snapshot (a read-only store's :meth:`preview`, when it was given one)."""
        return self._previewed if self._previewed is not None else self.snapshots.load()

    def preview(self, snapshot: Snapshot) -> None:
        """Show `snapshot` as the latest one from now on, without writing it: what a poll now would commit, for a
        handler's report-only pass over a read-only store (``reap --dry-run``)."""
        if not self.read_only:
            raise StoreError("only a read-only store previews a snapshot; a writable one commits it")
        self._previewed = snapshot

    def commit(self, previous: Snapshot, snapshot: Snapshot, events: Sequence[Event]) -> list[Event]:
        """Replace `previous` by `snapshot` and journal `events`, atomically; the events with their ids."""
        with self.db.transaction() as conn:
            self.snapshots.replace(conn, previous, snapshot)
            return self.journal.insert(conn, events)

    def append(self, events: Sequence[Event]) -> list[Event]:
        """Journal events that change no snapshot (``handler_failed``, ``poll_failed``)."""
        return self.journal.append(events)

    def activate(self, handlers: Iterable[str]) -> None:
        self.journal.activate(handlers)

    def pending(self, now: datetime | None = None) -> list[tuple[Event, frozenset[str]]]:
        return self.journal.pending(now)

    def mark_delivered(
        self, event_id: int, handler: str, failure: Event | None = None, writes: Sequence[Write] = ()
    ) -> Event | None:
        return self.journal.mark_delivered(event_id, handler, failure, writes)

    def events(
        self,
        *,
        since: int | None = None,
        instance_id: int | None = None,
        name: str | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        return self.journal.events(since=since, instance_id=instance_id, name=name, limit=limit)

    def request_stop(self, instance_id: int, at: datetime) -> None:
        self.snapshots.request_stop(instance_id, at)

    def stop_requests(self) -> frozenset[int]:
        return self.snapshots.stop_requests()

    def close(self) -> None:
        self.db.close()
        for view in self._absent:
            view.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SqliteStore(SqlStore):
    """The store in one SQLite file (the embedded default); ``":memory:"`` for tests."""

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        self.path = path
        super().__init__(SqliteDatabase(path, read_only=read_only))


class PostgresStore(SqlStore):
    """The store on a PostgreSQL server (team mode); needs the ``postgres`` extra."""

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        from vastevents.store.postgres import PostgresDatabase

        self.url = url
        super().__init__(PostgresDatabase(url, read_only=read_only))


def open_store(path: Path | str, url: str | None = None, *, read_only: bool = False) -> SqlStore:
    """The store a config names: PostgreSQL when `url` is set, else the SQLite file at `path`.

    With `read_only` nothing is ever written (see the module's docstring): the way to open it for looking.
    """
    return PostgresStore(url, read_only=read_only) if url else SqliteStore(path, read_only=read_only)
