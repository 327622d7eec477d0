"""Periodic handlers (``@every``): which are due, running them, and the timer that waits for the next one.

A periodic handler is due when its period has passed since its last run (kept in the store, so a restart does not
reset it); one marked ``at_start`` is also due as soon as this watcher takes charge (a start, or becoming the
team's leader); ``@every("poll")`` is due after every poll cycle. Each run goes through
:func:`~vastevents.invoke.invoke`: ``TemporaryError(delay)`` brings it again after ``delay`` (not after its period),
a failure is reported as ``handler_failed`` and it runs again when due, and ``NotLeader`` (this watcher was deposed)
ends the pass unrecorded, for the next leader. A run is recorded when it ends, timed from its start, so one a crash
cut short runs again at the next start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import replace
from datetime import timedelta

from vastevents.clock import Clock, sleep_or
from vastevents.context import Context
from vastevents.errors import VastEventsError
from vastevents.invoke import failure_report, invoke
from vastevents.journaling import JournalWriter
from vastevents.plugins import ActiveHandler, Every
from vastevents.store import Store

IDLE = 3600.0
"""How long the timer sleeps when no timed periodic handler is configured."""


class Periodic:
    """The periodic handlers of one runtime."""

    def __init__(
        self,
        handlers: Sequence[ActiveHandler],
        *,
        store: Store,
        clock: Clock,
        journal: JournalWriter,
        timeout: float,
        executor: Executor,
    ) -> None:
        self._all = [(handler, every) for handler in handlers for every in handler.periodic]
        self.store = store
        self.clock = clock
        self.journal = journal
        self.timeout = timeout
        self.executor = executor
        self._ran_since_start: set[tuple[str, str]] = set()

    def take_charge(self) -> None:
        """This watcher starts, or became its team's leader: every ``at_start`` handler is due now."""
        self._ran_since_start.clear()

    def due_in(self, handler: ActiveHandler, every: Every) -> float:
        """Seconds until it is due (0 or less: due now); one run after every poll is due unless it asked to wait."""
        if every.at_start and (handler.name, every.name) not in self._ran_since_start:
            return 0.0
        run = self.store.effects.periodic_run(handler.name, every.name)
        if run is None:
            return 0.0
        due = run.again_at or (run.last_run + timedelta(seconds=every.period or 0.0))
        return (due - self.clock.now()).total_seconds()

    async def run_due(
        self, context: Context, *, everything: bool = False, polled: bool = True, timed: bool = True
    ) -> None:
        """Run the handlers that are due (every one with `everything`, ignoring backoff).

        `polled`: a poll cycle just ended, so ``@every("poll")`` handlers are due; `timed`: the others too.
        """
        for handler, every in self._all:
            asked = polled if every.period is None else timed
            if not (everything or (asked and self.due_in(handler, every) <= 0)):
                continue
            if not await self._run(context, handler, every, forced=everything):
                return  # deposed: the rest of the pass is the next leader's

    async def look(self, context: Context) -> None:
        """Run every periodic handler once, recording nothing (a read-only runtime's look); a failure raises."""
        for handler, every in self._all:
            outcome = await invoke(
                every.func, (replace(context.bound(handler.name, handler.emits), forced=True),),
                subject=f"{handler.name} ({every.name})", timeout=self.timeout, executor=self.executor,
            )  # fmt: skip
            if outcome.failure is not None:
                raise VastEventsError(outcome.failure)

    async def timer(self, context: Context, stop: asyncio.Event) -> None:
        """Run the timed handlers as they come due, until `stop` is set."""
        while not stop.is_set():
            await sleep_or(self.clock, self._next_delay(), stop)
            if not stop.is_set():
                await self.run_due(context, polled=False)

    def _next_delay(self) -> float:
        waits = [max(0.0, self.due_in(handler, every)) for handler, every in self._all if every.period is not None]
        return min(waits, default=IDLE)

    async def _run(self, root: Context, handler: ActiveHandler, every: Every, *, forced: bool) -> bool:
        """Run one periodic handler and record it; False if this watcher was deposed meanwhile."""
        started = self.clock.now()
        context = replace(root.bound(handler.name, handler.emits), forced=forced)
        period = "poll" if every.period is None else f"{every.period:g}s"
        outcome = await invoke(
            every.func, (context,), subject=f"{handler.name} (every {period} {every.name})", timeout=self.timeout,
            executor=self.executor,
        )  # fmt: skip
        if outcome.deposed:
            return False
        again_at = None
        if outcome.retry_in is not None:
            again_at = self.clock.now() + timedelta(seconds=outcome.retry_in)
        elif outcome.failure is not None:
            self.journal.append([failure_report(outcome.failure, self.clock.now())])
        self.store.effects.ran(handler.name, every.name, started, again_at=again_at)
        self._ran_since_start.add((handler.name, every.name))
        return True
