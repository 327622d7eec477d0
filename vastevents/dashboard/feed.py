"""One reader of the journal for every ``/stream`` client.

A thread waits for the journal to grow — woken by PostgreSQL's NOTIFY on the journal's channel, or, on SQLite,
by a cheap look at the last id every half second — reads the new events once and hands them to each subscriber's
queue. A subscriber that falls too far behind is dropped; its browser reconnects with ``Last-Event-ID`` and
catches up from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator

from vastevents.errors import VastEventsError
from vastevents.events import Event
from vastevents.store import Database, Journal
from vastevents.store.journal import CHANNEL, MIGRATIONS

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
"""How often the journal's last id is read when nothing pushes (SQLite), and the longest wait when something does."""
BATCH = 500
QUEUE = 2000
"""Events a subscriber may have waiting before it is dropped."""


class Feed:
    def __init__(self, db: Database, *, poll: float = POLL_SECONDS) -> None:
        self.db = db
        self.journal = Journal(db)
        self.poll = poll
        self._subscribers: set[asyncio.Queue[Event | None]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last: int | None = None
        self.failures: tuple[type[Exception], ...] = (VastEventsError, *db.errors)

    def start(self) -> None:
        """Follow the journal from its current end: what is journaled from now on reaches the subscribers (any
        subscriber reads what came before from the store itself)."""
        self._loop = asyncio.get_running_loop()
        try:
            self._last = self._last_id()
        except self.failures:
            self._last = None  # the thread finds the end once the store can be read
        self._thread = threading.Thread(target=self._run, name="vastevents-dashboard-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.poll + 10)
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    async def events(self, after: int | None) -> AsyncIterator[Event]:
        """Every event journaled after id `after` (None: from now on), in id order, until the feed stops."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue(QUEUE)
        self._subscribers.add(queue)
        try:
            last = await asyncio.to_thread(self._last_id) if after is None else after
            while True:  # first what this subscriber missed, read from the store
                backlog = await asyncio.to_thread(self.journal.after, last, BATCH)
                for missed in backlog:
                    yield missed
                    last = missed.id
                if len(backlog) < BATCH:
                    break
            while (event := await queue.get()) is not None:
                if event.id > last:
                    yield event
                    last = event.id
        finally:
            self._subscribers.discard(queue)

    def _last_id(self) -> int:
        return 0 if self.db.lacks(MIGRATIONS) else self.journal.last_id()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.db.listener(CHANNEL) as wait:
                    while not self._stop.is_set():
                        self._catch_up()  # first what was journaled while (re)connecting
                        wait(self.poll)
            except self.failures as exc:
                log.warning("cannot follow the journal (trying again): %s", exc)
                self._stop.wait(5 * self.poll)

    def _catch_up(self) -> None:
        end = self._last_id()
        if self._last is None:
            self._last = end
        if end <= self._last:
            return
        while batch := self.journal.after(self._last, BATCH):
            for event in batch:
                self._publish(event)
            self._last = batch[-1].id

    def _publish(self, event: Event) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._deliver, event)

    def _deliver(self, event: Event) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._subscribers.discard(queue)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(None)
