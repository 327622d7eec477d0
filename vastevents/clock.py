"""Clocks the runtime and the simulator share, so tests and the accelerated demo control time.

The pure core never reads a clock; the watcher passes ``now`` in. All times are timezone-aware UTC.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ScaledClock:
    """Time that runs `speed` times faster than the wall clock, from `start` (default: now)."""

    def __init__(self, speed: float = 1.0, start: datetime | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._start = start or datetime.now(UTC)
        self._origin = time.monotonic()

    def now(self) -> datetime:
        return self._start + timedelta(seconds=(time.monotonic() - self._origin) * self.speed)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.speed)


class ManualClock:
    """A clock that only moves when told to: :meth:`advance`.

    ``sleep()`` either advances the clock itself (``auto_advance=True``, the default: a loop that sleeps runs
    through time instantly) or waits until someone else advances it past the deadline (``auto_advance=False``:
    daemons and timers wake exactly when a test moves time).
    """

    def __init__(self, start: datetime | None = None, *, auto_advance: bool = True) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()
        self.auto_advance = auto_advance
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        return self.set(self.now() + timedelta(seconds=seconds))

    def set(self, moment: datetime) -> datetime:
        """Move to `moment` (never backwards) and wake every sleeper whose deadline has come."""
        with self._lock:
            self._now = max(self._now, moment)
            now = self._now
            due = [future for deadline, future in self._sleepers if deadline <= now]
            self._sleepers = [(deadline, future) for deadline, future in self._sleepers if deadline > now]
        for future in due:
            future.get_loop().call_soon_threadsafe(_wake, future)
        return now

    def waiting(self) -> int:
        """How many sleepers wait for the clock to reach their deadline (with ``auto_advance=False``): a driver that
        steps time can tell when everything it runs is waiting on the clock."""
        with self._lock:
            return sum(1 for _, future in self._sleepers if not future.done())

    async def sleep(self, seconds: float) -> None:
        if self.auto_advance:
            self.advance(seconds)
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            deadline = self._now + timedelta(seconds=seconds)
            if deadline > self._now:
                self._sleepers.append((deadline, future))
            else:
                future.set_result(None)
        await future


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def sleep_or(clock: Clock, seconds: float, *events: asyncio.Event) -> None:
    """Sleep `seconds` of `clock`'s time, or less if any of `events` is set first (a stop, a wake-up)."""
    tasks = [asyncio.ensure_future(clock.sleep(seconds)), *(asyncio.ensure_future(e.wait()) for e in events)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
