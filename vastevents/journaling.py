"""The journal writer: appends events to the store's journal and tells the observers, each event once.

Every newly journaled event goes through one :class:`JournalWriter` — a poll's, a handler's emit, a failure
report, a webhook's notification — so the observers (``--jsonl``, the terminal, metrics, the watcher's count, the
daemons) hear of each exactly once, in journal order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vastevents.events import Event
from vastevents.store import Store

EventObserver = Callable[[Event], None]
"""Told about each newly journaled event, in journal order (``--jsonl``, the terminal printer)."""


class JournalWriter:
    def __init__(self, store: Store, observers: Sequence[EventObserver] = ()) -> None:
        self.store = store
        self.observers = list(observers)

    def tell(self, events: Sequence[Event]) -> None:
        """Tell the observers about events the store has just journaled."""
        for event in events:
            for observer in self.observers:
                observer(event)

    def append(self, events: Sequence[Event]) -> list[Event]:
        """Journal `events` (they get their ids) and tell the observers."""
        journaled = self.store.append(list(events))
        self.tell(journaled)
        return journaled

    def emit(self, event: Event, key: str | None) -> Event:
        """Journal a handler-made event, once per `key` (None: every time); the journaled one either way."""
        journaled, new = self.store.journal.emit(event, key)
        if new:
            self.tell([journaled])
        return journaled
