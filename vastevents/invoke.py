"""Calling a handler once, the same way for an event's delivery, a periodic run and a daemon: an :class:`Outcome`.

What the handler did means one thing wherever it runs:

- it returned: done;
- ``TemporaryError(delay=...)``: run it again after ``delay`` seconds (the same event redelivered, the periodic
  handler run again, the daemon restarted from its last checkpoint);
- ``NotLeader``: this watcher was deposed while the handler acted; neither done nor failed, it is left for the
  team's next leader;
- ``PermanentError``, any other exception, or running past its timeout: failed, reported as ``handler_failed``.

A sync handler runs in a worker thread under the same timeout as an async one.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vastevents._logging import redact
from vastevents.errors import NotLeader, TemporaryError
from vastevents.events import HANDLER_FAILED, Event
from vastevents.store import Write

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """How one call ended: ``failure`` text, or ``retry_in`` seconds, or ``deposed``, or none of them (done)."""

    failure: str | None = None
    """Why it failed; with ``retry_in`` set, why it is tried again (a final failure becomes ``handler_failed``)."""
    retry_in: float | None = None
    """``TemporaryError``: run it again after this many seconds."""
    deposed: bool = False
    """The handler was refused an action because this watcher no longer leads its team: not done, not failed."""
    writes: tuple[Write, ...] = ()
    """What a delivery's handler asked to write in the transaction that marks the delivery done."""

    @property
    def done(self) -> bool:
        """The handler returned."""
        return self.failure is None and self.retry_in is None and not self.deposed


async def invoke(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    subject: str,
    where: str = "",
    timeout: float | None,
    executor: Executor,
) -> Outcome:
    """Call ``func(*args)`` once and say how it went; never raises (but for cancellation).

    `subject` names the handler (``"jobs (every 5s reconcile)"``) and `where` what it was busy with
    (``" on #12 appeared"``): a failure reads ``"<subject> failed<where>: <why>"``. No `timeout` for daemons.
    """
    try:
        await _call(func, args, timeout=timeout, executor=executor)
    except TemporaryError as exc:
        reason = redact(str(exc))
        log.info("%s will run again%s in %gs: %s", subject, where, exc.delay, reason)
        return Outcome(failure=f"{subject} {reason or 'temporary error'}", retry_in=exc.delay)
    except NotLeader:
        log.warning("%s%s is left to the team's next leader", subject, where)
        return Outcome(deposed=True)
    except Exception as exc:
        message = _describe(exc, timeout)
        log.error("%s failed%s: %s", subject, where, message, exc_info=not isinstance(exc, TimeoutError))
        return Outcome(failure=f"{subject} failed{where}: {message}")
    return Outcome()


def failure_report(detail: str, at: datetime, instance_id: int | None = None) -> Event:
    """The ``handler_failed`` event of a periodic run or a daemon (a delivery's carries its event's fields)."""
    return Event(name=HANDLER_FAILED, instance_id=instance_id, at=at, detail=detail)


async def _call(func: Callable[..., Any], args: tuple[Any, ...], *, timeout: float | None, executor: Executor) -> None:
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


def _describe(exc: BaseException, timeout: float | None) -> str:
    if isinstance(exc, TimeoutError) and timeout is not None:
        return f"timed out after {timeout:g}s"
    return redact(f"{type(exc).__name__}: {exc}")
