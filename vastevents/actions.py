"""Acting on the account, for handlers: owned instances only, intent recorded before the call, result verified.

Ownership (contract "Ownership"): a label starting with ``[vast] label_prefix``. Our own stop is noted as a
stop request before it is sent, so the diff never takes it for a preemption. An intent left open by a crash
between record and result is settled by :meth:`Actions.reconcile` on the next start.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace

from vastevents.clock import Clock
from vastevents.config import Config
from vastevents.errors import AmbiguousCreate, ApiError, NotOwned
from vastevents.models import Instance, Rental, Volume
from vastevents.ports import VastApi
from vastevents.store import Store

log = logging.getLogger(__name__)

Target = Instance | int


Guard = Callable[[], Awaitable[None]]
"""Raises when this watcher may not act now (a follower in team mode); awaited before every action."""


class Actions:
    def __init__(
        self,
        client: VastApi,
        store: Store,
        clock: Clock,
        config: Config,
        guard: Guard | None = None,
        ssh_key: Callable[[], str | None] | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.clock = clock
        self.prefix = config.vast.label_prefix
        self._guard = guard
        self._ssh_key = ssh_key
        """The public key this watcher logs in with, attached to every instance it rents."""

    async def may_act(self) -> None:
        """Raise NotLeader if this watcher no longer leads its team (nothing outside a team)."""
        if self._guard is not None:
            await self._guard()

    def owns_label(self, label: str | None) -> bool:
        return bool(self.prefix and label and label.startswith(self.prefix))

    def owns(self, instance: Instance | None) -> bool:
        return instance is not None and self.owns_label(instance.label)

    async def _owned(self, target: Target, action: str) -> Instance:
        await self.may_act()
        instance = target if isinstance(target, Instance) else await self.client.get_instance(target)
        if instance is None:
            raise NotOwned(f"cannot {action} instance {target}: it is not on the account")
        if not self.owns(instance):
            raise NotOwned(
                f"refusing to {action} instance {instance.id} (label {instance.label!r}): only instances labelled"
                f" {self.prefix!r}... are vastevents' to act on"
            )
        return instance

    def new_label(self, handler: str) -> str:
        return f"{self.prefix}:{handler}-{secrets.token_hex(4)}"

    async def create(self, handler: str, rental: Rental) -> int:
        """Rent under an owned label (generated if None); the new instance id. An unclear outcome is reconciled by
        label. This watcher's SSH key is attached to the new instance (Vast lets in the account's keys as they were
        at the create, and those may not include it)."""
        label = rental.label or self.new_label(handler)
        if not self.owns_label(label):
            raise NotOwned(f"refusing to create an instance labelled {label!r}: labels must start with {self.prefix!r}")
        await self.may_act()
        intent = self.store.effects.open_intent(handler, "create", self.clock.now(), label=label)
        try:
            instance_id = await self.client.create_instance(replace(rental, label=label))
        except AmbiguousCreate as exc:
            found = exc.instance_id or await self._find_label(label)
            if found is not None:
                self.store.effects.close_intent(intent, "created (after an unclear answer)", instance_id=found)
                await self._attach_key(found)
                return found
            self.store.effects.close_intent(intent, f"failed: {exc}")
            raise
        except Exception as exc:
            self.store.effects.close_intent(intent, f"failed: {type(exc).__name__}: {exc}")
            raise
        self.store.effects.close_intent(intent, "created", instance_id=instance_id)
        await self._attach_key(instance_id)
        return instance_id

    async def _attach_key(self, instance_id: int) -> None:
        """Attach this watcher's SSH key to a new instance; a refusal is logged (the account's keys may do)."""
        key = self._ssh_key() if self._ssh_key is not None else None
        if not key:
            return
        try:
            await self.client.attach_ssh_key(instance_id, key)
        except ApiError as exc:
            log.warning("could not attach the SSH key to instance %d: %s", instance_id, exc)

    async def _find_label(self, label: str) -> int | None:
        found = [row.id for row in await self.client.list_instances() if row.label == label]
        return found[0] if found else None

    async def stop(self, handler: str, target: Target) -> None:
        instance = await self._owned(target, "stop")
        intent = self.store.effects.open_intent(handler, "stop", self.clock.now(), instance_id=instance.id)
        self.store.request_stop(instance.id, self.clock.now())  # before the call: never taken for a preemption
        await self.client.stop_instance(instance.id)
        self.store.effects.close_intent(intent, "stopped")

    async def start(self, handler: str, target: Target) -> None:
        instance = await self._owned(target, "start")
        intent = self.store.effects.open_intent(handler, "start", self.clock.now(), instance_id=instance.id)
        await self.client.start_instance(instance.id)
        self.store.effects.close_intent(intent, "started")

    async def change_bid(self, handler: str, target: Target, price: float) -> None:
        """Set an owned bid instance's price per hour (Vast resumes an outbid one whose bid wins again)."""
        instance = await self._owned(target, "change the bid of")
        intent = self.store.effects.open_intent(handler, "change_bid", self.clock.now(), instance_id=instance.id)
        await self.client.change_bid(instance.id, price)
        self.store.effects.close_intent(intent, f"bid set to {price:g}")

    async def destroy(self, handler: str, target: Target) -> bool:
        """Destroy an owned instance; False if it was already gone. Verified: it is no longer listed."""
        instance = await self._owned(target, "destroy")
        intent = self.store.effects.open_intent(handler, "destroy", self.clock.now(), instance_id=instance.id)
        existed = await self.client.destroy_instance(instance.id)
        still = await self.client.get_instance(instance.id)
        if still is not None and still.actual_status not in (None, "exited", "destroyed"):
            log.warning("instance %d is still listed after destroy (status %s)", instance.id, still.actual_status)
        self.store.effects.close_intent(intent, "destroyed" if existed else "already gone")
        return existed

    async def delete_volume(self, handler: str, volume: Volume) -> bool:
        """Delete an owned volume (its name an owned label, as a job's volume is); False if it was already gone.
        Its instances must be gone first (Vast refuses to delete a volume in use)."""
        await self.may_act()
        if not self.owns_label(volume.name):
            raise NotOwned(
                f"refusing to delete volume {volume.id} (name {volume.name!r}): only volumes named {self.prefix!r}..."
                " are vastevents' to delete"
            )
        intent = self.store.effects.open_intent(handler, "delete_volume", self.clock.now(), label=volume.name)
        gone = await self.client.delete_volume(volume.id)
        self.store.effects.close_intent(intent, f"volume {volume.id} deleted" if gone else "already gone")
        return gone

    async def reconcile(self) -> None:
        """Settle intents a crash left open: find what a create made, finish a destroy or stop."""
        for intent in self.store.effects.open_intents():
            try:
                if intent.action == "create" and intent.label:
                    found = await self._find_label(intent.label)
                    outcome = "created (found after a restart)" if found is not None else "failed: not found"
                    self.store.effects.close_intent(intent.id, outcome, instance_id=found)
                elif intent.action == "destroy" and intent.instance_id is not None:
                    await self.client.destroy_instance(intent.instance_id)
                    self.store.effects.close_intent(intent.id, "destroyed (after a restart)")
                elif intent.action == "stop" and intent.instance_id is not None:
                    self.store.request_stop(intent.instance_id, self.clock.now())
                    await self.client.stop_instance(intent.instance_id)
                    self.store.effects.close_intent(intent.id, "stopped (after a restart)")
                else:
                    self.store.effects.close_intent(intent.id, "abandoned after a restart")
            except Exception as exc:  # one bad intent must not keep the watcher from starting
                log.warning("could not settle %s intent #%d: %s", intent.action, intent.id, exc)
