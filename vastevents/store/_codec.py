"""Rows to values and back: snapshot views and journaled events as the SQLite tables keep them."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from vastevents.events import Cause, Event
from vastevents.models import Instance
from vastevents.snapshot import InstanceView

EVENT_COLUMNS = "id, name, instance_id, old, new, at, catch_up, raw, detail, instance, cause"


def iso(value: datetime | None) -> str | None:
    """Fixed width (always microseconds), so stored times sort as text under any collation: with a variable
    width, ICU collations put ``00:00:00.000001+00:00`` before ``00:00:00+00:00``."""
    return value.isoformat(timespec="microseconds") if value is not None else None


def time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def dump_view(view: InstanceView) -> str:
    return json.dumps(
        {
            "instance": view.instance.model_dump(mode="json"),
            "first_seen": iso(view.first_seen),
            "since": iso(view.since),
            "down_since": iso(view.down_since),
            "flaps": [iso(at) for at in view.flaps],
            "reported": sorted(view.reported),
        }
    )


def load_view(text: str) -> InstanceView:
    data = json.loads(text)
    return InstanceView(
        instance=Instance.model_validate(data["instance"]),
        first_seen=datetime.fromisoformat(data["first_seen"]),
        since=datetime.fromisoformat(data["since"]),
        down_since=time(data.get("down_since")),
        flaps=tuple(datetime.fromisoformat(at) for at in data.get("flaps", [])),
        reported=frozenset(data.get("reported", [])),
    )


def event_row(event: Event) -> tuple[Any, ...]:
    instance = json.dumps(event.instance.model_dump(mode="json")) if event.instance is not None else None
    at = event.at.isoformat(timespec="microseconds")  # fixed width, as iso() (and an error for a missing time)
    return (
        event.name, event.instance_id, event.old, event.new, at, int(event.catch_up), event.raw, event.detail, instance,
        event.cause,
    )  # fmt: skip


def load_event(row: tuple[Any, ...]) -> Event:
    event_id, name, instance_id, old, new, at, catch_up, raw, detail, instance, cause = tuple(row)[:11]
    return Event(
        id=event_id,
        name=name,
        instance_id=instance_id,
        old=old,
        new=new,
        at=datetime.fromisoformat(at),
        catch_up=bool(catch_up),
        instance=Instance.model_validate_json(instance) if instance is not None else None,
        raw=raw,
        detail=detail,
        cause=Cause.stored(cause),
    )
