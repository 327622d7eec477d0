"""What the jobs handler does on the host: preflight, upload, start under nohup, check, kill, collect.

Every remote argument is ``shlex.quote``d. The job runs in the remote workdir; its log, PID and exit code live
in ``<workdir>/.vastevents/``. Collecting downloads the listed paths and the log into the spec's ``out`` dir,
then destroys the instance and checks that it is gone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from shlex import quote

from vastevents import (
    Cause,
    Context,
    HostKeyMismatch,
    Instance,
    Job,
    Jobs,
    JobSpec,
    JobStatus,
    Ssh,
    SshTarget,
    Volume,
)

CONTROL = ".vastevents"
LOG = f"{CONTROL}/job.log"
KILLED = 124
"""The exit code of a command killed after ``max_duration`` (as ``timeout(1)`` reports it)."""
STOPPED = (128 + 1, 128 + 15)
"""The shell's exit codes of a command ended by SIGHUP or SIGTERM: its host stopped it (see :func:`start`)."""
_SWEEP = 3600.0
"""Seconds after a job's end during which its left-over volumes are looked for again."""
_CUDA = re.compile(r"CUDA Version:\s*([0-9]+(?:\.[0-9]+)?)")


def ssh_edge(ctx: Context) -> Ssh:
    assert ctx.ssh is not None, "the jobs handler needs an SSH edge"
    return ctx.ssh


@dataclass(frozen=True)
class Unfit:
    """A failed preflight: whose fault it is (``host_unfit`` or ``job_error``) and what was found."""

    cause: Cause
    problem: str


async def preflight(ctx: Context, target: SshTarget, spec: JobSpec) -> Unfit | None:
    """None if the host is fit for the job, else what failed: no GPU or too old a CUDA is the host's fault, a
    package that does not import is the job's (its image)."""
    ssh = ssh_edge(ctx)
    checks = spec.preflight
    if checks.gpu:
        gpus = await ssh.run(target, "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader")
        if gpus.exit_code != 0 or not gpus.stdout.strip():
            said = (gpus.stderr or gpus.stdout).strip().splitlines()
            seen = said[0] if said else "no output"
            return Unfit(Cause.HOST_UNFIT, f"preflight: no GPU visible (nvidia-smi exit {gpus.exit_code}: {seen})")
        ctx.logger.info("preflight: GPUs %s", "; ".join(gpus.stdout.strip().splitlines()))
    if checks.cuda is not None:
        banner = await ssh.run(target, "nvidia-smi")
        found = _CUDA.search(banner.stdout)
        if found is None or float(found.group(1)) < checks.cuda:
            have = found.group(1) if found else "unknown"
            return Unfit(Cause.HOST_UNFIT, f"preflight: CUDA {have} is older than the required {checks.cuda:g}")
        ctx.logger.info("preflight: CUDA %s", found.group(1))
    for module in checks.imports:
        code = f"import {module} as m; print(getattr(m, '__version__', 'unknown'))"
        result = await ssh.run(target, f"python3 -c {quote(code)} || python -c {quote(code)}")
        if result.exit_code != 0:
            why = (result.stderr.strip().splitlines() or ["not importable"])[-1]
            return Unfit(Cause.JOB_ERROR, f"preflight: cannot import {module}: {why}")
        ctx.logger.info("preflight: %s %s", module, result.stdout.strip())
    return None


async def upload_inputs(ctx: Context, target: SshTarget, spec: JobSpec, job: Job, *, resume: bool) -> None:
    """The workdir, the input, and the checkpoint dir: on the spec's volume when there is one. A job run before
    (`resume`: a replacement instance; or started before: a rerun) gets its checkpoint back from the local copy,
    unless the volume already holds one (a replacement on the volume's machine: the newest there is). A workdir
    the command was started in (the host came back after a flap) is left as it is: its inputs are complete, and
    its checkpoint is the newest there is (the local copy is only as new as the last sync)."""
    edge = ssh_edge(ctx)
    workdir = quote(spec.workdir)
    marker = f"{workdir}/{CONTROL}/pid"
    created = await edge.run(target, f"mkdir -p {workdir}/{CONTROL} && if [ -s {marker} ]; then echo ran; fi")
    if created.exit_code != 0:
        raise RuntimeError(f"cannot create the workdir {spec.workdir}: {created.stderr.strip()}")
    if created.stdout.strip() == "ran":
        ctx.logger.info("job %d: the command ran on this host before; its workdir and checkpoint are kept", job.id)
        return
    if spec.upload is not None:
        await edge.upload(target, spec.upload, spec.workdir)
    kept = False
    if spec.volume is not None and spec.checkpoint_dir:
        kept = await _checkpoints_on_volume(ctx, target, spec)
    local = checkpoint_copy(spec)
    if (resume or job.attempts > 0) and local is not None and local.is_dir() and not kept:
        await edge.upload(target, local, f"{spec.workdir}/{spec.checkpoint_dir}")
        ctx.logger.info("job %d: checkpoint restored from %s", job.id, local)
    elif kept:
        ctx.logger.info("job %d: checkpoint found on the volume", job.id)


async def _checkpoints_on_volume(ctx: Context, target: SshTarget, spec: JobSpec) -> bool:
    """Make ``<workdir>/<checkpoint_dir>`` a link to the volume's mount (what the input held there moves onto it);
    True when the volume already holds files."""
    assert spec.volume is not None and spec.checkpoint_dir
    mount, link = spec.volume.remote_path, quote(f"{spec.workdir}/{spec.checkpoint_dir.rstrip('/')}")
    command = (
        f'mkdir -p {mount} && if [ -n "$(ls -A {mount})" ]; then echo kept; fi &&'
        f" if [ -d {link} ] && [ ! -L {link} ]; then cp -a {link}/. {mount}/ && rm -rf {link}; fi &&"
        f' mkdir -p "$(dirname {link})" && ln -sfn {mount} {link}'
    )
    done = await ssh_edge(ctx).run(target, command)
    if done.exit_code != 0:
        raise RuntimeError(f"cannot put {spec.checkpoint_dir} on the volume: {done.stderr.strip()}")
    return done.stdout.strip() == "kept"


def checkpoint_copy(spec: JobSpec) -> Path | None:
    """Where the checkpoint dir's local copy lives: ``<out>/<its name>``."""
    return spec.out / Path(spec.checkpoint_dir).name if spec.checkpoint_dir else None


_PID_FILE = f'"$(cat {CONTROL}/pid)"'
"""The PID the start recorded, as a shell word."""


def _started_at(pid: str) -> str:
    """A shell expression: the start time of process `pid` (a shell word), in clock ticks since boot (the 22nd
    field of ``/proc/<pid>/stat``, counted after the command name, which may hold spaces)."""
    return f"$(sed 's/.*) //' /proc/{pid}/stat 2>/dev/null | cut -d' ' -f20)"


def _runs(pid: str) -> str:
    """A shell test: process `pid` (a shell word) lives and is the command started, by the start time recorded next
    to its PID: a host restarted since may have given the PID to another process, which must not pass for the job
    (its status would read ``alive`` for ever). A PID file with no start time beside it is trusted as it is."""
    same = f'[ "{_started_at(pid)}" = "$(cat {CONTROL}/started)" ]'
    return f"{{ kill -0 {pid} 2>/dev/null && {{ [ ! -s {CONTROL}/started ] || {same}; }}; }}"


async def start(ctx: Context, target: SshTarget, spec: JobSpec) -> tuple[int, bool]:
    """Start the command under nohup in its own session: its PID, and whether it was started now. The PID file is
    the marker checked first: a command that still runs, or ended (its exit code written), is never started a
    second time (a watcher killed between starting it and checkpointing that it did); one that vanished
    without an exit code (a host flap killed it), or whose PID another process holds now, is started again. The
    wrapper records the exit code, but for a command ended by SIGTERM or SIGHUP (:data:`STOPPED`): that is its host
    stopping or going down (a container stop, a shutdown, a flap), which signals every process at once, and a
    wrapper that outlives its command by an instant must not make that the job's own failure: it vanished, and is
    started again from its checkpoint."""
    stopped = " ".join(str(code) for code in STOPPED)
    wrapper = (
        f'sh -c {quote(spec.cmd)}; code=$?; case " {stopped} " in *" $code "*) exit "$code";; esac;'
        f' echo "$code" > {CONTROL}/exit'
    )
    command = (
        f"cd {quote(spec.workdir)} && mkdir -p {CONTROL} && "
        f"if [ -s {CONTROL}/pid ] && {{ [ -s {CONTROL}/exit ] || {_runs(_PID_FILE)}; }};"
        f" then echo was $(cat {CONTROL}/pid); else rm -f {CONTROL}/exit {CONTROL}/started && "
        f"(setsid nohup sh -c {quote(wrapper)} > {LOG} 2>&1 < /dev/null & echo $! > {CONTROL}/pid;"
        f' echo "{_started_at("$!")}" > {CONTROL}/started) && '
        f"echo new $(cat {CONTROL}/pid); fi"
    )
    result = await ssh_edge(ctx).run(target, command)
    words = result.stdout.split()
    if result.exit_code != 0 or len(words) != 2 or words[0] not in ("was", "new") or not words[1].isdigit():
        raise RuntimeError(f"could not start the command: {result.stderr.strip() or result.stdout.strip()}")
    return int(words[1]), words[0] == "new"


async def status(ctx: Context, target: SshTarget, spec: JobSpec, pid: int) -> tuple[int | None, str | None] | None:
    """None while the command runs; (exit code, reason) once it ended (exit code None if it vanished). A process
    seen gone is looked for once more in a new session: a session cut while it read the process's start time (its
    SSH server stopped under it) reads as gone, and would start a command that still runs a second time."""
    seen = await _status_once(ctx, target, spec, pid)
    if seen is not None and seen[0] is None:
        return await _status_once(ctx, target, spec, pid)
    return seen


async def _status_once(
    ctx: Context, target: SshTarget, spec: JobSpec, pid: int
) -> tuple[int | None, str | None] | None:
    command = (
        f"cd {quote(spec.workdir)} && if [ -s {CONTROL}/exit ]; then echo exit $(cat {CONTROL}/exit);"
        f" elif {_runs(str(pid))}; then echo alive; else echo gone; fi"
    )
    result = await ssh_edge(ctx).run(target, command, timeout=60)
    words = result.stdout.split()
    if result.exit_code != 0 or not words:
        raise RuntimeError(f"status check failed: {result.stderr.strip()}")
    if words[0] == "exit" and len(words) == 2 and words[1].lstrip("-").isdigit():
        return int(words[1]), None
    if words[0] == "gone":
        return None, "the process ended without an exit code (killed, or the host restarted)"
    return None


async def kill(ctx: Context, target: SshTarget, spec: JobSpec, pid: int) -> None:
    """SIGTERM to the command's process group, SIGKILL 2 s later. Written ``kill -TERM -<pid>``, which dash (the
    ``/bin/sh`` of Debian and Ubuntu images) takes as well as bash: dash refuses ``kill -TERM -- -<pid>``."""
    group = quote(f"-{pid}")
    await ssh_edge(ctx).run(target, f"kill -TERM {group} 2>/dev/null; sleep 2; kill -KILL {group} 2>/dev/null; true")


async def sync_checkpoint(ctx: Context, target: SshTarget, spec: JobSpec, job: Job) -> None:
    """Copy the checkpoint dir's contents into its local copy. Its contents (``<dir>/.``), not the dir: on a
    volume the dir is a link to the mount, which an archive would carry as a link, not as the files."""
    local = checkpoint_copy(spec)
    if local is None or spec.checkpoint_dir is None:
        return
    try:
        await ssh_edge(ctx).download(target, f"{spec.workdir}/{spec.checkpoint_dir.rstrip('/')}/.", local)
    except HostKeyMismatch:
        raise  # not the host it was: the job moves on (see JobsHandler.run_job)
    except Exception as exc:
        ctx.logger.warning("job %d: checkpoint sync failed: %s", job.id, exc)


async def collect(
    ctx: Context, target: SshTarget, spec: JobSpec, job: Job, instance: Instance, exit_code: int | None
) -> None:
    """Download the listed paths and the log under ``out``, destroy the instance, record the outcome."""
    jobs = ctx.store.repository(Jobs)
    out = spec.out
    # What the outcome needs is recorded first, should the watcher stop before the end (see JobsHandler.settle).
    job = jobs.update(job.id, status=JobStatus.COLLECTING, exit_code=exit_code, results_dir=str(out),
                      finished_at=job.finished_at or ctx.clock.now())  # fmt: skip
    job = await retrieve(ctx, target, spec, job)
    destroyed = await destroy(ctx, instance)
    await release_volumes(ctx, job)
    now = ctx.clock.now()
    started = job.started_at or now
    cost = (instance.dph_total or 0.0) * (now - started).total_seconds() / 3600.0
    jobs.update(
        job.id,
        status=JobStatus.FINISHED if exit_code == 0 else JobStatus.FAILED,
        finished_at=now,
        cost_usd=cost,
        destroyed=destroyed,
    )


async def retrieve(ctx: Context, target: SshTarget, spec: JobSpec, job: Job) -> Job:
    """Download the listed paths and the log under ``out``; what cannot be is noted among the job's errors. A
    download that fails because the host cannot be reached (gone offline, taken away) raises: the results are
    still there, or lost with the instance, and the instance must not be destroyed as if they were collected."""
    jobs = ctx.store.repository(Jobs)
    out = spec.out
    out.mkdir(parents=True, exist_ok=True)
    for path in spec.download:
        try:
            await ssh_edge(ctx).download(target, f"{spec.workdir}/{path}", (out / path).parent)
        except Exception as exc:
            await _reachable(ctx, target)
            job = jobs.add_error(job.id, f"download {path}: {exc}")
    try:
        await ssh_edge(ctx).download(target, f"{spec.workdir}/{LOG}", out)
    except Exception as exc:
        await _reachable(ctx, target)
        job = jobs.add_error(job.id, f"download of the log: {exc}")
    return job


async def _reachable(ctx: Context, target: SshTarget) -> None:
    """Raise (an SSH error) unless the host answers a command now."""
    answer = await ssh_edge(ctx).run(target, "true", timeout=30)
    if answer.exit_code != 0:
        raise RuntimeError(f"{target.host}:{target.port} does not run a command (exit {answer.exit_code})")


async def destroy(ctx: Context, instance: Instance | int) -> bool:
    """Destroy and verify: True once the account no longer lists the instance as alive."""
    await ctx.destroy(instance)
    still = await ctx.client.get_instance(instance.id if isinstance(instance, Instance) else instance)
    return still is None or still.actual_status in ("exited", "destroyed")


async def release_volumes(
    ctx: Context, job: Job, *, ending: bool = True, volumes: Sequence[Volume] | None = None
) -> None:
    """Delete the volumes the job made that nothing uses now (at its end, unless its spec keeps them); a failure
    is logged and left to :func:`release_ended_volumes`."""
    try:
        spec = JobSpec.model_validate(job.spec)
        deleted = await spec.release_volumes(ctx, job.label, ending=ending, volumes=volumes)
    except Exception as exc:
        ctx.logger.warning("job %d: its volumes are not deleted yet: %s", job.id, exc)
        return
    if deleted:
        ctx.logger.info("job %d: deleted volume(s) %s", job.id, ", ".join(map(str, deleted)))


async def release_ended_volumes(ctx: Context) -> None:
    """Delete what the jobs that ended within the hour and made a volume left of them (one list for all)."""
    now = ctx.clock.now()
    ended = [
        job
        for job in ctx.store.repository(Jobs).list()
        if job.done and job.finished_at is not None and (now - job.finished_at).total_seconds() < _SWEEP
        and isinstance(volume := job.spec.get("volume"), dict) and volume.get("size") is not None
        and not volume.get("keep")
    ]  # fmt: skip
    if not ended:
        return
    try:
        volumes = await ctx.client.list_volumes()
    except Exception as exc:
        ctx.logger.warning("cannot list the volumes to delete what ended jobs left: %s", exc)
        return
    names = {volume.name for volume in volumes}
    for job in ended:
        if job.label in names:
            await release_volumes(ctx, job, volumes=volumes)
