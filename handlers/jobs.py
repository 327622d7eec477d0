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
changed host key is never retried: that instance is not the host it was. An offer rented away before our create
is no attempt (it does not count against ``max_offers``); a list used up so is searched again after the backoff.
An error while the job's instance is no longer running (a session dropped as it was taken away) is the
instance's loss, not the job's: recovery or the next offer resume it from its checkpoint. A preflight failure
that is the job's own (a module that does not import) fails the job with cause ``job_error``: no strike, no next
offer. A replacement instance under the same label (rented by the recovery handler after a preemption) takes the job
over: the input is uploaded again, the checkpoint dir restored from its local copy, the command run again. The
monitor is a daemon whose phase is checkpointed, so a watcher restart resumes it where it was.

Events are the fast path; the reconcile pass (each cycle and at every start) is the guarantee: it compares each
unfinished job with the latest snapshot and acts on the difference (see :meth:`JobsHandler.reconcile`).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from vastevents import (
    ApiError,
    Cause,
    Context,
    Duration,
    Event,
    Handler,
    HandlerOptions,
    HostHistory,
    HostKeyMismatch,
    Instance,
    Job,
    JobPhase,
    Jobs,
    JobSpec,
    JobStatus,
    NoSuchAsk,
    NotOwned,
    Recoveries,
    Recovery,
    RecoveryStatus,
    SshError,
    SshTarget,
    State,
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
_ALIVE = (State.SCHEDULING, State.CREATED, State.LOADING, State.RUNNING, State.REBOOTING)
"""States of an instance that is, or is becoming, the job's host."""
_DEAD = (State.EXITED, State.STOPPED)
_REPLACING = (RecoveryStatus.WAITING, RecoveryStatus.PENDING, RecoveryStatus.RENTING, RecoveryStatus.RECOVERED)
"""A recovery in one of these replaces its dead instance (or did): the replacement takes the job over."""
_RETRY_FIRST = 5.0
_RETRY_MAX = 30.0
"""The backoff of a claim released after its search or create failed on the API: 5 s, doubling, at most 30 s."""
_RESUMES = 3
"""How many times a command that vanished (a host flap killed it) is started again on its host."""
_SEARCHES = 8
"""How many times in a row a job whose offers were all rented away under it searches again before ``capacity``."""
_RETRIES = 3
"""How many times a phase whose SSH session failed on a running instance is tried again (from its checkpoint)."""


def _transient(exc: Exception) -> bool:
    """An API failure that says nothing about the offer (5xx, 429, no answer): retry the claim later."""
    if isinstance(exc, NoSuchAsk | NotOwned):
        return False
    if isinstance(exc, ApiError):
        return exc.status_code is None or exc.status_code == 429 or exc.status_code >= 500
    return isinstance(exc, OSError | TimeoutError) or type(exc).__module__.startswith("httpx")


def grace_s(ctx: Context) -> float:
    """How long an instance seen down may take to come back before it is taken for lost: preempt_grace plus a poll."""
    return ctx.config.watch.preempt_grace + ctx.config.watch.interval


def _recovery_configured(ctx: Context) -> bool:
    """Whether a recovery handler replaces this watcher's dead instances (else the jobs handler rents again)."""
    return any(h.use.split(":")[-1] in ("recovery", "RecoveryHandler") for h in ctx.config.handlers.values())


def _recovery_failed(job: Job, ctx: Context) -> Recovery | None:
    """The last recovery of the job's lineage (its label), if it gave up."""
    lineage = ctx.store.repository(Recoveries).lineage(job.label)
    return lineage[-1] if lineage and lineage[-1].status is RecoveryStatus.FAILED else None


def local_spec(job: Job, ctx: Context) -> JobSpec:
    """The spec as this machine runs it. Each job's results land in a directory of its own, ``<out>/job-<id>/``
    (``run`` stores `out` absolute), so two jobs with one `out` never mix their logs and files. A submitted job's
    upload is unpacked from the store, and a relative ``out`` lands, under ``<state dir>/jobs/job-<id>/``
    (whichever watcher leads when it runs)."""
    spec = JobSpec.model_validate(job.spec)
    own = f"job-{job.id}"
    if job.submitted_by is None:
        return spec.model_copy(update={"out": spec.out.expanduser().absolute() / own})
    home = ctx.config.store.resolved_path().parent / "jobs" / own
    changes: dict[str, Any] = {"out": spec.out / own} if spec.out.is_absolute() else {"out": home / spec.out}
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
        self._running: set[int] = set()
        """Jobs whose daemon runs in this process right now."""

    # --- renting ------------------------------------------------------------------------------------------

    @every("5s", at_start=True)
    async def reconcile(self, ctx: Context) -> None:
        """The level-triggered pass, each cycle and at every start: each unfinished job is compared with what the
        latest snapshot shows and moved on whatever events were missed (cancelled on request, a dead watcher's
        claim released or its rental adopted, a replacement adopted, a dead instance's job recovered, a job with
        no daemon resumed, a crash's winding down settled), then every pending job that is due is claimed."""
        jobs = ctx.store.repository(Jobs)
        snapshot = ctx.store.load_snapshot()
        grace = grace_s(ctx)
        now = ctx.clock.now()
        just_changed = {i for i, view in snapshot.views.items() if (now - view.since).total_seconds() < grace}
        offline_grace = ctx.config.watch.offline_grace
        just_offline = {i for i, view in snapshot.views.items() if (now - view.since).total_seconds() < offline_grace}
        went_down = {i for i, view in snapshot.views.items() if view.down_since is not None}
        by_label: dict[str, list[Instance]] = {}
        for instance in snapshot.instances():
            if instance.label:
                by_label.setdefault(instance.label, []).append(instance)
        with_daemon = {row.instance_id for row in ctx.store.effects.daemons() if row.handler == ctx.handler}
        for job in jobs.list(unfinished=True):
            if job.id in self._launching:
                continue
            if job.cancel_requested_at is not None and job.status != JobStatus.COLLECTING:  # else it ends anyway
                await self.cancel(job, ctx)
            else:
                recent = (just_changed, just_offline, went_down)
                await self._reconcile(job, by_label.get(job.label, []), with_daemon, recent, ctx)
        while (claimed := jobs.claim(ctx.clock.now())) is not None:
            await self.launch(claimed, ctx)

    async def _reconcile(
        self,
        job: Job,
        instances: list[Instance],
        with_daemon: set[int],
        recent: tuple[set[int], set[int], set[int]],
        ctx: Context,
    ) -> None:
        """`recent`: the instances whose state the snapshot saw change within preempt_grace (plus a poll
        interval), and within offline_grace: an instance just seen down may come back (an outbid bid resumed, a
        flapping host), and an edge event is the fast path meanwhile; and those down after running while meant to
        run (``preempted`` counts their grace)."""
        just_changed, just_offline, went_down = recent
        jobs = ctx.store.repository(Jobs)
        live = [i for i in instances if i.state in _ALIVE]
        current = next((i for i in instances if i.id == job.instance_id), None)
        if job.status == JobStatus.CREATING:
            if (rented := await self._rented_for(job, ctx)) is not None:  # a dead watcher's create went through
                ctx.logger.warning("job %d: adopting instance %d its claim rented", job.id, rented.id)
                jobs.update(job.id, status=JobStatus.LOADING, instance_id=rented.id)
            else:
                jobs.release(job.id)
                ctx.logger.warning("job %d: its claim was never rented for; pending again", job.id)
            return
        if current is not None and current.state is State.RUNNING:
            await self._drop_spares(job, current, instances, ctx)
        if job.status == JobStatus.PENDING or job.id in self._running:
            return  # nothing rented yet, or its daemon is at work here (it may be renting again itself)
        won = [i for i in instances if i.state is State.RUNNING and i.id != job.instance_id]
        if won and (current is None or current.state is not State.RUNNING) and job.status != JobStatus.COLLECTING:
            await self._move(job, max(won, key=lambda i: i.id), ctx)  # it won a race: the job's own does not run
            return
        if current is not None and current.state in _ALIVE:
            if current.state is State.RUNNING and current.id not in with_daemon:
                ctx.logger.info("job %d: no daemon follows instance %d; resuming it", job.id, current.id)
                await ctx.spawn(self.run_job, current, self._resume_state(job))
            return
        if current is not None and current.state is State.OFFLINE and job.status == JobStatus.LOADING:
            if current.id in just_changed or (current.id in went_down and _recovery_configured(ctx)):
                return  # a flap: back soon; or it ran, and ``preempted`` (after preempt_grace) tells recovery
            await self.race_offer(job, current, f"offline before running for over {grace_s(ctx):g}s", ctx)
            return
        if current is not None and current.state is State.OFFLINE:
            if current.id in just_offline or _recovery_configured(ctx):
                return  # back soon, or offline_too_long (recovery) says otherwise
        if job.status == JobStatus.COLLECTING and (current is None or job.exit_code is None):
            if not live:  # gone: destroyed once its results were in (the collect destroys last)
                if current is not None:
                    await ctx.destroy(current)
                self.settle(job, ctx)
            return
        if current is not None and current.id in just_changed and job.status == JobStatus.RUNNING:
            return  # seen down only just: it may come back (a bid resumed), ``preempted`` tells recovery first
        await self._instance_dead(job, ctx)

    async def _instance_dead(self, job: Job, ctx: Context) -> None:
        """The snapshot shows the job's instance gone, exited, stopped or offline too long. Checked on the API
        (the snapshot may predate a rental): a live instance under the job's label (a replacement, whether or not
        its running was seen) takes the job over; else recovery replaces it when configured (until it gives up),
        else the instance is destroyed and the job rented again on its next offer."""
        jobs = ctx.store.repository(Jobs)
        instance = await ctx.client.get_instance(job.instance_id) if job.instance_id is not None else None
        if instance is not None and instance.state not in (*_DEAD, State.OFFLINE):
            return
        live = [i for i in await self._under_label(job, ctx) if i.state in _ALIVE]
        if live:
            new = max(live, key=lambda i: i.id)
            ctx.logger.info("job %d moves from instance %s to %d", job.id, job.instance_id, new.id)
            job = jobs.update(job.id, instance_id=new.id, status=JobStatus.LOADING)
            if new.state is State.RUNNING:
                await ctx.spawn(self.run_job, new, self._resume_state(job))
            return
        failed = _recovery_failed(job, ctx)
        if failed is not None:
            if instance is not None:
                await ctx.destroy(instance)
            await self.give_up(job, f"recovery failed: {failed.reason}", failed.cause or Cause.PREEMPTED, ctx)
            return
        if _recovery_configured(ctx):
            return  # recovery replaces it (its own reconcile pass sees the dead instance)
        what = f"instance {job.instance_id} {instance.actual_status if instance is not None else 'gone'}"
        ctx.logger.warning("job %d: %s; renting its next offer", job.id, what)
        if instance is not None:
            await ctx.destroy(instance)
        await self.relaunch(job, f"{what}: rented again", ctx)

    def _resume_state(self, job: Job) -> dict[str, Any]:
        """Where the job's daemon on a (new) instance starts: the collect of a job winding down, else the connect,
        resuming from the checkpoint once the command ran somewhere (the marker on the host keeps a command that
        still runs, or ended, from being started again)."""
        if job.status == JobStatus.COLLECTING:
            return {"job": job.id, "phase": JobPhase.COLLECT, "exit_code": job.exit_code}
        return {"job": job.id, "phase": JobPhase.CONNECT, "resume": job.attempts > 0}

    async def _under_label(self, job: Job, ctx: Context) -> list[Instance]:
        return [i for i in await ctx.client.list_instances() if i.label == job.label]

    async def _rented_for(self, job: Job, ctx: Context) -> Instance | None:
        """A live instance under a claimed job's label, as the API lists it now (a create the snapshot missed)."""
        live = [i for i in await self._under_label(job, ctx) if i.state in _ALIVE]
        return max(live, key=lambda i: i.id) if live else None

    async def cancel(self, job: Job, ctx: Context) -> None:
        """Carry out a cancel request: destroy what the job rented (by label too), then ``cancelled`` with
        ``job_failed`` (cause ``cancelled``) journaled so notifiers hear it ended. A destroy that fails is tried
        again next cycle."""
        jobs = ctx.store.repository(Jobs)
        ids = {i.id for i in await self._under_label(job, ctx)} | ({job.instance_id} if job.instance_id else set())
        destroyed = True
        for instance_id in sorted(ids):
            destroyed = await jobs_remote.destroy(ctx, instance_id) and destroyed
        jobs.update(job.id, status=JobStatus.CANCELLED, finished_at=ctx.clock.now(), cause=Cause.CANCELLED,
                    destroyed=destroyed)  # fmt: skip
        jobs.add_error(job.id, "cancelled on request: everything the job rented was destroyed")
        detail = f"job {job.id} cancelled ({job.status} when asked)"
        await ctx.emit("job_failed", detail=detail, cause=Cause.CANCELLED, key=f"job-{job.id}-end")
        await jobs_remote.release_volumes(ctx, job)
        ctx.logger.warning("job %d: cancelled on request", job.id)

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
            try:
                chosen = await self._choose(job, spec, ctx)
            except Exception as exc:
                if not _transient(exc):
                    raise
                self._retry_later(job, f"the offer search failed: {exc}", ctx)
                return
            if chosen is None:
                return
            job = chosen
        tried, offers, gone = list(job.tried), list(job.offers), 0
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
                if _transient(exc):
                    jobs.update(job.id, tried=tried[:-1])  # the offer is not at fault: it stays to try
                    self._retry_later(job, f"renting offer {ask} failed: {exc}", ctx)
                    return
                if isinstance(exc, NoSuchAsk):  # rented away before us: no attempt of ours, and gone from the list
                    tried.remove(ask)
                    offers.remove(ask)
                    gone += 1
                    jobs.update(job.id, tried=tried, offers=offers)
                jobs.add_error(job.id, f"offer {ask}: {type(exc).__name__}: {exc}")
                continue
            jobs.update(job.id, status=JobStatus.LOADING, instance_id=instance_id, failures=0)  # backoff anew
            ctx.logger.info("job %d rented offer %d as instance %d", job.id, ask, instance_id)
            if await self._price_holds(job, ask, instance_id, spec, ctx):
                return
        if gone and len(tried) < spec.max_offers and job.failures < _SEARCHES:
            # The market moved under the list (offers rented away): search again after the backoff, not give up.
            jobs.update(job.id, offers=[], terms={})
            self._retry_later(job, f"{gone} of its offers were rented away; searching again", ctx)
            return
        reason = f"no offer could be rented (tried {len(tried)} of {len(offers)}, at most {spec.max_offers})"
        await self.give_up(jobs.add_error(job.id, reason), reason, Cause.CAPACITY, ctx)

    def _retry_later(self, job: Job, reason: str, ctx: Context) -> None:
        """Give a claim back at once after an API failure, claimable again after a backoff (5 s doubling, at
        most 30 s), so a storm delays the job by at most 30 s after it ends."""
        delay = min(_RETRY_MAX, _RETRY_FIRST * 2 ** min(job.failures, 8))
        jobs = ctx.store.repository(Jobs)
        jobs.add_error(job.id, reason)
        jobs.release(job.id, ctx.clock.now() + timedelta(seconds=delay), failed=True)
        ctx.logger.warning("job %d: %s; trying again in %gs", job.id, reason, delay)

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
        self._launching.add(job.id)  # the reconcile pass must not adopt the instance being dropped
        try:
            jobs.update(job.id, status=JobStatus.CREATING, instance_id=None)  # first: its `vanished` is not the job's
            await ctx.destroy(instance)
            await jobs_remote.release_volumes(ctx, job, ending=False)  # the next offer's machine gets its own
        finally:
            self._launching.discard(job.id)
        await self.relaunch(job, f"instance {instance.id} (machine {instance.machine_id}) dropped: {reason}", ctx)

    async def race_offer(self, job: Job, instance: Instance, reason: str, ctx: Context) -> None:
        """Rent the next offer beside an instance whose host went offline before it ran: a host back soon carries on
        loading where it was, a new rental boots from scratch. Whichever runs first keeps the job; the other is
        destroyed (:meth:`_drop_spares`). A job with a volume drops the instance instead (one machine holds it)."""
        if JobSpec.model_validate(job.spec).volume is not None:
            await self.drop_offer(job, instance, reason, ctx)
            return
        ctx.logger.warning("job %d: instance %d %s; renting the next offer beside it", job.id, instance.id, reason)
        where = f"instance {instance.id} (machine {instance.machine_id})"
        await self.relaunch(job, f"{where} {reason}: the next offer rented beside it", ctx)

    async def _drop_spares(self, job: Job, current: Instance, instances: list[Instance], ctx: Context) -> None:
        """The job's instance runs: any other instance under its label lost a race (to a host back from offline,
        or to a replacement) and is destroyed."""
        for spare in [i for i in instances if i.id != current.id]:
            ctx.logger.info(
                "job %d runs on instance %d: destroying instance %d beside it", job.id, current.id, spare.id
            )
            await ctx.destroy(spare)

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
            if ours and job.status == JobStatus.LOADING and not self._being_replaced(instance.id, ctx):
                await self.relaunch(job, f"instance {instance.id} vanished before running", ctx)
        elif instance.actual_status == "running":
            if not ours:
                if job.id in self._launching or await self._back_running(job, ctx):
                    return  # renting meanwhile, or its own instance runs: the reconcile pass settles the race
                await self._move(job, instance, ctx)  # a replacement (after a preemption) takes the job over
            elif job.status in (JobStatus.LOADING, JobStatus.CREATING):
                await ctx.spawn(self.run_job, instance, self._resume_state(job))
        elif ours and job.status == JobStatus.LOADING and instance.actual_status in ("exited", "stopped"):
            await self.drop_offer(job, instance, f"{instance.actual_status} before running", ctx)
        # offline before running: a flap, waited for up to preempt_grace by the reconcile pass (a new rental boots
        # from scratch; a host back in 20-60 s carries on where it was)

    async def _move(self, job: Job, instance: Instance, ctx: Context) -> None:
        """The job moves to `instance`, which runs (a replacement, or the winner of a race), resumed there."""
        ctx.logger.info("job %d moves from instance %s to %d", job.id, job.instance_id, instance.id)
        job = ctx.store.repository(Jobs).update(job.id, instance_id=instance.id, status=JobStatus.LOADING)
        await ctx.spawn(self.run_job, instance, self._resume_state(job))

    async def _back_running(self, job: Job, ctx: Context) -> bool:
        """Whether the job's own instance runs (on the API, now): a replacement rented while its host was offline
        lost the race to the host's return."""
        current = await ctx.client.get_instance(job.instance_id) if job.instance_id is not None else None
        return current is not None and current.state is State.RUNNING

    def _being_replaced(self, instance_id: int, ctx: Context) -> bool:
        """Whether recovery replaces the instance (or did): its replacement takes the job over, none is rented here."""
        record = ctx.store.repository(Recoveries).get(instance_id)
        return record is not None and record.status in _REPLACING

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
        self._running.add(job.id)
        try:
            await self._phases(job, instance, state, ctx)
        except TemporaryError:
            raise
        except HostKeyMismatch as exc:
            await self._host_unfit(job, instance, f"its SSH host key changed: {exc}", "hostkey", ctx)
        except Exception as exc:
            if await self._instance_at_fault(job, instance_id, exc, ctx):
                return
            reason = f"error: {type(exc).__name__}: {exc}"
            jobs.add_error(job.id, reason)
            await self.fail_and_destroy(job, instance, reason, Cause.JOB_ERROR, f"job-{job.id}-end", ctx)
        finally:
            self._running.discard(job.id)

    async def _instance_at_fault(self, job: Job, instance_id: int, exc: Exception, ctx: Context) -> bool:
        """Whether a phase's error is its instance's loss rather than the job's: the instance is no longer running
        (preempted, outbid, its host offline, gone), so the session dropped under the job. Then the daemon ends and
        the job is left to the reconcile pass and recovery (a replacement, or the host back, resumes it from its
        checkpoint). An SSH error on an instance still running (a flap just over, a dropped session), or an API
        failure that says nothing (a 503 while destroying it at the end), is retried from the phase's checkpoint,
        :data:`_RETRIES` times; so is any error while the API cannot tell what the instance is."""
        if await self._instance_lost(job, instance_id, exc, ctx):
            return True
        if not isinstance(exc, SshError) and not _transient(exc):  # the job's own error (or ours): no retry
            return False
        rows = ctx.store.effects.daemons()
        saved = [r.state for r in rows if r.handler == ctx.handler and r.instance_id == instance_id]
        state = saved[0] if saved else {}
        retries = int(state.get("retries", 0))
        if retries >= _RETRIES:
            return False
        ctx.checkpoint({**state, "retries": retries + 1})
        raise TemporaryError(
            f"job {job.id}: SSH to instance {instance_id} failed ({retries + 1} of {_RETRIES}): {exc}",
            delay=self.options.ssh_retry,
        ) from None

    async def _instance_lost(self, job: Job, instance_id: int, exc: Exception, ctx: Context) -> bool:
        """Whether the API shows the instance no longer running under an error of the job's daemon (noted among the
        job's errors); raises TemporaryError while the API cannot tell."""
        try:
            now = await ctx.client.get_instance(instance_id)
        except Exception as api:
            why = f"job {job.id}: {exc}; its instance cannot be read: {api}"
            raise TemporaryError(why, delay=_RETRY_FIRST) from None
        if now is not None and now.state is State.RUNNING:
            return False
        where = now.actual_status if now is not None else "gone"
        note = f"instance {instance_id} {where} under the job ({type(exc).__name__}: {exc}); left to recovery"
        ctx.logger.warning("job %d: %s", job.id, note)
        ctx.store.repository(Jobs).add_error(job.id, note)
        return True

    async def _phases(self, job: Job, instance: Instance, state: dict[str, Any], ctx: Context) -> None:
        jobs = ctx.store.repository(Jobs)
        instance_id = instance.id
        spec = local_spec(job, ctx)
        target = SshTarget.of(instance, spec.ssh_user)
        if state["phase"] == JobPhase.CONNECT:
            if not await self._connected(job, instance, target, state, ctx):
                return
            ctx.store.repository(HostHistory).ssh_ready(instance_id, ctx.clock.now())  # what choosing learns from
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
        while state["phase"] in (JobPhase.START, JobPhase.MONITOR):
            if state["phase"] == JobPhase.START:
                job, state = await self._start(job, instance, target, spec, state, ctx)
            outcome = await self._monitor(job, instance, target, spec, state, ctx)
            if outcome is None:
                return
            exit_code, reason = outcome
            resumes = int(state.get("resumes", 0))
            if exit_code is None and resumes < _RESUMES:  # killed with its host (a flap): from its checkpoint
                note = f"{reason}; started again on instance {instance_id} ({resumes + 1} of {_RESUMES})"
                ctx.logger.warning("job %d: %s", job.id, note)
                jobs.add_error(job.id, note)
                state = self._next(state, JobPhase.START, ctx, resumes=resumes + 1, resume=False)  # noted here
                continue
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

    async def _start(
        self, job: Job, instance: Instance, target: SshTarget, spec: JobSpec, state: dict[str, Any], ctx: Context
    ) -> tuple[Job, dict[str, Any]]:
        """Start the command (unless the host's marker shows it started already), record it, move to monitor."""
        pid, fresh = await jobs_remote.start(ctx, target, spec)
        if fresh and state.get("resume"):  # its daemon ended with the host (a flap, a preemption), resumed since
            note = f"the command had ended with its host; started again on instance {instance.id}, from its checkpoint"
            ctx.logger.warning("job %d: %s", job.id, note)
            ctx.store.repository(Jobs).add_error(job.id, note)
        now = ctx.clock.now()
        job = ctx.store.repository(Jobs).update(
            job.id,
            status=JobStatus.RUNNING,
            started_at=job.started_at or now,
            attempts=job.attempts + 1 if fresh else max(job.attempts, 1),
            gpu_name=instance.gpu_name,
            dph_total=instance.dph_total,
            results_dir=str(spec.out),
        )
        resumes = int(state.get("resumes", 0))
        detail = f"job {job.id} pid {pid} on {instance.gpu_name or 'a GPU'} (attempt {job.attempts})"
        key = f"job-{job.id}-start-{instance.id}" + (f"-{resumes}" if resumes else "")
        await ctx.emit("job_started", instance=instance, detail=detail, key=key)
        return job, self._next(state, JobPhase.MONITOR, ctx, pid=pid, started=now.isoformat(), synced=now.isoformat())

    def _next(self, state: dict[str, Any], phase: JobPhase, ctx: Context, **more: Any) -> dict[str, Any]:
        state = {**state, **more, "phase": phase, "retries": 0}  # a phase done: its SSH retries start anew
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

    async def _unreachable_too_long(
        self, job: Job, instance: Instance, state: dict[str, Any], exc: Exception, ctx: Context
    ) -> bool:
        """A running instance whose SSH fails while its command runs (sshd dead, the port blocked): its failures
        are counted from the first, and once they last over ``ssh_wait`` the host is unfit (struck, the instance
        destroyed, the next offer rented, the job resumed there from its checkpoint); True then."""
        now = ctx.clock.now()
        since = state.get("unreachable_since")
        if since is None:
            ctx.checkpoint({**state, "unreachable_since": now.isoformat()})
            return False
        if (now - datetime.fromisoformat(since)).total_seconds() <= self.options.ssh_wait:
            return False
        problem = f"SSH lost for over {self.options.ssh_wait:g}s while the command ran: {exc}"
        await self._host_unfit(job, instance, problem, "ssh-lost", ctx)
        return True

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
        """(exit code, reason) when the command ends or is killed; None when another instance took the job, or the
        API shows its instance no longer running (the reconcile pass takes the job on from there)."""
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
                if await self._instance_lost(job, instance.id, exc, ctx):
                    return None  # the daemon ends: the reconcile pass resumes the job when the host is back, or not
                if await self._unreachable_too_long(job, instance, state, exc, ctx):
                    return None
                raise TemporaryError(
                    f"job {job.id}: cannot check the process: {exc}", delay=self.options.ssh_retry
                ) from None
            if status is not None:
                return status
            if state.get("unreachable_since") is not None:  # it answers again
                state = self._next(state, JobPhase.MONITOR, ctx, unreachable_since=None)
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
