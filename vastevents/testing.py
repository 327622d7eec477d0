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

No network, no sleeping: the clock only moves when told to (``await h.advance(seconds)`` also wakes daemons
sleeping on it), and the harness runs the real runtime — watcher, store (an in-memory SQLite database unless
you give a path or a store), bus, periodic handlers and daemons — built by :class:`vastevents.runtime.Runtime`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from vastevents.clock import ManualClock
from vastevents.config import Config
from vastevents.context import Context
from vastevents.diff import Rules
from vastevents.events import Event
from vastevents.models import Instance, Offer, Rental, Volume
from vastevents.plugins import ActiveHandler, activate
from vastevents.ports import CommandResult, SshTarget
from vastevents.runtime import Runtime
from vastevents.store import SqliteStore, Store
from vastevents.watcher import Watcher

FakeClock = ManualClock
"""A clock that moves only on ``advance(seconds)``; ``sleep()`` advances it instead of waiting."""

__all__ = ["FakeClock", "FakeCloud", "FakeSsh", "Harness", "RecordingNotifier"]


class FakeCloud:
    """An in-memory account standing in for :class:`~vastevents.vast.VastClient`.

    Script it with :meth:`add`, :meth:`set_status`, :meth:`update`, :meth:`remove` and :meth:`fail_next`;
    the actions handlers take (destroy, stop, start, reboot, label) change it and are recorded in ``calls``.
    """

    def __init__(self) -> None:
        self.instances: dict[int, Instance] = {}
        self.offers: list[Offer] = []
        self.ssh_keys: list[dict[str, Any]] = []
        self.charge_rows: list[dict[str, Any]] = []
        self.credit = 100.0
        self.user: dict[str, Any] = {}
        """More fields of the account (``users/current``): ``username``, ``email``, ..."""
        self.calls: list[tuple[str, int]] = []
        self.volumes: dict[int, Volume] = {}
        self.templates: list[dict[str, Any]] = []
        self.attached: dict[int, list[str]] = {}
        """The public keys attached to each instance."""
        self.rentals: dict[int, Rental] = {}
        """What each instance was rented with."""
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

    async def search_offers(
        self,
        query: str | dict[str, Any],
        *,
        type: str = "on-demand",
        limit: int | None = None,
        order: list[list[str]] | None = None,
    ) -> list[Offer]:
        """The scripted ``offers`` (the query is not evaluated), cheapest first."""
        found = sorted(self.offers, key=lambda offer: offer.dph_total or 0.0)
        return found[:limit] if limit is not None else found

    async def create_instance(self, rental: Rental) -> int:
        """Rent a scripted offer: a new instance in ``loading`` on its machine."""
        offer = next((o for o in self.offers if o.id == rental.ask_id), None)
        price = rental.price
        fields: dict[str, Any] = {"label": rental.label, "image_uuid": rental.image, "disk_space": rental.disk}
        fields["is_bid"] = price is not None
        if offer is not None:
            fields.update(machine_id=offer.machine_id, host_id=offer.host_id, gpu_name=offer.gpu_name,
                          num_gpus=offer.num_gpus, dph_total=price or offer.dph_total)  # fmt: skip
        if rental.volume is not None:
            fields["volume_info"] = [self._volume_for(rental, offer)]
        instance = self.add(None, "loading", **fields)
        self.calls.append(("create", instance.id))
        self.rentals[instance.id] = rental
        return instance.id

    def _volume_for(self, rental: Rental, offer: Offer | None) -> dict[str, Any]:
        mount = rental.volume
        assert mount is not None
        if mount.creates:
            self._next_id += 1
            volume = Volume(id=self._next_id, name=mount.name, machine_id=offer.machine_id if offer else None,
                            disk_space=mount.size)  # fmt: skip
            self.volumes[volume.id] = volume
        else:
            volume = self.volumes[mount.volume_id]
        return {"id": volume.id, "name": volume.name, "mount_path": mount.mount_path, "total_space": volume.disk_space}

    async def attach_ssh_key(self, instance_id: int, public_key: str) -> dict[str, Any]:
        self.calls.append(("attach_ssh", instance_id))
        self.attached.setdefault(instance_id, []).append(public_key)
        return {"success": True}

    async def list_volumes(self) -> list[Volume]:
        return [self.volumes[volume_id] for volume_id in sorted(self.volumes)]

    async def search_volume_offers(self, query: dict[str, Any], *, limit: int = 10) -> list[Offer]:
        """One volume offer per machine of the scripted offers (id ``90000000 + machine_id``); filters on
        ``machine_id`` are applied."""
        wanted = (query.get("machine_id") or {}).get("eq")
        machines = sorted({o.machine_id for o in self.offers if o.machine_id is not None})
        return [Offer(id=90_000_000 + m, machine_id=m) for m in machines if wanted in (None, m)][:limit]

    async def delete_volume(self, volume_id: int) -> bool:
        self.calls.append(("delete_volume", volume_id))
        return self.volumes.pop(volume_id, None) is not None

    async def search_templates(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        """The scripted ``templates`` whose fields equal the ``eq`` filters."""
        wanted = {key: value.get("eq") for key, value in filters.items() if isinstance(value, dict)}
        return [t for t in self.templates if all(t.get(key) == value for key, value in wanted.items())]

    async def change_bid(self, instance_id: int, price: float) -> None:
        self.calls.append(("bid", instance_id))
        self.update(instance_id, dph_total=price)

    async def list_ssh_keys(self) -> list[dict[str, Any]]:
        return list(self.ssh_keys)

    async def current_user(self) -> dict[str, Any]:
        return {"id": 1, "credit": self.credit, "balance": self.credit, **self.user}

    async def charges(
        self, *, start: float | None = None, end: float | None = None, limit: int = 100, after_token: str | None = None
    ) -> dict[str, Any]:
        return {"results": list(self.charge_rows)}

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


class FakeSsh:
    """An SSH edge that runs nothing: ``results`` maps a command's start to what it returns; calls are kept."""

    def __init__(self) -> None:
        self.results: dict[str, CommandResult] = {}
        self.commands: list[tuple[SshTarget, str]] = []
        self.uploads: list[tuple[SshTarget, Path, str]] = []
        self.downloads: list[tuple[SshTarget, str, Path]] = []
        self.key: str | None = None
        """What :meth:`public_key` answers (None: no key, so nothing is attached to what is rented)."""

    async def run(self, target: SshTarget, command: str, *, timeout: float | None = None) -> CommandResult:
        self.commands.append((target, command))
        found = [result for prefix, result in self.results.items() if command.startswith(prefix)]
        return found[0] if found else CommandResult(0, "", "")

    async def upload(self, target: SshTarget, local: Path, remote: str) -> None:
        self.uploads.append((target, local, remote))

    async def download(self, target: SshTarget, remote: str, local: Path) -> None:
        self.downloads.append((target, remote, local))

    def public_key(self) -> str | None:
        return self.key


def _handler_name(target: object) -> str:
    name = getattr(target, "__name__", None) or type(target).__name__
    return str(name)


class Harness:
    """The real runtime around your handlers, on a :class:`FakeCloud`, a :class:`FakeClock` and a fake SSH.

    `handlers` are @on functions, Handler classes or instances, or ready :class:`ActiveHandler` objects. Use it
    as ``async with Harness(...) as h:`` or just call ``await h.poll_once()`` (it starts on first use; ``close()``).
    The store is an in-memory SQLite one, the file at `store_path`, or `store` (any backend); the harness
    closes it.
    """

    def __init__(
        self,
        *handlers: object,
        cloud: FakeCloud | None = None,
        clock: ManualClock | None = None,
        config: Config | None = None,
        rules: Rules | None = None,
        store_path: Path | str = ":memory:",
        store: Store | None = None,
    ) -> None:
        self.cloud = cloud or FakeCloud()
        self.clock = clock or FakeClock(auto_advance=False)
        self.notifier = RecordingNotifier()
        self.ssh = FakeSsh()
        self.store: Store = store if store is not None else SqliteStore(store_path)
        active = [
            handler if isinstance(handler, ActiveHandler) else activate(_handler_name(handler), handler)
            for handler in handlers
        ]
        self.runtime = Runtime(
            config or Config(),
            client=self.cloud,
            store=self.store,
            clock=self.clock,
            notifier=self.notifier,
            ssh=self.ssh,
            handlers=active,
            rules=rules,
        )
        self._started = False

    async def start(self) -> Self:
        if not self._started:
            await self.runtime.__aenter__()
            self._started = True
        return self

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def watcher(self) -> Watcher:
        return self.runtime.watcher

    @property
    def context(self) -> Context:
        return self.runtime.context

    async def poll_once(self) -> list[Event]:
        """One runtime cycle: poll the fake cloud, journal, deliver, run due periodic handlers. Its events."""
        await self.start()
        return await self.runtime.poll_once()

    async def advance(self, seconds: float) -> None:
        """Move the clock and let the daemons and timers it wakes run until they wait again."""
        self.clock.advance(seconds)
        for _ in range(10):  # each round lets woken tasks reach their next await; none of them sleeps for real
            await asyncio.sleep(0)

    def journal(self) -> list[Event]:
        """Every journaled event, in order."""
        return self.store.events()

    async def aclose(self) -> None:
        """Stop the runtime (daemons keep their rows, as after a watcher restart) and close the store."""
        if self._started:
            await self.runtime.__aexit__(None, None, None)
            self._started = False
        self.store.close()

    def close(self) -> None:
        self.store.close()
