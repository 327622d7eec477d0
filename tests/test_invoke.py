"""One meaning for what a handler did, whether it was delivering an event, running periodically or as a daemon:
TemporaryError(delay) runs it again after `delay`, a failure or a timeout is handler_failed; and when periodic
handlers run (at start, after every poll, when due)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from vastevents import Context, Event, Handler, PermanentError, TemporaryError, daemon, every, on
from vastevents.config import parse_config
from vastevents.plugins import activate
from vastevents.testing import FakeClock, FakeCloud, Harness


class Patient(Handler):
    """Each of its three kinds of run fails once with TemporaryError(delay=90), then works."""

    def __init__(self, start: datetime) -> None:
        super().__init__()
        self.start = start
        self.runs: dict[str, list[float]] = {"delivery": [], "periodic": [], "daemon": []}

    def _once(self, kind: str, ctx: Context) -> None:
        self.runs[kind].append((ctx.clock.now() - self.start).total_seconds())
        if len(self.runs[kind]) == 1:
            raise TemporaryError("not ready yet", delay=90)

    @on("appeared")
    async def deliver(self, event: Event, ctx: Context) -> None:
        if not self.runs["delivery"]:
            await ctx.spawn(self.follow, event.instance_id or 0)
        self._once("delivery", ctx)

    @every("1h")
    async def hourly(self, ctx: Context) -> None:
        self._once("periodic", ctx)

    @daemon
    async def follow(self, instance_id: int, state: dict[str, Any], ctx: Context) -> None:
        self._once("daemon", ctx)


async def test_the_same_temporary_error_delay_is_honoured_by_a_delivery_a_periodic_handler_and_a_daemon() -> None:
    clock = FakeClock(auto_advance=False)
    patient = Patient(clock.now())
    async with Harness(activate("patient", patient), clock=clock) as h:
        h.cloud.add(1, "running", label="vastevents:job-1")
        await h.poll_once()  # the delivery and the hourly run fail for now; the daemon starts
        await h.advance(0)
        assert patient.runs == {"delivery": [0], "periodic": [0], "daemon": [0]}
        await h.advance(89)
        await h.poll_once()
        assert patient.runs == {"delivery": [0], "periodic": [0], "daemon": [0]}  # not before the delay
        await h.advance(1)
        await h.poll_once()
        assert patient.runs == {"delivery": [0, 90], "periodic": [0, 90], "daemon": [0, 90]}  # not after an hour
        await h.advance(600)
        await h.poll_once()
        assert patient.runs["periodic"] == [0, 90]  # then its period again, counted from that run
        assert "handler_failed" not in [event.name for event in h.journal()]


class Failing(Handler):
    """Each of its three kinds of run raises PermanentError."""

    @on("appeared")
    async def deliver(self, event: Event, ctx: Context) -> None:
        await ctx.spawn(self.follow, event.instance_id or 0)
        raise PermanentError("the image does not exist")

    @every("1h")
    async def hourly(self, ctx: Context) -> None:
        raise PermanentError("the ledger is gone")

    @daemon
    async def follow(self, instance_id: int, state: dict[str, Any], ctx: Context) -> None:
        raise PermanentError("the job vanished")


async def test_a_permanent_error_is_handler_failed_at_once_in_all_three() -> None:
    async with Harness(activate("failing", Failing())) as h:
        h.cloud.add(1, "running", label="vastevents:job-1")
        await h.poll_once()
        await h.advance(0)
        failed = sorted(event.detail for event in h.journal() if event.name == "handler_failed")
        assert h.runtime.daemons.running() == [] and h.store.effects.daemons() == []
    assert failed == [
        "failing (Failing.deliver) failed on #1 appeared: PermanentError: the image does not exist",
        "failing (daemon follow) failed on instance 1: PermanentError: the job vanished",
        "failing (every 3600s hourly) failed: PermanentError: the ledger is gone",
    ]


async def test_a_periodic_handler_past_the_handler_timeout_is_handler_failed_like_a_delivery() -> None:
    @every("1h")
    def stuck(ctx: Context) -> None:  # a plain def runs in a worker thread, under the same timeout
        release.wait(5)

    release = threading.Event()
    try:
        async with Harness(stuck, config=parse_config("[watch]\nhandler_timeout = 0.2\n")) as h:
            journaled = await h.poll_once()
    finally:
        release.set()
    (failed,) = [event for event in journaled if event.name == "handler_failed"]
    assert failed.detail == "stuck (every 3600s stuck) failed: timed out after 0.2s"


class Reconciler(Handler):
    """Records when each kind of periodic handler runs (seconds since the start)."""

    def __init__(self, start: datetime) -> None:
        super().__init__()
        self.start = start
        self.at_start: list[float] = []
        self.hourly_runs: list[float] = []
        self.each_poll: list[float] = []

    def _now(self, ctx: Context) -> float:
        return (ctx.clock.now() - self.start).total_seconds()

    @every("1h", at_start=True)
    async def settle(self, ctx: Context) -> None:
        self.at_start.append(self._now(ctx))

    @every("1h")
    async def hourly(self, ctx: Context) -> None:
        self.hourly_runs.append(self._now(ctx))

    @every("poll")
    async def reconcile(self, ctx: Context) -> None:
        self.each_poll.append(self._now(ctx))


async def test_at_start_runs_again_after_a_restart_and_poll_runs_after_every_poll(tmp_path: Path) -> None:
    cloud, clock = FakeCloud(), FakeClock(auto_advance=False)
    first = Reconciler(clock.now())
    async with Harness(activate("r", first), cloud=cloud, clock=clock, store_path=tmp_path / "state.db") as h:
        for _ in range(3):
            await h.poll_once()
            clock.advance(15)
    assert first.each_poll == [0, 15, 30]
    assert first.at_start == first.hourly_runs == [0]

    second = Reconciler(first.start)  # a restart a minute later: the hour is not up
    clock.advance(15)
    async with Harness(activate("r", second), cloud=cloud, clock=clock, store_path=tmp_path / "state.db") as h:
        await h.poll_once()
    assert second.at_start == [60] and second.hourly_runs == [] and second.each_poll == [60]


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0)
    pytest.fail(f"never happened: {what}")


async def test_in_the_watch_loop_at_start_runs_at_once_and_poll_after_each_poll() -> None:
    clock = FakeClock(auto_advance=False)
    reconciler = Reconciler(clock.now())
    async with Harness(activate("r", reconciler), clock=clock) as h:
        stop = asyncio.Event()
        running = asyncio.create_task(h.runtime.run(stop))
        await _until(lambda: len(reconciler.each_poll) == 1, "the first poll's pass")
        await _until(lambda: reconciler.at_start == reconciler.hourly_runs == [0], "the timer's pass at start")
        for polls in (2, 3):
            clock.advance(15)
            h.watcher.wake()  # poll now: whether the loop is asleep yet or still finishing its cycle
            await _until(lambda polls=polls: len(reconciler.each_poll) == polls, f"poll {polls}'s pass")
        stop.set()
        await asyncio.wait_for(running, 5)
    assert reconciler.each_poll == [0, 15, 30] and reconciler.at_start == reconciler.hourly_runs == [0]
