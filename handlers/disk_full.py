"""A job whose disk filled up: told apart from other failures, what it made is brought back, and with
``on_disk_full = "grow"`` it runs again from its checkpoint on an offer with twice the disk (up to ``max_disk``).

The evidence is what a full disk leaves: ``No space left on device`` (``ENOSPC``, errno 28) at the end of the
command's log, or in what the host says about the instance (its ``status_msg``).
"""

from __future__ import annotations

from shlex import quote
from typing import TYPE_CHECKING

from vastevents import Cause, Context, Instance, Job, Jobs, JobSpec, SshTarget

from . import jobs_remote

if TYPE_CHECKING:
    from .jobs import JobsHandler

ENOSPC = "No space left on device"
_TAIL = 65536
"""Bytes at the end of the log searched for the evidence."""
_WORDS = (ENOSPC, "ENOSPC", "Errno 28")


async def evidence(ctx: Context, target: SshTarget, spec: JobSpec, instance: Instance) -> str | None:
    """What says the disk is full (a line of the log or the host's message), or None."""
    current = await ctx.client.get_instance(instance.id)
    said = (current or instance).status_msg or ""
    if ENOSPC.lower() in said.lower():
        return f"the host says: {said}"
    pattern = quote("|".join(_WORDS))
    command = f"tail -c {_TAIL} {quote(spec.log_path)} 2>/dev/null | grep -E {pattern} | tail -n 1"
    try:
        found = await jobs_remote.ssh_edge(ctx).run(target, command, timeout=60)
    except Exception as exc:  # the host is gone: no evidence, the failure stays the command's
        ctx.logger.warning("cannot read the log of instance %d for a full disk: %s", instance.id, exc)
        return None
    line = found.stdout.strip()
    return f"the log says: {line}" if line else None


async def rerun_bigger(
    handler: JobsHandler, job: Job, instance: Instance, target: SshTarget, spec: JobSpec, why: str, ctx: Context
) -> bool:
    """Bring back what the attempt made (the downloads, the log, the checkpoint), destroy its instance and rent
    again with twice the disk; False (nothing done) when the spec does not grow or cannot grow any more."""
    grown = spec.grown(instance.disk_space)  # the same rerun if a watcher restart asks again
    if grown is None:
        return False
    jobs = ctx.store.repository(Jobs)
    full = instance.disk_space or spec.disk
    detail = f"disk full on {full:g} GB ({why}); running again from the checkpoint with {grown.disk:g} GB"
    key = f"job-{job.id}-disk-full-{instance.id}"
    await ctx.emit("job_failed", instance=instance, detail=detail, cause=Cause.DISK_FULL, key=key)
    await jobs_remote.retrieve(ctx, target, spec, job)
    await jobs_remote.sync_checkpoint(ctx, target, spec, job)
    # Still `running` on this instance while it goes: neither its `vanished` nor the launcher rents for it.
    job = jobs.update(job.id, spec=_stored(job, grown))
    await jobs_remote.destroy(ctx, instance)
    await jobs_remote.release_volumes(ctx, job, ending=False)  # the bigger machine gets its own
    jobs.update(job.id, offers=[], tried=[], terms={})
    await handler.relaunch(jobs.get(job.id) or job, f"disk full on instance {instance.id}: {why}", ctx)
    return True


def _stored(job: Job, grown: JobSpec) -> dict[str, object]:
    """The job's stored spec with the grown disk (what this machine changed in it, e.g. a submitted job's
    unpacked upload, stays out)."""
    return {**job.spec, "disk": grown.disk, "max_disk": grown.max_disk}


def failed_detail(spec: JobSpec, why: str) -> str:
    """The words of a job that failed with its disk full."""
    if spec.on_disk_full != "grow":
        return f'disk full on {spec.disk:g} GB ({why}): more disk, or on_disk_full = "grow"'
    bound = spec.max_disk if spec.max_disk is not None else 4 * spec.disk
    return f"disk full on {spec.disk:g} GB ({why}): twice that is over max_disk {bound:g} GB"
