"""The poll loop: list → observe (pure diff) → commit snapshot and events together → deliver to handlers.

Delivery always reads from the journal, so events a crash left undelivered are delivered first on restart
through the same path. A failed list (including one page of a paginated list) applies no diff at all: it is
reported once per failure streak as ``poll_failed``, and the loop keeps watching, slowing down on 429 and on a
rejected API key (retrying sooner cannot help either).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from vastevents._logging import redact
from vastevents.bus import Bus
from vastevents.clock import Clock, sleep_or
from vastevents.config import Config
from vastevents.context import Context
from vastevents.diff import Rules, next_due, observe
from vastevents.errors import AuthError, RateLimited
from vastevents.events import HANDLER_FAILED, POLL_FAILED, Event
from vastevents.invoke import Outcome
from vastevents.models import Instance
from vastevents.plugins import ActiveHandler
from vastevents.snapshot import Snapshot
from vastevents.store import StaleSnapshot

log = logging.getLogger(__name__)

MAX_BACKOFF = 300.0
"""The longest pause between polls while rate limited or refused (seconds); the watcher never stops polling."""


class InstanceLister(Protocol):
    """The one thing the watcher needs from the Vast client."""

    async def list_instances(self) -> list[Instance]: ...


PollObserver = Callable[[Snapshot | None, float, Exception | None], None]
"""Told after every poll: the new snapshot (None if the list failed), the seconds it took, the error."""

AfterPoll = Callable[[], Awaitable[None]]
"""Run after each poll cycle's deliveries (the periodic handlers due), before what they journaled is delivered."""


@dataclass
class WatchStatus:
    """What the status line shows. ``polls`` counts successful polls; ``failures`` the current failure streak."""

    polls: int = 0
    instances: int = 0
    events: int = 0
    last_poll: datetime | None = None
    error: str | None = None
    failures: int = 0
    next_delay: float = 0.0


def rules_from_config(config: Config) -> Rules:
    watch = config.watch
    return Rules(
        stuck_after=watch.stuck_after,
        offline_grace=watch.offline_grace,
        preempt_grace=watch.preempt_grace,
        flap_window=watch.flap_window,
        flap_count=watch.flap_count,
    )


class Watcher:
    """Polls the account, journals what changed and hands it to the active handlers.

    Built only by :class:`vastevents.runtime.Runtime`; handlers get ``context`` (whose store and clock the
    watcher uses).
    """

    def __init__(
        self,
        context: Context,
        handlers: Sequence[ActiveHandler] = (),
        *,
        executor: Executor,
        lister: InstanceLister | None = None,
        rules: Rules | None = None,
        interval: float | None = None,
        before_poll: Callable[[], Awaitable[bool]] | None = None,
        after_poll: AfterPoll | None = None,
        on_poll: PollObserver | None = None,
    ) -> None:
        config = context.config
        self.before_poll = before_poll
        """Asked before every list, and again before a list is diffed against another watcher's newer commit; False
        skips the poll (a watcher that lost its team leadership)."""
        self.after_poll = after_poll
        self.on_poll = on_poll
        self.context = context
        self.store = context.store
        self.journal = context.journal
        self.journal.observers.insert(0, self._journaled)
        self.clock: Clock = context.clock
        self.lister: InstanceLister = lister or context.client
        self.rules = rules or rules_from_config(config)
        self.interval = interval if interval is not None else config.watch.interval
        self.status = WatchStatus(next_delay=self.interval)
        self.max_attempts = config.watch.max_attempts
        watch = config.watch
        self.bus = Bus(context, executor=executor, timeout=watch.handler_timeout, max_concurrency=watch.max_concurrency)
        for handler in handlers:
            self.bus.add(handler)
        self.last_error: Exception | None = None
        """Why the latest poll failed (None once a poll succeeds)."""
        self._delivering = asyncio.Lock()
        self._snapshot: Snapshot | None = None
        self._caught_up = False
        self._cycle: list[Event] = []
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Poll now instead of after the interval (a webhook said something changed).

        Wakes coming in before the next poll starts share it; one during a poll brings another right after.
        A rate-limit or rejected-key backoff is kept (a poll then cannot help).
        """
        self._wake.set()

    def _start(self) -> Snapshot:
        if self._snapshot is None:
            self.store.activate(self.bus.handler_names)
            self._snapshot = self.store.load_snapshot()
        return self._snapshot

    async def poll_once(self, *, then: AfterPoll | None = None) -> list[Event]:
        """One cycle: deliver what is pending, poll, commit, deliver, run `then` (else ``after_poll``), deliver
        again. The events journaled in this cycle."""
        self._cycle = []
        first = self._snapshot is None
        previous = self._start()
        if first:
            await self.deliver_pending()
        if self.before_poll is not None and not await self.before_poll():
            return []
        started = time.monotonic()
        rows = await self._list()
        if rows is not None:
            # The first complete list this watcher sees shows what changed while it was not running.
            catch_up = not self._caught_up and previous.taken_at is not None
            if not await self._commit(previous, rows, catch_up):
                return []
            self._caught_up = True
        if self.on_poll is not None:
            self.on_poll(self._snapshot if rows is not None else None, time.monotonic() - started, self.last_error)
        await self.deliver_pending()
        if (then := then or self.after_poll) is not None:
            await then()
            await self.deliver_pending()
        return list(self._cycle)

    async def _list(self) -> list[Instance] | None:
        try:
            rows = await self.lister.list_instances()
        except Exception as exc:
            self._poll_failed(exc)
            return None
        if self.last_error is not None:
            log.info("polling works again after %d failed polls", self.status.failures)
        self.last_error = None
        self.status.error = None
        self.status.failures = 0
        return rows

    def _poll_failed(self, error: Exception) -> None:
        """Report a failed list: a ``poll_failed`` event on the first failure of a streak, the status always.

        The event is the report (observers print it, handlers get it); the log only has it at debug level.
        """
        message = redact(str(error) or type(error).__name__)
        log.debug("poll failed: %s", message, exc_info=True)
        self.last_error = error
        self.status.failures += 1
        self.status.error = message
        if self.status.failures == 1:  # once per failure streak, not every cycle of an outage
            self.journal.append([Event(name=POLL_FAILED, instance_id=None, at=self.clock.now(), detail=message)])

    async def _commit(self, previous: Snapshot, rows: list[Instance], catch_up: bool) -> bool:
        """Diff `rows` against `previous` and commit; False if they were dropped (this watcher may not poll now).

        Another watcher's commit in between means `rows` may be older than its snapshot: they are diffed against
        it only if this watcher may still poll (in a team, a leader whose lock was lost while it listed may not).
        """
        now = self.clock.now()
        for _ in range(2):
            snapshot, events = observe(
                previous, rows, now, self.rules, catch_up=catch_up, stop_requested=self.store.stop_requests()
            )
            try:
                journaled = self.store.commit(previous, snapshot, events)
            except StaleSnapshot:
                if self.before_poll is not None and not await self.before_poll():
                    log.warning("another watcher took over while this one listed; its list is dropped")
                    return False
                log.warning("another watcher committed to this store; diffing against its snapshot instead")
                previous = self.store.load_snapshot()
                continue
            self._snapshot = snapshot
            self.status.polls += 1
            self.status.instances = len(snapshot)
            self.status.last_poll = now
            self.journal.tell(journaled)
            return True
        raise StaleSnapshot("two watchers keep writing the same store; run only one watcher per store")

    def _journaled(self, event: Event) -> None:
        """The first observer of the journal: counts what this cycle journaled."""
        self._cycle.append(event)
        self.status.events += 1

    async def deliver_pending(self) -> None:
        """Deliver every journaled event some active handler has not had yet (failures included)."""
        ours = self.bus.handler_names
        # Only what our own handlers still need: another watcher's handlers (a misconfiguration that commit
        # detects) must not keep this loop spinning on events it can never deliver. Events handlers emit
        # while this runs are journaled and delivered by the next round of the loop.
        async with self._delivering:
            while batch := [
                (event, handlers & ours) for event, handlers in self.store.pending(self.clock.now()) if handlers & ours
            ]:
                if not await self.bus.dispatch(batch, self._delivered):
                    return  # this watcher no longer leads: what it could not deliver waits for the next leader

    def _delivered(self, event: Event, handler: str, outcome: Outcome) -> None:
        """Mark a delivery done, or keep it for a retry; a final failure becomes ``handler_failed``."""
        failure = outcome.failure
        if outcome.retry_in is not None:
            due = self.clock.now() + timedelta(seconds=outcome.retry_in)
            attempts = self.store.journal.schedule_retry(handler, event.id, due, failure or "")
            if attempts < self.max_attempts:
                return
            failure = f"{failure} (gave up after {attempts} attempts)"
        report = self._failure_event(event, failure) if failure else None
        journaled = self.store.mark_delivered(event.id, handler, report, outcome.writes)
        if journaled is not None:
            self.journal.tell([journaled])

    def _failure_event(self, event: Event, failure: str) -> Event | None:
        if event.name == HANDLER_FAILED:
            return None  # a handler failing on a failure report is logged, never reported again (no loops)
        return Event(
            name=HANDLER_FAILED,
            instance_id=event.instance_id,
            old=event.old,
            new=event.new,
            at=self.clock.now(),
            instance=event.instance,
            detail=failure,
        )

    async def retry_timer(self, stop: asyncio.Event) -> None:
        """Deliver retries as they come due between polls, until `stop` is set."""
        while not stop.is_set():
            await sleep_or(self.clock, self._retry_delay(), stop)
            if not stop.is_set():
                await self.deliver_pending()

    def _retry_delay(self) -> float:
        due = self.store.journal.next_retry_due()
        if due is None:
            return self.interval
        return min(self.interval, max(0.0, (due - self.clock.now()).total_seconds()))

    def next_delay(self) -> float:
        """Seconds until the next poll: the interval, or sooner when a grace ends before it (a down instance's
        ``preempted`` is then told on time), or longer after a 429 or a rejected key (never stop)."""
        error = self.last_error
        if not isinstance(error, RateLimited | AuthError):
            now = self.clock.now()
            due = next_due(self._snapshot, self.rules, now) if self._snapshot is not None else None
            return self.interval if due is None else min(self.interval, (due - now).total_seconds())
        backoff = self.interval * float(2 ** min(self.status.failures, 10))
        hint = (error.retry_after if isinstance(error, RateLimited) else None) or 0.0
        return min(max(backoff, hint), max(MAX_BACKOFF, self.interval))

    async def run(self, stop: asyncio.Event | None = None, *, on_cycle: Callable[[], None] | None = None) -> None:
        """Poll until `stop` is set; a cycle in progress (its deliveries included) is always finished."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            self._wake.clear()
            await self.poll_once()
            self.status.next_delay = self.next_delay()
            if on_cycle is not None:
                on_cycle()
            if stop.is_set():
                break
            backing_off = isinstance(self.last_error, RateLimited | AuthError)
            await sleep_or(self.clock, self.status.next_delay, stop, *(() if backing_off else (self._wake,)))
