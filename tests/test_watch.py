"""The watcher loop through real parts (a store on each backend, the bus) on the fake cloud and a manual clock, and
through the real client against the simulator."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from stores import Opener

from vastevents import Context, Event, on
from vastevents.clock import ManualClock
from vastevents.diff import Rules
from vastevents.errors import ApiError, AuthError, RateLimited
from vastevents.plugins import activate
from vastevents.runtime import Runtime
from vastevents.sim import Simulator
from vastevents.store import SqliteStore
from vastevents.testing import FakeClock, FakeCloud, Harness
from vastevents.vast import VastClient


def names(events: list[Event]) -> list[str]:
    return [event.name for event in events]


async def test_restart_catch_up_and_no_event_for_known_unchanged(opener: Opener) -> None:
    cloud, clock = FakeCloud(), FakeClock()
    cloud.add(1, "running")
    cloud.add(2, "loading")
    first = Harness(cloud=cloud, clock=clock, store=opener())
    appeared = await first.poll_once()
    assert [(e.name, e.catch_up) for e in appeared] == [("appeared", False), ("appeared", False)]
    first.close()

    cloud.set_status(2, "running")
    cloud.add(3, None)
    clock.advance(600)
    second = Harness(cloud=cloud, clock=clock, store=opener())
    events = await second.poll_once()
    assert [(e.instance_id, e.name, e.catch_up) for e in events] == [
        (2, "loading_to_running", True),
        (3, "appeared", True),
    ]
    cloud.remove(1)
    clock.advance(15)
    assert [(e.name, e.catch_up) for e in await second.poll_once()] == [("vanished", False)]
    assert [e.id for e in second.journal()] == [1, 2, 3, 4, 5]
    second.close()


async def test_catch_up_waits_for_the_first_list_that_succeeds_after_a_restart(opener: Opener) -> None:
    cloud, clock = FakeCloud(), FakeClock()
    cloud.add(1, "loading")
    first = Harness(cloud=cloud, clock=clock, store=opener())
    await first.poll_once()
    first.close()

    cloud.set_status(1, "running")  # changed while nobody watched
    cloud.fail_next(ApiError("HTTP 503", status_code=503))
    restarted = Harness(cloud=cloud, clock=clock, store=opener())
    assert names(await restarted.poll_once()) == ["poll_failed"]
    clock.advance(15)
    assert [(e.name, e.catch_up) for e in await restarted.poll_once()] == [("loading_to_running", True)]
    cloud.set_status(1, "exited")
    clock.advance(15)
    assert [(e.name, e.catch_up) for e in await restarted.poll_once()] == [("running_to_exited", False)]
    restarted.close()


async def test_undelivered_events_are_delivered_first_after_a_crash(opener: Opener) -> None:
    cloud, clock = FakeCloud(), FakeClock()
    cloud.add(1, "loading")

    started, never = asyncio.Event(), asyncio.Event()

    @on("*")
    async def hangs(event: Event, ctx: Context) -> None:
        started.set()
        await never.wait()

    crashing = Harness(activate("recorder", hangs), cloud=cloud, clock=clock, store=opener())
    cycle = asyncio.ensure_future(crashing.poll_once())
    await asyncio.wait_for(started.wait(), 5)  # committed, delivery under way: now "crash"
    cycle.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cycle
    crashing.close()

    got: list[tuple[int, str]] = []

    @on("*")
    async def records(event: Event, ctx: Context) -> None:
        got.append((event.id, event.name))

    cloud.set_status(1, "running")
    clock.advance(30)
    restarted = Harness(activate("recorder", records), cloud=cloud, clock=clock, store=opener())
    events = await restarted.poll_once()
    assert got == [(1, "appeared"), (2, "loading_to_running")]
    assert names(events) == ["loading_to_running"]
    assert [e.name for e in restarted.journal()] == ["appeared", "loading_to_running"]
    restarted.close()


async def test_another_watchers_handlers_on_the_same_store_do_not_hang_delivery(opener: Opener) -> None:
    @on("*")
    async def a(event: Event, ctx: Context) -> None: ...

    @on("*")
    async def b(event: Event, ctx: Context) -> None: ...

    cloud = FakeCloud()
    first = Harness(activate("a", a), cloud=cloud, store=opener())
    await first.poll_once()
    second = Harness(activate("b", b), cloud=cloud, store=opener())
    await second.poll_once()  # makes "b" the store's only active handler
    cloud.add(1, "running")
    events = await asyncio.wait_for(first.poll_once(), 5)  # b's undelivered events are not ours to spin on
    assert names(events) == ["appeared"]
    first.close()
    second.close()


async def test_a_failed_page_applies_no_diff_and_reports_poll_failed_once_per_streak() -> None:
    h = Harness()
    h.cloud.add(1, "running")
    h.cloud.add(2, "running")
    await h.poll_once()
    h.cloud.remove(1)
    h.cloud.fail_next(ApiError("page 2 of 2 failed: HTTP 502", status_code=502))
    h.cloud.fail_next(ApiError("page 1 of 2 failed: HTTP 502", status_code=502))
    failed = await h.poll_once()
    assert [(e.name, e.instance_id) for e in failed] == [("poll_failed", None)]
    assert "502" in failed[0].detail
    assert await h.poll_once() == []  # same streak: status line and log only
    assert h.watcher.status.failures == 2
    assert names(await h.poll_once()) == ["vanished"]
    assert h.watcher.status.error is None


async def test_rate_limits_slow_the_loop_down_but_never_stop_it() -> None:
    h = Harness()
    h.watcher.interval = 10
    h.cloud.fail_next(RateLimited("429", retry_after=45))
    await h.poll_once()
    assert h.watcher.next_delay() == 45
    for _ in range(10):
        h.cloud.fail_next(RateLimited("429"))
        await h.poll_once()
    assert h.watcher.next_delay() == 300
    h.cloud.add(1, "running")
    assert names(await h.poll_once()) == ["appeared"]
    assert h.watcher.next_delay() == 10


async def test_a_rejected_key_slows_the_loop_down_too_and_last_error_says_why() -> None:
    h = Harness()
    h.watcher.interval = 10
    rejected = AuthError("The Vast API rejected the API key (HTTP 401)", status_code=401)
    h.cloud.fail_next(rejected)
    await h.poll_once()
    assert h.watcher.last_error is rejected
    assert h.watcher.next_delay() == 20
    h.cloud.fail_next(ApiError("HTTP 500", status_code=500))
    await h.poll_once()
    assert h.watcher.next_delay() == 10  # a server error: the client already retried; keep the interval
    await h.poll_once()
    assert h.watcher.last_error is None and h.watcher.status.polls == 1


async def test_an_unexpected_client_error_is_a_poll_failure_not_a_crash() -> None:
    h = Harness()
    h.cloud.fail_next(ValueError("garbage in the response"))
    assert names(await h.poll_once()) == ["poll_failed"]


async def test_run_polls_on_the_clock_until_stopped() -> None:
    h = Harness(clock=FakeClock(auto_advance=True))  # the loop's own sleeps move this clock
    h.watcher.interval = 15
    h.cloud.add(1, "loading")
    stop = asyncio.Event()
    cycles = 0

    def on_cycle() -> None:
        nonlocal cycles
        cycles += 1
        if cycles == 2:
            h.cloud.set_status(1, "running")
        if cycles == 3:
            stop.set()

    start = h.clock.now()
    await asyncio.wait_for(h.watcher.run(stop, on_cycle=on_cycle), 5)
    assert cycles == 3
    assert (h.clock.now() - start).total_seconds() == 30  # the fake clock's sleep advanced it
    assert names(h.journal()) == ["appeared", "loading_to_running"]


async def test_the_loop_polls_when_a_grace_ends_so_preempted_is_told_on_time() -> None:
    h = Harness(clock=FakeClock(auto_advance=True), rules=Rules(preempt_grace=25))
    h.watcher.interval = 60
    h.cloud.add(1, "running")
    stop = asyncio.Event()
    polled: list[float] = []
    start = h.clock.now()

    def on_cycle() -> None:
        polled.append((h.clock.now() - start).total_seconds())
        if len(polled) == 2:
            h.cloud.set_status(1, "exited", intended_status="running")  # taken back before the third poll
        if len(polled) == 4:
            stop.set()

    await asyncio.wait_for(h.watcher.run(stop, on_cycle=on_cycle), 5)
    # seen down at 120; its grace ends at 145, a poll then (not at 180) tells it; then the interval again
    assert polled == [0, 60, 120, 145]
    assert names(h.journal()) == ["appeared", "running_to_exited", "preempted"]
    assert h.journal()[-1].at == start + timedelta(seconds=145)
    assert h.watcher.next_delay() == 60


async def test_observers_see_every_journaled_event_in_order() -> None:
    seen: list[int] = []

    @on("appeared")
    async def broken(event: Event, ctx: Context) -> None:
        raise RuntimeError("x")

    h = Harness(broken)
    h.runtime.journal.observers.append(lambda event: seen.append(event.id))
    h.cloud.add(1, "running")
    h.cloud.add(2, "running")
    await h.poll_once()
    assert seen == [1, 2, 3, 4]
    assert names(h.journal()) == ["appeared", "appeared", "handler_failed", "handler_failed"]


class FailingLaterPages(httpx.AsyncBaseTransport):
    """Forwards to the simulator, except that pages after the first answer 502 while `failing` is set."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.failing = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.failing and "after_token" in request.url.params:
            return httpx.Response(502, json={"error": "bad_gateway", "msg": "upstream went away"})
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def no_wait(seconds: float) -> None:
    return None


async def test_a_page_failing_mid_pagination_never_yields_false_vanished(
    tmp_path: Path, sim: Simulator, api_key: str
) -> None:
    ids = [sim.create_instance(label=f"vastevents:n{n}") for n in range(30)]  # two pages of 25
    transport = FailingLaterPages()
    async with VastClient(api_key, sim.url, transport=transport, max_attempts=2, sleep=no_wait) as client:
        with SqliteStore(tmp_path / "state.db") as store:
            runtime = Runtime(client=client, store=store, clock=ManualClock(), handlers=[])
            watcher = runtime.watcher
            assert names(await watcher.poll_once()) == ["appeared"] * 30

            sim.vanish(ids[0])
            transport.failing = True
            assert names(await watcher.poll_once()) == ["poll_failed"]  # page 1 arrived, page 2 did not
            assert len(store.load_snapshot()) == 30

            transport.failing = False
            gone = await watcher.poll_once()
            assert [(e.name, e.instance_id) for e in gone] == [("vanished", ids[0])]
            assert len(store.load_snapshot()) == 29
