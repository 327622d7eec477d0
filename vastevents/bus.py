"""Dispatch: a pyee emitter whose every listener is wrapped so one failure never stops anything else.

Each listener is one :func:`~vastevents.invoke.invoke` of a handler with an event; its :class:`Outcome` says
whether the event is done for that handler, comes again after a delay (``TemporaryError``), failed (the watcher
turns that into a ``handler_failed`` event), or was left to the team's next leader (``NotLeader``: it stays
undelivered). Events of one instance are handled in order; different instances concurrently, at most
``max_concurrency`` at a time, so a slow handler delays only its own instance's queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace

from pyee.asyncio import AsyncIOEventEmitter

from vastevents.context import Context
from vastevents.events import Event, subscriptions_hearing
from vastevents.invoke import Outcome, invoke
from vastevents.plugins import ActiveHandler, HandlerFunc

log = logging.getLogger(__name__)

Delivered = Callable[[Event, str, Outcome], None]
"""Called once per (event, handler) when the handler is done with it."""


@dataclass
class _Delivery:
    """One event on its way to the handlers that have not had it yet."""

    handlers: frozenset[str]
    tasks: dict[str, list[asyncio.Future[Outcome]]] = field(default_factory=lambda: defaultdict(list))


class Bus:
    """Delivers journaled events to active handlers through a pyee :class:`AsyncIOEventEmitter`."""

    def __init__(
        self, context: Context, *, executor: Executor, timeout: float = 300.0, max_concurrency: int = 8
    ) -> None:
        self.context = context
        self.executor = executor
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self._emitter = AsyncIOEventEmitter()
        self._emitter.add_listener("error", self._emitter_error)
        self._handlers: set[str] = set()

    @property
    def handler_names(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def add(self, handler: ActiveHandler) -> None:
        """Subscribe every (event, callable) pair of an active handler."""
        self._handlers.add(handler.name)
        for event_name, func in handler.subscriptions:
            self._emitter.add_listener(event_name, self._listener(handler, func))

    def _listener(
        self, handler: ActiveHandler, func: HandlerFunc
    ) -> Callable[[Event, _Delivery], asyncio.Future[Outcome] | None]:
        label = getattr(func, "__qualname__", repr(func))

        def listener(event: Event, delivery: _Delivery) -> asyncio.Future[Outcome] | None:
            if handler.name not in delivery.handlers:
                return None
            context = self.context.bound(handler.name, handler.emits, event=event)
            task = asyncio.ensure_future(self._invoke(handler.name, label, func, event, context))
            delivery.tasks[handler.name].append(task)
            return task  # pyee keeps track of it; invoke itself never raises

        return listener

    async def _invoke(self, handler: str, label: str, func: HandlerFunc, event: Event, context: Context) -> Outcome:
        outcome = await invoke(
            func, (event, context), subject=f"{handler} ({label})", where=f" on #{event.id} {event.name}",
            timeout=self.timeout, executor=self.executor,
        )  # fmt: skip
        return replace(outcome, writes=tuple(context.writes)) if outcome.done else outcome

    def _emitter_error(self, error: BaseException) -> None:  # pragma: no cover - _invoke catches everything
        log.error("unexpected error in event dispatch: %r", error)

    async def dispatch(self, batch: Sequence[tuple[Event, frozenset[str]]], delivered: Delivered) -> bool:
        """Deliver each event to the handlers named with it (all added here); one instance's events in order.

        False if a handler found that this watcher no longer leads its team: that delivery, and every later
        event of the same instance, is left undelivered (not failed) for the next leader.
        """
        by_instance: dict[int | None, list[tuple[Event, frozenset[str]]]] = defaultdict(list)
        for item in batch:
            by_instance[item[0].instance_id].append(item)
        slots = asyncio.Semaphore(self.max_concurrency)

        async def in_order(items: list[tuple[Event, frozenset[str]]]) -> bool:
            async with slots:
                for event, handlers in items:
                    if not await self._deliver(event, handlers, delivered):
                        return False
                return True

        return all(await asyncio.gather(*(in_order(items) for items in by_instance.values())))

    async def _deliver(self, event: Event, handlers: frozenset[str], delivered: Delivered) -> bool:
        """Deliver one event; False if a handler was deposed (its delivery is not marked)."""
        delivery = _Delivery(handlers)
        for name in subscriptions_hearing(event.name):
            self._emitter.emit(name, event, delivery)

        async def finish(handler: str) -> bool:
            outcomes = await asyncio.gather(*delivery.tasks[handler])
            if any(outcome.deposed for outcome in outcomes):
                return False
            delivered(event, handler, _combined(outcomes))
            return True

        return all(await asyncio.gather(*(finish(handler) for handler in sorted(handlers))))


def _combined(outcomes: Sequence[Outcome]) -> Outcome:
    """One handler's outcome for an event it has several subscriptions to: any failure wins over a retry."""
    failures = [o.failure for o in outcomes if o.failure and o.retry_in is None]
    retries = [o for o in outcomes if o.retry_in is not None]
    writes = tuple(write for o in outcomes for write in o.writes)
    if failures:
        return Outcome(failure="; ".join(failures))
    if retries:
        return Outcome(
            failure="; ".join(o.failure or "" for o in retries), retry_in=max(o.retry_in or 0 for o in retries)
        )
    return Outcome(writes=writes)
