"""The ``recovery`` handler: an owned instance that died is replaced on another host, under the same label.

It reacts to ``preempted``, ``stuck_loading`` and ``offline_too_long`` of owned instances. Each death gets a cause
(:class:`~vastevents.Cause`): a bid instance outbid is ``outbid``, another preemption ``preempted``, a stuck load or
a host offline too long ``host_unfit``. Only ``host_unfit`` strikes the host: those deaths, hosts that flap
(``host_flap``), and a ``job_failed`` whose cause is ``host_unfit`` (the job runner drops that instance and rents
its next offer itself, so nothing is replaced for it here). A replacement keeps the original's GPU, disk, image,
onstart, env and label, so a job runner resumes the job on it by label; the job's registry login and, back on
its machine, its volume too.

[handlers.recovery]
use = "recovery"
on_preempt = "wait"       # replace | wait | rebid | alert; default: wait for bid instances, replace on-demand
wait_timeout = "10m"      # how long a paused instance (wait, rebid) may take to resume by itself
rebid_factor = 1.2        # rebid: the market minimum bid times this, within max_price
max_restarts = 3          # replacements per label (one job's lineage), then recovery_failed
max_price = 2.5           # $/h cap for a replacement (none by default)
min_reliability = 0.98
fallback_gpus = ["RTX 4090"]
backoff = "30s"           # after a failed attempt (the first attempt is immediate), times backoff_factor
backoff_factor = 2.0      # per further failure, capped at backoff_max
backoff_max = "5m"
give_up_after = "1h"      # then recovery_failed
strikes_to_block = 2      # strikes that block a machine, for exclude_ttl
exclude_ttl = "24h"

The search always leaves out the dead instance's machine and host, and every blocked machine and host, but for
one exception: a preempted or outbid instance with a volume is replaced on the volume's machine first, the volume
linked (:mod:`.replacing`). Every
step is idempotent: the recovery row is written before anything is rented, a create is recorded as an intent
first, and before renting the account is searched for a replacement by label, so a redelivered event or a
restart after a crash never rents twice. A reconcile pass (each cycle and at every start) covers the deaths no
event told of: a job loading or running with nothing alive under its label gets its last instance recovered.
A dead instance whose host is offline is kept while its replacement loads: the first of the two to run keeps the
label, the other is destroyed.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Literal

from pydantic import Field

from vastevents import (
    ApiError,
    Cause,
    Context,
    Duration,
    Event,
    Handler,
    HandlerOptions,
    HostHistory,
    Hosts,
    Instance,
    Job,
    Jobs,
    JobSpec,
    JobStatus,
    Kind,
    NoSuchAsk,
    Offer,
    Recoveries,
    Recovery,
    RecoveryStatus,
    Rental,
    Snapshot,
    State,
    VastEventsError,
    VolumeMount,
    Workload,
    every,
    on,
    rank,
)

from . import replacing

Policy = Literal["replace", "wait", "rebid", "alert"]
_ALIVE = (State.SCHEDULING, State.CREATED, State.LOADING, State.RUNNING, State.REBOOTING)


class NoOffer(VastEventsError):
    """No offer matched the replacement's needs."""


class RecoveryOptions(HandlerOptions):
    on_preempt: Policy | None = None
    wait_timeout: Duration = Field(default=600.0, ge=0)
    rebid_factor: float = Field(default=1.2, ge=1.0)
    max_restarts: int = Field(default=3, ge=0)
    max_price: float | None = Field(default=None, gt=0)
    min_reliability: float = Field(default=0.98, ge=0, le=1)
    fallback_gpus: tuple[str, ...] = ()
    backoff: Duration = Field(default=30.0, gt=0)
    backoff_factor: float = Field(default=2.0, ge=1.0)
    backoff_max: Duration = Field(default=300.0, gt=0)
    give_up_after: Duration = Field(default=3600.0, gt=0)
    strikes_to_block: int = Field(default=2, ge=1)
    exclude_ttl: Duration = Field(default=86400.0, gt=0)


class RecoveryHandler(Handler[RecoveryOptions]):
    """Replaces dead owned instances; keeps the host blocklist."""

    Options = RecoveryOptions
    emits = ("recovered", "recovery_failed", "host_blocked")

    def __init__(self, options: RecoveryOptions | None = None) -> None:
        super().__init__(options)
        self._busy: set[int] = set()
        """Dead instances with an attempt running in this process (a ``renting`` row not here was left by a crash)."""

    # --- events ----------------------------------------------------------------------------------------------

    @on("preempted", "stuck_loading", "offline_too_long", "job_failed")
    async def died(self, event: Event, ctx: Context) -> None:
        instance = event.instance
        if instance is None or not ctx.owns(instance) or not instance.label:
            return
        if event.name == "job_failed":
            if event.cause is Cause.HOST_UNFIT:
                await self._strike(ctx, instance, f"job_failed: {event.detail}", event)
            return
        recoveries = ctx.store.repository(Recoveries)
        known = recoveries.get(instance.id)
        if known is not None and known.status is not RecoveryStatus.RESUMED:
            # a redelivery, or another cause for the same death: only a crashed attempt is ours
            if known.status is RecoveryStatus.RENTING and instance.id not in self._busy:
                await self._attempt(known, ctx)
            return
        if known is not None and await self._running(instance.id, ctx):
            return  # the death it resumed from, told again: it runs now
        cause = _death_cause(event.name, instance)
        if cause is Cause.HOST_UNFIT:
            await self._strike(ctx, instance, f"{event.name}: {event.detail}" if event.detail else event.name, event)
        await self._open(instance, cause, event.detail or event.name, self._policy(event.name, instance), event.at, ctx)

    async def _open(
        self, instance: Instance, cause: Cause, reason: str, policy: Policy, at: datetime, ctx: Context
    ) -> None:
        """Write the recovery of a dead instance (before anything is rented) and act on it as `policy` says."""
        recoveries = ctx.store.repository(Recoveries)
        record = Recovery(
            dead_id=instance.id,
            label=instance.label or "",
            cause=cause,
            reason=reason,
            status=RecoveryStatus.PENDING,
            failures=0,
            original=instance.model_dump(mode="json"),
            new_id=None,
            started_at=at,
            due_at=ctx.clock.now(),
        )
        if policy == "rebid" and not await self._rebid(instance, ctx):
            policy = "replace"
        if policy in ("wait", "rebid", "alert"):
            status = RecoveryStatus.ALERTED if policy == "alert" else RecoveryStatus.WAITING
            due = ctx.clock.now() + timedelta(seconds=self.options.wait_timeout)
            waiting = Recovery(**{**vars(record), "status": status, "due_at": due if policy != "alert" else None})
            if ctx.event is not None:
                ctx.in_delivery(lambda conn: Recoveries.insert(conn, waiting))
            else:
                recoveries.open(waiting)
            if policy == "alert":
                await ctx.notify(f"instance {instance.id} ({instance.label}): {reason}")
            return
        recoveries.open(record)  # before anything is rented
        if recoveries.claim(instance.id, RecoveryStatus.PENDING):
            await self._attempt(record, ctx)

    @every("5s", at_start=True)
    async def reconcile(self, ctx: Context) -> None:
        """The level-triggered pass, each cycle and at every start: a job loading or running with nothing alive
        under its label and no recovery for its last instance (its death was never seen as ``preempted``: it
        happened while the watcher was down, or before a replacement was seen running) gets one now."""
        recoveries = ctx.store.repository(Recoveries)
        snapshot = ctx.store.load_snapshot()
        await self.settle_races(snapshot, ctx)
        seen: dict[str, list[Instance]] = {}
        for instance in snapshot.instances():
            seen.setdefault(instance.label or "", []).append(instance)
        for job in ctx.store.repository(Jobs).list(unfinished=True):
            if job.status not in (JobStatus.LOADING, JobStatus.RUNNING):
                continue
            if any(i.state in _ALIVE for i in seen.get(job.label, [])):
                continue
            lineage = recoveries.lineage(job.label)
            replacements = (r.new_id or 0 for r in lineage if r.status is RecoveryStatus.RECOVERED)
            last = max({job.instance_id or 0, *replacements})
            known = recoveries.get(last)
            if last == 0 or (known is not None and known.status is not RecoveryStatus.RESUMED):
                continue  # nothing rented yet, or its recovery is under way (or over; resumed, it may die again)
            view = snapshot.get(last)
            grace = ctx.config.watch.preempt_grace + ctx.config.watch.interval
            if view is not None and (ctx.clock.now() - view.since).total_seconds() < grace:
                continue  # seen dead only just: ``preempted`` (after preempt_grace) is the fast path; it may resume
            dead = await ctx.client.get_instance(last)
            if dead is not None and (dead.state in _ALIVE or dead.state is State.OFFLINE):
                continue  # rented since the snapshot, or offline (offline_too_long tells when it is dead)
            if dead is None:  # gone: what it was, from the snapshot, else from what it replaced
                dead = next((i for i in seen.get(job.label, []) if i.id == last), None)
            if dead is None and lineage:
                dead = Instance.model_validate({**lineage[-1].original, "id": last, "actual_status": "exited"})
            if dead is None or not ctx.owns(dead):
                continue
            cause = Cause.OUTBID if dead.is_bid else Cause.PREEMPTED
            why = f"{dead.actual_status or 'gone'}, its end not seen as it happened"
            ctx.logger.warning("instance %d of %s is %s: recovering it", last, job.label, why)
            await self._open(dead, cause, why, self._policy("preempted", dead), ctx.clock.now(), ctx)

    async def settle_races(self, snapshot: Snapshot, ctx: Context) -> None:
        """A dead instance kept because its host was offline races its replacement: back running first (and still
        the job's), it keeps the job and every other live instance under its label is destroyed (the recovery
        ``resumed``); once another instance under its label runs, or it has ended otherwise, it is destroyed."""
        recoveries = ctx.store.repository(Recoveries)
        for dead in snapshot.instances():
            record = recoveries.get(dead.id) if dead.label and ctx.owns(dead) else None
            if record is None or record.status is not RecoveryStatus.RECOVERED:
                continue
            job = ctx.store.repository(Jobs).by_label(record.label)
            others = [i for i in snapshot.instances() if i.label == dead.label and i.id != dead.id]
            if dead.state is State.RUNNING and (job is None or job.instance_id == dead.id):
                for spare in others:
                    if spare.state in _ALIVE:
                        await ctx.destroy(spare)
                recoveries.update(dead.id, RecoveryStatus.RESUMED, reason=f"{record.reason}; its host came back first")
                ctx.logger.info("instance %d is back before its replacement ran; the replacement destroyed", dead.id)
            elif any(i.state is State.RUNNING for i in others) or dead.state not in (*_ALIVE, State.OFFLINE):
                await ctx.destroy(dead)

    @on("host_flap")
    async def flapped(self, event: Event, ctx: Context) -> None:
        if event.instance is not None and ctx.owns(event.instance):
            await self._strike(ctx, event.instance, f"host_flap: {event.detail}", event)

    @every("15s")
    async def follow_up(self, ctx: Context) -> None:
        """Resumed or past its wait, backoff over, or left half-done by a crash: each open recovery moves on."""
        recoveries = ctx.store.repository(Recoveries)
        for record in recoveries.unfinished():
            if record.dead_id in self._busy:
                continue
            now = ctx.clock.now()
            if record.status is RecoveryStatus.WAITING:
                current = await ctx.client.get_instance(record.dead_id)
                if current is not None and current.state is State.RUNNING:
                    recoveries.update(record.dead_id, RecoveryStatus.RESUMED)
                    ctx.logger.info("instance %d resumed by itself; no replacement", record.dead_id)
                    continue
            if record.status is not RecoveryStatus.RENTING:
                if record.due_at is not None and now < record.due_at:
                    continue
                if not recoveries.claim(record.dead_id, record.status):
                    continue
            await self._attempt(record, ctx)

    # --- policy ----------------------------------------------------------------------------------------------

    async def _running(self, instance_id: int, ctx: Context) -> bool:
        current = await ctx.client.get_instance(instance_id)
        return current is not None and current.state is State.RUNNING

    def _policy(self, event: str, instance: Instance) -> Policy:
        if event != "preempted":
            return "replace"
        if self.options.on_preempt is not None:
            return self.options.on_preempt
        return "wait" if instance.is_bid else "replace"

    async def _rebid(self, instance: Instance, ctx: Context) -> bool:
        """Raise the bid to the market minimum times rebid_factor (within max_price); False if that is not possible."""
        current = await ctx.client.get_instance(instance.id)
        minimum = (current or instance).min_bid
        if not instance.is_bid or minimum is None:
            return False
        price = minimum * self.options.rebid_factor
        if self.options.max_price is not None:
            if minimum > self.options.max_price:
                return False
            price = min(price, self.options.max_price)
        await ctx.change_bid(instance, price)
        ctx.logger.info("instance %d: bid raised to %.4f $/h", instance.id, price)
        return True

    # --- strikes ---------------------------------------------------------------------------------------------

    async def _strike(self, ctx: Context, instance: Instance, reason: str, event: Event) -> None:
        if instance.machine_id is None:
            return
        hosts = ctx.store.repository(Hosts)
        blocked = hosts.strike(
            f"event-{event.id}",
            instance.machine_id,
            instance.host_id,
            reason,
            ctx.clock.now(),
            threshold=self.options.strikes_to_block,
            ttl=self.options.exclude_ttl,
        )
        if blocked:
            until = ctx.clock.now() + timedelta(seconds=self.options.exclude_ttl)
            where = f"machine {instance.machine_id} (host {instance.host_id})"
            detail = f"{where} blocked until {until.isoformat()}: {reason}"
            await ctx.emit("host_blocked", instance=instance, detail=detail, key=f"host_blocked:{event.id}")

    # --- replacing -------------------------------------------------------------------------------------------

    async def _attempt(self, record: Recovery, ctx: Context) -> None:
        self._busy.add(record.dead_id)
        try:
            await self._replace(record, ctx)
        finally:
            self._busy.discard(record.dead_id)

    async def _replace(self, record: Recovery, ctx: Context) -> None:
        recoveries = ctx.store.repository(Recoveries)
        job = ctx.store.repository(Jobs).by_label(record.label)
        if job is not None and job.done:  # cancelled (or ended) meanwhile: nothing to replace it for
            recoveries.update(record.dead_id, RecoveryStatus.FAILED, reason=f"its job ended ({job.status})")
            return
        lineage = recoveries.lineage(record.label)
        dead_ids = {r.dead_id for r in lineage}
        live = await ctx.client.list_instances()
        already = [i for i in live if i.label == record.label and i.id not in dead_ids]
        dead = next((i for i in live if i.id == record.dead_id), None)
        if already:  # rented before a crash (or by the jobs handler): reconciled by label, never rented twice
            try:
                await self._retire(dead, ctx)
            except ApiError as exc:
                await self._failed_attempt(record, str(exc), Cause.API_ERROR, ctx)
                return
            await self._recovered(record, already[0], ctx)
            return
        restarts = sum(1 for r in lineage if r.status is RecoveryStatus.RECOVERED)
        if restarts >= self.options.max_restarts:
            why = f"max_restarts ({self.options.max_restarts}) reached"
            await self._give_up(record, dead, why, record.cause or Cause.PREEMPTED, ctx)
            return
        try:
            await self._retire(dead, ctx)
            new_id = await self._rent(record, job, ctx)
        except NoOffer as exc:
            await self._failed_attempt(record, str(exc), Cause.CAPACITY, ctx)
            return
        except ApiError as exc:
            await self._failed_attempt(record, str(exc), Cause.API_ERROR, ctx)
            return
        new = await ctx.client.get_instance(new_id)
        await self._recovered(record, new or Instance(id=new_id, label=record.label), ctx)

    async def _retire(self, dead: Instance | None, ctx: Context) -> None:
        """Destroy the dead instance before its replacement is rented, unless its host is offline: a host may be back
        within seconds, a new rental boots for a minute or more, so it races its replacement (:meth:`settle_races`)."""
        if dead is None:
            return
        if dead.state is State.OFFLINE:
            ctx.logger.info("instance %d is offline: kept until its replacement runs or its host is back", dead.id)
            return
        await ctx.destroy(dead)

    async def _rent(self, record: Recovery, job: Job | None, ctx: Context) -> int:
        """Rent the replacement of `record`'s dead instance for `job`, the one its label runs (None: no job)."""
        original = Instance.model_validate(record.original)
        rental_for = self._rental_for(record, original, replacing.registry_login(ctx, record.label))
        kept = await replacing.on_volume_machine(ctx, record, original, rental_for, self.options.max_price)
        if kept is not None:  # back where its volume is: the one exception to leaving the dead machine out
            return kept
        machines, hosts = ctx.store.repository(Hosts).blocked(ctx.clock.now())
        avoid_machines = sorted({*machines, *([original.machine_id] if original.machine_id is not None else [])})
        avoid_hosts = sorted({*hosts, *([original.host_id] if original.host_id is not None else [])})
        gpus = [g for g in (original.gpu_name, *self.options.fallback_gpus) if g]
        queries = [self._query(original, gpu, avoid_machines, avoid_hosts) for gpu in dict.fromkeys(gpus)]
        if job is not None:  # then any host the job's own query accepts: it says what the job can run on
            spec_query = JobSpec.model_validate(job.spec).query
            queries.append(f"{self._exclusions(avoid_machines, avoid_hosts)} {spec_query}")
        for query in queries:
            offers = await ctx.client.search_offers(query, type="bid" if original.is_bid else "on-demand", limit=10)
            for offer in self._ranked(offers, original, job, ctx):
                if offer.machine_id in avoid_machines or offer.host_id in avoid_hosts:
                    continue  # the search already leaves them out; a market that ignores a filter must not win
                try:
                    return await ctx.create(rental_for(offer, None))
                except NoSuchAsk:
                    ctx.logger.info("offer %d was rented first; trying the next one", offer.id)
        wanted = " or ".join(gpus) or "any GPU"
        if job is not None:
            wanted += f" or as the job's query {spec_query!r} asks"
        where = f"with reliability >= {self.options.min_reliability:g} outside machines {avoid_machines}"
        raise NoOffer(f"no offer for {original.num_gpus or 1}x {wanted} {where}")

    def _ranked(self, offers: list[Offer], original: Instance, job: Job | None, ctx: Context) -> list[Offer]:
        """`offers` in the order ``[jobs] choose`` would rent them for `job` (an hour of the original's disk for an
        instance no job rented), on the original's terms (bid or on-demand)."""
        kind = Kind.BID if original.is_bid else Kind.ON_DEMAND
        if job is not None:
            workload = replace(JobSpec.model_validate(job.spec).workload(), kind=kind)
        else:
            workload = Workload(seconds=3600.0, disk_gb=original.disk_space or 10.0, kind=kind)
        history = ctx.store.repository(HostHistory).stats(ctx.store.journal, ctx.clock.now())
        ranking = rank(offers, workload, history, strategy=ctx.config.jobs.choose)
        return [estimate.offer for estimate in ranking.estimates]

    def _rental_for(self, record: Recovery, original: Instance, login: str | None) -> replacing.RentalFor:
        def rental(offer: Offer, volume: VolumeMount | None) -> Rental:
            return Rental(
                offer.id,
                image=original.image_uuid or "",
                disk=original.disk_space or 10.0,
                label=record.label,
                price=self._bid(offer) if original.is_bid else None,
                env=_env(original) or {},
                onstart=original.onstart,
                image_login=login,
                volume=volume,
            )

        return rental

    def _query(self, original: Instance, gpu: str, machines: list[int], hosts: list[int]) -> str:
        like = (
            f"gpu_name={gpu.replace(' ', '_')} num_gpus={original.num_gpus or 1} disk_space>={original.disk_space or 0}"
        )
        return f"{like} {self._exclusions(machines, hosts)}"

    def _exclusions(self, machines: list[int], hosts: list[int]) -> str:
        """What every replacement search asks beyond the host's kind: the minimum reliability, none of the machines
        and hosts left out, at most the price cap."""
        parts = [f"reliability>={self.options.min_reliability}"]
        if machines:
            parts.append(f"machine_id notin [{','.join(map(str, machines))}]")
        if hosts:
            parts.append(f"host_id notin [{','.join(map(str, hosts))}]")
        if self.options.max_price is not None:
            parts.append(f"dph_total<={self.options.max_price}")
        return " ".join(parts)

    def _bid(self, offer: Offer) -> float | None:
        if offer.min_bid is None:
            return self.options.max_price
        price = offer.min_bid * self.options.rebid_factor
        return min(price, self.options.max_price) if self.options.max_price is not None else price

    async def _recovered(self, record: Recovery, new: Instance, ctx: Context) -> None:
        lineage = ctx.store.repository(Recoveries).lineage(record.label)
        attempt = 1 + sum(1 for r in lineage if r.status is RecoveryStatus.RECOVERED)
        down = _seconds(ctx.clock.now() - record.started_at)
        old_machine = record.original.get("machine_id")
        detail = (
            f"{record.dead_id} (machine {old_machine}) → {new.id} (machine {new.machine_id}),"
            f" restart {attempt} of {record.label}, down {down}"
        )
        await ctx.emit("recovered", instance=new, detail=detail, key=f"recovered:{_death(record)}")
        ctx.store.repository(Recoveries).update(record.dead_id, RecoveryStatus.RECOVERED, new_id=new.id)

    async def _failed_attempt(self, record: Recovery, why: str, cause: Cause, ctx: Context) -> None:
        now = ctx.clock.now()
        failures = record.failures + 1
        if now >= record.started_at + timedelta(seconds=self.options.give_up_after):
            await self._give_up(record, None, f"gave up after {_seconds(now - record.started_at)}: {why}", cause, ctx)
            return
        delay = min(self.options.backoff_max, self.options.backoff * self.options.backoff_factor ** (failures - 1))
        ctx.store.repository(Recoveries).update(
            record.dead_id, RecoveryStatus.PENDING, due_at=now + timedelta(seconds=delay), failures=failures, reason=why
        )
        if failures == 1:
            await ctx.notify(f"cannot replace instance {record.dead_id} ({record.label}) yet: {why}; retrying")
        ctx.logger.warning("replacing %d failed (%s); next try in %gs", record.dead_id, why, delay)

    async def _give_up(self, record: Recovery, dead: Instance | None, why: str, cause: Cause, ctx: Context) -> None:
        if dead is not None:
            await ctx.destroy(dead)
        await ctx.emit(
            "recovery_failed",
            instance=Instance.model_validate(record.original),
            detail=f"{record.dead_id} ({record.label}): {why}",
            cause=cause,
            key=f"recovery_failed:{_death(record)}",
        )
        ctx.store.repository(Recoveries).update(record.dead_id, RecoveryStatus.FAILED, reason=why)
        await ctx.notify(f"recovery of instance {record.dead_id} ({record.label}) failed: {why}")


def _death_cause(event: str, instance: Instance) -> Cause:
    """Why an owned instance died, from the event that told: the market, the host taking it back, or the host."""
    if event == "preempted":
        return Cause.OUTBID if instance.is_bid else Cause.PREEMPTED
    return Cause.HOST_UNFIT  # stuck loading, offline too long


def _death(record: Recovery) -> str:
    """What names one death of an instance in an event's key: an instance resumed may die again."""
    return f"{record.dead_id}@{record.started_at.isoformat()}"


def _env(instance: Instance) -> dict[str, str] | None:
    """The instance's environment as the list shows it (``extra_env``: ``[[key, value], ...]``)."""
    pairs = (instance.model_extra or {}).get("extra_env")
    if not isinstance(pairs, list):
        return None
    return {str(pair[0]): str(pair[1]) for pair in pairs if isinstance(pair, list | tuple) and len(pair) == 2} or None


def _seconds(delta: timedelta) -> str:
    return f"{delta.total_seconds():.0f}s"
