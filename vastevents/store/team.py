"""Who watches: every watcher records itself here each cycle, the leader and (in a team) its followers.

A row's ``seen`` is the watcher's heartbeat, on the wall clock: how long ago a process was last heard from, which
readers (``team status``, ``run --submit``, ``vastevents mcp``) use to tell whether anyone watches the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vastevents.store._codec import iso
from vastevents.store._db import Database, Migration

MIGRATIONS = (
    Migration(
        "team",
        1,
        (
            """CREATE TABLE team_members (
                member TEXT PRIMARY KEY,
                role TEXT NOT NULL,
                since TEXT NOT NULL,
                seen TEXT NOT NULL
            )""",
        ),
    ),
)


@dataclass(frozen=True)
class Member:
    member: str
    role: str
    since: datetime
    seen: datetime


class TeamMembers:
    """One row per watcher: ``leader`` or ``follower``, since when in that role, and when it was last seen."""

    MIGRATIONS = MIGRATIONS

    def __init__(self, db: Database) -> None:
        self.db = db

    def seen(self, member: str, role: str, at: datetime) -> None:
        """Record that `member` is alive in `role` (its ``since`` moves only when its role changes)."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO team_members (member, role, since, seen) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (member) DO UPDATE SET seen = excluded.seen, role = excluded.role,"
                " since = CASE WHEN team_members.role = excluded.role THEN team_members.since ELSE excluded.since END",
                (member, role, iso(at), iso(at)),
            )

    def leave(self, member: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM team_members WHERE member = ?", (member,))

    def leader(self, heard_since: datetime) -> Member | None:
        """The leader heard from most recently, if it was heard from at `heard_since` or later."""
        rows = self.db.query(
            "SELECT member, role, since, seen FROM team_members WHERE role = 'leader' AND seen >= ?"
            " ORDER BY seen DESC LIMIT 1",
            (iso(heard_since),),
        )
        return _member(rows[0]) if rows else None

    def members(self) -> list[Member]:
        rows = self.db.query("SELECT member, role, since, seen FROM team_members ORDER BY role, since")
        return [_member(row) for row in rows]


def _member(row: tuple[Any, ...]) -> Member:
    member, role, since, seen = row
    return Member(member, role, datetime.fromisoformat(since), datetime.fromisoformat(seen))
