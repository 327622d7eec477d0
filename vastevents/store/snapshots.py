"""The diff base: the last seen view of every instance, when it was taken, and the stops we asked for."""

from __future__ import annotations

from datetime import datetime

from vastevents.models import State
from vastevents.snapshot import Snapshot
from vastevents.store._codec import dump_view, iso, load_view, time
from vastevents.store._db import Conn, Database, Migration, StoreError

MIGRATIONS = (
    Migration(
        "snapshot",
        1,
        (
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS snapshot (instance_id INTEGER PRIMARY KEY, view TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS stop_requests (instance_id INTEGER PRIMARY KEY, at TEXT NOT NULL)",
        ),
    ),
)


class StaleSnapshot(StoreError):
    """Another watcher committed since this one loaded its snapshot; reload and diff again."""


class Snapshots:
    def __init__(self, db: Database) -> None:
        self.db = db

    def taken_at(self) -> str | None:
        rows = self.db.query("SELECT value FROM meta WHERE key = 'taken_at'")
        return str(rows[0][0]) if rows else None

    def load(self) -> Snapshot:
        views = {int(instance_id): load_view(text) for instance_id, text in self.db.query("SELECT * FROM snapshot")}
        return Snapshot(views, time(self.taken_at()))

    def replace(self, conn: Conn, previous: Snapshot, snapshot: Snapshot) -> None:
        """Write only what changed since `previous`, inside the caller's transaction; refuse a stale base."""
        if self.taken_at() != iso(previous.taken_at):
            raise StaleSnapshot("another watcher committed to this store since our last poll")
        gone = [(instance_id,) for instance_id in previous.views.keys() - snapshot.views.keys()]
        conn.executemany("DELETE FROM snapshot WHERE instance_id = ?", gone)
        changed = [
            (instance_id, dump_view(view))
            for instance_id, view in snapshot.views.items()
            if (before := previous.views.get(instance_id)) is not view and before != view  # same object: unchanged
        ]
        conn.executemany(
            "INSERT INTO snapshot (instance_id, view) VALUES (?, ?)"
            " ON CONFLICT (instance_id) DO UPDATE SET view = excluded.view",
            changed,
        )
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('taken_at', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (iso(snapshot.taken_at),),
        )
        done = [
            (instance_id,)
            for instance_id in self.stop_requests()
            if (view := snapshot.get(instance_id)) is None or view.state is not State.RUNNING
        ]
        conn.executemany("DELETE FROM stop_requests WHERE instance_id = ?", done)

    def request_stop(self, instance_id: int, at: datetime) -> None:
        """Note that we asked to stop this instance, so its stop is not reported as a preemption."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO stop_requests (instance_id, at) VALUES (?, ?) ON CONFLICT (instance_id) DO UPDATE"
                " SET at = excluded.at",
                (instance_id, iso(at)),
            )

    def stop_requests(self) -> frozenset[int]:
        return frozenset(int(row[0]) for row in self.db.query("SELECT instance_id FROM stop_requests"))
