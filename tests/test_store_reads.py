"""Reading a store page by page, on both backends, each list on an index; following the journal's channel."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from stores import Opener

from vastevents.events import Event
from vastevents.models import Instance
from vastevents.store import Jobs
from vastevents.store.hosts import Hosts
from vastevents.store.journal import CHANNEL
from vastevents.store.ledger import Ledger
from vastevents.store.outbox import Outbox

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def event(name: str, instance_id: int | None, seconds: float) -> Event:
    return Event(name=name, instance_id=instance_id, at=T0 + timedelta(seconds=seconds))


def test_a_page_of_events_is_newest_first_and_each_filter_narrows_it(opener: Opener) -> None:
    store = opener()
    store.append([event("appeared" if n % 3 else "vanished", n % 4, n * 60) for n in range(20)])
    journal = store.journal
    assert [e.id for e in journal.page(limit=5)] == [20, 19, 18, 17, 16]
    assert [e.id for e in journal.page(limit=5, offset=5)] == [15, 14, 13, 12, 11]
    assert all(e.name == "vanished" for e in journal.page(name="vanished", limit=50))
    assert len(journal.page(name="vanished", limit=50)) == 7
    assert {e.instance_id for e in journal.page(instance_ids=[1, 2], limit=50)} == {1, 2}
    assert journal.page(instance_ids=[], limit=50) == []
    window = journal.page(since=T0 + timedelta(minutes=5), until=T0 + timedelta(minutes=8), limit=50)
    assert [e.id for e in window] == [8, 7, 6]  # at 5, 6 and 7 minutes: since inclusive, until exclusive


def test_the_event_filters_run_on_indexes(tmp_path: Path) -> None:
    store = Opener(tmp_path / "s.db")()
    plan = " ".join(
        str(row[-1])
        for row in store.db.query("EXPLAIN QUERY PLAN SELECT id FROM events WHERE name = ? ORDER BY id DESC", ("x",))
    )
    assert "events_by_name" in plan and "TEMP B-TREE" not in plan
    store.close()


def test_jobs_page_newest_first_and_counts_by_status(opener: Opener) -> None:
    jobs = opener().repository(Jobs)
    for _ in range(7):
        jobs.submit({"image": "python:3.11"}, [], "vastevents", T0)
    jobs.update(3, status="finished")
    assert [job.id for job in jobs.page(limit=3)] == [7, 6, 5]
    assert [job.id for job in jobs.page(offset=6, limit=3)] == [1]
    assert jobs.counts() == {"pending": 6, "finished": 1}


def test_ledger_intervals_of_a_range_are_those_that_overlap_it(opener: Opener) -> None:
    store = opener()
    ledger = store.repository(Ledger)
    running = Instance.model_validate({"id": 1, "actual_status": "running", "dph_total": 1.0})
    with store.db.transaction() as conn:
        ledger.observe(conn, 1, running, T0)
        ledger.observe(conn, 1, None, T0 + timedelta(hours=2))
        ledger.observe(conn, 1, running, T0 + timedelta(hours=5))
    assert len(ledger.intervals()) == 2
    assert len(ledger.intervals(since=T0 + timedelta(hours=1))) == 2  # the open one too
    assert len(ledger.intervals(since=T0 + timedelta(hours=3))) == 1
    assert len(ledger.intervals(until=T0 + timedelta(hours=1))) == 1
    assert ledger.intervals(since=T0 + timedelta(hours=3), until=T0 + timedelta(hours=4)) == []


def test_hosts_page_by_machine_and_outbox_backlog(opener: Opener) -> None:
    store = opener()
    hosts = store.repository(Hosts)
    for machine in (30, 10, 20):
        for n in range(2):
            hosts.strike(f"{machine}-{n}", machine, None, f"reason {n}", T0, threshold=5, ttl=60)
    assert [r.machine_id for r in hosts.records(T0, limit=2)] == [10, 20]
    assert [(r.machine_id, r.strikes) for r in hosts.records(T0, offset=2, limit=2)] == [(30, 2)]
    outbox = store.repository(Outbox)
    with store.db.transaction() as conn:
        for n in range(3):
            outbox.queue(conn, handler="slack", key=str(n), channel="#a", payload={}, created_at=T0)
    assert outbox.backlog() == {"slack": 3}


def test_a_reader_of_the_journal_channel_is_woken_by_a_journaled_event(opener: Opener) -> None:
    """On PostgreSQL a NOTIFY in the journaling transaction wakes a LISTENer (a read-only one too); on SQLite the
    listener only waits."""
    writer = opener()
    reader = opener(read_only=True).db
    woken: list[bool] = []
    with reader.listener(CHANNEL) as wait:
        thread = threading.Thread(target=lambda: woken.append(wait(10.0 if reader.pushes else 0.1)))
        thread.start()
        writer.append([event("appeared", 1, 0)])
        thread.join(timeout=15)
    assert woken == [reader.pushes]
