"""The shared database part every repository stands on: one connection, one lock, transactions, migrations.

Each repository owns its tables and declares its own ordered :class:`Migration` list under a component name,
so adding a repository (jobs, ledger, hosts, outbox, ...) never renumbers another's schema. The applied
version of each component lives in the ``schema`` table; pending migrations of every component run in one
transaction when the store is opened (all or none).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vastevents.errors import VastEventsError

FORMAT_VERSION = 2
"""``PRAGMA user_version`` of a store laid out in components (1: the single-list schema of 0.1)."""


class StoreError(VastEventsError):
    """The state file cannot be opened or is not a vastevents store."""


@dataclass(frozen=True)
class Migration:
    """One step of a component's schema: SQL statements, or a Python function given the connection."""

    component: str
    version: int
    apply: tuple[str, ...] | Callable[[sqlite3.Connection], None]


class Database:
    """One SQLite file (WAL mode, synchronous=FULL; ``":memory:"`` for tests) shared by the repositories.

    Every access holds one re-entrant lock, so handlers running in worker threads can use the store too, and
    a nested :meth:`transaction` joins the outer one (a unit of work spanning several repositories).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = path
        in_memory = str(path) == ":memory:"
        self._lock = threading.RLock()
        self._depth = 0
        try:
            if not in_memory:
                Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                ":memory:" if in_memory else str(Path(path).expanduser()),
                isolation_level=None,
                check_same_thread=False,
                timeout=30.0,
            )
        except (OSError, sqlite3.DatabaseError) as exc:
            raise StoreError(f"cannot open the state file {path}: {exc}") from None
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(f"cannot open the state file {path}: {exc}") from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on any error); nested calls join the outer one."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._conn
            except BaseException:
                self._depth = 0
                self._conn.execute("ROLLBACK")
                raise
            self._depth = 0
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read (outside or inside a transaction)."""
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    def migrate(self, migrations: Sequence[Migration]) -> None:
        """Apply every migration newer than its component's recorded version, in one transaction."""
        try:
            with self.transaction() as db:
                fmt = int(db.execute("PRAGMA user_version").fetchone()[0])
                if fmt > FORMAT_VERSION:
                    raise StoreError(
                        f"{self.path} was written by a newer vastevents (store format {fmt}, this one knows"
                        f" {FORMAT_VERSION}); upgrade vastevents"
                    )
                db.execute("CREATE TABLE IF NOT EXISTS schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
                applied = {str(name): int(version) for name, version in db.execute("SELECT * FROM schema")}
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
                        "INSERT OR REPLACE INTO schema (component, version) VALUES (?, ?)",
                        (migration.component, migration.version),
                    )
                ours = {m.component for m in migrations}  # another component belongs to a repository not used here
                newer = {name: v for name, v in applied.items() if name in ours and v > _latest(migrations, name)}
                if newer:
                    name, version = next(iter(newer.items()))
                    raise StoreError(
                        f"{self.path} was written by a newer vastevents ({name} schema {version}); upgrade vastevents"
                    )
                db.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the state file {self.path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _latest(migrations: Sequence[Migration], component: str) -> int:
    return max((m.version for m in migrations if m.component == component), default=0)
