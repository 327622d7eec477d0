"""Snapshots: the last seen view of every instance plus what the detectors remember about it.

Pure core: no I/O, no clock. The detector state (when we first saw the current status, when a running
instance went down, recent offline flaps, which semantic events this episode already produced) lives in the
snapshot rows, so it is persisted with them and survives restarts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from vastevents.models import Instance, State


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceView:
    """One instance as last seen, with the detector state that belongs to it.

    ``since`` is when we first saw the current status (so ``stuck_loading`` counts from when *we* saw it
    loading); ``down_since`` is when it left ``running`` while meant to run; ``flaps`` are the times it went
    offline; ``reported`` holds the semantic events already produced in the current episode.
    """

    instance: Instance
    first_seen: datetime
    since: datetime
    down_since: datetime | None = None
    flaps: tuple[datetime, ...] = ()
    reported: frozenset[str] = frozenset()

    @property
    def state(self) -> State:
        return self.instance.state


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every instance of a complete list, by id; ``taken_at`` is when the list was taken (None: never)."""

    views: Mapping[int, InstanceView] = field(default_factory=lambda: MappingProxyType({}))
    taken_at: datetime | None = None
    settled: Mapping[int, InstanceView] = field(default_factory=lambda: MappingProxyType({}), compare=False, repr=False)
    """A memo of the diff, not part of the value: views of `views` for which it found that no detector can fire
    while their row stays the same, so the next diff need not ask again. Empty is always correct."""

    def __post_init__(self) -> None:
        if not isinstance(self.views, MappingProxyType):
            object.__setattr__(self, "views", MappingProxyType(dict(self.views)))

    @classmethod
    def of(cls, instances: Iterable[Instance], taken_at: datetime) -> Snapshot:
        """A snapshot of a fresh list, as if every instance were first seen at `taken_at`.

        A duplicated id (a page repeated by the API) keeps its last row.
        """
        views = {
            instance.id: InstanceView(instance=instance, first_seen=taken_at, since=taken_at) for instance in instances
        }
        return cls(views, taken_at)

    def __len__(self) -> int:
        return len(self.views)

    def get(self, instance_id: int) -> InstanceView | None:
        return self.views.get(instance_id)

    def instances(self) -> list[Instance]:
        return [view.instance for view in self.views.values()]

    def states(self) -> dict[int, State]:
        return {instance_id: view.state for instance_id, view in self.views.items()}
