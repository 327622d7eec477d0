"""What a replacement takes over from the instance it replaces, beyond its row: the volume and the registry login.

A preempted (or outbid) instance with a volume is replaced on the volume's machine first, linking the volume, so
its files (a job's checkpoints) are there again; only when that machine has nothing to rent does the search
go elsewhere (without the volume: a job then restores its checkpoint from its local copy). A host that failed
(stuck loading, offline too long) is never gone back to. The login of a private image is read again from the
variable the job's spec names: a replacement of a private image needs it as the first rental did.
"""

from __future__ import annotations

from collections.abc import Callable

from vastevents import (
    Cause,
    Context,
    Hosts,
    Instance,
    Jobs,
    JobSpec,
    NoSuchAsk,
    Offer,
    Recovery,
    Rental,
    VastEventsError,
    VolumeMount,
)

RentalFor = Callable[[Offer, VolumeMount | None], Rental]
"""The replacement's create request for an offer, with a volume to link or none."""


async def on_volume_machine(
    ctx: Context, record: Recovery, original: Instance, rental_for: RentalFor, max_price: float | None
) -> int | None:
    """Rent on the machine holding the dead instance's volume, linking it; None when that is not possible (no
    volume, a failed host, the volume gone, nothing rentable there)."""
    mounted = original.mounted_volume
    if mounted is None or record.cause not in (Cause.PREEMPTED, Cause.OUTBID) or original.machine_id is None:
        return None
    volume_id, mount_path = mounted
    machines, hosts = ctx.store.repository(Hosts).blocked(ctx.clock.now())
    if original.machine_id in set(machines) or original.host_id in set(hosts):
        return None
    if not any(v.id == volume_id for v in await ctx.client.list_volumes()):
        ctx.logger.info("volume %d of %s is gone: replacing it elsewhere", volume_id, record.label)
        return None
    query: dict[str, object] = {
        "machine_id": {"eq": original.machine_id},
        "num_gpus": {"eq": original.num_gpus or 1},
        "disk_space": {"gte": original.disk_space or 0},
    }
    if max_price is not None:
        query["dph_total"] = {"lte": max_price}
    kind = "bid" if original.is_bid else "on-demand"
    for offer in await ctx.client.search_offers(query, type=kind, limit=5):
        if offer.machine_id != original.machine_id:
            continue  # a market that ignores a filter must not move the job away from its volume unseen
        try:
            new_id = await ctx.create(rental_for(offer, VolumeMount.existing(volume_id, mount_path)))
        except NoSuchAsk:
            continue
        ctx.logger.info("%s: replaced on machine %d, with its volume %d", record.label, offer.machine_id, volume_id)
        return new_id
    ctx.logger.info("machine %d of volume %d has nothing to rent: replacing elsewhere", original.machine_id, volume_id)
    return None


def registry_login(ctx: Context, label: str) -> str | None:
    """The registry login of the job labelled `label`, from the variable its spec names (None without one)."""
    job = ctx.store.repository(Jobs).by_label(label)
    if job is None:
        return None
    try:
        return JobSpec.model_validate(job.spec).image_login()
    except VastEventsError as exc:
        ctx.logger.warning("%s: the replacement is rented without the registry login: %s", label, exc)
        return None
