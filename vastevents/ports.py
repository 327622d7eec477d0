"""The edges handlers get, as Protocols: the Vast API, SSH and the notifier.

The real implementations (:class:`~vastevents.vast.VastClient`, the SSH edge, the Slack sender) and the fakes
of :mod:`vastevents.testing` satisfy them, so mypy checks one against the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vastevents.events import Event
from vastevents.models import Instance, Offer, Rental, Volume


class VastApi(Protocol):
    """The part of the Vast API handlers and the watcher use."""

    async def list_instances(self) -> list[Instance]: ...

    async def get_instance(self, instance_id: int) -> Instance | None: ...

    async def search_offers(
        self,
        query: str | dict[str, Any],
        *,
        type: str = "on-demand",
        limit: int | None = None,
        order: list[list[str]] | None = None,
    ) -> list[Offer]: ...

    async def create_instance(self, rental: Rental) -> int: ...

    async def destroy_instance(self, instance_id: int) -> bool: ...

    async def start_instance(self, instance_id: int) -> None: ...

    async def stop_instance(self, instance_id: int) -> None: ...

    async def set_label(self, instance_id: int, label: str) -> None: ...

    async def change_bid(self, instance_id: int, price: float) -> None: ...

    async def list_ssh_keys(self) -> list[dict[str, Any]]: ...

    async def attach_ssh_key(self, instance_id: int, public_key: str) -> dict[str, Any]:
        """Let `public_key` log in to an instance (Vast gives an instance the account's keys only at create)."""
        ...

    async def list_volumes(self) -> list[Volume]: ...

    async def search_volume_offers(self, query: dict[str, Any], *, limit: int = 10) -> list[Offer]: ...

    async def delete_volume(self, volume_id: int) -> bool: ...

    async def search_templates(self, filters: dict[str, Any]) -> list[dict[str, Any]]: ...

    async def current_user(self) -> dict[str, Any]:
        """The account (``users/current``): ``credit`` is the balance left in dollars."""
        ...

    async def charges(
        self, *, start: float | None = None, end: float | None = None, limit: int = 100, after_token: str | None = None
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SshTarget:
    """Where to log in: ``user@host -p port``."""

    host: str
    port: int
    user: str = "root"
    instance_id: int | None = None
    """The instance behind the address: its host key is recorded per instance (Vast reuses addresses)."""

    @classmethod
    def of(cls, instance: Instance, user: str = "root") -> SshTarget:
        if not instance.ssh_host or not instance.ssh_port:
            raise ValueError(f"instance {instance.id} has no SSH address yet")
        return cls(instance.ssh_host, int(instance.ssh_port), user, instance.id)


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str


class Ssh(Protocol):
    """Commands and file transfer on an instance; every blocking call stays inside the edge."""

    async def run(self, target: SshTarget, command: str, *, timeout: float | None = None) -> CommandResult: ...

    async def upload(self, target: SshTarget, local: Path, remote: str) -> None: ...

    async def download(self, target: SshTarget, remote: str, local: Path) -> None: ...

    def public_key(self) -> str | None:
        """The public key this edge logs in with (one ``authorized_keys`` line), to attach to what it rents."""
        ...


class Notifier(Protocol):
    """Where handlers send human messages (Slack, a log, a test recorder)."""

    async def notify(self, text: str, *, event: Event | None = None) -> None: ...
