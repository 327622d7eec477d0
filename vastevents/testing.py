"""Test helpers for handler authors: a fake clock, a fake cloud and a harness with ``poll_once()``.

    from vastevents import on
    from vastevents.testing import Harness

    @on("loading_to_running")
    async def greet(event, ctx):
        await ctx.notify(f"{event.instance_id} is up")

    async def test_greets():
        h = Harness(greet)
        h.cloud.add(1, "loading")
        await h.poll_once()
        h.cloud.set_status(1, "running")
        h.clock.advance(15)
        await h.poll_once()
        assert h.notifier.messages == ["1 is up"]

No network, no sleeping: the clock only moves when told to, and the harness runs the real watcher, store
(an in-memory SQLite database unless you give a path) and bus.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from vastevents.clock import ManualClock
from vastevents.config import Config
from vastevents.diff import Rules
from vastevents.events import Event
from vastevents.models import Instance
from vastevents.plugins import ActiveHandler, Context, activate
from vastevents.store import SqliteStore
from vastevents.watcher import Watcher

if TYPE_CHECKING:
    from vastevents.vast import VastClient

FakeClock = ManualClock
"""A clock that moves only on ``advance(seconds)``; ``sleep()`` advances it instead of waiting."""

__all__ = ["FakeClock", "FakeCloud", "Harness", "RecordingNotifier"]


class FakeCloud:
    """An in-memory account standing in for :class:`~vastevents.vast.VastClient`.

    Script it with :meth:`add`, :meth:`set_status`, :meth:`update`, :meth:`remove` and :meth:`fail_next`;
    the actions handlers take (destroy, stop, start, reboot, label) change it and are recorded in ``calls``.
    """

    def __init__(self) -> None:
        self.instances: dict[int, Instance] = {}
        self.calls: list[tuple[str, int]] = []
        self._failures: list[Exception] = []
        self._next_id = 1000

    def add(self, instance_id: int | None = None, status: str | None = "running", **fields: Any) -> Instance:
        """Put an instance on the account (``status`` is Vast's ``actual_status``; None means scheduling)."""
        if instance_id is None:
            self._next_id += 1
            instance_id = self._next_id
        fields.setdefault("intended_status", "running")
        instance = Instance.model_validate({**fields, "id": instance_id, "actual_status": status})
        self.instances[instance_id] = instance
        return instance

    def update(self, instance_id: int, **fields: Any) -> Instance:
        """Change fields of an instance (e.g. ``status_msg=...``)."""
        data = {**self.instances[instance_id].model_dump(), **fields}
        instance = Instance.model_validate(data)
        self.instances[instance_id] = instance
        return instance

    def set_status(self, instance_id: int, status: str | None, **fields: Any) -> Instance:
        return self.update(instance_id, actual_status=status, **fields)

    def remove(self, instance_id: int) -> None:
        del self.instances[instance_id]

    def fail_next(self, error: Exception) -> None:
        """Make the next ``list_instances()`` raise `error` (queue several for several polls)."""
        self._failures.append(error)

    async def list_instances(self) -> list[Instance]:
        if self._failures:
            raise self._failures.pop(0)
        return [self.instances[instance_id] for instance_id in sorted(self.instances)]

    async def get_instance(self, instance_id: int) -> Instance | None:
        return self.instances.get(instance_id)

    async def destroy_instance(self, instance_id: int) -> bool:
        self.calls.append(("destroy", instance_id))
        return self.instances.pop(instance_id, None) is not None

    async def stop_instance(self, instance_id: int) -> None:
        self.calls.append(("stop", instance_id))
        self.update(instance_id, intended_status="stopped", actual_status="stopped")

    async def start_instance(self, instance_id: int) -> None:
        self.calls.append(("start", instance_id))
        self.update(instance_id, intended_status="running")

    async def reboot_instance(self, instance_id: int) -> None:
        self.calls.append(("reboot", instance_id))

    async def set_label(self, instance_id: int, label: str) -> None:
        self.calls.append(("label", instance_id))
        self.update(instance_id, label=label)


class RecordingNotifier:
    """A notifier that keeps every message in ``messages`` (and the events in ``events``)."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.events: list[Event | None] = []

    async def notify(self, text: str, *, event: Event | None = None) -> None:
        self.messages.append(text)
        self.events.append(event)


def _handler_name(target: object) -> str:
    name = getattr(target, "__name__", None) or type(target).__name__
    return str(name)


class Harness:
    """The real watcher, store and bus around your handlers, on a :class:`FakeCloud` and a :class:`FakeClock`.

    `handlers` are @on functions, Handler classes or instances, or ready :class:`ActiveHandler` objects.
    """

    def __init__(
        self,
        *handlers: object,
        cloud: FakeCloud | None = None,
        clock: ManualClock | None = None,
        config: Config | None = None,
        rules: Rules | None = None,
        store_path: Path | str = ":memory:",
    ) -> None:
        self.cloud = cloud or FakeCloud()
        self.clock = clock or FakeClock()
        self.notifier = RecordingNotifier()
        self.store = SqliteStore(store_path)
        self.context = Context(
            client=cast("VastClient", self.cloud),  # duck-typed: the subset of VastClient handlers use
            store=self.store,
            clock=self.clock,
            config=config or Config(),
            notifier=self.notifier,
        )
        active = [
            handler if isinstance(handler, ActiveHandler) else activate(_handler_name(handler), handler)
            for handler in handlers
        ]
        self.watcher = Watcher(self.context, active, lister=self.cloud, rules=rules)

    async def poll_once(self) -> list[Event]:
        """One watcher cycle: poll the fake cloud, journal, deliver. The events journaled in it."""
        return await self.watcher.poll_once()

    def journal(self) -> list[Event]:
        """Every journaled event, in order."""
        return self.store.events()

    def close(self) -> None:
        self.store.close()
