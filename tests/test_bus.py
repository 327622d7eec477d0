"""Dispatch: isolation of failing and slow handlers, wildcards, per-instance order, bounded concurrency."""

from __future__ import annotations

import asyncio
import logging

import pytest

from vastevents import Context, Event, on
from vastevents.config import Config, WatchConfig
from vastevents.testing import Harness


async def test_a_raising_handler_becomes_handler_failed_and_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    got: list[str] = []

    @on("appeared")
    async def broken(event: Event, ctx: Context) -> None:
        raise RuntimeError("disk full")

    @on("appeared")
    async def fine(event: Event, ctx: Context) -> None:
        got.append(event.name)

    h = Harness(broken, fine)
    h.cloud.add(1, "running")
    with caplog.at_level(logging.ERROR, logger="vastevents.invoke"):
        events = await h.poll_once()
    assert got == ["appeared"]
    assert [e.name for e in events] == ["appeared", "handler_failed"]
    failed = events[1]
    assert failed.instance_id == 1
    assert "broken" in failed.detail and "#1 appeared" in failed.detail and "RuntimeError: disk full" in failed.detail
    assert any("#1 appeared" in r.getMessage() and "broken" in r.getMessage() for r in caplog.records)
    assert h.store.pending() == []  # a failure counts as delivered: no endless retries


async def test_a_handler_failing_on_every_event_does_not_loop_on_its_own_failures() -> None:
    @on("*")
    def always_raises(event: Event, ctx: Context) -> None:
        raise ValueError("nope")

    h = Harness(always_raises)
    h.cloud.add(1, "running")
    events = await h.poll_once()
    assert [e.name for e in events] == ["appeared", "handler_failed"]


async def test_a_slow_handler_times_out_without_holding_others() -> None:
    never = asyncio.Event()
    got: list[int] = []

    @on("appeared")
    async def stuck(event: Event, ctx: Context) -> None:
        await never.wait()

    @on("appeared")
    async def quick(event: Event, ctx: Context) -> None:
        got.append(event.id)

    config = Config(watch=WatchConfig(handler_timeout=0.05))
    h = Harness(stuck, quick, config=config)
    h.cloud.add(1, "running")
    events = await h.poll_once()
    assert got == [1]
    assert [e.name for e in events] == ["appeared", "handler_failed"]
    assert "timed out after 0.05s" in events[1].detail


async def test_wildcards_any_change_and_star() -> None:
    changes: list[str] = []
    everything: list[str] = []

    @on("any_change")
    async def change(event: Event, ctx: Context) -> None:
        changes.append(event.name)

    @on("*")
    async def star(event: Event, ctx: Context) -> None:
        everything.append(event.name)

    h = Harness(change, star)
    h.cloud.add(1, "loading", status_msg="failed to pull image: manifest unknown")
    await h.poll_once()
    h.cloud.remove(1)
    await h.poll_once()
    assert changes == ["appeared", "vanished"]
    assert everything == ["appeared", "stuck_loading", "vanished"]


async def test_one_instance_in_order_different_instances_concurrently() -> None:
    log: list[str] = []
    second_instance_ran = asyncio.Event()

    @on("*")
    async def record(event: Event, ctx: Context) -> None:
        log.append(f"start {event.instance_id} {event.name}")
        if event.instance_id == 1 and event.name == "appeared":
            await asyncio.wait_for(second_instance_ran.wait(), 5)  # only finishes if instance 2 runs meanwhile
        if event.instance_id == 2:
            second_instance_ran.set()
        log.append(f"end {event.instance_id} {event.name}")

    h = Harness(record)
    h.cloud.add(1, "loading", status_msg="OCI runtime create failed")
    h.cloud.add(2, "running")
    await h.poll_once()
    one = [line for line in log if " 1 " in line]
    assert one == ["start 1 appeared", "end 1 appeared", "start 1 stuck_loading", "end 1 stuck_loading"]
    assert log.index("end 2 appeared") < log.index("end 1 appeared")


async def test_concurrency_is_bounded() -> None:
    active = 0
    peak = 0

    @on("appeared")
    async def busy(event: Event, ctx: Context) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        for _ in range(5):
            await asyncio.sleep(0)  # yield so every task that may start does start
        active -= 1

    h = Harness(busy, config=Config(watch=WatchConfig(max_concurrency=2)))
    for instance_id in range(1, 7):
        h.cloud.add(instance_id, "running")
    await h.poll_once()
    assert peak == 2


async def test_sync_handlers_work_too() -> None:
    names: list[str] = []

    @on("appeared")
    def plain(event: Event, ctx: Context) -> None:
        names.append(event.name)

    h = Harness(plain)
    h.cloud.add(1, "running")
    await h.poll_once()
    assert names == ["appeared"]


async def test_handler_errors_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    from vastevents._logging import register_secret

    register_secret("sk-very-secret-token")

    @on("appeared")
    async def leaky(event: Event, ctx: Context) -> None:
        raise RuntimeError("bad key sk-very-secret-token")

    h = Harness(leaky)
    h.cloud.add(1, "running")
    events = await h.poll_once()
    assert "sk-very-secret-token" not in events[1].detail
    assert "***" in events[1].detail
