"""The bad-host blocklist: strikes with reasons and times per machine, and blocks that expire.

A strike is keyed (by the event that caused it), so a redelivered event never strikes twice. A machine with
``threshold`` strikes is blocked for ``ttl`` from the strike that crossed it; every later strike while it
still has that many renews the block. Strikes stay listed after a block expires (the evidence is kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar

from vastevents.store._codec import iso, time
from vastevents.store._db import Database, Migration

MIGRATIONS = (
    Migration(
        "hosts",
        1,
        (
            """CREATE TABLE host_strikes (
                key TEXT PRIMARY KEY,
                machine_id INTEGER NOT NULL,
                host_id INTEGER,
                reason TEXT NOT NULL,
                at TEXT NOT NULL
            )""",
            "CREATE INDEX host_strikes_machine ON host_strikes (machine_id)",
            """CREATE TABLE host_blocks (
                machine_id INTEGER PRIMARY KEY,
                host_id INTEGER,
                blocked_until TEXT NOT NULL
            )""",
        ),
    ),
)


@dataclass(frozen=True)
class HostRecord:
    """One machine with at least one strike, as ``vastevents hosts --json`` shows it."""

    machine_id: int
    host_id: int | None
    strikes: int
    reasons: tuple[str, ...]
    blocked: bool
    blocked_until: datetime | None

    def to_json(self) -> dict[str, object]:
        return {
            "machine_id": self.machine_id,
            "host_id": self.host_id,
            "strikes": self.strikes,
            "reasons": list(self.reasons),
            "blocked": self.blocked,
            "blocked_until": iso(self.blocked_until),
        }


class Hosts:
    MIGRATIONS: ClassVar[Sequence[Migration]] = MIGRATIONS

    def __init__(self, db: Database) -> None:
        self.db = db

    def strike(
        self,
        key: str,
        machine_id: int,
        host_id: int | None,
        reason: str,
        at: datetime,
        *,
        threshold: int,
        ttl: float,
    ) -> bool:
        """Record one strike (nothing if `key` was seen); True if this strike blocked the machine."""
        with self.db.transaction() as conn:
            inserted = conn.execute(
                "INSERT INTO host_strikes (key, machine_id, host_id, reason, at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (key) DO NOTHING RETURNING key",
                (key, machine_id, host_id, reason, iso(at)),
            ).fetchone()
            if inserted is None:
                return False
            (count,) = conn.execute("SELECT COUNT(*) FROM host_strikes WHERE machine_id = ?", (machine_id,)).fetchone()
            if int(count) < threshold:
                return False
            row = conn.execute("SELECT blocked_until FROM host_blocks WHERE machine_id = ?", (machine_id,)).fetchone()
            was_blocked = row is not None and datetime.fromisoformat(row[0]) > at
            conn.execute(
                "INSERT INTO host_blocks (machine_id, host_id, blocked_until) VALUES (?, ?, ?)"
                " ON CONFLICT (machine_id) DO UPDATE SET host_id = excluded.host_id,"
                " blocked_until = excluded.blocked_until",
                (machine_id, host_id, iso(at + timedelta(seconds=ttl))),
            )
            return not was_blocked

    def block(self, machine_id: int, reason: str, at: datetime, ttl: float) -> None:
        """Block a machine by hand for `ttl` seconds: a strike saying why that blocks however many it has."""
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT host_id FROM host_strikes WHERE machine_id = ? AND host_id IS NOT NULL ORDER BY at DESC",
                (machine_id,),
            ).fetchone()
            host_id = int(row[0]) if row else None
            self.strike(f"manual-{machine_id}-{iso(at)}", machine_id, host_id, reason, at, threshold=1, ttl=ttl)

    def forgive(self, machine_id: int) -> bool:
        """Unblock a machine and forget its strikes (its next failure starts a new count); False if unknown."""
        with self.db.transaction() as conn:
            known = conn.execute("SELECT 1 FROM host_strikes WHERE machine_id = ?", (machine_id,)).fetchone()
            conn.execute("DELETE FROM host_blocks WHERE machine_id = ?", (machine_id,))
            conn.execute("DELETE FROM host_strikes WHERE machine_id = ?", (machine_id,))
            return known is not None

    def blocked(self, now: datetime) -> tuple[list[int], list[int]]:
        """(machine ids, host ids) blocked at `now`: what an offer search must leave out."""
        rows = self.db.query("SELECT machine_id, host_id FROM host_blocks WHERE blocked_until > ?", (iso(now),))
        machines = sorted({int(machine) for machine, _ in rows})
        hosts = sorted({int(host) for _, host in rows if host is not None})
        return machines, hosts

    def records(self, now: datetime, *, offset: int = 0, limit: int | None = None) -> list[HostRecord]:
        """Every machine with at least one strike, blocked or not, by machine id (a page of them with `limit`)."""
        select = (
            "SELECT s.machine_id, s.host_id, s.reason, b.blocked_until FROM host_strikes s"
            " LEFT JOIN host_blocks b ON b.machine_id = s.machine_id"
        )
        order = " ORDER BY s.machine_id, s.at, s.key"
        if limit is None:
            rows = self.db.query(select + order)
        else:
            page = (
                " WHERE s.machine_id IN (SELECT machine_id FROM (SELECT DISTINCT machine_id FROM host_strikes"
                " ORDER BY machine_id LIMIT ? OFFSET ?) AS page)"
            )
            rows = self.db.query(select + page + order, (limit, offset))
        grouped: dict[int, list[tuple[int | None, str, str | None]]] = {}
        for machine_id, host_id, reason, until in rows:
            grouped.setdefault(int(machine_id), []).append((host_id, str(reason), until))
        found = []
        for machine_id, strikes in grouped.items():
            host_id = next((h for h, _, _ in reversed(strikes) if h is not None), None)
            until = time(strikes[0][2])
            blocked = until is not None and until > now
            found.append(
                HostRecord(
                    machine_id=machine_id,
                    host_id=int(host_id) if host_id is not None else None,
                    strikes=len(strikes),
                    reasons=tuple(reason for _, reason, _ in strikes),
                    blocked=blocked,
                    blocked_until=until if blocked else None,
                )
            )
        return found
