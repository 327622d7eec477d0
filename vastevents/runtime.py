"""The composition root: the one place that builds the client, store, clock, notifier, SSH, handlers and services.

    async with Runtime(config) as runtime:      # or Runtime(config, client=..., clock=..., store=...) in tests
        await runtime.run(stop)                 # the watcher loop and every background service, one stop signal

``poll_once()`` is one deterministic cycle for ``watch --once``, simulations on a manual clock and tests:
poll, deliver (retries already due included), run the periodic handlers that are due, deliver what they emitted.
With ``[webhooks] listen`` (or ``webhook_listen=``), ``run()`` also serves Vast's signed notifications: each new
verified delivery is journaled as ``vast_notification`` and makes the watcher poll now.
Daemons run as tasks of their own, one per (handler, daemon, instance), their rows in the store; they are
cancelled when their instance vanishes or is destroyed and restarted from their last checkpoint on the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

from vastevents._logging import redact, register_secret
from vastevents.actions import Actions
from vastevents.bus import call_handler, describe_failure
from vastevents.clock import Clock, SystemClock, sleep_or
from vastevents.config import Config, resolve_api_key
from vastevents.context import Context
from vastevents.diff import Rules
from vastevents.errors import ConfigError, TemporaryError
from vastevents.events import HANDLER_FAILED, VANISHED, VAST_NOTIFICATION, Event
from vastevents.metrics import Metrics
from vastevents.plugins import ActiveHandler, LoggingNotifier, load_handlers
from vastevents.ports import Notifier, Ssh, VastApi
from vastevents.ssh import ParamikoSsh
from vastevents.store import DaemonRow, PostgresStore, Store, open_store
from vastevents.store.webhooks import Webhooks
from vastevents.team import Heartbeat, Leadership, NotLeader
from vastevents.vast import VastClient
from vastevents.watcher import EventObserver, InstanceLister, Watcher
from vastevents.webhooks import Notification, WebhookReceiver, parse_listen

log = logging.getLogger(__name__)

DaemonKey = tuple[str, str, int]

WEBHOOK_IDS_KEPT = timedelta(days=7)
"""How long an accepted delivery's event id is remembered (Vast's retries of it end long before)."""


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
    ) -> None:
        self.config = config or Config()
        self.clock: Clock = clock or SystemClock()
        self.webhooks = self._webhook_receiver(webhook_listen or self.config.webhooks.listen)
        """The receiver ``run()`` serves, or None when no listen address is configured."""
        self.notifier: Notifier = notifier or LoggingNotifier()
        self.handlers = list(handlers) if handlers is not None else load_handlers(self.config)
        self._by_name = {handler.name: handler for handler in self.handlers}
        self.metrics = metrics
        self._observers = [*observers, *([metrics.journaled] if metrics is not None else [])]
        self._daemons: dict[DaemonKey, asyncio.Task[None]] = {}
        self._letting_go: set[asyncio.Task[Any]] = set()
        self._owned = contextlib.AsyncExitStack()
        self.ssh: Ssh = ssh if ssh is not None else self._real_ssh()
        if client is None:
            key = api_key or resolve_api_key()
            if key is None:
                raise ConfigError("no Vast API key: set VAST_API_KEY or run `vastai set api-key KEY`")
            vast = VastClient(key, self.config.vast.url)
            self._owned.push_async_callback(vast.aclose)
            client = vast
        self.client: VastApi = client
        url = self.config.store.resolved_url()
        if store is None:
            store = open_store(self.config.store.resolved_path(), url)
            self._owned.callback(store.close)
        self.store: Store = store
        if leadership is None and isinstance(store, PostgresStore) and url == store.url:
            leadership = Leadership(url, store, failover=self.config.team.failover)
            self._owned.callback(leadership.close)
        self.leadership = leadership
        self.heartbeat = Heartbeat(store) if leadership is None else None
        """Alone on its store, this watcher leads it; its heartbeat (each cycle) tells readers that one watches."""
        if self.heartbeat is not None:
            self._owned.callback(self.heartbeat.stop)
        self._in_charge = False
        self.actions = Actions(
            self.client, self.store, self.clock, self.config, guard=self._guard if leadership is not None else None
        )
        self.context = Context(
            client=self.client,
            store=self.store,
            clock=self.clock,
            config=self.config,
            notifier=self.notifier,
            ssh=self.ssh,
            logger=logging.getLogger("vastevents.handlers"),
            hooks=self,
            actions=self.actions,
        )
        self.watcher = Watcher(
            self.context,
            self.handlers,
            lister=lister or self.client,
            rules=rules,
            interval=interval,
            observers=[self._observe],
            before_poll=self._still_leading if leadership is not None else self._alive,
            on_poll=metrics.polled if metrics is not None else None,
        )
        self._owned.callback(self.watcher.bus.close)
        self._owned.push_async_callback(self._cancel_daemons)

    def _webhook_receiver(self, listen: str | None) -> WebhookReceiver | None:
        if listen is None:
            return None
        settings = self.config.webhooks
        host, port = parse_listen(listen)
        secret = os.environ.get(settings.secret_env, "").strip()
        if not secret:
            raise ConfigError(
                f"webhooks need their secret in ${settings.secret_env} (`vastevents webhooks register URL"
                " --show-secret` or `vastevents webhooks rotate --show-secret` prints it once)"
            )
        register_secret(secret)
        return WebhookReceiver(
            host=host,
            port=port,
            secret=secret,
            accept=self._notified,
            clock=self.clock,
            path=settings.path,
            max_body=settings.max_body,
            max_skew=settings.max_skew,
        )

    def _real_ssh(self) -> Ssh:
        """paramiko, host keys recorded per instance next to the state file; closed with the runtime."""
        edge = ParamikoSsh(self.config.store.resolved_path().parent / "known_hosts")
        self._owned.callback(edge.close)
        return edge

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Take charge at once, unless this watcher shares its store with a team (then: when it leads)."""
        if self.leadership is None:
            try:
                await self._take_charge()
            except BaseException:
                await self.aclose()
                raise
        return self

    async def _take_charge(self) -> None:
        """Settle what a crash left open and restart the daemons the store remembers."""
        if self._in_charge:
            return
        self._in_charge = True
        await self.actions.reconcile()
        for row in self.store.effects.daemons():
            if row.handler in self._by_name:
                self._start_daemon(row)

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
        seen: list[Event] = []
        self._observers.append(seen.append)
        try:
            await self.watcher.poll_once()
            await self.run_periodic(everything=all_periodic)
            await self.watcher.deliver_pending()
        finally:
            self._observers.remove(seen.append)
        return seen

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
        while await self.leadership.acquire(stop):
            await self._take_charge()
            lost = asyncio.Event()

            async def hold(leadership: Leadership = self.leadership, lost: asyncio.Event = lost) -> None:
                while not (stop.is_set() or lost.is_set()):
                    await sleep_or(self.clock, leadership.failover / 3, stop)
                    if not stop.is_set() and not await leadership.verify():
                        lost.set()

            until = asyncio.Event()  # set by _set_when as soon as stop or lost is
            async with asyncio.TaskGroup() as group:
                group.create_task(hold())
                group.create_task(self._services(until, on_cycle))
                group.create_task(_set_when(until, stop, lost))
            if stop.is_set():
                return
            await self._cancel_daemons()
            self._in_charge = False

    async def _services(self, stop: asyncio.Event, on_cycle: Callable[[], None] | None) -> None:
        if self.webhooks is not None:
            await self.webhooks.start()  # bound before the first poll: an unusable address fails at once
        async with asyncio.TaskGroup() as group:
            if self.webhooks is not None:
                group.create_task(self.webhooks.serve(stop))
            group.create_task(self.watcher.run(stop, on_cycle=on_cycle))
            group.create_task(self._every_until(stop, self._periodic_delay, self.run_periodic))
            group.create_task(self._every_until(stop, self._retry_delay, self.watcher.deliver_pending))

    async def _every_until(self, stop: asyncio.Event, delay: Callable[[], float], work: Callable[[], Any]) -> None:
        while not stop.is_set():
            await sleep_or(self.clock, delay(), stop)
            if not stop.is_set():
                await work()

    def _retry_delay(self) -> float:
        due = self.store.journal.next_retry_due()
        interval = self.watcher.interval
        if due is None:
            return interval
        return min(interval, max(0.0, (due - self.clock.now()).total_seconds()))

    def _due_in(self, handler: str, name: str, period: float) -> float:
        """Seconds until a periodic handler is due (0 or less: due now; never run: due now)."""
        last = self.store.effects.last_run(handler, name)
        if last is None:
            return 0.0
        return ((last + timedelta(seconds=period)) - self.clock.now()).total_seconds()

    def _periodic_delay(self) -> float:
        waits = [
            max(0.0, self._due_in(handler.name, name, period))
            for handler in self.handlers
            for name, period, _ in handler.periodic
        ]
        return min(waits, default=3600.0)

    async def run_periodic(self, *, everything: bool = False) -> None:
        """Run the periodic handlers that are due (all of them with `everything`); each failure is reported.

        A run is recorded when it ends (timed from its start), so one a crash cut short runs again at the next
        start; one refused because this watcher was deposed is not recorded, and the pass stops there.
        """
        now = self.clock.now()
        for handler in self.handlers:
            for name, period, func in handler.periodic:
                if not everything and self._due_in(handler.name, name, period) > 0:
                    continue
                context = replace(self.context.bound(handler.name, handler.emits), forced=everything)
                timeout = self.config.watch.handler_timeout
                try:
                    await call_handler(func, (context,), timeout=timeout, executor=self.watcher.bus.executor)
                except NotLeader:
                    log.warning("periodic %s.%s is left to the team's next leader", handler.name, name)
                    return
                except TemporaryError as exc:
                    log.info("periodic %s.%s will run again when due: %s", handler.name, name, redact(str(exc)))
                except Exception as exc:
                    log.error("periodic %s.%s failed", handler.name, name, exc_info=not isinstance(exc, TimeoutError))
                    self._report(f"{handler.name} (every {period:g}s {name}) failed: {describe_failure(exc, timeout)}")
                self.store.effects.ran(handler.name, name, now)

    def _report(self, detail: str, instance_id: int | None = None) -> None:
        failed = Event(name=HANDLER_FAILED, instance_id=instance_id, at=self.clock.now(), detail=detail)
        self.watcher.journaled(self.store.append([failed]))

    # --- hooks handlers reach through their Context ---------------------------------------------------------

    def emit(self, event: Event, key: str | None) -> Event:
        journaled, new = self.store.journal.emit(event, key)
        if new:
            self.watcher.journaled([journaled])
        return journaled

    def _notified(self, notification: Notification) -> None:
        """A verified webhook delivery: journal it and poll now, the first time its event id comes only."""
        now = self.clock.now()
        seen = self.store.repository(Webhooks)
        if not seen.first_delivery(notification.event_id, now):
            log.info(
                "webhook event %s delivered again (attempt %d); already handled",
                notification.event_id,
                notification.attempt,
            )
            return
        seen.forget_before(now - WEBHOOK_IDS_KEPT)
        instance_id = notification.instance_id
        view = self.store.load_snapshot().get(instance_id) if instance_id is not None else None
        subject = f": {notification.subject}" if notification.subject else ""
        event = Event(
            name=VAST_NOTIFICATION,
            instance_id=instance_id,
            at=now,
            instance=view.instance if view is not None else None,
            detail=f"{notification.notif_type}{subject} (event {notification.event_id})",
        )
        self.emit(event, f"webhook:{notification.event_id}")
        self.watcher.wake()

    def spawn(self, handler: str, daemon: str, instance_id: int, state: dict[str, Any]) -> None:
        found = self._by_name.get(handler)
        if found is None or found.daemon(daemon) is None:
            raise ValueError(f"handler {handler} has no daemon {daemon!r} (mark the method with @daemon)")
        key = (handler, daemon, instance_id)
        if key in self._daemons and not self._daemons[key].done():
            return  # already running: a redelivered event must not start it twice
        row = DaemonRow(handler, daemon, instance_id, state, self.clock.now())
        self.store.effects.save_daemon(row)
        self._start_daemon(row)

    def checkpoint(self, handler: str, daemon: str, instance_id: int, state: dict[str, Any]) -> None:
        row = DaemonRow(handler, daemon, instance_id, state, self.clock.now())
        self.store.effects.save_daemon(row)

    def instance_gone(self, instance_id: int) -> None:
        """Cancel every daemon of the instance (but the one asking) and forget them."""
        current = asyncio.current_task()
        for key, task in list(self._daemons.items()):
            if key[2] == instance_id:
                self.store.effects.drop_daemon(*key)
                if task is not current:
                    task.cancel()
                else:  # it goes on (destroying its own instance) untracked by key, but still stopped at shutdown
                    self._letting_go.add(task)
                    task.add_done_callback(self._letting_go.discard)
                del self._daemons[key]

    def daemons(self) -> list[DaemonKey]:
        """The (handler, daemon, instance id) of every running daemon."""
        return [key for key, task in self._daemons.items() if not task.done()]

    # --- daemons ---------------------------------------------------------------------------------------------

    def _observe(self, event: Event) -> None:
        for observer in list(self._observers):
            observer(event)
        if event.name == VANISHED and event.instance_id is not None:
            self.instance_gone(event.instance_id)

    def _start_daemon(self, row: DaemonRow) -> None:
        key = (row.handler, row.name, row.instance_id)
        self._daemons[key] = asyncio.create_task(self._run_daemon(row), name=f"daemon {row.handler}.{row.name}")

    async def _run_daemon(self, row: DaemonRow) -> None:
        handler = self._by_name[row.handler]
        func = handler.daemon(row.name)
        key = (row.handler, row.name, row.instance_id)
        if func is None:
            log.warning("handler %s no longer has a daemon %r; forgetting it", row.handler, row.name)
            self.store.effects.drop_daemon(*key)
            return
        context = self.context.bound(handler.name, handler.emits, daemon=(row.name, row.instance_id))
        state = row.state
        while True:
            try:
                await func(row.instance_id, state, context)
            except TemporaryError as exc:
                log.info("daemon %s.%s of %d restarts in %gs: %s", *key, exc.delay, redact(str(exc)))
                await self.clock.sleep(exc.delay)
                saved = [r.state for r in self.store.effects.daemons() if (r.handler, r.name, r.instance_id) == key]
                state = saved[0] if saved else state
                continue
            except NotLeader:  # this watcher was deposed mid-action: the row stays, the next leader resumes it
                log.warning("daemon %s.%s of instance %d is left to the team's next leader", *key)
                self._daemons.pop(key, None)
                return
            except Exception as exc:
                log.error("daemon %s.%s of instance %d failed", *key, exc_info=True)
                what = f"{row.handler} (daemon {row.name}) failed on instance {row.instance_id}"
                self._report(f"{what}: {describe_failure(exc, 0)}", row.instance_id)
            break
        self.store.effects.drop_daemon(*key)
        self._daemons.pop(key, None)

    async def _cancel_daemons(self) -> None:
        """Stop every daemon task at shutdown; their rows stay, so the next start resumes them."""
        tasks = [*self._daemons.values(), *self._letting_go]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._daemons.clear()


async def _set_when(target: asyncio.Event, *sources: asyncio.Event) -> None:
    """Set `target` as soon as any of `sources` is set."""
    waiters = [asyncio.ensure_future(source.wait()) for source in sources]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        target.set()
    finally:
        for waiter in waiters:
            waiter.cancel()
