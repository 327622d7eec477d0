"""Dispatch: a pyee emitter whose every listener is wrapped so one failure never stops anything else.

A listener that raises or times out is logged with the event id and handler name and reported back as a
``handler_failed`` event. Events of one instance are handled in order; different instances concurrently,
at most ``max_concurrency`` at a time.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pyee.asyncio import AsyncIOEventEmitter

from vastevents._logging import redact
from vastevents.events import ANY_CHANGE, EVERYTHING, HANDLER_FAILED, Event, is_status_change
from vastevents.plugins import ActiveHandler, Context, HandlerFunc

log = logging.getLogger(__name__)

Delivered = Callable[[Event, str, Event | None], None]
"""Called once per (event, handler) when the handler is done with it, with its ``handler_failed`` if any."""


@dataclass
class _Delivery:
    """One event on its way to the handlers that have not had it yet."""

    handlers: frozenset[str]
    tasks: dict[str, list[asyncio.Future[str | None]]] = field(default_factory=lambda: defaultdict(list))


class Bus:
    """Delivers journaled events to active handlers through a pyee :class:`AsyncIOEventEmitter`."""

    def __init__(self, context: Context, *, timeout: float = 300.0, max_concurrency: int = 8) -> None:
        self.context = context
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
        context = self.context.for_handler(handler.name)
        self._handlers.add(handler.name)
        for event_name, func in handler.subscriptions:
            self._emitter.add_listener(event_name, self._listener(handler.name, func, context))

    def _listener(
        self, handler: str, func: HandlerFunc, context: Context
    ) -> Callable[[Event, _Delivery], asyncio.Future[str | None] | None]:
        label = getattr(func, "__qualname__", repr(func))

        def listener(event: Event, delivery: _Delivery) -> asyncio.Future[str | None] | None:
            if handler not in delivery.handlers:
                return None
            task = asyncio.ensure_future(self._invoke(handler, label, func, event, context))
            delivery.tasks[handler].append(task)
            return task  # pyee keeps track of it; _invoke itself never raises

        return listener

    async def _invoke(self, handler: str, label: str, func: HandlerFunc, event: Event, context: Context) -> str | None:
        """Run one listener; the failure as text (None if it went well)."""
        try:
            result = func(event, context)
            if inspect.isawaitable(result):
                await asyncio.wait_for(result, self.timeout)
            return None
        except TimeoutError:
            message = f"timed out after {self.timeout:g}s"
            log.error("handler %s (%s) %s on event #%d %s", handler, label, message, event.id, event.name)
        except Exception as exc:
            message = redact(f"{type(exc).__name__}: {exc}")
            log.exception("handler %s (%s) failed on event #%d %s: %s", handler, label, event.id, event.name, message)
        return f"{handler} ({label}) failed on #{event.id} {event.name}: {message}"

    def _emitter_error(self, error: BaseException) -> None:  # pragma: no cover - _invoke catches everything
        log.error("unexpected error in event dispatch: %r", error)

    async def dispatch(self, batch: Sequence[tuple[Event, frozenset[str]]], delivered: Delivered) -> None:
        """Deliver each event to the handlers named with it (all added here); one instance's events in order."""
        by_instance: dict[int | None, list[tuple[Event, frozenset[str]]]] = defaultdict(list)
        for item in batch:
            by_instance[item[0].instance_id].append(item)
        slots = asyncio.Semaphore(self.max_concurrency)

        async def in_order(items: list[tuple[Event, frozenset[str]]]) -> None:
            async with slots:
                for event, handlers in items:
                    await self._deliver(event, handlers, delivered)

        await asyncio.gather(*(in_order(items) for items in by_instance.values()))

    async def _deliver(self, event: Event, handlers: frozenset[str], delivered: Delivered) -> None:
        delivery = _Delivery(handlers)
        names = [event.name, *([ANY_CHANGE] if is_status_change(event.name) else []), EVERYTHING]
        for name in names:
            self._emitter.emit(name, event, delivery)

        async def finish(handler: str) -> None:
            failures = [failure for failure in await asyncio.gather(*delivery.tasks[handler]) if failure]
            delivered(event, handler, self._failure_event(event, failures) if failures else None)

        await asyncio.gather(*(finish(handler) for handler in sorted(handlers)))

    def _failure_event(self, event: Event, failures: list[str]) -> Event | None:
        if event.name == HANDLER_FAILED:
            return None  # a handler failing on a failure report is logged, never reported again (no loops)
        return Event(
            name=HANDLER_FAILED,
            instance_id=event.instance_id,
            old=event.old,
            new=event.new,
            at=self.context.clock.now(),
            instance=event.instance,
            detail="; ".join(failures),
        )
