"""The ``jobs`` handler: rent an offer for each pending job, run it over SSH, bring the results back, destroy.

[handlers.jobs]
use = "jobs"
ssh_wait = "10m"        # how long a running instance may refuse SSH before its offer is dropped
ssh_retry = "10s"
poll_first = "5s"       # monitor period for the first minute of a job ...
poll_every = "30s"      # ... and after it

A job is found by its instance's label (``<prefix>:job-<id>``). A bad offer (create refused, stuck loading,
exited before running, SSH never ready, no GPU) is destroyed and the next one tried, up to the spec's
``max_offers``; those the host is to blame for (SSH never ready, an SSH host key other than the one recorded on
first use, no GPU, CUDA too old) are ``job_failed`` with cause ``host_unfit`` first, which strikes the host. A
changed host key is never retried: that instance is not the host it was. A preflight failure that is the job's
own (a module that does not import) fails the job with cause ``job_error``: no strike, no next offer. A
replacement instance under the same label (rented by the recovery handler after a preemption) takes the job
over: the input is uploaded again, the checkpoint dir restored from its local copy, the command run again. The
monitor is a daemon whose phase is checkpointed, so a watcher restart resumes it where it was.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from vastevents import (
    Cause,
    Context,
    Duration,
    Event,
    Handler,
    HandlerOptions,
    HostKeyMismatch,
    Instance,
    Job,
    JobPhase,
    Jobs,
    JobSpec,
    JobStatus,
    SshTarget,
    TemporaryError,
    Terms,
    daemon,
    every,
    on,
    unpack_dir,
)

from . import disk_full, jobs_remote

_JOB_LABEL = re.compile(r":job-(\d+)$")
_EARLY = 60.0
_PRICE_TOLERANCE = 0.01
"""How far an instance's billed $/h may be from its offer's before the job says so."""
_STALE = 600.0
"""Seconds after which a job winding down with its instance gone is taken to be a dead watcher's."""


def _older(at: datetime | None, now: datetime) -> bool:
    return at is None or (now - at).total_seconds() > _STALE


def local_spec(job: Job, ctx: Context) -> JobSpec:
    """The spec as this machine runs it. A submitted job's upload is unpacked from the store, and a relative
    ``out`` lands, under ``<state dir>/jobs/job-<id>/`` (whichever watcher leads when it runs)."""
    spec = JobSpec.model_validate(job.spec)
    if job.submitted_by is None:
        return spec
    home = ctx.config.store.resolved_path().parent / "jobs" / f"job-{job.id}"
    changes: dict[str, Any] = {} if spec.out.is_absolute() else {"out": home / spec.out}
    inputs = home / "input"
    if not inputs.is_dir() and (archive := ctx.store.repository(Jobs).inputs(job.id)) is not None:
        unpack_dir(archive, inputs)  # once per machine: each SSH retry and daemon restart reads the unpacked copy
    if inputs.is_dir():
        changes["upload"] = inputs
    return spec.model_copy(update=changes)


class JobsOptions(HandlerOptions):
    ssh_wait: Duration = 600.0
    ssh_retry: Duration = 10.0
    poll_first: Duration = 5.0
    poll_every: Duration = 30.0


class JobsHandler(Handler[JobsOptions]):
    Options = JobsOptions
    emits = ("job_started", "job_finished", "job_failed")

    def __init__(self, options: JobsOptions | None = None) -> None:
        super().__init__(options)
        self._launching: set[int] = set()
        """Jobs this process is renting for right now (a ``creating`` job not here was left by a dead watcher)."""

    # --- renting ------------------------------------------------------------------------------------------

    @every("15s")
    async def launch_pending(self, ctx: Context) -> None:
        """Claim and rent for every pending job (new ones, submitted ones, ones whose offer was dropped); a claim
        whose watcher died before it rented anything goes back to pending first."""
        jobs = ctx.store.repository(Jobs)
        now = ctx.clock.now()
        labels = {instance.label for instance in ctx.store.load_snapshot().instances() if instance.label}
        for job in jobs.list(unfinished=True):
            if job.status == JobStatus.CREATING and job.id not in self._launching and job.label not in labels:
                jobs.release(job.id)
                ctx.logger.warning("job %d: its claim was never rented for; pending again", job.id)
            elif job.status == JobStatus.COLLECTING and job.label not in labels and _older(job.finished_at, now):
                self.settle(job, ctx)
        while (claimed := jobs.claim(now)) is not None:
            await self.launch(claimed, ctx)

    @every("1m")
    async def release_volumes(self, ctx: Context) -> None:
        """The volumes of jobs ended in the last hour that a refusal (still in use) or a crash left behind."""
        await jobs_remote.release_ended_volumes(ctx)

    def settle(self, job: Job, ctx: Context) -> None:
        """Record the end of a job left winding down with its instance gone: a watcher died between the destroy
        and the outcome (the destroy lets the daemon go first, so no daemon resumes it)."""
        jobs = ctx.store.repository(Jobs)
        status = JobStatus.FINISHED if job.exit_code == 0 else JobStatus.FAILED
        jobs.add_error(job.id, "the watcher stopped while winding the job down; its instance is gone")
        jobs.update(job.id, status=status, destroyed=True)
        ctx.logger.warning("job %d: settled as %s after its watcher stopped while winding it down", job.id, status)

    async def relaunch(self, job: Job, reason: str, ctx: Context) -> None:
        """Back to pending with `reason` noted, then claim and rent again (unless another watcher claimed it)."""
        jobs = ctx.store.repository(Jobs)
        jobs.update(job.id, status=JobStatus.PENDING, instance_id=None)
        jobs.add_error(job.id, reason)
        claimed = jobs.claim(ctx.clock.now(), job.id)
        if claimed is not None:
            await self.launch(claimed, ctx)

    async def launch(self, job: Job, ctx: Context) -> None:
        """Rent the first offer that works for a claimed job; a submitted job's offers are searched here."""
        self._launching.add(job.id)
        try:
            await self._launch(job, ctx)
        finally:
            self._launching.discard(job.id)

    async def _launch(self, job: Job, ctx: Context) -> None:
        jobs = ctx.store.repository(Jobs)
        spec = JobSpec.model_validate(job.spec)
        if (refused := await spec.refusal(ctx.client)) is not None:  # its login variable unset, its volume gone
            await self.give_up(job, refused, Cause.JOB_ERROR, ctx)
            return
        if not job.offers:
            chosen = await self._choose(job, spec, ctx)
            if chosen is None:
                return
            job = chosen
        tried = list(job.tried)
        for ask in job.offers:
            if len(tried) >= spec.max_offers:
                break
            if ask in tried:
                continue
            tried.append(ask)
            jobs.update(job.id, tried=tried)
            try:
                price = job.terms[ask].bid if ask in job.terms else spec.bid  # as it was chosen
                volume = await spec.volume_mount(ctx.client, job.label, ask)
                instance_id = await ctx.create(spec.rental(ask, label=job.label, price=price, volume=volume))
            except Exception as exc:
                jobs.add_error(job.id, f"offer {ask}: {type(exc).__name__}: {exc}")
                continue
            jobs.update(job.id, status=JobStatus.LOADING, instance_id=instance_id)
            ctx.logger.info("job %d rented offer %d as instance %d", job.id, ask, instance_id)
            if await self._price_holds(job, ask, instance_id, spec, ctx):
                return
        reason = f"no offer could be rented (tried {len(tried)} of {len(job.offers)}, at most {spec.max_offers})"
        await self.give_up(jobs.add_error(job.id, reason), reason, Cause.CAPACITY, ctx)

    async def _choose(self, job: Job, spec: JobSpec, ctx: Context) -> Job | None:
        """A submitted job's offers, ranked as ``run`` ranks them (``[jobs] choose``) with the terms each is rented
        on; None when the job was given up: nothing matches, or its cost bound breaks ``max_cost`` or a budget."""
        now = ctx.clock.now()
        ranking = await spec.choose(ctx.client, ctx.store, now=now, strategy=ctx.config.jobs.choose, avoid=job.avoid)
        best = ranking.chosen
        if best is None:
            await self.give_up(job, f"no offer matches {spec.query!r}", Cause.CAPACITY, ctx)
            return None
        bound = best.bound(spec.hours * 3600.0)
        refusal = ctx.over_budget(bound)
        if spec.max_cost is not None and bound > spec.max_cost:
            refusal = f"the job may cost up to ${bound:.2f}, over max_cost ${spec.max_cost:.2f}"
        if refusal is not None:
            await self.give_up(job, refusal, Cause.CAPACITY, ctx)
            return None
        terms = {e.offer.id: Terms(e.bid, e.dph) for e in ranking.estimates}
        return ctx.store.repository(Jobs).update(job.id, offers=list(terms), terms=terms)

    async def _price_holds(self, job: Job, ask: int, instance_id: int, spec: JobSpec, ctx: Context) -> bool:
        """After renting, the price the instance bills against the one its offer was chosen at (a host may change
        it between the search and the create). A difference over 1 % is said, and kept among the job's errors; a
        price over the spec's ``max_dph`` loses the instance at once (False: rent the next offer)."""
        jobs = ctx.store.repository(Jobs)
        try:
            instance = await ctx.client.get_instance(instance_id)
        except Exception as exc:
            ctx.logger.warning("job %d: cannot read instance %d's price: %s", job.id, instance_id, exc)
            return True
        billed = instance.dph_total if instance is not None else None
        if billed is None:
            return True
        offered = job.terms[ask].dph if ask in job.terms else None
        if offered and abs(billed - offered) > offered * _PRICE_TOLERANCE:
            note = f"instance {instance_id} bills ${billed:.4f}/h, not the ${offered:.4f}/h offer {ask} was chosen at"
            ctx.logger.warning("job %d: %s", job.id, note)
            jobs.add_error(job.id, note)
        if spec.max_dph is None or billed <= spec.max_dph:
            return True
        reason = f"instance {instance_id} bills ${billed:.4f}/h, over max_dph ${spec.max_dph:g}/h: destroyed"
        ctx.logger.warning("job %d: %s", job.id, reason)
        jobs.update(job.id, status=JobStatus.CREATING, instance_id=None)  # first: its `vanished` is not the job's
        jobs.add_error(job.id, reason)
        await ctx.destroy(instance_id)
        return False

    async def give_up(self, job: Job, reason: str, cause: Cause, ctx: Context) -> None:
        ctx.store.repository(Jobs).update(
            job.id, status=JobStatus.FAILED, finished_at=ctx.clock.now(), instance_id=None, cause=cause
        )
        await ctx.emit("job_failed", detail=reason, cause=cause, key=f"job-{job.id}-gave-up")
        await jobs_remote.release_volumes(ctx, job)

    async def drop_offer(self, job: Job, instance: Instance, reason: str, ctx: Context) -> None:
        """Destroy a bad offer's instance and rent the next offer."""
        jobs = ctx.store.repository(Jobs)
        ctx.logger.warning("job %d: dropping instance %d: %s", job.id, instance.id, reason)
        jobs.update(job.id, status=JobStatus.CREATING, instance_id=None)  # first: its `vanished` is no longer the job's
        await ctx.destroy(instance)
        await jobs_remote.release_volumes(ctx, job, ending=False)  # the next offer's machine gets its own
        await self.relaunch(job, f"instance {instance.id} (machine {instance.machine_id}) dropped: {reason}", ctx)

    # --- the instance's life ------------------------------------------------------------------------------

    @on("any_change", "stuck_loading")
    async def instance_changed(self, event: Event, ctx: Context) -> None:
        instance = event.instance
        if instance is None or not ctx.owns(instance) or not _JOB_LABEL.search(instance.label or ""):
            return
        jobs = ctx.store.repository(Jobs)
        job = jobs.by_label(instance.label)
        if job is None or job.done:
            return
        ours = job.instance_id == instance.id
        if event.name == "stuck_loading" and ours and job.status == JobStatus.LOADING:
            await self.drop_offer(job, instance, f"stuck loading: {instance.status_msg or 'no progress'}", ctx)
        elif event.name == "vanished":
            if ours and job.status == JobStatus.LOADING:
                await self.relaunch(job, f"instance {instance.id} vanished before running", ctx)
        elif instance.actual_status == "running":
            if not ours:
                # A replacement under the job's label (after a preemption): it takes the job over.
                ctx.logger.info("job %d moves from instance %s to %d", job.id, job.instance_id, instance.id)
                jobs.update(job.id, instance_id=instance.id, status=JobStatus.LOADING)
                await ctx.spawn(self.run_job, instance, {"job": job.id, "phase": JobPhase.CONNECT, "resume": True})
            elif job.status in (JobStatus.LOADING, JobStatus.CREATING):
                await ctx.spawn(self.run_job, instance, {"job": job.id, "phase": JobPhase.CONNECT, "resume": False})
        elif ours and job.status == JobStatus.LOADING and instance.actual_status in ("exited", "offline", "stopped"):
            await self.drop_offer(job, instance, f"{instance.actual_status} before running", ctx)

    @daemon
    async def run_job(self, instance_id: int, state: dict[str, Any], ctx: Context) -> None:
        """connect → preflight → upload → start → monitor → collect, each phase checkpointed.

        An unexpected error fails the job and destroys its instance: nothing is left running.
        """
        jobs = ctx.store.repository(Jobs)
        job = jobs.get(int(state["job"]))
        if job is None or job.done or job.instance_id != instance_id:
            return  # finished, or taken over by a replacement instance
        instance = await ctx.client.get_instance(instance_id)
        if instance is None:
            return
        try:
            await self._phases(job, instance, state, ctx)
        except TemporaryError:
            raise
        except HostKeyMismatch as exc:
            await self._host_unfit(job, instance, f"its SSH host key changed: {exc}", "hostkey", ctx)
        except Exception as exc:
            reason = f"error: {type(exc).__name__}: {exc}"
            jobs.add_error(job.id, reason)
            await self.fail_and_destroy(job, instance, reason, Cause.JOB_ERROR, f"job-{job.id}-end", ctx)

    async def _phases(self, job: Job, instance: Instance, state: dict[str, Any], ctx: Context) -> None:
        jobs = ctx.store.repository(Jobs)
        instance_id = instance.id
        spec = local_spec(job, ctx)
        target = SshTarget.of(instance, spec.ssh_user)
        if state["phase"] == JobPhase.CONNECT:
            if not await self._connected(job, instance, target, state, ctx):
                return
            state = self._next(state, JobPhase.PREFLIGHT, ctx)
        if state["phase"] == JobPhase.PREFLIGHT:
            unfit = await jobs_remote.preflight(ctx, target, spec)
            if unfit is not None:
                await self._preflight_failed(job, instance, unfit, ctx)
                return
            state = self._next(state, JobPhase.UPLOAD, ctx)
        if state["phase"] == JobPhase.UPLOAD:
            await jobs_remote.upload_inputs(ctx, target, spec, job, resume=bool(state.get("resume")))
            state = self._next(state, JobPhase.START, ctx)
        if state["phase"] == JobPhase.START:
            pid = await jobs_remote.start(ctx, target, spec)
            now = ctx.clock.now()
            job = jobs.update(
                job.id,
                status=JobStatus.RUNNING,
                started_at=job.started_at or now,
                attempts=job.attempts + 1,
                gpu_name=instance.gpu_name,
                dph_total=instance.dph_total,
            )
            detail = f"job {job.id} pid {pid} on {instance.gpu_name or 'a GPU'} (attempt {job.attempts})"
            await ctx.emit("job_started", instance=instance, detail=detail, key=f"job-{job.id}-start-{instance_id}")
            state = self._next(state, JobPhase.MONITOR, ctx, pid=pid, started=now.isoformat(), synced=now.isoformat())
        if state["phase"] == JobPhase.MONITOR:
            outcome = await self._monitor(job, instance, target, spec, state, ctx)
            if outcome is None:
                return
            exit_code, reason = outcome
            full = (
                None if exit_code in (0, jobs_remote.KILLED) else await disk_full.evidence(ctx, target, spec, instance)
            )
            if full is not None and await disk_full.rerun_bigger(self, job, instance, target, spec, full, ctx):
                return
            detail = f"exit code {exit_code}" + (f": {reason}" if reason else "")
            if exit_code == 0:
                await ctx.emit("job_finished", instance=instance, detail=detail, key=f"job-{job.id}-end")
            else:
                cause = Cause.TIMEOUT if exit_code == jobs_remote.KILLED else Cause.JOB_ERROR
                if full is not None:
                    cause, detail = Cause.DISK_FULL, f"{detail}: {disk_full.failed_detail(spec, full)}"
                jobs.update(job.id, cause=cause)
                await ctx.emit("job_failed", instance=instance, detail=detail, cause=cause, key=f"job-{job.id}-end")
            state = self._next(state, JobPhase.COLLECT, ctx, exit_code=exit_code, reason=reason)
        if state["phase"] == JobPhase.COLLECT:
            await jobs_remote.collect(ctx, target, spec, jobs.get(job.id) or job, instance, state.get("exit_code"))

    def _next(self, state: dict[str, Any], phase: JobPhase, ctx: Context, **more: Any) -> dict[str, Any]:
        state = {**state, **more, "phase": phase}
        ctx.checkpoint(state)
        return state

    async def _connected(
        self, job: Job, instance: Instance, target: SshTarget, state: dict[str, Any], ctx: Context
    ) -> bool:
        assert ctx.ssh is not None
        try:
            await ctx.ssh.run(target, "true", timeout=30)
            return True
        except HostKeyMismatch:
            raise  # not the host it was: never retried
        except Exception as exc:
            since = state.get("waiting_since")
            now = ctx.clock.now()
            if since is None:
                ctx.checkpoint({**state, "waiting_since": now.isoformat()})
            elif (now - datetime.fromisoformat(since)).total_seconds() > self.options.ssh_wait:
                problem = f"SSH not ready after {self.options.ssh_wait:g}s: {exc}"
                await self._host_unfit(job, instance, problem, "ssh", ctx)
                return False
            raise TemporaryError(f"job {job.id}: SSH not ready yet: {exc}", delay=self.options.ssh_retry) from None

    async def _preflight_failed(self, job: Job, instance: Instance, unfit: jobs_remote.Unfit, ctx: Context) -> None:
        if unfit.cause is Cause.HOST_UNFIT:
            await self._host_unfit(job, instance, unfit.problem, "preflight", ctx)
            return
        key = f"job-{job.id}-preflight-{instance.id}"
        ctx.store.repository(Jobs).add_error(job.id, unfit.problem)
        await self.fail_and_destroy(job, instance, unfit.problem, unfit.cause, key, ctx)

    async def _host_unfit(self, job: Job, instance: Instance, problem: str, step: str, ctx: Context) -> None:
        """The host cannot run the job (no GPU, old CUDA, a changed host key, SSH never up): ``job_failed`` with
        cause ``host_unfit`` (which strikes the host), then its instance is destroyed and the next offer rented."""
        detail = f"{problem}; trying the next offer"
        key = f"job-{job.id}-{step}-{instance.id}"
        await ctx.emit("job_failed", instance=instance, detail=detail, cause=Cause.HOST_UNFIT, key=key)
        await self.drop_offer(job, instance, problem, ctx)

    async def fail_and_destroy(
        self, job: Job, instance: Instance, reason: str, cause: Cause, key: str, ctx: Context
    ) -> None:
        """Destroy the instance of a failed job, winding down (``collecting``) first: that instance's ``vanished``,
        delivered while the destroy is still being checked, must not rent a new one for a job still ``loading``."""
        jobs = ctx.store.repository(Jobs)
        jobs.update(job.id, status=JobStatus.COLLECTING, finished_at=ctx.clock.now(), cause=cause)
        await ctx.emit("job_failed", instance=instance, detail=reason, cause=cause, key=key)
        destroyed = await jobs_remote.destroy(ctx, instance)
        await jobs_remote.release_volumes(ctx, job)
        jobs.update(job.id, status=JobStatus.FAILED, finished_at=ctx.clock.now(), destroyed=destroyed)

    async def _monitor(
        self, job: Job, instance: Instance, target: SshTarget, spec: JobSpec, state: dict[str, Any], ctx: Context
    ) -> tuple[int | None, str | None] | None:
        """(exit code, reason) when the command ends or is killed; None when another instance took the job."""
        jobs = ctx.store.repository(Jobs)
        started = datetime.fromisoformat(state["started"])
        while True:
            current = jobs.get(job.id)
            if current is None or current.done or current.instance_id != instance.id:
                return None
            try:
                status = await jobs_remote.status(ctx, target, spec, int(state["pid"]))
            except HostKeyMismatch:
                raise
            except Exception as exc:
                raise TemporaryError(
                    f"job {job.id}: cannot check the process: {exc}", delay=self.options.ssh_retry
                ) from None
            if status is not None:
                return status
            now = ctx.clock.now()
            elapsed = (now - started).total_seconds()
            if spec.max_duration is not None and elapsed > spec.max_duration:
                await jobs_remote.kill(ctx, target, spec, int(state["pid"]))
                return jobs_remote.KILLED, f"killed after max_duration {spec.max_duration:g}s"
            synced = datetime.fromisoformat(state["synced"])
            if spec.checkpoint_dir and (now - synced).total_seconds() >= spec.checkpoint_every:
                await jobs_remote.sync_checkpoint(ctx, target, spec, job)
                state = self._next(state, JobPhase.MONITOR, ctx, synced=now.isoformat())
            await ctx.clock.sleep(self.options.poll_first if elapsed < _EARLY else self.options.poll_every)
