"""What handlers get besides the event: the edges, the clock, the journal, the daemons, and acting on instances.

Only the composition root (:mod:`vastevents.runtime`) builds a :class:`Context`; each delivery, periodic run
and daemon gets its own copy (:meth:`Context.bound`), which knows the handler and the event it serves.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from vastevents.actions import Actions, Target
from vastevents.clock import Clock
from vastevents.config import Config
from vastevents.costs import budgets_left
from vastevents.errors import VastEventsError
from vastevents.events import Cause, Event
from vastevents.journaling import JournalWriter
from vastevents.models import Instance, Rental, Volume
from vastevents.ports import Notifier, Ssh, VastApi
from vastevents.store import DaemonRow, Store, Write
from vastevents.store.ledger import Ledger


class DaemonRegistry(Protocol):
    """The runtime's daemons as a context reaches them (:class:`vastevents.daemons.Daemons`)."""

    def spawn(self, context: Context, name: str, instance_id: int, state: dict[str, Any]) -> None: ...

    def instance_gone(self, instance_id: int) -> None: ...


@dataclass(frozen=True, kw_only=True)
class Context:
    """The client, the store, SSH, the notifier, the clock and a logger, plus effects for one handler."""

    client: VastApi
    store: Store
    clock: Clock
    config: Config
    notifier: Notifier
    ssh: Ssh | None
    logger: logging.Logger
    handler: str = ""
    emits: tuple[str, ...] = ()
    event: Event | None = None
    """The event being delivered (None in a periodic handler or a daemon)."""
    daemon: tuple[str, int] | None = None
    """(daemon name, instance id) when this context runs a daemon."""
    forced: bool = False
    """True in a periodic handler run because every one was asked to run now (``watch --once``), not because it was
    due: do what is pending now, ignoring backoff."""
    journal: JournalWriter
    daemons: DaemonRegistry
    actions: Actions
    writes: list[Write] = field(default_factory=list)
    _emitted: Counter[str] = field(default_factory=Counter)

    def bound(
        self,
        handler: str,
        emits: tuple[str, ...],
        *,
        event: Event | None = None,
        daemon: tuple[str, int] | None = None,
    ) -> Context:
        """A fresh context for one invocation of `handler` (its own logger, emit counter and writes)."""
        return replace(
            self,
            handler=handler,
            emits=emits,
            event=event,
            daemon=daemon,
            forced=False,
            logger=logging.getLogger(f"vastevents.handlers.{handler}"),
            writes=[],
            _emitted=Counter(),
        )

    async def notify(self, text: str, *, event: Event | None = None) -> None:
        await self.notifier.notify(text, event=event if event is not None else self.event)

    def owns(self, instance: Instance | None) -> bool:
        """True if handlers may act on `instance`: its label starts with ``[vast] label_prefix``."""
        return self.actions.owns(instance)

    def over_budget(self, bound_usd: float) -> str | None:
        """Why a job that may cost up to `bound_usd` must not be rented: the first ``[handlers.billing]`` budget
        (total, today's, per job) with less left than that, in words; None when every budget holds it."""
        intervals = self.store.repository(Ledger).intervals()
        for budget in budgets_left(self.config, intervals, self.clock.now(), self.actions.owns_label):
            if bound_usd > budget.left_usd:
                return (f"the job may cost up to ${bound_usd:.2f}, more than the ${max(budget.left_usd, 0.0):.2f}"
                        f" left of {budget.name}")  # fmt: skip
        return None

    async def emit(
        self,
        name: str,
        *,
        instance: Instance | None = None,
        detail: str | None = None,
        key: str | None = None,
        cause: Cause | None = None,
    ) -> Event:
        """Journal a handler-made event (declared in ``emits``); observers and other handlers see it.

        `cause` says why something failed (``job_failed``, ``recovery_failed``): handlers that react read it,
        never the words of `detail`.

        Exactly once: during a delivery the event is keyed by (handler, delivered event, name, n-th emit of that
        name), so a redelivery after a crash journals nothing twice; elsewhere pass `key` for the same guarantee.
        """
        if name not in self.emits:
            declared = ", ".join(self.emits) or "nothing"
            raise VastEventsError(f"handler {self.handler} emits {name!r} but declares only {declared} in emits")
        self._emitted[name] += 1
        if key is not None:
            key = f"{self.handler}:key:{key}"
        elif self.event is not None:
            key = f"{self.handler}:{self.event.id}:{name}:{self._emitted[name]}"
        delivered = self.event
        instance = instance if instance is not None else (delivered.instance if delivered is not None else None)
        event = Event(
            name=name,
            instance_id=instance.id if instance is not None else None,
            at=self.clock.now(),
            instance=instance,
            detail=detail or "",
            cause=cause,
        )
        return self.journal.emit(event, key)

    def in_delivery(self, write: Write) -> None:
        """Run `write(conn)` in the transaction that marks this delivery done (unit of work)."""
        if self.event is None:
            raise VastEventsError("in_delivery() works only while an event is being delivered")
        self.writes.append(write)

    async def create(self, rental: Rental) -> int:
        """Rent `rental` under an owned label (generated if it has none); the new instance id."""
        return await self.actions.create(self.handler, rental)

    async def start(self, instance: Target) -> None:
        await self.actions.start(self.handler, instance)

    async def stop(self, instance: Target) -> None:
        """Stop an owned instance; its stop is never reported as ``preempted``."""
        await self.actions.stop(self.handler, instance)

    async def change_bid(self, instance: Target, price: float) -> None:
        """Set an owned bid instance's price per hour."""
        await self.actions.change_bid(self.handler, instance, price)

    async def destroy(self, instance: Target) -> bool:
        """Destroy an owned instance (its other daemons are cancelled); False if it was already gone.

        The daemons are let go before the call, so a daemon destroying its own instance is not cancelled by the
        ``vanished`` a concurrent poll sees while the destroy is being verified; a watcher deposed from its team's
        lead keeps them, for the next leader to resume.
        """
        await self.actions.may_act()
        self.daemons.instance_gone(instance.id if isinstance(instance, Instance) else instance)
        return await self.actions.destroy(self.handler, instance)

    async def delete_volume(self, volume: Volume) -> bool:
        """Delete an owned volume (named with an owned label) once its instances are gone; False if already gone."""
        return await self.actions.delete_volume(self.handler, volume)

    async def spawn(
        self, daemon: Callable[..., Any] | str, instance: Target, state: dict[str, Any] | None = None
    ) -> None:
        """Start this handler's daemon for `instance` (persisted: it restarts after a watcher restart)."""
        name = daemon if isinstance(daemon, str) else getattr(daemon, "__name__", "")
        instance_id = instance.id if isinstance(instance, Instance) else instance
        self.daemons.spawn(self, name, instance_id, dict(state or {}))

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Save a daemon's state; a restarted daemon starts from the last checkpoint."""
        if self.daemon is None:
            raise VastEventsError("checkpoint() works only inside a daemon")
        name, instance_id = self.daemon
        self.store.effects.save_daemon(DaemonRow(self.handler, name, instance_id, dict(state), self.clock.now()))
