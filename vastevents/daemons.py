"""Daemons: long work of a handler for one instance, as a task of its own that survives a watcher restart.

One task per (handler, daemon, instance), its row and state in the store. A daemon runs until it returns; it is
cancelled when its instance vanishes or is destroyed, and restarted from its last checkpoint when the watcher
starts again (or a team's next leader takes over). Each run goes through :func:`~vastevents.invoke.invoke`:
``TemporaryError(delay)`` restarts it from its last checkpoint after ``delay``, a failure is reported as
``handler_failed`` and ends it, ``NotLeader`` leaves its row to the next leader.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

from vastevents.clock import Clock
from vastevents.context import Context
from vastevents.events import VANISHED, Event
from vastevents.invoke import failure_report, invoke
from vastevents.journaling import JournalWriter
from vastevents.plugins import ActiveHandler
from vastevents.store import DaemonRow, Store

log = logging.getLogger(__name__)

DaemonKey = tuple[str, str, int]
"""(handler, daemon, instance id)."""


class Daemons:
    """The running daemons of one runtime (its contexts reach it as ``ctx.spawn`` and ``ctx.destroy``)."""

    def __init__(
        self,
        handlers: Sequence[ActiveHandler],
        *,
        store: Store,
        clock: Clock,
        journal: JournalWriter,
        executor: Executor,
    ) -> None:
        self._by_name = {handler.name: handler for handler in handlers}
        self.store = store
        self.clock = clock
        self.journal = journal
        self.executor = executor
        self._tasks: dict[DaemonKey, asyncio.Task[None]] = {}
        self._letting_go: set[asyncio.Task[None]] = set()

    def running(self) -> list[DaemonKey]:
        """The (handler, daemon, instance id) of every running daemon."""
        return [key for key, task in self._tasks.items() if not task.done()]

    def resume(self, context: Context) -> None:
        """Start every daemon the store remembers, of the handlers still configured."""
        for row in self.store.effects.daemons():
            if row.handler in self._by_name:
                self._start(context, row)

    def spawn(self, context: Context, name: str, instance_id: int, state: dict[str, Any]) -> None:
        """Start `context`'s handler's daemon `name` for an instance, unless it runs already (a redelivery)."""
        handler = self._by_name.get(context.handler)
        if handler is None or handler.daemon(name) is None:
            raise ValueError(f"handler {context.handler} has no daemon {name!r} (mark the method with @daemon)")
        key = (context.handler, name, instance_id)
        if key in self._tasks and not self._tasks[key].done():
            return
        row = DaemonRow(context.handler, name, instance_id, state, self.clock.now())
        self.store.effects.save_daemon(row)
        self._start(context, row)

    def instance_gone(self, instance_id: int) -> None:
        """Cancel every daemon of the instance (but the one asking) and forget them."""
        current = asyncio.current_task()
        for key, task in list(self._tasks.items()):
            if key[2] == instance_id:
                self.store.effects.drop_daemon(*key)
                if task is not current:
                    task.cancel()
                else:  # it goes on (destroying its own instance) untracked by key, but still stopped at shutdown
                    self._letting_go.add(task)
                    task.add_done_callback(self._letting_go.discard)
                del self._tasks[key]

    def observe(self, event: Event) -> None:
        """An event observer: the daemons of a vanished instance are cancelled."""
        if event.name == VANISHED and event.instance_id is not None:
            self.instance_gone(event.instance_id)

    async def stop(self) -> None:
        """Cancel every daemon task (at shutdown, or when deposed); their rows stay for the next start."""
        tasks = [*self._tasks.values(), *self._letting_go]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def _start(self, context: Context, row: DaemonRow) -> None:
        key = (row.handler, row.name, row.instance_id)
        self._tasks[key] = asyncio.create_task(self._run(context, row), name=f"daemon {row.handler}.{row.name}")

    async def _run(self, root: Context, row: DaemonRow) -> None:
        key = (row.handler, row.name, row.instance_id)
        handler = self._by_name[row.handler]
        func = handler.daemon(row.name)
        if func is None:
            log.warning("handler %s no longer has a daemon %r; forgetting it", row.handler, row.name)
            self._end(key)
            return
        context = root.bound(handler.name, handler.emits, daemon=(row.name, row.instance_id))
        subject, where = f"{row.handler} (daemon {row.name})", f" on instance {row.instance_id}"
        state = row.state
        while True:
            outcome = await invoke(
                func, (row.instance_id, state, context), subject=subject, where=where, timeout=None,
                executor=self.executor,
            )  # fmt: skip
            if outcome.deposed:  # the row stays: the next leader resumes it
                self._forget(key)
                return
            if outcome.retry_in is None:
                break
            await self.clock.sleep(outcome.retry_in)
            saved = [r.state for r in self.store.effects.daemons() if (r.handler, r.name, r.instance_id) == key]
            state = saved[0] if saved else state
        if outcome.failure is not None:
            self.journal.append([failure_report(outcome.failure, self.clock.now(), row.instance_id)])
        self._end(key)

    def _end(self, key: DaemonKey) -> None:
        self.store.effects.drop_daemon(*key)
        self._forget(key)

    def _forget(self, key: DaemonKey) -> None:
        if self._tasks.get(key) is asyncio.current_task():
            del self._tasks[key]
