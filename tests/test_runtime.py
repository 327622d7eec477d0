"""Handler semantics through the composition root: threads and timeouts, retries, emits, actions, daemons, timers
(what the store keeps for them on both backends)."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import pytest
from stores import Opener

from vastevents import Context, Event, Handler, NotOwned, PermanentError, Rental, TemporaryError, daemon, every, on
from vastevents.clock import ManualClock
from vastevents.config import parse_config
from vastevents.plugins import activate
from vastevents.runtime import Runtime
from vastevents.sim import Simulator
from vastevents.store import SqliteStore, SqlStore
from vastevents.team import MISSED_BEATS, leading_watcher, member_name
from vastevents.testing import FakeClock, FakeCloud, Harness
from vastevents.vast import VastClient

FAST = parse_config("[watch]\nhandler_timeout = 0.5\n")


def names(events: list[Event]) -> list[str]:
    return [event.name for event in events]


async def test_a_sync_handler_past_its_timeout_fails_and_other_instances_are_served_meanwhile() -> None:
    release = threading.Event()
    served: list[int] = []

    @on("appeared")
    def slow_or_fast(event: Event, ctx: Context) -> None:  # a plain def: runs in a worker thread
        if event.instance_id == 1:
            release.wait(5)  # far past the 0.5 s timeout; released at the end so the thread ends
        else:
            served.append(event.instance_id or 0)

    async with Harness(slow_or_fast, config=FAST) as h:
        h.cloud.add(1, "running")
        h.cloud.add(2, "running")
        h.cloud.add(3, "running")
        try:
            journaled = await h.poll_once()
        finally:
            release.set()
    assert sorted(served) == [2, 3]  # delivered while instance 1's handler was stuck
    (failed,) = [event for event in journaled if event.name == "handler_failed"]
    assert (
        failed.instance_id == 1 and failed.detail.startswith("slow_or_fast") and "timed out after 0.5s" in failed.detail
    )


class Flaky(Handler):
    """Fails twice with a temporary error, then works."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.done: list[int] = []

    @on("appeared")
    async def handle(self, event: Event, ctx: Context) -> None:
        self.calls += 1
        if self.calls <= 2:
            raise TemporaryError("the host is not ready yet", delay=30)
        self.done.append(event.id)


async def test_temporary_errors_redeliver_after_the_delay_with_attempts_persisted(store: SqlStore) -> None:
    flaky = Flaky()
    async with Harness(activate("flaky", flaky), store=store) as h:
        h.cloud.add(1, "running")
        await h.poll_once()
        assert flaky.calls == 1
        retry = h.store.journal.retry("flaky", 1)
        assert retry is not None and retry.attempts == 1 and "not ready" in retry.error
        await h.poll_once()  # not due yet: no second call
        assert flaky.calls == 1
        h.clock.advance(30)
        await h.poll_once()
        retry = h.store.journal.retry("flaky", 1)
        assert flaky.calls == 2 and retry is not None and retry.attempts == 2
        h.clock.advance(30)
        await h.poll_once()
        assert flaky.calls == 3 and flaky.done == [1]
        assert h.store.journal.retry("flaky", 1) is None and h.store.pending() == []
        assert "handler_failed" not in names(h.journal())


async def test_a_temporary_error_past_max_attempts_becomes_handler_failed_and_permanent_is_at_once(
    store: SqlStore,
) -> None:
    @on("appeared")
    async def never(event: Event, ctx: Context) -> None:
        if event.instance_id == 1:
            raise TemporaryError("still no", delay=0)
        raise PermanentError("the image does not exist")

    config = parse_config("[watch]\nmax_attempts = 3\n")
    async with Harness(never, config=config, store=store) as h:
        h.cloud.add(1, "running")
        h.cloud.add(2, "running")
        await h.poll_once()
        failed = {event.instance_id: event.detail for event in h.journal() if event.name == "handler_failed"}
    assert "still no" in failed[1] and "gave up after 3 attempts" in failed[1]
    assert "PermanentError: the image does not exist" in failed[2]


async def test_a_retrying_event_holds_back_later_events_of_its_instance_for_that_handler(store: SqlStore) -> None:
    seen: list[str] = []

    @on("*")
    async def ordered(event: Event, ctx: Context) -> None:
        if event.name == "appeared" and not seen:
            seen.append("failed once")
            raise TemporaryError("later", delay=60)
        seen.append(event.name)

    async with Harness(ordered, store=store) as h:
        h.cloud.add(1, "loading")
        await h.poll_once()
        h.cloud.set_status(1, "running")
        h.clock.advance(15)
        await h.poll_once()
        assert seen == ["failed once"]  # loading_to_running waits behind the retry
        h.clock.advance(60)
        await h.poll_once()
    assert seen == ["failed once", "appeared", "loading_to_running"]


class Starter(Handler):
    emits = ("job_started",)

    @on("loading_to_running")
    async def start(self, event: Event, ctx: Context) -> None:
        await ctx.emit("job_started", detail="train.py")


async def test_an_emitted_event_reaches_observers_other_handlers_and_the_journal_once(store: SqlStore) -> None:
    heard: list[str] = []

    @on("job_started")
    async def listener(event: Event, ctx: Context) -> None:
        heard.append(f"{event.instance_id} {event.detail}")

    async with Harness(activate("starter", Starter()), listener, store=store) as h:
        h.cloud.add(1, "loading", label="vastevents:job-1")
        await h.poll_once()
        h.cloud.set_status(1, "running")
        h.clock.advance(15)
        cycle = await h.poll_once()
        assert names(cycle) == ["loading_to_running", "job_started"]
        assert heard == ["1 train.py"]
        job_started = h.store.events(name="job_started")
        assert len(job_started) == 1 and job_started[0].instance is not None

        # Delivered again (as after a crash before the mark): the same emit journals nothing new.
        again = h.runtime.context.bound("starter", Starter.emits, event=h.store.events(name="loading_to_running")[0])
        await again.emit("job_started", detail="train.py")
        assert len(h.store.events(name="job_started")) == 1


async def test_emitting_an_undeclared_name_is_an_error() -> None:
    @on("appeared")
    async def sneaky(event: Event, ctx: Context) -> None:
        await ctx.emit("job_started")

    async with Harness(sneaky) as h:
        h.cloud.add(1, "running")
        await h.poll_once()
        (failed,) = h.store.events(name="handler_failed")
    assert "declares only nothing" in failed.detail


async def test_destroying_a_foreign_instance_is_refused_and_sends_nothing(store: SqlStore) -> None:
    refused: list[str] = []

    @on("appeared")
    async def reaper(event: Event, ctx: Context) -> None:
        try:
            await ctx.destroy(event.instance_id or 0)
        except NotOwned as exc:
            refused.append(str(exc))

    async with Harness(reaper, store=store) as h:
        h.cloud.add(7, "running", label="someone-else")
        await h.poll_once()
        assert h.cloud.calls == [] and 7 in h.cloud.instances
        assert h.store.effects.intents(7) == []
    assert "refusing to destroy instance 7" in refused[0]


async def test_create_records_the_intent_first_and_a_crash_in_between_is_reconciled(store: SqlStore) -> None:
    cloud = FakeCloud()

    async def rent_then_crash(rental: Rental) -> int:
        cloud.add(2001, "loading", label=rental.label)
        raise KeyboardInterrupt  # the process dies between the call and recording its result

    cloud.create_instance = rent_then_crash  # type: ignore[method-assign]
    runtime = Runtime(client=cloud, store=store, clock=ManualClock(), handlers=[])
    async with runtime:
        with pytest.raises(KeyboardInterrupt):
            await runtime.context.bound("jobs", ()).create(Rental(1, image="pytorch/pytorch", disk=64))
        (intent,) = store.effects.open_intents()
        assert intent.action == "create" and intent.label and intent.label.startswith("vastevents:jobs-")
    async with Runtime(client=cloud, store=store, clock=ManualClock(), handlers=[]):
        assert store.effects.open_intents() == []
        assert store.effects.intents(2001) == [("create", "created (found after a restart)")]


async def test_our_stop_of_a_bid_instance_is_a_stop_never_a_preemption(sim: Simulator, api_key: str) -> None:
    instance_id = sim.create_instance(label="vastevents:bid-1", bid=True)
    sim.advance(600)

    class Stopper(Handler):
        @on("appeared")
        async def stop(self, event: Event, ctx: Context) -> None:
            await ctx.stop(event.instance_id or 0)

    clock = sim.clock
    async with VastClient(api_key, sim.url) as client, Runtime(
        client=client, store=SqliteStore(":memory:"), clock=clock, handlers=[activate("stopper", Stopper())]
    ) as runtime:  # fmt: skip
        first = await runtime.poll_once()
        assert [(e.name, e.instance_id) for e in first] == [("appeared", instance_id)]
        journaled: list[Event] = []
        for _ in range(4):  # past the preemption grace
            sim.advance(60)
            journaled += await runtime.poll_once()
        await client.destroy_instance(instance_id)
    assert names(journaled) == ["running_to_stopped"]
    assert sim.instance_count() == 0


class Monitor(Handler):
    """Starts a daemon per running instance; the daemon counts its checkpoints and waits."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[tuple[int, dict[str, Any]]] = []
        self.cancelled: list[int] = []

    @on("appeared")
    async def begin(self, event: Event, ctx: Context) -> None:
        await ctx.spawn(self.watch_job, event.instance_id or 0, {"step": 0})

    @daemon
    async def watch_job(self, instance_id: int, state: dict[str, Any], ctx: Context) -> None:
        self.started.append((instance_id, dict(state)))
        try:
            while True:
                await ctx.clock.sleep(60)
                state["step"] += 1
                ctx.checkpoint(state)
        except asyncio.CancelledError:
            self.cancelled.append(instance_id)
            raise


async def test_a_daemon_survives_a_restart_from_its_checkpoint_and_is_cancelled_on_vanished(opener: Opener) -> None:
    cloud, clock = FakeCloud(), FakeClock(auto_advance=False)
    cloud.add(1, "running", label="vastevents:job-1")
    first = Monitor()
    async with Harness(activate("monitor", first), cloud=cloud, clock=clock, store=opener()) as h:
        await h.poll_once()
        await h.advance(60)
        await h.advance(60)
        assert h.runtime.daemons.running() == [("monitor", "watch_job", 1)]
    assert first.started == [(1, {"step": 0})] and first.cancelled == [1]  # stopped with the runtime

    second = Monitor()
    async with Harness(activate("monitor", second), cloud=cloud, clock=clock, store=opener()) as h:
        await h.advance(0)
        assert second.started == [(1, {"step": 2})]  # resumed from the last checkpoint, not from scratch
        cloud.remove(1)
        clock.advance(15)
        assert names(await h.poll_once()) == ["vanished"]
        await h.advance(0)
        assert second.cancelled == [1] and h.runtime.daemons.running() == []
        assert h.store.effects.daemons() == []


class Ticker(Handler):
    def __init__(self) -> None:
        super().__init__()
        self.ticks: list[str] = []

    @every("5m")
    async def tick(self, ctx: Context) -> None:
        self.ticks.append(ctx.clock.now().strftime("%H:%M"))


async def test_a_periodic_handler_runs_when_due_on_a_manual_clock(store: SqlStore) -> None:
    ticker = Ticker()
    async with Harness(activate("ticker", ticker), store=store) as h:
        await h.poll_once()
        h.clock.advance(120)
        await h.poll_once()
        h.clock.advance(180)
        await h.poll_once()
        await h.runtime.poll_once(all_periodic=True)  # `watch --once` runs every periodic handler once
    assert ticker.ticks == ["00:00", "00:05", "00:05"]


async def test_a_failing_periodic_handler_is_reported_and_the_cycle_goes_on() -> None:
    @every(60)
    async def broken(ctx: Context) -> None:
        raise RuntimeError("ledger unreadable")

    async with Harness(broken) as h:
        h.cloud.add(1, "running")
        journaled = await h.poll_once()
    assert names(journaled) == ["appeared", "handler_failed"]
    assert journaled[1].detail.startswith("broken") and "ledger unreadable" in journaled[1].detail


async def test_a_watcher_alone_on_its_store_beats_each_cycle_and_leaves_the_roster_when_it_stops(
    opener: Opener,
) -> None:
    """Readers (``team status``, ``run --submit``, ``vastevents mcp``) tell by the heartbeat whether one watches."""
    interval, store = FAST.watch.interval, opener()
    assert leading_watcher(store, interval) is None
    async with Harness(store=opener()) as h:
        await h.poll_once()
        first = leading_watcher(store, interval)
        assert first is not None and first.member == member_name() and first.role == "leader"
        await h.poll_once()
        again = leading_watcher(store, interval)
        assert again is not None and again.seen >= first.seen and again.since == first.since
        later = first.seen + timedelta(seconds=MISSED_BEATS * interval + 1)
        assert leading_watcher(store, interval, later) is None  # three intervals unheard: nobody watches
    assert leading_watcher(store, interval) is None
