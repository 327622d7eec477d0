"""The billing handler on both store backends: ledger arithmetic on a manual clock, budgets, and a restart in
the middle."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from stores import Opener

from vastevents import Instance, Interval, Ledger, LedgerInstance
from vastevents.config import parse_config
from vastevents.costs import Charge, build_report
from vastevents.plugins import ActiveHandler, activate
from vastevents.store import SqlStore
from vastevents.testing import FakeCloud, Harness
from vastevents_handlers import billing as billing_module
from vastevents_handlers.billing import BillingHandler

STORAGE = {"storage_cost": 0.1, "disk_space": 72.0}  # 0.1 $/GB/month x 72 GB / 720 h = $0.01/h


def billing(**options: Any) -> ActiveHandler:
    return activate("billing", BillingHandler, options, use="billing")


def ledger_total(h: Harness) -> float:
    return sum(i.cost_usd(h.clock.now()) for i in h.store.repository(Ledger).intervals())


async def test_running_stopped_running_bid_change_destroyed_to_the_cent(store: SqlStore) -> None:
    async with Harness(billing(), store=store) as h:
        h.cloud.add(1, "running", dph_total=0.5, label="vastevents:job-7", **STORAGE)
        await h.poll_once()
        h.clock.advance(3600)
        h.cloud.set_status(1, "stopped")
        await h.poll_once()  # running 1 h at 0.50
        h.clock.advance(7200)
        h.cloud.set_status(1, "running")
        await h.poll_once()  # stopped 2 h at 0.01 (storage only)
        h.clock.advance(1800)
        h.cloud.update(1, dph_total=0.8)
        await h.poll_once()  # running 0.5 h at 0.50; the bid change opens a new interval
        h.clock.advance(1800)
        h.cloud.remove(1)
        await h.poll_once()  # running 0.5 h at 0.80, then nothing

        intervals = h.store.repository(Ledger).intervals()
        assert [(i.state, round(i.rate_usd_h, 4), i.cost_usd(h.clock.now())) for i in intervals] == [
            ("running", 0.5, pytest.approx(0.5)),
            ("stopped", 0.01, pytest.approx(0.02)),
            ("running", 0.5, pytest.approx(0.25)),
            ("running", 0.8, pytest.approx(0.4)),
        ]
        assert all(i.end is not None and i.job_id == "7" for i in intervals)
        h.clock.advance(3600)  # destroyed: nothing accrues any more
        assert ledger_total(h) == pytest.approx(1.17)
        seen = h.store.repository(Ledger).instances()[1]
        assert seen.observed_only  # first seen already running: the report says "observed since"
        assert seen.gone_at is not None


async def test_an_instance_seen_while_loading_is_covered_from_first_sight_at_storage_rate(store: SqlStore) -> None:
    async with Harness(billing(), store=store) as h:
        h.cloud.add(2, "loading", dph_total=0.31, **STORAGE)
        await h.poll_once()
        h.clock.advance(600)
        h.cloud.set_status(2, "running")
        await h.poll_once()
        h.clock.advance(600)
        assert ledger_total(h) == pytest.approx(0.01 / 6 + 0.31 / 6)
        assert not h.store.repository(Ledger).instances()[2].observed_only


class Killed(BaseException):
    """The process dies here (nothing after it runs, the open transaction is rolled back)."""


async def test_a_kill_between_the_ledger_write_and_the_delivery_mark_neither_loses_nor_double_counts(
    opener: Opener,
) -> None:
    cloud = FakeCloud()
    cloud.add(3, "running", dph_total=1.0, label="vastevents:a", **STORAGE)
    first = Harness(billing(), cloud=cloud, store=opener())
    clock = first.clock
    await first.poll_once()
    clock.advance(3600)
    cloud.set_status(3, "stopped")

    def die(*args: Any, **kwargs: Any) -> None:
        raise Killed

    first.store.journal._compact = die  # type: ignore[method-assign]  # dies inside the delivery's transaction
    with pytest.raises(Killed):
        await first.poll_once()
    first.close()

    async with Harness(billing(), cloud=cloud, clock=clock, store=opener()) as second:
        await second.poll_once()  # the stop is delivered again: the ledger gets it exactly once
        await second.poll_once()
        ledger = second.store.repository(Ledger)
        assert [(i.state, i.end is None) for i in ledger.intervals()] == [("running", False), ("stopped", True)]
        assert ledger_total(second) == pytest.approx(1.0)
        clock.advance(3600)
        assert ledger_total(second) == pytest.approx(1.01)


async def test_a_budget_warns_then_exceeds_once_and_destroys_only_owned_instances(store: SqlStore) -> None:
    config = parse_config('[vast]\nlabel_prefix = "vastevents"\n')
    handler = billing(budget_usd=1.0, on_exceed="destroy")
    async with Harness(handler, config=config, store=store) as h:
        h.cloud.add(10, "running", dph_total=0.6, label="vastevents:job-1", **STORAGE)
        h.cloud.add(11, "running", dph_total=5.0, label="someone-else", **STORAGE)  # costs a lot, not ours
        await h.poll_once()
        h.clock.advance(3600)  # $0.60: past warn_at 0.8? no; projected past $1 within the hour: a warning
        events = await h.poll_once()
        assert [e.name for e in events] == ["budget_warning"]
        assert "projected" in events[0].detail
        h.clock.advance(2400)  # $1.00
        events = await h.poll_once()
        assert [e.name for e in events] == ["budget_exceeded"]
        assert h.cloud.calls == [("destroy", 10)]
        assert sorted(h.cloud.instances) == [11]
        events = await h.poll_once()
        assert [e.name for e in events] == ["vanished"]  # exceeded is journaled once per scope
        assert h.cloud.calls == [("destroy", 10)]


async def test_a_per_job_budget_stops_that_job_only(store: SqlStore) -> None:
    handler = billing(per_job_usd=0.5, on_exceed="stop")
    async with Harness(handler, store=store) as h:
        h.cloud.add(20, "running", dph_total=1.0, label="vastevents:job-a", **STORAGE)
        h.cloud.add(21, "running", dph_total=0.5, label="vastevents:job-b", **STORAGE)
        events = await h.poll_once()  # both burn a job's budget within the projection hour
        assert [(e.name, e.instance_id) for e in events if e.name.startswith("budget")] == [
            ("budget_warning", 20),
            ("budget_warning", 21),
        ]
        h.clock.advance(1800)
        events = await h.poll_once()
        assert [(e.name, e.instance_id) for e in events] == [("budget_exceeded", 20)]
        assert h.cloud.calls == [("stop", 20)]


def charges(amounts: dict[int, float], until: datetime) -> dict[int, Charge]:
    return {instance_id: Charge(amount, until) for instance_id, amount in amounts.items()}


def test_the_report_flags_an_instance_billing_while_the_list_hides_it_and_splits_days_at_midnight() -> None:
    start = datetime(2026, 1, 1, 23, 0, tzinfo=UTC)
    now = start + timedelta(hours=3)
    intervals = [
        Interval(1, "vastevents:job-1", "1", "running", 1.0, start, None),  # the list stopped showing it
        Interval(2, "vastevents:job-2", "2", "running", 1.0, start, start + timedelta(hours=1)),
    ]
    known = {
        1: LedgerInstance(1, start, "running", "vastevents:job-1", "1", None),
        2: LedgerInstance(2, start, "loading", "vastevents:job-2", "2", start + timedelta(hours=1)),
    }
    report = build_report(
        intervals, known, now=now, by="day", charged=charges({1: 3.0, 2: 1.004, 3: 0.5}, now), listed=set()
    )
    rows = {row.instance_id: row for row in report.instances}
    assert rows[1].ghost is None and not rows[1].flagged  # billing as we saw it: not a ghost yet
    assert rows[2].ghost is None and not rows[2].flagged  # destroyed, charged what we saw, within a cent
    assert rows[3].ghost is not None and "never seen" in rows[3].ghost
    assert rows[1].observed_only and not rows[2].observed_only
    assert dict(report.groups) == {"2026-01-01": pytest.approx(2.0), "2026-01-02": pytest.approx(2.0)}

    later = build_report(intervals, known, now=now, charged=charges({1: 5.0, 2: 1.0}, now), listed={2})
    ghost = {row.instance_id: row.ghost for row in later.instances}
    assert ghost[1] is not None and "no longer on the instance list" in ghost[1]
    assert ghost[2] is None  # shown by the list: a difference at most, never a ghost
    before_we_watched = build_report(intervals, known, now=now, charged=charges({4: 2.0}, start), listed=set())
    assert [row.ghost for row in before_we_watched.instances if row.instance_id == 4] == [None]
    nothing_kept = build_report([], {}, now=now, charged=charges({4: 2.0}, now), listed=set())
    assert nothing_kept.ghosts == []  # no ledger: nothing to account with, no alarm
    unread = build_report(intervals, known, now=now, charges_error="HTTP 401")
    assert unread.charged_total_usd is None and unread.total_usd == pytest.approx(4.0)


async def test_low_account_credit_warns_once_a_day(store: SqlStore) -> None:
    async with Harness(billing(low_credit_usd=20.0), store=store) as h:
        await h.poll_once()
        h.cloud.credit = 12.5
        h.clock.advance(600)
        events = await h.poll_once()
        assert [(e.name, e.detail) for e in events] == [
            ("budget_warning", "account credit $12.50 is below low_credit_usd $20.00")
        ]
        h.clock.advance(600)
        assert await h.poll_once() == []


async def test_a_raised_budget_is_watched_afresh(opener: Opener) -> None:
    cloud = FakeCloud()
    cloud.add(30, "running", dph_total=1.0, label="vastevents:a", **STORAGE)
    first = Harness(billing(budget_usd=1.0, projection=0), cloud=cloud, store=opener())
    await first.poll_once()
    first.clock.advance(3600)
    assert [e.name for e in await first.poll_once()] == ["budget_exceeded"]
    await first.aclose()
    async with Harness(billing(budget_usd=2.0, projection=0), cloud=cloud, clock=first.clock, store=opener()) as second:
        assert await second.poll_once() == []
        second.clock.advance(3600)
        events = await second.poll_once()
        assert [(e.name, "of $2.00" in e.detail) for e in events] == [("budget_exceeded", True)]


def test_the_ledger_records_a_keyed_observation_once_and_a_sweep_opens_a_bid_change(store: SqlStore) -> None:
    ledger = store.repository(Ledger)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    running = Instance(id=1, actual_status="running", dph_total=0.31, label="vastevents:job-2", **STORAGE)
    with store.db.transaction() as conn:
        assert ledger.observe(conn, 1, running, t0, key="event:1")
        assert not ledger.observe(conn, 1, running.model_copy(update={"actual_status": "stopped"}), t0, key="event:1")
    ledger.sweep([running], t0 + timedelta(minutes=5))  # unchanged: nothing new
    ledger.sweep([running.model_copy(update={"dph_total": 0.37})], t0 + timedelta(hours=1))
    ledger.sweep([], t0 + timedelta(hours=2))
    intervals = ledger.intervals()
    assert [(i.rate_usd_h, i.start, i.end, i.job_id) for i in intervals] == [
        (0.31, t0, t0 + timedelta(hours=1), "2"),
        (0.37, t0 + timedelta(hours=1), t0 + timedelta(hours=2), "2"),
    ]
    assert ledger.intervals(instance_id=2) == []
    assert ledger.instances()[1].gone_at == t0 + timedelta(hours=2)


def test_after_a_gap_a_dearer_state_is_billed_from_the_gaps_start_and_a_rental_from_its_start_date(
    store: SqlStore,
) -> None:
    """What the ledger did not see (its last complete list is older than `gap`) is reconstructed on the side of what
    it may have cost; a list within `gap` of the last one is dated as observed."""
    ledger = store.repository(Ledger)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    t1 = t0 + timedelta(hours=1)
    booting = Instance(id=1, actual_status="loading", dph_total=0.31, label="vastevents:job-1", **STORAGE)
    along = Instance(id=2, actual_status="running", dph_total=0.5, label="vastevents:job-2", **STORAGE)
    ledger.sweep([booting, along], t0, gap=30)  # the last list before the watcher went down
    rented = Instance(id=3, actual_status="running", dph_total=0.4, start_date=(t0 + timedelta(minutes=10)).timestamp())
    up, down = (
        booting.model_copy(update={"actual_status": "running"}),
        along.model_copy(update={"actual_status": "exited"}),
    )
    ledger.sweep([up, down, rented], t1, gap=30)
    ledger.sweep([up, down.model_copy(update={"actual_status": "running"}), rented], t1 + timedelta(seconds=15), gap=30)
    spans = [(i.instance_id, i.state, i.start, i.end) for i in ledger.intervals()]
    assert spans == [
        (1, "loading", t0, t0),  # a dearer state after the gap: billed from the gap's start
        (1, "running", t0, None),
        (2, "running", t0, t1),  # a cheaper one: at the gap's end
        (2, "exited", t1, t1 + timedelta(seconds=15)),  # within `gap` of the last list: as observed
        (2, "running", t1 + timedelta(seconds=15), None),
        (3, "running", t0 + timedelta(minutes=10), None),  # rented during the gap: from its start date
    ]
    assert not ledger.instances()[3].observed_only


def test_the_guessed_time_of_a_gap_is_settled_with_vasts_gpu_charges_never_below_them(store: SqlStore) -> None:
    """After a gap the ledger bills what it did not see as dear as it may have been: a start that came up running
    from the gap's start, a rental from its start date, one running all along as running throughout. Vast's GPU
    charges, once they cover the gap, take out the GPU time it did not charge (moving the guessed start, or billing
    a stretch of the unseen time at storage only); charges that do not reach the gap's end change nothing yet, and
    the ledger is never taken below the charges."""
    ledger = store.repository(Ledger)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    t1 = t0 + timedelta(hours=1)
    minutes = lambda n: t0 + timedelta(minutes=n)  # noqa: E731
    booting = Instance(id=1, actual_status="loading", dph_total=0.31, **STORAGE)
    along = Instance(id=2, actual_status="running", dph_total=0.5, **STORAGE)
    ledger.sweep([booting, along], t0, gap=30)
    rented = Instance(id=3, actual_status="running", dph_total=0.4, start_date=minutes(10).timestamp(), **STORAGE)
    ledger.sweep([booting.model_copy(update={"actual_status": "running"}), along, rented], t1, gap=30)
    assert [(i, start, end) for i, start, end in ledger.unseen()] == [(1, t0, t1), (2, t0, t1), (3, minutes(10), t1)]

    def gpu(instance_id: int, usd: float, until: datetime) -> dict[str, Any]:
        return {"type": "instance", "source": f"instance-{instance_id}", "amount": usd + 1.0, "end": until.timestamp(),
                "metadata": {"instance_id": instance_id}, "items": [
                    {"type": "gpu", "amount": usd}, {"type": "storage", "amount": 1.0}]}  # fmt: skip

    # Vast: 1 came up at minute 40, 2 was offline minutes 10-20, 3 came up at minute 15; 4 is someone else's.
    truth = [gpu(1, 0.30 * 20 / 60, t1), gpu(2, 0.49 * 50 / 60, t1), gpu(3, 0.39 * 45 / 60, t1), gpu(4, 9.0, t1)]
    assert ledger.settle([gpu(1, 0.0, minutes(59))]) == []  # the charges do not cover the gap yet
    assert ledger.settle(truth) == [1, 2, 3]
    spans = [(i.instance_id, i.state, round(i.rate_usd_h, 4), i.start, i.end) for i in ledger.intervals()]
    assert spans == [
        (1, "loading", 0.01, t0, minutes(40)),  # the guessed start moved to when Vast started charging the GPU
        (1, "running", 0.31, minutes(40), None),
        (2, "unseen", 0.01, t0, minutes(10)),  # not running for 10 of the unseen minutes (which ones: not known)
        (2, "running", 0.5, minutes(10), None),
        (3, "unseen", 0.01, minutes(10), minutes(15)),
        (3, "running", 0.4, minutes(15), None),
    ]
    assert ledger.unseen() == []
    for instance_id, charged in [(1, 0.30 * 20 / 60), (2, 0.49 * 50 / 60), (3, 0.39 * 45 / 60)]:
        mine = ledger.intervals(instance_id=instance_id)
        storage = sum(0.01 * ((i.end or t1) - i.start).total_seconds() / 3600 for i in mine)
        assert sum(i.cost_usd(t1) for i in mine) == pytest.approx(charged + storage)

    # Charges above what the ledger counts (it was low, or they include what it cannot know) change nothing.
    ledger.sweep([along.model_copy(update={"id": 5})], t1 + timedelta(seconds=10), gap=30)
    ledger.sweep([along.model_copy(update={"id": 5})], t1 + timedelta(hours=1), gap=30)
    before = ledger.intervals(instance_id=5)
    assert ledger.settle([gpu(5, 5.0, t1 + timedelta(hours=1))]) == [5]
    assert ledger.intervals(instance_id=5) == before


def test_a_watcher_whose_polls_failed_remembers_the_stretch_as_unseen_without_redating_what_it_then_saw(
    store: SqlStore,
) -> None:
    """Polls failed for a minute (a 503 storm) while the watcher stayed up: a host flap in there was never seen.
    The stretch is remembered for the charges to settle; what the next list shows is dated when it was seen."""
    ledger = store.repository(Ledger)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    t1 = t0 + timedelta(minutes=1)
    loading = Instance(id=1, actual_status="loading", dph_total=0.31, **STORAGE)
    ledger.sweep([loading], t0, blind=30)
    ledger.sweep([loading.model_copy(update={"actual_status": "running"})], t1, blind=30)
    assert [(i.state, i.start, i.end) for i in ledger.intervals()] == [("loading", t0, t1), ("running", t1, None)]
    assert ledger.unseen() == [(1, t0, t1)]


async def test_charges_that_do_not_answer_hold_the_check_only_settle_wait_and_the_budget_still_acts(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API retrying through a storm would hold the check (and the periodic handlers behind it) for minutes:
    reading the charges to settle is given up after SETTLE_WAIT, the unseen stretch stays for the next try, and
    the budget acts on the unsettled figure."""
    monkeypatch.setattr(billing_module, "SETTLE_WAIT", 0.05)
    config = parse_config('[vast]\nlabel_prefix = "vastevents"\n')
    async with Harness(billing(budget_usd=1.0, on_exceed="destroy"), config=config, store=store) as h:
        never = asyncio.Event()

        async def hanging(**_: Any) -> dict[str, Any]:
            await never.wait()
            return {}

        h.cloud.charges = hanging  # type: ignore[method-assign]
        h.cloud.add(10, "running", dph_total=0.6, label="vastevents:job-1", **STORAGE)
        await h.poll_once()
        h.clock.advance(6000)  # no list for 100 minutes: unseen, $1.00 as guessed
        events = await asyncio.wait_for(h.poll_once(), 30)
        assert [e.name for e in events] == ["budget_exceeded"]
        assert h.cloud.calls == [("destroy", 10)]
        assert h.store.repository(Ledger).unseen() != [], "left to settle later"


def test_an_instance_gone_unseen_in_a_gap_ends_where_vasts_charges_for_it_end(store: SqlStore) -> None:
    """Destroyed (by us, just before the watcher was killed) in a gap: the ledger closed it at the gap's end, when it
    noticed. Vast's charge for it ends when it was destroyed: so does the ledger, storage included."""
    ledger = store.repository(Ledger)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    t1 = t0 + timedelta(hours=1)
    ended = t0 + timedelta(minutes=20)
    running = Instance(id=1, actual_status="running", dph_total=0.5, **STORAGE)
    ledger.sweep([running], t0, gap=30)
    ledger.sweep([], t1, gap=30)
    stale = {"source": "instance-1", "end": (t0 - timedelta(minutes=1)).timestamp(), "items": [{"type": "gpu"}]}
    assert ledger.settle([stale]) == [], "charges that end before the stretch are stale"
    item = {"source": "instance-1", "amount": 0.5 / 3, "end": ended.timestamp(), "metadata": {"instance_id": 1},
            "items": [{"type": "gpu", "amount": 0.49 / 3}, {"type": "storage", "amount": 0.01 / 3}]}  # fmt: skip
    assert ledger.settle([item]) == [1]
    assert [(i.state, i.start, i.end) for i in ledger.intervals()] == [("running", t0, ended)]
    assert ledger.instances()[1].gone_at == ended
    assert sum(i.cost_usd(t1) for i in ledger.intervals()) == pytest.approx(0.5 / 3)
