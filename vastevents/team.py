"""One leader per account: a PostgreSQL advisory lock held on a dedicated session.

Only the leader polls and acts. It re-checks its lock before every poll and before every action; a leader
whose session is gone (the connection cut, the server restarted, the backend terminated) stops acting
before its next API call. Followers try for the lock every third of ``[team] failover`` and take over
when the leader's session dies. Blocking database calls run in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import zlib
from datetime import UTC, datetime
from typing import Any

from vastevents._logging import redact
from vastevents.errors import VastEventsError
from vastevents.store import Store
from vastevents.store.team import TeamMembers

log = logging.getLogger(__name__)


class NotLeader(VastEventsError):
    """This watcher does not (or no longer) hold the leadership; it must not act."""


class Leadership:
    """The advisory lock of one shared store (its database and schema), on a session of its own."""

    def __init__(self, url: str, store: Store, *, failover: float = 15.0, member: str | None = None) -> None:
        import psycopg

        self.url = url
        self.failover = failover
        self.member = member or f"{socket.gethostname()}:{os.getpid()}"
        self.members = store.repository(TeamMembers)
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
        try:
            self.members.seen(self.member, "leader" if self.leading else "follower", datetime.now(UTC))
        except Exception as exc:  # the roster is for people; leadership never depends on it
            log.debug("could not record team membership: %s", exc)

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
        try:
            self.members.leave(self.member)
        except Exception as exc:
            log.debug("could not leave the team roster: %s", exc)
