"""The ``billing`` handler: keeps the ledger from events and enforces budgets on owned instances.

[handlers.billing]
use = "billing"
budget_usd = 50.0           # total accrued spend of owned instances (closed + open intervals)
daily_budget_usd = 10.0     # accrued spend of owned instances within the current UTC day
per_job_usd = 5.0           # accrued spend of one job's instances (label "<prefix>:job-<id>")
warn_at = 0.8               # budget_warning at this fraction of a budget
on_exceed = "alert"         # alert | stop | destroy (owned instances in the exceeded scope only)
projection = "1h"           # budget_warning too when spend + burn rate x this would cross a total/job budget
low_credit_usd = 20.0       # budget_warning (once a day) when the account's credit is below this

Every status change (``any_change``) opens or closes a ledger interval in the delivery's own transaction. What
happened while the watcher was down (a change it catches up on, or the first sweep after a start, more than two
poll intervals after the last one) is reconstructed from the rows (see :mod:`vastevents.store.ledger`), so the
ledger covers the time nobody watched; the GPU time it guessed there is settled with Vast's charges once they
cover it (``charges`` read at once when there is something new to settle, else at most every minute). A
periodic check (every 5 s, so at least once per poll cycle) first brings the ledger in line with the last
complete list (a bid change opens a new interval; an instance the ledger has not seen yet starts at first
sight), then compares accrued spend with each budget: ``budget_warning`` once per scope when spend reaches
``warn_at`` of it or the projection crosses it (a daily budget projects to the end of the day),
``budget_exceeded`` once per scope when spend reaches it, and then, every check while it stays exceeded, the
``on_exceed`` action on the owned instances of that scope. Projections only warn; acting is on accrued spend.
The account's credit (``users/current``) is read at most every 10 minutes, and only with ``low_credit_usd``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import Field

from vastevents import (
    Conn,
    Context,
    Duration,
    Event,
    Handler,
    HandlerOptions,
    Instance,
    Interval,
    Ledger,
    NotOwned,
    TemporaryError,
    VastEventsError,
    every,
    job_id_of,
    on,
)

BUDGET_WARNING = "budget_warning"
BUDGET_EXCEEDED = "budget_exceeded"
_DOWN = frozenset({"stopped", "exited"})
CREDIT_EVERY = timedelta(minutes=10)
SETTLE_EVERY = timedelta(minutes=1)
"""How often unseen time the charges did not cover yet is tried again."""
CHARGE_PAGES = 10
SETTLE_WAIT = 15.0
"""Wall seconds the check waits for the charges (the client retries through 429/5xx for minutes)."""


class BillingOptions(HandlerOptions):
    budget_usd: float | None = Field(default=None, gt=0)
    daily_budget_usd: float | None = Field(default=None, gt=0)
    per_job_usd: float | None = Field(default=None, gt=0)
    warn_at: float = Field(default=0.8, gt=0, le=1)
    on_exceed: Literal["alert", "stop", "destroy"] = "alert"
    projection: Duration = Field(default=3600.0, ge=0)
    low_credit_usd: float | None = Field(default=None, gt=0)


@dataclass(frozen=True)
class Scope:
    """One budget to check: its key (events are once per key and limit), words, limit and the instances it covers."""

    key: str
    what: str
    limit_usd: float
    spend_usd: float
    burn_usd_h: float
    horizon_h: float
    covers: Callable[[Instance], bool]

    @property
    def projected_usd(self) -> float:
        return self.spend_usd + self.burn_usd_h * self.horizon_h


class BillingHandler(Handler[BillingOptions]):
    """Ledger intervals from status changes; budget warnings, exceeded events and the configured action."""

    Options = BillingOptions
    emits = (BUDGET_WARNING, BUDGET_EXCEEDED)

    def __init__(self, options: BillingOptions | None = None) -> None:
        super().__init__(options)
        self._credit_read: datetime | None = None
        self._swept = False
        """Whether this process has swept the ledger: its first sweep may follow a gap (the watcher was down)."""
        self._settle_tried: set[tuple[int, datetime, datetime]] = set()
        self._settle_at = datetime.min.replace(tzinfo=UTC)

    @on("any_change")
    async def record(self, event: Event, ctx: Context) -> None:
        if event.instance_id is None:
            return
        ledger = ctx.store.repository(Ledger)
        instance_id = event.instance_id
        instance = None if event.name == "vanished" else event.instance
        key = f"event:{event.id}"

        gap = _gap(ctx) if event.catch_up else None  # it happened while the watcher was down

        def write(conn: Conn) -> None:
            ledger.observe(conn, instance_id, instance, event.at, key=key, gap=gap)

        ctx.in_delivery(write)

    @every("5s")
    async def check(self, ctx: Context) -> None:
        ledger = ctx.store.repository(Ledger)
        snapshot = ctx.store.load_snapshot()
        if snapshot.taken_at is not None:
            ledger.sweep(
                snapshot.instances(), snapshot.taken_at, gap=None if self._swept else _gap(ctx), blind=_gap(ctx)
            )
            self._swept = True
        now = ctx.clock.now()
        owned = [i for i in ledger.intervals() if ctx.owns(Instance(id=i.instance_id, label=i.label))]
        live = [instance for instance in snapshot.instances() if ctx.owns(instance)]
        failures = []
        for scope in self.scopes(owned, now):
            failures += await self._enforce(scope, [i for i in live if scope.covers(i)], ctx)
        await self._check_credit(ctx, now)
        await self._settle(ctx, ledger, now)  # after the budgets: they act on the unsettled (higher) spend
        if failures:
            raise TemporaryError(f"budget action failed, trying again next check: {'; '.join(failures)}")

    async def _settle(self, ctx: Context, ledger: Ledger, now: datetime) -> None:
        """Correct what the ledger guessed about unseen time with Vast's GPU charges: at once when there is
        something new to settle, else at most every :data:`SETTLE_EVERY` (the charges may lag behind)."""
        unseen = ledger.unseen()
        if not unseen:
            return
        if set(unseen) == self._settle_tried and now < self._settle_at + SETTLE_EVERY:
            return
        self._settle_tried, self._settle_at = set(unseen), now
        start = (min(start for _, start, _ in unseen) - timedelta(days=1)).timestamp()
        items: list[dict[str, Any]] = []
        token: str | None = None
        try:
            async with asyncio.timeout(SETTLE_WAIT):  # the API retrying through a storm must not hold the check
                for _ in range(CHARGE_PAGES):
                    page = await ctx.client.charges(
                        start=start, end=(now + timedelta(days=1)).timestamp(), after_token=token
                    )
                    items += [item for item in page.get("results") or [] if isinstance(item, dict)]
                    token = page.get("next_token") or None
                    if token is None:
                        break
        except (VastEventsError, TimeoutError) as exc:
            ctx.logger.info("cannot read the charges to settle the ledger's unseen time yet: %r", exc)
            return
        for instance_id in ledger.settle(items):
            ctx.logger.debug("ledger of instance %d settled with Vast's GPU charges", instance_id)

    async def _check_credit(self, ctx: Context, now: datetime) -> None:
        low = self.options.low_credit_usd
        if low is None or (self._credit_read is not None and now < self._credit_read + CREDIT_EVERY):
            return
        self._credit_read = now
        try:
            credit = float((await ctx.client.current_user())["credit"])
        except (VastEventsError, KeyError, TypeError, ValueError) as exc:
            ctx.logger.warning("cannot read the account's credit: %s", exc)
            return
        if credit < low:
            day = now.astimezone(UTC).date()
            await ctx.emit(
                BUDGET_WARNING,
                key=f"credit:{day}",
                detail=f"account credit ${credit:.2f} is below low_credit_usd ${low:.2f}",
            )

    def scopes(self, owned: Sequence[Interval], now: datetime) -> list[Scope]:
        """Every configured budget with its accrued spend and burn rate over the owned intervals."""
        options = self.options
        burn = sum(i.rate_usd_h for i in owned if i.end is None)
        horizon_h = options.projection / 3600.0
        found = []
        if options.budget_usd is not None:
            spend = sum(i.cost_usd(now) for i in owned)
            found.append(Scope("total", "total spend", options.budget_usd, spend, burn, horizon_h, lambda _: True))
        if options.daily_budget_usd is not None:
            midnight = datetime.combine(now.astimezone(UTC).date(), datetime.min.time(), UTC)
            spend = sum(i.cost_usd(now, since=midnight) for i in owned)
            to_midnight_h = (midnight + timedelta(days=1) - now).total_seconds() / 3600.0
            found.append(
                Scope(
                    f"day:{midnight.date()}",
                    f"spend on {midnight.date()}",
                    options.daily_budget_usd,
                    spend,
                    burn,
                    to_midnight_h,
                    lambda _: True,
                )
            )
        if options.per_job_usd is not None:
            for job in sorted({i.job_id for i in owned if i.job_id is not None}):
                mine = [i for i in owned if i.job_id == job]
                spend = sum(i.cost_usd(now) for i in mine)
                job_burn = sum(i.rate_usd_h for i in mine if i.end is None)
                found.append(
                    Scope(
                        f"job:{job}",
                        f"spend of job {job}",
                        options.per_job_usd,
                        spend,
                        job_burn,
                        horizon_h,
                        _of_job(job),
                    )
                )
        return found

    async def _enforce(self, scope: Scope, instances: list[Instance], ctx: Context) -> list[str]:
        """Emit what `scope` has crossed and act on its instances; the failures, in words."""
        subject = instances[0] if scope.key.startswith("job:") and instances else None
        numbers = f"${scope.spend_usd:.2f} of ${scope.limit_usd:.2f} on owned instances"
        if scope.spend_usd < scope.limit_usd:
            if scope.spend_usd >= self.options.warn_at * scope.limit_usd:
                await ctx.emit(
                    BUDGET_WARNING,
                    instance=subject,
                    key=f"warning:{scope.key}:{scope.limit_usd:g}",
                    detail=f"{scope.what} reached {numbers}",
                )
            elif scope.projected_usd >= scope.limit_usd:
                await ctx.emit(
                    BUDGET_WARNING,
                    instance=subject,
                    key=f"warning:{scope.key}:{scope.limit_usd:g}",
                    detail=f"{scope.what} ${scope.spend_usd:.2f} is projected to reach"
                    f" ${scope.projected_usd:.2f} of ${scope.limit_usd:.2f} at ${scope.burn_usd_h:.3f}/h",
                )
            return []
        action = self.options.on_exceed
        await ctx.emit(
            BUDGET_EXCEEDED,
            instance=subject,
            key=f"exceeded:{scope.key}:{scope.limit_usd:g}",
            detail=f"{scope.what} {numbers}; on_exceed = {action}",
        )
        failures = []
        for instance in instances:
            try:
                if action == "destroy":
                    ctx.logger.warning("destroying instance %d: %s over budget", instance.id, scope.what)
                    await ctx.destroy(instance)
                elif action == "stop" and not _stopped(instance):
                    ctx.logger.warning("stopping instance %d: %s over budget", instance.id, scope.what)
                    await ctx.stop(instance)
            except NotOwned:
                continue
            except VastEventsError as exc:
                failures.append(f"{action} {instance.id}: {exc}")
        return failures


def _gap(ctx: Context) -> float:
    """Seconds without a complete list after which a restarted watcher's ledger reconstructs what it did not see."""
    return 2 * ctx.config.watch.interval


def _of_job(job: str) -> Callable[[Instance], bool]:
    return lambda instance: job_id_of(instance.label) == job


def _stopped(instance: Instance) -> bool:
    return instance.intended_status == "stopped" or instance.state.value in _DOWN
