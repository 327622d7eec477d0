"""The store on both backends (a real SQLite file, a real PostgreSQL server): atomic commits, round trips,
delivery marks, stale-snapshot detection, migrations; the team-members repository."""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from stores import Opener

from vastevents.diff import observe
from vastevents.events import Cause, Event
from vastevents.models import Instance
from vastevents.snapshot import Snapshot
from vastevents.store import (
    FORMAT_VERSION,
    Database,
    Migration,
    PostgresStore,
    SqliteStore,
    SqlStore,
    StaleSnapshot,
    StoreError,
)
from vastevents.store.team import TeamMembers

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rows(*pairs: tuple[int, str | None]) -> list[Instance]:
    return [
        Instance.model_validate({"id": i, "actual_status": s, "label": f"vastevents:{i}", "odd_field": [1, 2]})
        for i, s in pairs
    ]


def components(store: SqlStore) -> dict[str, int]:
    return {str(name): int(version) for name, version in store.db.query("SELECT component, version FROM schema")}


def test_file_is_in_wal_mode(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "state" / "state.db").close()
    db = sqlite3.connect(tmp_path / "state" / "state.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_snapshot_and_events_round_trip_through_a_reopen(opener: Opener) -> None:
    with opener() as store:
        previous = store.load_snapshot()
        assert previous.taken_at is None and len(previous) == 0
        snapshot, events = observe(previous, rows((1, "loading"), (2, "Weird")), T0)
        journaled = store.commit(previous, snapshot, events)
        assert [e.id for e in journaled] == [1, 2]
        failed = store.append([Event(name="job_failed", instance_id=1, at=T0, detail="exit 3", cause=Cause.JOB_ERROR)])
    with opener() as store:
        assert store.load_snapshot() == snapshot
        assert store.events() == [*journaled, *failed]
        assert store.events()[1].raw == "Weird"
        instance = store.events()[0].instance
        assert instance is not None and instance.model_extra == {"odd_field": [1, 2]}
        assert [e.cause for e in store.events()] == [None, None, Cause.JOB_ERROR]
        assert store.events()[2].to_json()["cause"] == "job_error"


def test_commit_writes_everything_or_nothing(store: SqlStore) -> None:
    previous = store.load_snapshot()
    snapshot, events = observe(previous, rows((1, "running")), T0)
    broken = Event(name="appeared", instance_id=1, at=None)  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        store.commit(previous, snapshot, [*events, broken])
    assert store.load_snapshot() == previous
    assert store.events() == []


def test_a_second_writer_is_detected_instead_of_journaling_twice(opener: Opener) -> None:
    with opener() as one, opener() as two:
        base = one.load_snapshot()
        snapshot, events = observe(base, rows((1, "running")), T0)
        one.commit(base, snapshot, events)
        with pytest.raises(StaleSnapshot):
            two.commit(base, snapshot, events)
        assert [e.name for e in two.events()] == ["appeared"]


def test_vanished_rows_are_removed_and_unchanged_rows_kept(store: SqlStore) -> None:
    base = store.load_snapshot()
    first, events = observe(base, rows((1, "running"), (2, "running")), T0)
    store.commit(base, first, events)
    second, events = observe(first, rows((2, "running")), T0 + timedelta(seconds=5))
    store.commit(first, second, events)
    loaded = store.load_snapshot()
    assert set(loaded.views) == {2}
    assert loaded.taken_at == T0 + timedelta(seconds=5)


def test_events_filters(store: SqlStore) -> None:
    base = store.load_snapshot()
    snapshot, events = observe(base, rows((1, "loading"), (2, "loading")), T0)
    store.commit(base, snapshot, events)
    later, events = observe(snapshot, rows((1, "running"), (2, "loading")), T0 + timedelta(seconds=9))
    store.commit(snapshot, later, events)
    assert [e.id for e in store.events(since=1)] == [2, 3]
    assert [e.name for e in store.events(instance_id=1)] == ["appeared", "loading_to_running"]
    assert [e.instance_id for e in store.events(name="appeared")] == [1, 2]


def test_new_handlers_start_after_the_journal_and_marks_compact(store: SqlStore) -> None:
    base = store.load_snapshot()
    snapshot, events = observe(base, rows((1, "loading")), T0)
    store.commit(base, snapshot, events)
    store.activate(["a"])
    assert store.pending() == []  # history before activation is not replayed
    later, events = observe(snapshot, rows((1, "running"), (2, "running")), T0 + timedelta(seconds=1))
    journaled = store.commit(snapshot, later, events)
    store.activate(["a", "b"])
    assert [(e.id, h) for e, h in store.pending()] == [(2, frozenset({"a"})), (3, frozenset({"a"}))]
    store.mark_delivered(3, "a")
    assert [e.id for e, _ in store.pending()] == [2]
    failure = Event(name="handler_failed", instance_id=1, at=T0, detail="a failed")
    recorded = store.mark_delivered(2, "a", failure)
    assert recorded is not None and recorded.id == 4
    assert [(e.id, h) for e, h in store.pending()] == [(4, frozenset({"a", "b"}))]
    assert journaled[0].id == 2
    store.mark_delivered(4, "a")
    store.mark_delivered(4, "b")
    assert store.pending() == []
    assert store.db.query("SELECT COUNT(*) FROM deliveries")[0][0] == 0


def test_deactivated_handlers_are_forgotten(store: SqlStore) -> None:
    store.activate(["a"])
    store.append([Event(name="poll_failed", instance_id=None, at=T0)])
    store.activate([])
    store.activate(["a"])
    assert store.pending() == []


def test_stop_requests_are_cleared_once_the_instance_is_down(store: SqlStore) -> None:
    base = store.load_snapshot()
    running, events = observe(base, rows((1, "running")), T0)
    store.commit(base, running, events)
    store.request_stop(1, T0)
    still, events = observe(running, rows((1, "running")), T0 + timedelta(seconds=1))
    store.commit(running, still, events)
    assert store.stop_requests() == {1}
    stopped, events = observe(still, rows((1, "stopped")), T0 + timedelta(seconds=2))
    store.commit(still, stopped, events)
    assert store.stop_requests() == frozenset()


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open the state file"):
        SqliteStore(path)


def test_empty_snapshot_round_trip(store: SqlStore) -> None:
    base = store.load_snapshot()
    store.commit(base, Snapshot({}, T0), [])
    assert store.load_snapshot() == Snapshot({}, T0)


# --- schema versions


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def test_a_new_store_records_each_component_version(store: SqlStore) -> None:
    assert components(store) == {"effects": 2, "journal": 4, "snapshot": 1}


def test_a_new_sqlite_file_is_at_the_current_format(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "s.db").close()
    assert user_version(tmp_path / "s.db") == FORMAT_VERSION


class Notes:
    """A repository another part adds later, with its own migrations."""

    MIGRATIONS = (Migration("notes", 1, ("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)",)),)

    def __init__(self, db: Database) -> None:
        self.db = db

    def count(self) -> int:
        return int(self.db.query("SELECT COUNT(*) FROM notes")[0][0])


def test_a_repository_added_later_brings_its_migrations_and_keeps_the_data(opener: Opener) -> None:
    with opener() as old:
        old.append([Event(name="poll_failed", instance_id=None, at=T0)])
    with opener() as upgraded:
        assert upgraded.repository(Notes).count() == 0
        assert upgraded.repository(Notes) is upgraded.repository(Notes)
        assert [e.name for e in upgraded.events()] == ["poll_failed"]
        assert components(upgraded)["notes"] == 1
    with opener() as reopened:  # a process that does not use the repository still opens the store
        assert [e.name for e in reopened.events()] == ["poll_failed"]


def test_a_store_of_the_single_list_format_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE snapshot (instance_id INTEGER PRIMARY KEY, view TEXT NOT NULL);
        CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, instance_id INTEGER,
            old TEXT, new TEXT, at TEXT NOT NULL, catch_up INTEGER NOT NULL, raw TEXT, detail TEXT NOT NULL,
            instance TEXT);
        CREATE TABLE handlers (name TEXT PRIMARY KEY, delivered_upto INTEGER NOT NULL);
        CREATE TABLE deliveries (handler TEXT NOT NULL, event_id INTEGER NOT NULL, PRIMARY KEY (handler, event_id));
        CREATE TABLE stop_requests (instance_id INTEGER PRIMARY KEY, at TEXT NOT NULL);
        INSERT INTO events (name, instance_id, at, catch_up, detail)
            VALUES ('poll_failed', NULL, '2026-01-01T00:00:00+00:00', 0, 'x');
        PRAGMA user_version = 1;"""
    )
    db.close()
    with SqliteStore(path) as store:
        assert [e.detail for e in store.events()] == ["x"]
    assert user_version(path) == FORMAT_VERSION


def test_a_failing_migration_changes_nothing(store: SqlStore) -> None:
    class Broken(Notes):
        MIGRATIONS = (Migration("ledger", 1, ("CREATE TABLE ledger (id INTEGER)", "THIS IS NOT SQL")),)

    with pytest.raises(StoreError, match="cannot open the state"):
        store.repository(Broken)
    assert "ledger" not in components(store)
    with pytest.raises(Exception):  # noqa: B017 - each backend has its own "no such table"
        store.db.query("SELECT COUNT(*) FROM ledger")


def test_a_store_from_a_newer_vastevents_is_refused(opener: Opener) -> None:
    with opener() as store, store.db.transaction() as conn:
        conn.execute("UPDATE schema SET version = 9 WHERE component = 'journal'")
    with pytest.raises(StoreError, match="newer vastevents"):
        opener()


def test_a_sqlite_file_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {FORMAT_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer vastevents"):
        SqliteStore(path)


def test_a_state_directory_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot open the state file"):
        SqliteStore(tmp_path / "file" / "state.db")


# --- read-only opening (what commands that only look use)


def test_a_read_only_store_reads_what_was_written_and_refuses_every_write(opener: Opener) -> None:
    with opener() as store:
        snapshot, events = observe(store.load_snapshot(), rows((1, "loading")), T0)
        journaled = store.commit(store.load_snapshot(), snapshot, events)
    looking = opener(read_only=True)
    assert looking.read_only
    assert looking.load_snapshot() == snapshot
    assert looking.events() == journaled
    later, more = observe(snapshot, rows((1, "running")), T0 + timedelta(seconds=5))
    with pytest.raises(StoreError, match="read-only"):
        looking.commit(snapshot, later, more)
    with pytest.raises(StoreError, match="read-only"):
        looking.append([Event(name="poll_failed", instance_id=None, at=T0)])
    with pytest.raises(StoreError, match="read-only"):
        looking.request_stop(1, T0)
    with opener() as store:
        assert store.load_snapshot() == snapshot
        assert store.events() == journaled
        assert store.stop_requests() == frozenset()


def test_a_read_only_store_that_no_watcher_made_reads_as_empty_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.db"
    with SqliteStore(path, read_only=True) as store:
        assert store.load_snapshot() == Snapshot({}, None)
        assert store.events() == []
        assert store.repository(Notes).count() == 0
    assert not path.parent.exists()


def test_a_read_only_team_store_that_no_watcher_made_reads_as_empty_and_creates_nothing(pg_url: str) -> None:
    with PostgresStore(pg_url, read_only=True) as store:
        assert store.events() == []
        assert store.repository(Notes).count() == 0
        assert store.db.query("SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema()") == [(0,)]


def test_a_repository_never_used_reads_as_empty_in_a_read_only_store_without_being_created(opener: Opener) -> None:
    opener().close()
    with opener(read_only=True) as store:
        assert store.repository(Notes).count() == 0
    with opener() as store:
        assert "notes" not in components(store)


def test_a_read_only_store_opened_before_any_writer_sees_what_one_writes_later(opener: Opener) -> None:
    """A dashboard started before the first watch: the store (or a repository's tables) appears under it."""
    looking = opener(read_only=True)
    notes = looking.repository(Notes)
    assert looking.events() == [] and notes.count() == 0
    with opener() as store:
        store.append([Event(name="poll_failed", instance_id=None, at=T0)])
        with store.db.transaction() as conn:
            store.repository(Notes)
            conn.execute("INSERT INTO notes (id, text) VALUES (1, 'hello')")
    assert [e.name for e in looking.events()] == ["poll_failed"]
    assert notes.count() == 1 and looking.repository(Notes) is notes


def test_a_read_only_store_that_needs_an_upgrade_says_how_to_upgrade_it(opener: Opener) -> None:
    class NotesWithTags(Notes):
        MIGRATIONS = (*Notes.MIGRATIONS, Migration("notes", 2, ("ALTER TABLE notes ADD COLUMN tags TEXT",)))

    with opener() as store:
        store.repository(Notes)
    with opener(read_only=True) as store, pytest.raises(StoreError, match="vastevents watch --once"):
        store.repository(NotesWithTags)
    with opener() as store:  # a writing opening upgrades it
        assert store.repository(NotesWithTags).count() == 0
    with opener(read_only=True) as store:
        assert store.repository(NotesWithTags).count() == 0


def test_a_read_only_store_refuses_a_store_from_a_newer_vastevents(opener: Opener) -> None:
    with opener() as store, store.db.transaction() as conn:
        conn.execute("UPDATE schema SET version = 9 WHERE component = 'journal'")
    with pytest.raises(StoreError, match="newer vastevents"):
        opener(read_only=True)


# --- the team-members repository (its other test needs two watchers)


def test_a_team_member_keeps_its_since_until_its_role_changes_and_is_gone_once_it_leaves(store: SqlStore) -> None:
    team = store.repository(TeamMembers)
    team.seen("host-a:1", "leader", T0)
    team.seen("host-b:2", "follower", T0 + timedelta(seconds=1))
    team.seen("host-a:1", "leader", T0 + timedelta(seconds=5))
    assert [(m.member, m.role, m.since, m.seen) for m in team.members()] == [
        ("host-b:2", "follower", T0 + timedelta(seconds=1), T0 + timedelta(seconds=1)),
        ("host-a:1", "leader", T0, T0 + timedelta(seconds=5)),
    ]
    team.seen("host-a:1", "follower", T0 + timedelta(seconds=9))
    team.leave("host-b:2")
    (member,) = team.members()
    assert (member.member, member.role, member.since) == ("host-a:1", "follower", T0 + timedelta(seconds=9))


def test_the_leader_is_the_one_heard_from_last_and_only_if_heard_from_lately(store: SqlStore) -> None:
    team = store.repository(TeamMembers)
    assert team.leader(T0) is None
    team.seen("host-a:1", "leader", T0)
    team.seen("host-b:2", "follower", T0 + timedelta(seconds=8))
    team.seen("host-c:3", "leader", T0 + timedelta(seconds=5))  # a leader that took over
    leader = team.leader(T0 + timedelta(seconds=2))
    assert leader is not None and leader.member == "host-c:3"
    assert team.leader(T0 + timedelta(seconds=6)) is None  # a follower heard from later is no leader


def test_stored_times_sort_as_text_under_an_icu_collation_too(pg_url: str) -> None:
    """Repositories compare and sort stored times as text; a whole second must not sort after its successor."""
    import psycopg

    from vastevents.store._codec import iso

    times = [T0, T0 + timedelta(microseconds=1), T0 + timedelta(seconds=1)]
    with psycopg.connect(pg_url) as conn:
        if conn.execute("SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu'").fetchone() is None:
            pytest.skip("this PostgreSQL server is built without ICU")
        for earlier, later in itertools.pairwise(times):
            row = conn.execute('SELECT %s::text < %s::text COLLATE "und-x-icu"', (iso(earlier), iso(later))).fetchone()
            assert row == (True,), (iso(earlier), iso(later))


def test_journal_writers_on_postgresql_take_turns_so_ids_commit_in_order(pg_url: str) -> None:
    """A reader following the journal by id (a handler's delivered_upto, the dashboard's stream) would pass over
    an event whose transaction committed after a later-numbered one: writers must commit in id order."""
    first, second, reader = PostgresStore(pg_url), PostgresStore(pg_url), PostgresStore(pg_url)
    try:
        _, events = observe(first.load_snapshot(), rows((1, "loading"), (2, "loading")), T0)
        done = threading.Event()

        def journal_second() -> None:
            second.journal.append(events[1:])
            done.set()

        with first.db.transaction() as conn:
            (early,) = first.journal.insert(conn, events[:1])
            writer = threading.Thread(target=journal_second)
            writer.start()
            waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            deadline = time.monotonic() + 30
            while reader.db.query(waiting)[0][0] == 0:
                assert not done.is_set(), "a later id was committed while an earlier one was still open"
                assert time.monotonic() < deadline, "the second writer never came to the journal"
                time.sleep(0.01)
            assert reader.events(since=0) == []  # nothing committed yet: no later id seen before the earlier one
        writer.join(timeout=30)
        assert done.is_set()
        journaled = reader.events(since=0)
        assert [e.id for e in journaled] == sorted(e.id for e in journaled)
        assert [e.instance_id for e in journaled] == [1, 2] and journaled[0].id == early.id
    finally:
        for store in (first, second, reader):
            store.close()
