"""One leader per account: a PostgreSQL advisory lock held on a dedicated session.

Only the leader polls and acts. It re-checks its lock before every poll and before every action; a leader
whose session is gone (the connection cut, the server restarted, the backend terminated) stops acting
before its next API call. Followers try for the lock every third of ``[team] failover`` and take over
when the leader's session dies. Blocking database calls run in a worker thread.

Every watcher, in a team or alone on its store, writes a :class:`Heartbeat` each cycle; readers ask
:func:`leading_watcher` whether anyone watches the store now.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from vastevents._logging import redact
from vastevents.clock import Clock, sleep_or
from vastevents.errors import NotLeader
from vastevents.store import Store
from vastevents.store.team import Member, TeamMembers

log = logging.getLogger(__name__)

MISSED_BEATS = 3
"""A watcher not heard from for this many poll intervals is taken to be gone."""


def no_watcher(interval: float) -> str:
    """What to tell someone whose work needs a watcher when none was heard from lately."""
    window = MISSED_BEATS * interval
    return f"no watcher has been heard from in the last {window:g} s: start `vastevents watch` (jobs run there)"


def member_name() -> str:
    """How a watcher process names itself in the roster: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """A watcher's sign of life: its roster row (``leader`` or ``follower``), stamped on the wall clock each cycle
    (liveness is about the process, whatever clock the watcher's events run on) and removed when it stops."""

    def __init__(self, store: Store, member: str | None = None) -> None:
        self.member = member or member_name()
        self.members = store.repository(TeamMembers)

    def beat(self, role: str) -> None:
        try:
            self.members.seen(self.member, role, datetime.now(UTC))
        except Exception as exc:  # polling never depends on it (a store that fails here fails the commit too)
            log.debug("could not record this watcher's heartbeat: %s", redact(str(exc)))

    def stop(self) -> None:
        try:
            self.members.leave(self.member)
        except Exception as exc:
            log.debug("could not leave the roster: %s", exc)


def leading_watcher(store: Store, interval: float, now: datetime | None = None) -> Member | None:
    """The watcher leading this store, if it was heard from within :data:`MISSED_BEATS` poll intervals."""
    now = now or datetime.now(UTC)
    return store.repository(TeamMembers).leader(now - timedelta(seconds=MISSED_BEATS * interval))


def alive(member: Member, leader: Member | None, now: datetime, failover: float) -> bool:
    """Whether a roster row is a live watcher: the leader heard from lately (`leader`, from
    :func:`leading_watcher`), or a follower seen within three failovers (followers try for the lock every third)."""
    return member == leader or (member.role != "leader" and (now - member.seen).total_seconds() <= 3 * failover)


class Leadership:
    """The advisory lock of one shared store (its database and schema), on a session of its own."""

    def __init__(self, url: str, store: Store, *, failover: float = 15.0, member: str | None = None) -> None:
        import psycopg

        self.url = url
        self.failover = failover
        self.heartbeat = Heartbeat(store, member)
        self.member = self.heartbeat.member
        self._errors = (psycopg.Error, OSError)
        self._conn: Any = None
        self._key = 0
        self.leading = False

    def _connect(self) -> Any:
        import psycopg

        timeout = max(1, int(self.failover / 3))
        conn = psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=timeout,
            keepalives=1,
            keepalives_idle=timeout,
            keepalives_interval=1,
            keepalives_count=3,
            tcp_user_timeout=timeout * 1000,
        )
        (schema,) = conn.execute("SELECT current_database() || '.' || current_schema()").fetchone() or ("",)
        self._key = zlib.crc32(f"vastevents leader {schema}".encode())
        return conn

    def _try(self) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
            self.leading = bool(row[0])
        except self._errors as exc:
            log.warning("cannot reach the team store: %s", redact(str(exc)))
            self._drop()
        self._record()
        return self.leading

    def _check(self) -> bool:
        """True while our session still holds the lock (a failed query means it does not)."""
        if not self.leading or self._conn is None:
            return False
        try:
            row = self._conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()"
                " AND ((classid::bigint << 32) | objid::bigint) = %s",
                (self._key,),
            ).fetchone()
            self.leading = bool(row[0])
        except self._errors as exc:
            log.error("lost the team store session: %s", redact(str(exc)))
            self._drop()
        if not self.leading:
            log.error("this watcher lost the leadership; it stops acting")
        self._record()
        return self.leading

    def _record(self) -> None:
        self.heartbeat.beat("leader" if self.leading else "follower")  # leadership never depends on it

    def _drop(self) -> None:
        self.leading = False
        if self._conn is not None:
            try:
                self._conn.close()
            except self._errors:
                pass
        self._conn = None

    async def try_acquire(self) -> bool:
        """Try for the lock once: True if this watcher leads now."""
        if await asyncio.to_thread(self._try):
            log.info("%s leads", self.member)
            return True
        return False

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Try for the lock, then keep trying as a follower until this watcher leads (True) or `stop` is set."""
        while True:
            if await self.try_acquire():
                return True
            if stop.is_set():
                return False
            try:
                await asyncio.wait_for(stop.wait(), self.failover / 3)
            except TimeoutError:
                pass

    async def verify(self) -> bool:
        """Re-check the lease now (before a poll)."""
        return await asyncio.to_thread(self._check)

    def guard(self) -> None:
        """Raise :class:`NotLeader` unless the lease holds right now (before an API call that acts)."""
        if not self._check():
            raise NotLeader(f"{self.member} is not the leader: only the leader acts on the account")

    def close(self) -> None:
        if self._conn is not None:
            self._drop()
        self.heartbeat.stop()


async def lead(
    leadership: Leadership,
    clock: Clock,
    stop: asyncio.Event,
    take_charge: Callable[[], Awaitable[None]],
    services: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    stand_down: Callable[[], Awaitable[None]],
) -> None:
    """Until `stop`: stand by until this watcher holds the lock, `take_charge`, run the `services` while it still
    holds it (checked every third of ``failover``), and when it is lost stop them and `stand_down`."""
    while await leadership.acquire(stop):
        await take_charge()
        lost = asyncio.Event()

        async def hold(lost: asyncio.Event = lost) -> None:
            while not (stop.is_set() or lost.is_set()):
                await sleep_or(clock, leadership.failover / 3, stop)
                if not stop.is_set() and not await leadership.verify():
                    lost.set()

        until = asyncio.Event()  # set by _set_when as soon as stop or lost is
        async with asyncio.TaskGroup() as group:
            group.create_task(hold())
            group.create_task(services(until))
            group.create_task(_set_when(until, stop, lost))
        if stop.is_set():
            return
        await stand_down()


async def _set_when(target: asyncio.Event, *sources: asyncio.Event) -> None:
    """Set `target` as soon as any of `sources` is set."""
    waiters = [asyncio.ensure_future(source.wait()) for source in sources]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        target.set()
    finally:
        for waiter in waiters:
            waiter.cancel()
