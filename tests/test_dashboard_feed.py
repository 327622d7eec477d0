"""The one journal reader behind /stream, on both backends: every new event to every subscriber, in order, and a
subscriber that resumes from an id gets what it missed first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from stores import Opener

from vastevents.dashboard.feed import Feed
from vastevents.events import Event

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def take(events: AsyncIterator[Event], count: int) -> list[int]:
    return [(await asyncio.wait_for(anext(events), 20)).id for _ in range(count)]


async def test_each_subscriber_gets_every_new_event_in_order_and_a_resumed_one_its_backlog_first(
    opener: Opener,
) -> None:
    writer = opener()
    writer.append([Event(name="appeared", instance_id=n, at=T0) for n in (1, 2)])
    feed = Feed(opener(read_only=True).db, poll=0.05)
    feed.start()
    try:
        live, resumed = feed.events(2), feed.events(0)  # (the browser's first connection reads the last id: 2)
        assert await take(resumed, 2) == [1, 2]  # what it missed, read from the store
        waiting = asyncio.ensure_future(take(live, 3))
        for n in (3, 4, 5):
            await asyncio.to_thread(writer.append, [Event(name="appeared", instance_id=n, at=T0)])
        assert await waiting == [3, 4, 5]
        assert await take(resumed, 3) == [3, 4, 5]
    finally:
        await asyncio.to_thread(feed.stop)
