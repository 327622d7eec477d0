"""The store of one test on the backend it runs on (see the `opener` and `store` fixtures in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from vastevents.store import PostgresStore, SqliteStore, SqlStore


class Opener:
    """Opens (again) one test's store: a SQLite file, or a PostgreSQL schema of its own (``url``).

    Every store it opened is closed when the test ends, so a test may open it as often as a restart needs.
    """

    def __init__(self, path: Path, url: str | None = None) -> None:
        self.path = path
        self.url = url
        self.opened: list[SqlStore] = []

    def __call__(self, *, read_only: bool = False) -> SqlStore:
        self.opened.append(
            SqliteStore(self.path, read_only=read_only)
            if self.url is None
            else PostgresStore(self.url, read_only=read_only)
        )
        return self.opened[-1]

    @property
    def env(self) -> dict[str, str]:
        """What points a command at this store when its config names only ``[store] path``."""
        return {} if self.url is None else {"VASTEVENTS_STORE_URL": self.url}

    def close(self) -> None:
        for store in self.opened:
            store.close()
