"""The shared database part every repository stands on: a connection, one lock, transactions, migrations.

Each repository owns its tables and declares its own ordered :class:`Migration` list under a component name,
so adding a repository (jobs, ledger, hosts, outbox, ...) never renumbers another's schema. The applied
version of each component lives in the ``schema`` table; pending migrations of every component run in one
transaction when the store is opened (all or none).

Repositories write portable SQL (``?`` placeholders, ``ON CONFLICT`` upserts, ``RETURNING``); a backend
translates what its dialect spells differently (:meth:`Database.translate`).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vastevents.errors import VastEventsError

FORMAT_VERSION = 2
"""The store's layout: 2 = components in a ``schema`` table (1: the single-list schema of 0.1)."""

Params = Sequence[Any] | Mapping[str, Any]


class StoreError(VastEventsError):
    """The state store cannot be opened or is not a vastevents store."""


class Cursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Conn(Protocol):
    """What a repository writes through inside a transaction (a sqlite3 connection or an adapter)."""

    def execute(self, sql: str, params: Params = ..., /) -> Cursor: ...

    def executemany(self, sql: str, rows: Sequence[Params], /) -> Any: ...


@dataclass(frozen=True)
class Migration:
    """One step of a component's schema: SQL statements, or a Python function given the connection."""

    component: str
    version: int
    apply: tuple[str, ...] | Callable[[Conn], None]


class Database:
    """A database shared by the repositories; subclasses connect. Every access holds one re-entrant lock, so
    handlers running in worker threads can use the store too, and a nested :meth:`transaction` joins the outer
    one (a unit of work spanning several repositories)."""

    dialect = "sql"
    errors: tuple[type[Exception], ...] = (sqlite3.DatabaseError,)
    skip_locked = ""
    """What ends a ``SELECT`` that claims rows, so two claimers never take the same one (SQLite's write
    transaction is exclusive already; PostgreSQL says ``FOR UPDATE SKIP LOCKED``)."""
    pushes = False
    """True when :meth:`listener` is woken by :meth:`notify` (PostgreSQL's LISTEN/NOTIFY); else it polls."""

    def __init__(self, where: str, *, read_only: bool = False) -> None:
        self.where = where
        self.read_only = read_only
        """Opened for reading only: the backend refuses every write and :meth:`migrate` is never called."""
        self._lock = threading.RLock()
        self._depth = 0
        self._current: Conn | None = None

    # --- what a backend provides --------------------------------------------------------------------------

    @contextmanager
    def _begin(self) -> Iterator[Conn]:  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    def _format(self, conn: Conn) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _set_format(self, conn: Conn) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _recorded(self) -> tuple[int, dict[str, int]]:  # pragma: no cover - abstract
        """The store format and each component's schema version, read without writing (0 and {} when new)."""
        raise NotImplementedError

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:  # pragma: no cover - abstract
        """Rows of one read (outside or inside a transaction)."""
        raise NotImplementedError

    def translate(self, sql: str) -> str:
        """`sql` in this backend's dialect (the portable form is SQLite's)."""
        return sql

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def notify(self, conn: Conn, channel: str, payload: str) -> None:
        """Wake the listeners of `channel` when this transaction commits (SQLite has none: its readers poll)."""

    def serialize(self, conn: Conn, key: int) -> None:
        """Let one transaction at a time past this point until it ends, so rows numbered after it are committed
        after it: a reader that follows ids in order then never skips one committed late. (SQLite already lets
        one writer in at a time.)"""

    @contextmanager
    def listener(self, channel: str) -> Iterator[Callable[[float], bool]]:
        """A ``wait(timeout)`` that returns True once `channel` is notified, False after `timeout` seconds.

        Without pushed notifications (SQLite) it only sleeps: the caller re-reads what it follows.
        """

        def wait(timeout: float) -> bool:
            time.sleep(timeout)
            return False

        yield wait

    # --- shared ---------------------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Conn]:
        """One transaction (``ROLLBACK`` on any error); nested calls join the outer one.

        On a read-only database a write in it raises :class:`StoreError`.
        """
        if self.read_only and not self._depth:
            try:
                with self._transaction() as conn:
                    yield conn
            except self.errors as exc:
                raise StoreError(f"the {self.where} is open read-only here: {exc}") from None
            return
        with self._transaction() as conn:
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[Conn]:
        with self._lock:
            if self._depth:
                self._depth += 1
                assert self._current is not None
                try:
                    yield self._current
                finally:
                    self._depth -= 1
                return
            with self._begin() as conn:
                self._current = conn
                self._depth = 1
                try:
                    yield conn
                finally:
                    self._depth = 0
                    self._current = None

    def migrate(self, migrations: Sequence[Migration]) -> None:
        """Apply every migration newer than its component's recorded version, in one transaction."""
        try:
            with self.transaction() as db:
                fmt = self._format(db)
                if fmt > FORMAT_VERSION:
                    raise StoreError(
                        f"{self.where} was written by a newer vastevents (store format {fmt}, this one knows"
                        f" {FORMAT_VERSION}); upgrade vastevents"
                    )
                db.execute("CREATE TABLE IF NOT EXISTS schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
                applied = {str(name): int(version) for name, version in db.execute("SELECT * FROM schema").fetchall()}
                for migration in sorted(migrations, key=lambda m: (m.component, m.version)):
                    known = applied.get(migration.component, 0)
                    if migration.version <= known:
                        continue
                    if migration.version != known + 1:
                        raise StoreError(f"migration {migration.component} {migration.version} skips a version")
                    if callable(migration.apply):
                        migration.apply(db)
                    else:
                        for statement in migration.apply:
                            db.execute(statement)
                    applied[migration.component] = migration.version
                    db.execute(
                        "INSERT INTO schema (component, version) VALUES (?, ?)"
                        " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                        (migration.component, migration.version),
                    )
                ours = {m.component for m in migrations}  # another component belongs to a repository not used here
                newer = {name: v for name, v in applied.items() if name in ours and v > _latest(migrations, name)}
                if newer:
                    name, version = next(iter(newer.items()))
                    raise StoreError(
                        f"{self.where} was written by a newer vastevents ({name} schema {version}); upgrade vastevents"
                    )
                self._set_format(db)
        except self.errors as exc:
            raise StoreError(f"cannot open the state {self.where}: {exc}") from None

    def lacks(self, migrations: Sequence[Migration]) -> bool:
        """For a read-only opening: True when this database has none of the components of `migrations` (nothing
        was ever written there, so it reads as empty), False when it has all of them at the versions `migrations`
        know; a :class:`StoreError` when one needs an upgrade (a command that writes does it) or is newer."""
        try:
            fmt, applied = self._recorded()
        except self.errors as exc:
            raise StoreError(f"cannot open the state {self.where}: {exc}") from None
        if fmt > FORMAT_VERSION:
            raise StoreError(
                f"{self.where} was written by a newer vastevents (store format {fmt}, this one knows"
                f" {FORMAT_VERSION}); upgrade vastevents"
            )
        components = {m.component for m in migrations}
        if fmt == 0 or not components & applied.keys():
            return True
        for name in sorted(components):
            version, latest = applied.get(name, 0), _latest(migrations, name)
            if version > latest:
                raise StoreError(
                    f"{self.where} was written by a newer vastevents ({name} schema {version}); upgrade vastevents"
                )
            if version < latest or fmt < FORMAT_VERSION:
                raise StoreError(
                    f"{self.where} needs an upgrade to this vastevents ({name} schema {version} of {latest}), which"
                    " a reading command does not do: run `vastevents watch --once` once"
                )
        return False


class AbsentComponent(Database):
    """A read-only store's view of components it did not have when asked for: empty tables of their schema (an
    in-memory twin) until a writer creates them, then the store's own. Reads only."""

    def __init__(self, store: Database, migrations: Sequence[Migration]) -> None:
        super().__init__(store.where, read_only=True)
        self.dialect, self.errors = store.dialect, store.errors
        self._store, self._migrations = store, migrations
        self._empty: Database | None = SqliteDatabase(":memory:")
        self._empty.migrate(migrations)

    def _now(self) -> Database:
        if self._empty is not None and not self._store.lacks(self._migrations):
            self._empty.close()
            self._empty = None
        return self._empty or self._store

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        return self._now().query(sql, params)

    @contextmanager
    def transaction(self) -> Iterator[Conn]:
        with self._now().transaction() as conn:
            yield conn

    @contextmanager
    def listener(self, channel: str) -> Iterator[Callable[[float], bool]]:
        with self._store.listener(channel) as wait:
            yield wait

    def close(self) -> None:
        if self._empty is not None:
            self._empty.close()


def _latest(migrations: Sequence[Migration], component: str) -> int:
    return max((m.version for m in migrations if m.component == component), default=0)


class SqliteDatabase(Database):
    """One SQLite file (WAL mode, synchronous=FULL; ``":memory:"`` for tests).

    `read_only` opens the file with ``mode=ro`` (nothing is created or written, not even the state directory);
    a file that does not exist yet reads as an empty database until a writer makes it.
    """

    dialect = "sqlite"

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        super().__init__(f"file {path}", read_only=read_only)
        self.path = path
        self._file = None if str(path) == ":memory:" else Path(path).expanduser()
        self._waiting = read_only and self._file is not None and not self._file.exists()
        """A read-only opening of a file no writer made yet: an empty stand-in until the file exists."""
        self._conn = self._connect(None if self._waiting else self._file)

    def _connect(self, file: Path | None) -> sqlite3.Connection:
        try:
            if file is None:
                conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            elif self.read_only:
                uri = f"{file.resolve().as_uri()}?mode=ro"
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30.0)
            else:
                file.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(str(file), isolation_level=None, check_same_thread=False, timeout=30.0)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise StoreError(f"cannot open the state file {self.path}: {exc}") from None
        try:
            if self.read_only:
                conn.execute("PRAGMA query_only = ON")
            else:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"cannot open the state file {self.path}: {exc}") from None
        return conn

    def _connection(self) -> sqlite3.Connection:
        """The connection, moved to the file once a writer has made it (a read-only opening made before)."""
        if self._waiting and self._file is not None and self._file.exists():
            self._conn.close()
            self._conn = self._connect(self._file)
            self._waiting = False
        return self._conn

    @contextmanager
    def _begin(self) -> Iterator[Conn]:
        conn = self._connection()
        conn.execute("BEGIN" if self.read_only else "BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _format(self, conn: Conn) -> int:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def _set_format(self, conn: Conn) -> None:
        conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")

    def _recorded(self) -> tuple[int, dict[str, int]]:
        fmt = int(self.query("PRAGMA user_version")[0][0])
        if not self.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema'"):
            return fmt, {}
        return fmt, {str(name): int(version) for name, version in self.query("SELECT * FROM schema")}

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._connection().execute(sql, params).fetchall())

    def close(self) -> None:
        with self._lock:
            self._conn.close()
