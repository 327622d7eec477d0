"""The composition root: the one place that builds the client, store, clock, notifier, SSH, handlers and services.

    async with Runtime(config) as runtime:      # or Runtime(config, client=..., clock=..., store=...) in tests
        await runtime.run(stop)                 # the watcher loop and every background service, one stop signal

The CLI passes configuration (the config, an API key, a listen address); the runtime builds what it needs from it
(through :mod:`vastevents.connect`) and closes what it built. ``poll_once()`` is one deterministic cycle for
``watch --once``, simulations on a manual clock and tests: poll, deliver (retries already due included), run the
periodic handlers that are due, deliver what they journaled. In a team (a PostgreSQL store), only the leader polls
and acts. With ``[webhooks] listen`` (or ``webhook_listen=``), ``run()`` also serves Vast's signed notifications:
each new verified delivery is journaled as ``vast_notification`` and makes the watcher poll now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Self

from vastevents.actions import Actions
from vastevents.clock import Clock, SystemClock
from vastevents.config import Config
from vastevents.connect import configured_store, vast_client
from vastevents.context import Context
from vastevents.daemons import Daemons
from vastevents.diff import Rules, observe
from vastevents.errors import NotLeader
from vastevents.events import Event
from vastevents.intake import Intake, webhook_receiver
from vastevents.journaling import EventObserver, JournalWriter
from vastevents.notify.log import LoggingNotifier
from vastevents.periodic import Periodic
from vastevents.plugins import ActiveHandler, load_handlers
from vastevents.ports import Notifier, Ssh, VastApi
from vastevents.ssh import ParamikoSsh, SshSettings
from vastevents.store import PostgresStore, Store
from vastevents.team import Heartbeat, Leadership, lead
from vastevents.watcher import InstanceLister, Watcher

if TYPE_CHECKING:
    from vastevents.metrics import Metrics  # built by the caller that serves metrics

log = logging.getLogger(__name__)


class Runtime:
    """Owns what it builds (closed on exit); whatever is passed in stays the caller's to close."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        client: VastApi | None = None,
        lister: InstanceLister | None = None,
        store: Store | None = None,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        ssh: Ssh | None = None,
        handlers: Sequence[ActiveHandler] | None = None,
        observers: Sequence[EventObserver] = (),
        interval: float | None = None,
        rules: Rules | None = None,
        api_key: str | None = None,
        leadership: Leadership | None = None,
        metrics: Metrics | None = None,
        webhook_listen: str | None = None,
        read_only: bool = False,
    ) -> None:
        self.config = config = config or Config()
        self.clock: Clock = clock or SystemClock()
        listen = webhook_listen or config.webhooks.listen
        self.webhooks = webhook_receiver(config, listen, self.clock, lambda n: self.intake(n)) if listen else None
        """The receiver of Vast's webhooks ``run()`` serves, or None when no listen address is configured."""
        self.handlers = list(handlers) if handlers is not None else load_handlers(config)
        self.notifier: Notifier = notifier or LoggingNotifier()
        self.metrics = metrics
        self._owned = contextlib.AsyncExitStack()
        self.client: VastApi = client if client is not None else self._own_client(api_key)
        self.ssh: Ssh = ssh if ssh is not None else self._real_ssh()
        if store is None:
            store = configured_store(config, read_only=read_only)  # read-only: a command that only looks
            self._owned.callback(store.close)
        self.store: Store = store
        url = config.store.resolved_url()
        if leadership is None and isinstance(store, PostgresStore) and url == store.url and not store.read_only:
            leadership = Leadership(url, store, failover=config.team.failover)
            self._owned.callback(leadership.close)
        self.leadership = leadership
        self.heartbeat = Heartbeat(store) if leadership is None and not store.read_only else None
        """Alone on its store, this watcher leads it; its heartbeat (each cycle) tells readers that one watches."""
        if self.heartbeat is not None:
            self._owned.callback(self.heartbeat.stop)
        self._in_charge = False
        watch = config.watch
        executor = ThreadPoolExecutor(max_workers=watch.max_concurrency + 2, thread_name_prefix="vastevents-handler")
        self._owned.callback(executor.shutdown, wait=False, cancel_futures=True)
        self.journal = JournalWriter(store, [*observers, *([metrics.journaled] if metrics is not None else [])])
        self.daemons = Daemons(self.handlers, store=store, clock=self.clock, journal=self.journal, executor=executor)
        self.journal.observers.append(self.daemons.observe)  # a vanished instance's daemons stop
        self._owned.push_async_callback(self.daemons.stop)
        self.periodic = Periodic(
            self.handlers, store=store, clock=self.clock, journal=self.journal, timeout=watch.handler_timeout,
            executor=executor,
        )  # fmt: skip
        guard = self._guard if leadership is not None else None
        self.actions = Actions(self.client, store, self.clock, config, guard=guard, ssh_key=self.ssh.public_key)
        self.context = Context(
            client=self.client, store=store, clock=self.clock, config=config, notifier=self.notifier, ssh=self.ssh,
            logger=logging.getLogger("vastevents.handlers"), journal=self.journal, daemons=self.daemons,
            actions=self.actions,
        )  # fmt: skip
        self.watcher = Watcher(
            self.context,
            self.handlers,
            executor=executor,
            lister=lister or self.client,
            rules=rules,
            interval=interval,
            before_poll=self._still_leading if leadership is not None else self._alive,
            after_poll=partial(self.periodic.run_due, self.context, timed=False),  # timed ones have their timer
            on_poll=metrics.polled if metrics is not None else None,
        )
        self.intake = Intake(store, self.clock, self.journal, self.watcher.wake)

    def _own_client(self, api_key: str | None) -> VastApi:
        client = vast_client(self.config, api_key)
        self._owned.push_async_callback(client.aclose)
        return client

    def _real_ssh(self) -> Ssh:
        """paramiko, host keys recorded per instance next to the state file; closed with the runtime. One connect
        attempt per call: the handlers retry on the runtime's clock (the jobs handler's ``ssh_retry`` up to
        ``ssh_wait``), where a wait is cancelled with its task; backoff inside the edge would be a wall-clock wait
        in a worker thread, doubling theirs and holding up a watcher stopping."""
        edge = ParamikoSsh(
            self.config.store.resolved_path().parent / "known_hosts", settings=SshSettings(connect_attempts=1)
        )
        self._owned.callback(edge.close)
        return edge

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Take charge at once, unless this watcher shares its store with a team (then: when it leads) or its store
        is read-only (then it only :meth:`look` s)."""
        if self.leadership is None and not self.store.read_only:
            try:
                await self._take_charge()
            except BaseException:
                await self.aclose()
                raise
        return self

    async def _take_charge(self) -> None:
        """Settle what a crash left open, restart the daemons the store remembers, and run what runs at start."""
        if self._in_charge:
            return
        self._in_charge = True
        self.periodic.take_charge()
        await self.actions.reconcile()
        self.daemons.resume(self.context)

    async def _guard(self) -> None:
        assert self.leadership is not None
        await asyncio.to_thread(self.leadership.guard)

    async def _alive(self) -> bool:
        assert self.heartbeat is not None
        self.heartbeat.beat("leader")
        return True

    async def _still_leading(self) -> bool:
        assert self.leadership is not None
        leading = await self.leadership.verify()
        if self.metrics is not None:
            self.metrics.leader.set(1 if leading else 0)
        return leading

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the daemons (their rows stay for the next start) and close what this runtime built."""
        await self._owned.aclose()

    # --- running ---------------------------------------------------------------------------------------------

    async def poll_once(self, *, all_periodic: bool = False) -> list[Event]:
        """One cycle: poll, deliver, run due periodic handlers (every one with `all_periodic`), deliver again.

        The events journaled by it, handler-made ones included.
        """
        if self.leadership is not None and not self._in_charge:
            if not await self.leadership.try_acquire():
                raise NotLeader(f"another watcher leads this team store; {self.leadership.member} stands by")
            await self._take_charge()
        return await self.watcher.poll_once(then=partial(self.periodic.run_due, self.context, everything=all_periodic))

    async def look(self) -> None:
        """Run every periodic handler once over the account as a poll now would find it, changing nothing.

        For a runtime over a read-only store (``reap --dry-run``): the instance list is diffed against the stored
        snapshot and shown to the handlers as the latest one (:meth:`Store.preview`) without being committed;
        no event is journaled, no run recorded, no intent of a crashed watcher settled. A handler that writes
        anyway gets a StoreError; any failure is raised, not journaled.
        """
        if not self.store.read_only:
            raise ValueError("look() is for a runtime over a read-only store; poll_once() commits what it sees")
        rows = await self.watcher.lister.list_instances()
        previous = self.store.load_snapshot()
        stops = self.store.stop_requests()
        snapshot, _ = observe(previous, rows, self.clock.now(), self.watcher.rules, stop_requested=stops)
        self.store.preview(snapshot)
        await self.periodic.look(self.context)

    async def run(self, stop: asyncio.Event, *, on_cycle: Callable[[], None] | None = None) -> None:
        """The watcher loop, the periodic handlers and the retry timer until `stop` is set.

        In a team, only while this watcher leads: it stands by until it does, and stands by again (its daemons
        stopped) when it loses the lock.
        """
        if self.leadership is None:
            await self._services(stop, on_cycle)
            return
        if self.metrics is not None:
            self.metrics.leader.set(0)
        services = partial(self._services, on_cycle=on_cycle)
        await lead(self.leadership, self.clock, stop, self._take_charge, services, self._stand_down)

    async def _stand_down(self) -> None:
        """No longer the leader: stop the daemons (the next leader resumes them) until this watcher leads again."""
        await self.daemons.stop()
        self._in_charge = False

    async def _services(self, stop: asyncio.Event, on_cycle: Callable[[], None] | None) -> None:
        if self.webhooks is not None:
            await self.webhooks.start()  # bound before the first poll: an unusable address fails at once
        async with asyncio.TaskGroup() as group:
            if self.webhooks is not None:
                group.create_task(self.webhooks.serve(stop))
            group.create_task(self.watcher.run(stop, on_cycle=on_cycle))
            group.create_task(self.periodic.timer(self.context, stop))
            group.create_task(self.watcher.retry_timer(stop))
