"""Events: frozen values describing what changed. Pure core: no I/O, no clock.

Transition names come from :func:`transition_name` only (``f"{old}_to_{new}"`` over :class:`State`).
Semantic events (``preempted``, ``stuck_loading``, ...) are named by the constants below. An event's ``id``
is its position in the journal; it is ``0`` until the store has journaled it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from vastevents.models import Instance, State

APPEARED = "appeared"
VANISHED = "vanished"
PREEMPTED = "preempted"
STUCK_LOADING = "stuck_loading"
OFFLINE_TOO_LONG = "offline_too_long"
HOST_FLAP = "host_flap"
HANDLER_FAILED = "handler_failed"
POLL_FAILED = "poll_failed"
VAST_NOTIFICATION = "vast_notification"
"""A verified Vast webhook delivery (``detail``: type, subject, event id); the poll it triggers says what changed."""
AGENT_CALL = "agent_call"
"""A tool call of an agent through ``vastevents mcp`` (``detail``: the tool and its arguments, secrets masked)."""

ANY_CHANGE = "any_change"
"""Wildcard: every change of an instance's status (transitions, ``appeared``, ``vanished``)."""
EVERYTHING = "*"
"""Wildcard: every event, semantic and failure events included."""


class Cause(StrEnum):
    """Why a job or a recovery failed: set where the failure is understood, read by every handler that reacts.

    ``job_failed`` and ``recovery_failed`` events carry one (``detail`` keeps the words); only
    :attr:`HOST_UNFIT` strikes a host.
    """

    HOST_UNFIT = "host_unfit"
    """The host cannot run the job: no GPU, CUDA below the spec, SSH host key or login refused, never reachable."""
    JOB_ERROR = "job_error"
    """The job's own fault: its command failed, an import in the preflight failed, a download it needs is missing."""
    PREEMPTED = "preempted"
    """The host took the machine back (or it went down while meant to run)."""
    OUTBID = "outbid"
    """A higher bid took the GPUs of a bid instance."""
    CAPACITY = "capacity"
    """No offer matches."""
    API_ERROR = "api_error"
    """The Vast API kept failing."""
    CANCELLED = "cancelled"
    """Ctrl-C, SIGTERM, or a cancel request."""
    TIMEOUT = "timeout"
    """Killed after ``max_duration``."""
    DISK_FULL = "disk_full"
    """The instance's disk filled up."""

    @classmethod
    def stored(cls, value: str | None) -> Cause | None:
        """A cause read back from the store; one this version does not know (a newer one wrote it) is None."""
        if value is None:
            return None
        try:
            return cls(value)
        except ValueError:
            return None


SEMANTIC_EVENTS = (PREEMPTED, STUCK_LOADING, OFFLINE_TOO_LONG, HOST_FLAP)
RUNTIME_EVENTS = (HANDLER_FAILED, POLL_FAILED, VAST_NOTIFICATION, AGENT_CALL)
_STATE_NAMES = frozenset(state.value for state in State)


def transition_name(old: State, new: State) -> str:
    """The one place transition events get their names, e.g. ``loading_to_running``."""
    return f"{old.value}_to_{new.value}"


def is_transition(name: str) -> bool:
    """True for ``X_to_Y`` over known state names."""
    old, sep, new = name.partition("_to_")
    return bool(sep) and old in _STATE_NAMES and new in _STATE_NAMES


def is_status_change(name: str) -> bool:
    """True for the events the ``any_change`` wildcard covers."""
    return name in (APPEARED, VANISHED) or is_transition(name)


def subscriptions_hearing(name: str) -> tuple[str, ...]:
    """The names a handler may subscribe to that deliver an event called `name`: itself and the wildcards."""
    return (name, *((ANY_CHANGE,) if is_status_change(name) else ()), EVERYTHING)


def is_known_event_name(name: str) -> bool:
    """True for every name vastevents itself journals (handlers declare the names they emit on top)."""
    return name in (
        APPEARED,
        VANISHED,
        ANY_CHANGE,
        EVERYTHING,
        *SEMANTIC_EVENTS,
        *RUNTIME_EVENTS,
    ) or is_transition(name)


def _utc_iso(at: datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` (a naive time is taken to be UTC already)."""
    utc = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return utc.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One thing that happened to one instance (or to the watcher, for ``poll_failed``).

    ``old``/``new`` are state names (``None`` where there is none: ``new`` of ``vanished``); ``raw`` is the
    status string exactly as Vast sent it when it mapped to ``unknown``; ``instance`` is the view the event
    is about (the last known one for ``vanished``); ``detail`` is a short human explanation.
    """

    id: int = 0
    name: str
    instance_id: int | None
    old: str | None = None
    new: str | None = None
    at: datetime
    catch_up: bool = False
    instance: Instance | None = None
    raw: str | None = None
    detail: str = ""
    cause: Cause | None = None
    """Why it failed, on ``job_failed`` and ``recovery_failed``; None on every other event."""

    def journaled(self, event_id: int) -> Event:
        """This event with the journal id the store gave it."""
        return replace(self, id=event_id)

    def to_json(self) -> dict[str, Any]:
        """The object ``watch --jsonl`` and ``events --json`` print: exactly these keys, in this order."""
        return {
            "id": self.id,
            "name": self.name,
            "instance_id": self.instance_id,
            "old": self.old,
            "new": self.new,
            "at": _utc_iso(self.at),
            "catch_up": self.catch_up,
            "instance": self.instance.model_dump(mode="json") if self.instance is not None else None,
            "detail": self.detail or None,
            "cause": self.cause.value if self.cause is not None else None,
        }

    def describe(self) -> str:
        """One human line without the time, e.g. ``#4 loading_to_running 1001 (vastevents:job-1)``."""
        who = f" {self.instance_id}" if self.instance_id is not None else ""
        label = f" ({self.instance.label})" if self.instance is not None and self.instance.label else ""
        raw = f" [raw status {self.raw!r}]" if self.raw is not None else ""
        detail = f": {self.detail}" if self.detail else ""
        detail += f" [{self.cause}]" if self.cause is not None else ""
        catch_up = " (catch-up)" if self.catch_up else ""
        return f"#{self.id} {self.name}{who}{label}{raw}{catch_up}{detail}"
