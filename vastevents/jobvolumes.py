"""A job's volume: the mount its create asks for, where an instance has it, and its deletion when the job ends.

A volume the job makes is named with the job's label (an owned name, so only vastevents deletes it, and every
volume of a job is found by its name whatever became of the instances that used it). A volume the spec links by
id is the user's: used, never deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from shlex import quote
from typing import TYPE_CHECKING

from vastevents.errors import ApiError, VastEventsError
from vastevents.models import Volume, VolumeMount

if TYPE_CHECKING:
    from vastevents.context import Context
    from vastevents.jobspec import JobSpec
    from vastevents.ports import VastApi

log = logging.getLogger(__name__)


async def mount_for(client: VastApi, spec: JobSpec, label: str, ask: int) -> VolumeMount | None:
    """The ``volume_info`` for renting offer `ask`: a new volume of the spec's size from a volume offer of the
    same machine (named `label`), or the linked one; None when the spec has no volume."""
    wanted = spec.volume
    if wanted is None:
        return None
    if wanted.id is not None:
        return VolumeMount.existing(wanted.id, wanted.mount_path)
    assert wanted.size is not None
    found = await client.search_offers({"id": {"eq": ask}}, limit=1)
    machine = found[0].machine_id if found else None
    if machine is None:
        raise VastEventsError(f"offer {ask} is gone: no machine to make the job's volume on")
    offers = await client.search_volume_offers(
        {"machine_id": {"eq": machine}, "disk_space": {"gte": wanted.size}}, limit=1
    )
    if not offers:
        raise VastEventsError(f"machine {machine} offers no {wanted.size:g} GB volume")
    return VolumeMount.new(offers[0].id, wanted.size, wanted.mount_path, name=label)


def remote_path(mount_path: str) -> str:
    """`mount_path` for a remote shell, quoted: below ``/root`` it is spelled from ``$HOME`` (the container's
    home is ``/root``; a simulated host's is its own directory)."""
    if mount_path.startswith("/root/"):
        return '"$HOME"/' + quote(mount_path.removeprefix("/root/"))
    return quote(mount_path)


async def release(
    ctx: Context, spec: JobSpec, label: str, *, ending: bool, volumes: Sequence[Volume] | None = None
) -> list[int]:
    """Delete the volumes the job named `label` made that no instance uses any more (when `ending`, unless the
    spec keeps them), among `volumes` (the account's, listed now when None); the ids deleted. A refusal is
    logged: a later pass tries again."""
    wanted = spec.volume
    if wanted is None or wanted.id is not None or (ending and wanted.keep):
        return []
    deleted: list[int] = []
    for volume in volumes if volumes is not None else await ctx.client.list_volumes():
        if volume.name != label or volume.instances:
            continue
        try:
            await ctx.delete_volume(volume)
        except ApiError as exc:
            log.warning("could not delete volume %d of %s yet: %s", volume.id, label, exc)
            continue
        deleted.append(volume.id)
    return deleted
