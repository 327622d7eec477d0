"""Dispatch: a pyee emitter whose every listener is wrapped so one failure never stops anything else.

A sync handler runs in a worker thread under the same timeout as an async one. What a listener did becomes an
:class:`Outcome`: done, try again later (``TemporaryError``), or failed (any other exception, a timeout) —
the watcher turns the last into a ``handler_failed`` event. A handler refused an action because its watcher no
longer leads the team (``NotLeader``) has neither done nor failed: the event stays undelivered for the next
leader. Events of one instance are handled in order; different instances concurrently, at most
``max_concurrency`` at a time, so a slow handler delays only its own instance's queue.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pyee.asyncio import AsyncIOEventEmitter

from vastevents._logging import redact
from vastevents.context import Context
from vastevents.errors import TemporaryError
from vastevents.events import ANY_CHANGE, EVERYTHING, Event, is_status_change
from vastevents.plugins import ActiveHandler, HandlerFunc
from vastevents.store import Write
from vastevents.team import NotLeader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """How one handler finished with one event: ``failure`` text, or ``retry_in`` seconds, or neither (done)."""

    failure: str | None = None
    retry_in: float | None = None
    writes: tuple[Write, ...] = ()
    deposed: bool = False
    """The handler was refused an action because this watcher no longer leads its team: not done, not failed."""


Delivered = Callable[[Event, str, Outcome], None]
"""Called once per (event, handler) when the handler is done with it."""


@dataclass
class _Delivery:
    """One event on its way to the handlers that have not had it yet."""

    handlers: frozenset[str]
    tasks: dict[str, list[asyncio.Future[Outcome]]] = field(default_factory=lambda: defaultdict(list))


async def call_handler(
    func: Callable[..., Any], args: tuple[Any, ...], *, timeout: float, executor: ThreadPoolExecutor
) -> None:
    """Call `func(*args)` under `timeout`: awaited if async, in `executor` if a plain function."""
    if inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(getattr(func, "__call__", None)):  # noqa: B004
        await asyncio.wait_for(func(*args), timeout)
        return
    loop = asyncio.get_running_loop()
    result = await asyncio.wait_for(loop.run_in_executor(executor, functools.partial(func, *args)), timeout)
    if inspect.isawaitable(result):  # a plain function that returned an awaitable
        await asyncio.wait_for(_awaited(result), timeout)


async def _awaited(awaitable: Awaitable[Any]) -> None:
    await awaitable


def describe_failure(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g}s"
    return redact(f"{type(exc).__name__}: {exc}")


class Bus:
    """Delivers journaled events to active handlers through a pyee :class:`AsyncIOEventEmitter`."""

    def __init__(self, context: Context, *, timeout: float = 300.0, max_concurrency: int = 8) -> None:
        self.context = context
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.executor = ThreadPoolExecutor(max_workers=max_concurrency + 2, thread_name_prefix="vastevents-handler")
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

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

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
            return task  # pyee keeps track of it; _invoke itself never raises

        return listener

    async def _invoke(self, handler: str, label: str, func: HandlerFunc, event: Event, context: Context) -> Outcome:
        """Run one listener and say how it went."""
        try:
            await call_handler(func, (event, context), timeout=self.timeout, executor=self.executor)
            return Outcome(writes=tuple(context.writes))
        except TemporaryError as exc:
            log.info("handler %s (%s) will retry #%d %s in %gs: %s", handler, label, event.id, event.name,
                     exc.delay, redact(str(exc)))  # fmt: skip
            return Outcome(failure=f"{handler} ({label}) {redact(str(exc)) or 'temporary error'}", retry_in=exc.delay)
        except NotLeader:
            log.warning("handler %s (%s) left #%d %s to the team's next leader", handler, label, event.id, event.name)
            return Outcome(deposed=True)
        except Exception as exc:
            message = describe_failure(exc, self.timeout)
            log.error("handler %s (%s) failed on event #%d %s: %s", handler, label, event.id, event.name, message,
                      exc_info=not isinstance(exc, TimeoutError))  # fmt: skip
            return Outcome(failure=f"{handler} ({label}) failed on #{event.id} {event.name}: {message}")

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
        names = [event.name, *([ANY_CHANGE] if is_status_change(event.name) else []), EVERYTHING]
        for name in names:
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
