"""Turning two instance lists into events: the pure diff and the cause detectors.

Pure core: no I/O and no clock of its own; ``now`` and the thresholds (:class:`Rules`) come in as arguments,
and the detector state comes in with the previous :class:`Snapshot` and goes out with the next one.

Per instance, the status event (``appeared``, ``X_to_Y``, ``vanished``) comes first, then the semantic
events in the order of :data:`DETECTORS`. Instances are visited in id order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from types import MappingProxyType

from vastevents.events import (
    APPEARED,
    HOST_FLAP,
    OFFLINE_TOO_LONG,
    PREEMPTED,
    STUCK_LOADING,
    VANISHED,
    Event,
    transition_name,
)
from vastevents.models import Instance, State
from vastevents.snapshot import InstanceView, Snapshot

DOWN_STATES = frozenset({State.STOPPED, State.EXITED, State.OFFLINE})
"""States that count as "down" for a running instance that is meant to run."""

IMAGE_ERROR = re.compile(
    r"oci runtime create failed|pull access denied|error pulling image|failed to pull"
    r"|image ?pull(?:ing)? (?:failed|error)|errimagepull|imagepullbackoff"
    r"|manifest (?:unknown|for \S+ not found)|repository does not exist|no such image",
    re.IGNORECASE,
)
"""``status_msg`` shapes of a load that will never finish (image pull and container create errors).

Only errors: a normal load's progress messages ("Pulling image ...", "image pull 40%") must not match.
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Rules:
    """Detector thresholds, in seconds (``flap_count``: offline episodes within ``flap_window``)."""

    stuck_after: float = 900.0
    offline_grace: float = 600.0
    preempt_grace: float = 120.0
    flap_window: float = 3600.0
    flap_count: int = 3


@dataclass(frozen=True, slots=True)
class _Seen:
    """What one detector looks at: the instance's view before this poll (if any) and after it."""

    previous: InstanceView | None
    current: InstanceView
    now: datetime
    rules: Rules
    stop_requested: bool


Detector = Callable[[_Seen], str | None]
"""A cause detector returns the event's detail when it fires this poll, else None."""


def observe(
    previous: Snapshot,
    instances: Iterable[Instance],
    now: datetime,
    rules: Rules | None = None,
    *,
    catch_up: bool = False,
    stop_requested: Collection[int] = (),
) -> tuple[Snapshot, list[Event]]:
    """The next snapshot (detector state carried forward) and the events between `previous` and `instances`.

    `instances` must be a complete list. `stop_requested` holds the ids we asked to stop ourselves (so a
    bid instance we stopped is not reported as preempted). Events are unjournaled (``id == 0``).
    """
    rules = rules or Rules()
    rows = list(instances)
    views: dict[int, InstanceView] = {}
    settled: dict[int, InstanceView] = {}
    unchanged = _unchanged_prefix(previous, rows, views, settled)
    if unchanged == len(rows) == len(previous.views):
        return Snapshot(MappingProxyType(views), now, MappingProxyType(settled)), []
    current = {instance.id: instance for instance in rows[unchanged:]}
    events: list[Event] = []
    for instance_id in sorted((previous.views.keys() - views.keys()) | current.keys()):
        before = previous.views.get(instance_id)
        row = current.get(instance_id)
        settled.pop(instance_id, None)  # a row listed twice: the last one counts
        if row is None:
            assert before is not None
            events.append(_event(VANISHED, before.instance, before.state, None, now, catch_up))
            continue
        if before is not None and before.instance is row and _settled(before):
            views[instance_id] = settled[instance_id] = before
            continue
        view, instance_events = _observe_one(
            before, row, now, rules, catch_up=catch_up, stop_requested=instance_id in stop_requested
        )
        views[instance_id] = view
        events.extend(instance_events)
    if unchanged:
        views = dict(sorted(views.items()))  # id order, as if every instance had gone through the loop
    return Snapshot(MappingProxyType(views), now, MappingProxyType(settled)), events


def _unchanged_prefix(
    previous: Snapshot, rows: list[Instance], views: dict[int, InstanceView], settled: dict[int, InstanceView]
) -> int:
    """How many leading `rows` are, in ascending id order, the very rows of `previous` with nothing to detect.

    Their views carry over as they are (into `views` and `settled`). The list comes in id order as the
    snapshot holds it, so for an unchanged account this is every row, at the cost of a walk: no sort, no
    lookup by id, no detector.
    """
    previously_settled = previous.settled
    last = None
    count = 0
    for row, (instance_id, before) in zip(rows, previous.views.items(), strict=False):
        if (
            before.instance is not row
            or (last is not None and instance_id <= last)
            or not (previously_settled.get(instance_id) is before or _settled(before))
        ):
            break
        views[instance_id] = settled[instance_id] = before
        last = instance_id
        count += 1
    return count


def diff(
    previous: Snapshot,
    current: Snapshot,
    now: datetime,
    rules: Rules | None = None,
    *,
    catch_up: bool = False,
    stop_requested: Collection[int] = (),
) -> list[Event]:
    """The events between two snapshots at `now` (only `previous` carries detector state)."""
    return observe(previous, current.instances(), now, rules, catch_up=catch_up, stop_requested=stop_requested)[1]


def _observe_one(
    before: InstanceView | None,
    row: Instance,
    now: datetime,
    rules: Rules,
    *,
    catch_up: bool,
    stop_requested: bool,
) -> tuple[InstanceView, list[Event]]:
    state = row.state
    events: list[Event] = []
    if before is None:
        view = InstanceView(instance=row, first_seen=now, since=now)
        events.append(_event(APPEARED, row, None, state, now, catch_up))
    elif before.state is not state:
        view = _next_episode(before, row, now, rules)
        events.append(_event(transition_name(before.state, state), row, before.state, state, now, catch_up))
    else:
        view = replace(before, instance=row)
        if _quiet(before, view):
            return view, events
    seen = _Seen(before, view, now, rules, stop_requested)
    for name, detector in DETECTORS:
        if name in view.reported or (detail := detector(seen)) is None:
            continue
        old = State.RUNNING if name == PREEMPTED else state
        events.append(_event(name, row, old, state, now, catch_up, detail))
        view = replace(view, reported=view.reported | {name})
        if name == HOST_FLAP:
            view = replace(view, flaps=())  # the next report needs `flap_count` new flaps
    return view, events


def _quiet(before: InstanceView, view: InstanceView) -> bool:
    """True when no detector can fire for `view` this poll: its state is `before`'s and :func:`_settled`."""
    return before.state is view.state and _settled(view)


def _settled(view: InstanceView) -> bool:
    """True when no detector can fire for `view` while its state stays the same, whatever the time: a state no
    detector watches, running without the outbid shape, or down without counting towards a preemption.

    Lets an unchanged account skip :data:`DETECTORS` for almost every instance.
    """
    instance = view.instance
    if instance.actual_status == "running":  # the common case, without normalizing the status first
        return not _outbid_shape(instance)
    state = instance.state
    if state is State.RUNNING:
        return not _outbid_shape(instance)
    if state in DOWN_STATES:
        return state is not State.OFFLINE and not _counting_down(view)
    return state not in _WATCHED


_WATCHED = frozenset({State.LOADING, State.OFFLINE})
"""States whose detectors fire after time passes with the row unchanged (besides down ones counting down)."""


def _next_episode(before: InstanceView, row: Instance, now: datetime, rules: Rules) -> InstanceView:
    """The view after a status change: a new ``since``, and the down/flap bookkeeping updated."""
    state = row.state
    went_down = before.state is State.RUNNING and before.instance.intended_status == "running"
    down_since = None
    if state in DOWN_STATES:
        down_since = now if went_down else before.down_since
    reported = frozenset({PREEMPTED} & before.reported) if state is not State.RUNNING else frozenset()
    flaps = before.flaps
    if state is State.OFFLINE:
        window_start = now - timedelta(seconds=rules.flap_window)
        flaps = (*(at for at in before.flaps if at >= window_start), now)
    return replace(before, instance=row, since=now, down_since=down_since, flaps=flaps, reported=reported)


def _event(
    name: str,
    instance: Instance,
    old: State | None,
    new: State | None,
    now: datetime,
    catch_up: bool,
    detail: str = "",
) -> Event:
    return Event(
        name=name,
        instance_id=instance.id,
        old=old.value if old is not None else None,
        new=new.value if new is not None else None,
        at=now,
        catch_up=catch_up,
        instance=instance,
        raw=_raw(instance),
        detail=detail,
    )


def _raw(instance: Instance) -> str | None:
    return instance.raw_status if instance.state is State.UNKNOWN else None


def _duration(seconds: float) -> str:
    """``45s``, ``2m05s``, ``1h00m``."""
    whole = int(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"


def detect_preempted(seen: _Seen) -> str | None:
    """Running and meant to run, now down beyond grace while still meant to run; or the outbid shape."""
    before = seen.previous
    if (
        before is not None
        and before.state is State.RUNNING
        and _outbid_shape(seen.current.instance)
        and not seen.stop_requested
    ):
        return "outbid: a bid instance was stopped without a stop request from us"
    down_since = seen.current.down_since
    if down_since is None or not _counting_down(seen.current):
        return None
    down_for = (seen.now - down_since).total_seconds()
    if down_for < seen.rules.preempt_grace:
        return None
    return f"{seen.current.state.value} for {_duration(down_for)} while meant to be running"


def _outbid_shape(instance: Instance) -> bool:
    """A bid instance that Vast stopped: every state field says ``stopped`` (how dstack reads outbid)."""
    return bool(instance.is_bid) and instance.cur_state == instance.intended_status == instance.next_state == "stopped"


def _counting_down(view: InstanceView) -> bool:
    """Down while meant to run, since a known time: the clock of a preemption is running."""
    return view.down_since is not None and view.state in DOWN_STATES and view.instance.intended_status == "running"


def detect_stuck_loading(seen: _Seen) -> str | None:
    """Loading longer than ``stuck_after`` since we first saw it loading, or an image-pull error right away."""
    if seen.current.state is not State.LOADING:
        return None
    message = seen.current.instance.status_msg or ""
    if IMAGE_ERROR.search(message):
        return f"image error: {message.strip()}"
    loading_for = (seen.now - seen.current.since).total_seconds()
    if loading_for >= seen.rules.stuck_after:
        return f"loading for {_duration(loading_for)}"
    return None


def detect_offline_too_long(seen: _Seen) -> str | None:
    """Offline beyond ``offline_grace`` (short flaps stay quiet)."""
    if seen.current.state is not State.OFFLINE:
        return None
    offline_for = (seen.now - seen.current.since).total_seconds()
    if offline_for < seen.rules.offline_grace:
        return None
    return f"offline for {_duration(offline_for)}"


def detect_host_flap(seen: _Seen) -> str | None:
    """Went offline ``flap_count`` times within ``flap_window`` (counted on the latest offline transition)."""
    flaps = seen.current.flaps
    if seen.current.state is not State.OFFLINE or not flaps or flaps[-1] != seen.now:
        return None
    if len(flaps) < seen.rules.flap_count:
        return None
    machine = seen.current.instance.machine_id
    where = f" (machine {machine})" if machine is not None else ""
    return f"went offline {len(flaps)} times within {_duration(seen.rules.flap_window)}{where}"


def next_due(snapshot: Snapshot, rules: Rules, now: datetime) -> datetime | None:
    """The first moment after `now` at which a timed detector would fire on the snapshot's rows if they stayed as
    they are: a down instance's ``preempt_grace`` over, an offline one's ``offline_grace``, a loading one's
    ``stuck_after``. The watcher polls then, instead of up to an interval later; None when nothing is due.

    A view the diff found settled (:func:`_settled`: no detector can fire while its row stays the same) has nothing
    due, so only the others are looked at: on an unchanged account, none."""
    dues = []
    for instance_id in snapshot.views.keys() - snapshot.settled.keys():
        view = snapshot.views[instance_id]
        if view.down_since is not None and _counting_down(view) and PREEMPTED not in view.reported:
            dues.append(view.down_since + timedelta(seconds=rules.preempt_grace))
        if view.state is State.OFFLINE and OFFLINE_TOO_LONG not in view.reported:
            dues.append(view.since + timedelta(seconds=rules.offline_grace))
        if view.state is State.LOADING and STUCK_LOADING not in view.reported:
            dues.append(view.since + timedelta(seconds=rules.stuck_after))
    return min((due for due in dues if due > now), default=None)


DETECTORS: tuple[tuple[str, Detector], ...] = (
    (PREEMPTED, detect_preempted),
    (STUCK_LOADING, detect_stuck_loading),
    (OFFLINE_TOO_LONG, detect_offline_too_long),
    (HOST_FLAP, detect_host_flap),
)
