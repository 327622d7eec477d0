"""What was spent: the ledger's totals beside Vast's own charges, per instance, with ghost billing found; and
what is left of the billing budgets.

:func:`build_report` is pure: the ledger rows, the charge items, the ids the instance list shows and the time come
in as arguments; :func:`cost_report` reads them (``vastevents cost`` and the agents' ``cost`` tool).
A difference larger than :func:`tolerance` is flagged. *Ghost billing* is a charge for an instance the list
does not show (or no longer shows) that the ledger cannot account for: never seen by us, or charged more
than we saw it bill — the way instances kept billing for days while an API change made them invisible.

The ledger is kept only by the ``billing`` handler. Without it, each job's own cost (its runtime at its $/h, kept
with the job) stands in for the ledger (``source: "jobs"``), and an instance no job rented is charged with
nothing on our side to compare: not counted, neither flagged nor a ghost.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from vastevents.config import NO_API_KEY, Config
from vastevents.errors import VastEventsError
from vastevents.store.jobs import Job
from vastevents.store.ledger import Interval, Ledger, LedgerInstance
from vastevents.vast import VastClient

GroupBy = Literal["instance", "job", "label", "day"]
_SOURCE = re.compile(r"instance[-_ ]?(\d+)$")


def _utc_iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def tolerance(charged_usd: float) -> float:
    """How far the ledger may be from Vast's charge before it is flagged: a cent, or 2 % of larger charges."""
    return max(0.01, 0.02 * abs(charged_usd))


@dataclass(frozen=True)
class Charge:
    """What Vast charged for one instance, and the end of the last charged period (None: not given)."""

    amount_usd: float
    until: datetime | None


def charged_by_instance(items: Iterable[Mapping[str, Any]]) -> dict[int, Charge]:
    """Vast's charge items summed per instance id (``instance_id``, else a ``source`` like ``instance-123``)."""
    out: dict[int, Charge] = {}
    for item in items:
        instance_id = item.get("instance_id")
        if instance_id is None:
            found = _SOURCE.search(str(item.get("source") or ""))
            if found is None:
                continue
            instance_id = found.group(1)
        try:
            key, amount = int(instance_id), float(item.get("amount") or 0.0)
            end = datetime.fromtimestamp(float(item["end"]), UTC) if item.get("end") is not None else None
        except (TypeError, ValueError, OverflowError, OSError):
            continue
        before = out.get(key, Charge(0.0, None))
        ends = [moment for moment in (before.until, end) if moment is not None]
        out[key] = Charge(before.amount_usd + amount, max(ends) if ends else None)
    return out


@dataclass(frozen=True)
class InstanceCost:
    instance_id: int
    label: str | None
    job_id: str | None
    cost_usd: float
    observed_since: datetime | None
    observed_only: bool
    billing: bool
    listed: bool | None
    charged_usd: float | None
    ghost: str | None
    counted: bool = True
    """Our side knows what it cost (a ledger was kept, or a job rented it); else `cost_usd` is 0 by default."""

    @property
    def difference_usd(self) -> float | None:
        return None if self.charged_usd is None or not self.counted else self.cost_usd - self.charged_usd

    @property
    def flagged(self) -> bool:
        difference = self.difference_usd
        return difference is not None and abs(difference) > tolerance(self.charged_usd or 0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "label": self.label,
            "job_id": self.job_id,
            "cost_usd": self.cost_usd,
            "observed_since": _utc_iso(self.observed_since) if self.observed_since is not None else None,
            "observed_only": self.observed_only,
            "billing": self.billing,
            "listed": self.listed,
            "charged_usd": self.charged_usd,
            "difference_usd": self.difference_usd,
            "flagged": self.flagged,
            "ghost": self.ghost,
            "counted": self.counted,
        }


@dataclass(frozen=True)
class CostReport:
    by: GroupBy
    since: datetime | None
    now: datetime
    instances: tuple[InstanceCost, ...]
    groups: tuple[tuple[str, float], ...]
    charges_error: str | None
    list_error: str | None
    source: Literal["ledger", "jobs"] = "ledger"
    """Where our side's costs come from: the billing handler's ledger, or (none kept) each job's own cost."""

    @property
    def total_usd(self) -> float:
        return sum(row.cost_usd for row in self.instances)

    @property
    def charged_total_usd(self) -> float | None:
        if self.charges_error is not None:
            return None
        return sum(row.charged_usd or 0.0 for row in self.instances)

    @property
    def ghosts(self) -> list[InstanceCost]:
        return [row for row in self.instances if row.ghost is not None]

    def to_json(self) -> dict[str, Any]:
        return {
            "total_usd": self.total_usd,
            "charged_total_usd": self.charged_total_usd,
            "by": self.by,
            "since": _utc_iso(self.since) if self.since is not None else None,
            "generated_at": _utc_iso(self.now),
            "instances": [row.to_json() for row in self.instances],
            "groups": [{"key": key, "cost_usd": cost} for key, cost in self.groups],
            "ghost_billing": [row.to_json() for row in self.ghosts],
            "charges_error": self.charges_error,
            "list_error": self.list_error,
            "source": self.source,
        }


def build_report(
    intervals: Sequence[Interval],
    known: Mapping[int, LedgerInstance],
    *,
    now: datetime,
    by: GroupBy = "instance",
    since: datetime | None = None,
    until: datetime | None = None,
    charged: Mapping[int, Charge] | None = None,
    listed: Collection[int] | None = None,
    charges_error: str | None = None,
    list_error: str | None = None,
) -> CostReport:
    """One row per instance the ledger or the charges know, and the ledger's totals grouped `by`, counting only
    spend within [`since`, `until`)."""
    per_instance: dict[int, list[Interval]] = defaultdict(list)
    for interval in intervals:
        per_instance[interval.instance_id].append(interval)
    charged = charged if charges_error is None else None
    watched_since = min((seen.first_seen for seen in known.values()), default=None)
    rows = []
    for instance_id in sorted(set(per_instance) | set(known) | set(charged or {})):
        mine = per_instance.get(instance_id, [])
        seen = known.get(instance_id)
        cost = sum(i.cost_usd(now, since=since, until=until) for i in mine)
        is_listed = None if listed is None else instance_id in listed
        bill = (charged or {}).get(instance_id)
        charge = bill.amount_usd if bill is not None else (0.0 if charged is not None else None)
        watched = watched_since is not None and (bill is None or bill.until is None or bill.until > watched_since)
        label = mine[-1].label if mine else (seen.label if seen else None)
        rows.append(
            InstanceCost(
                instance_id=instance_id,
                label=label,
                job_id=mine[-1].job_id if mine else (seen.job_id if seen else None),
                cost_usd=cost,
                observed_since=seen.first_seen if seen else None,
                observed_only=seen.observed_only if seen else False,
                billing=any(i.end is None for i in mine),
                listed=is_listed,
                charged_usd=charge,
                ghost=_ghost(seen, cost, charge, is_listed, watched),
            )
        )
    groups = _groups(intervals, now, by, since, until)
    return CostReport(by, since, now, tuple(rows), groups, charges_error, list_error)


def jobs_report(
    jobs: Sequence[Job],
    *,
    now: datetime,
    by: GroupBy = "instance",
    since: datetime | None = None,
    charged: Mapping[int, Charge] | None = None,
    charges_error: str | None = None,
    list_error: str | None = None,
) -> CostReport:
    """The report when no ledger is kept: one row per job's instance at the job's own cost (jobs that ended before
    `since` left out), beside the charges; an instance only the charges know is not counted."""
    charged = charged if charges_error is None else None
    mine = {
        job.instance_id: job
        for job in jobs
        if job.instance_id is not None and (since is None or (job.finished_at or now) >= since)
    }
    rows = []
    for instance_id in sorted(set(mine) | set(charged or {})):
        job = mine.get(instance_id)
        bill = (charged or {}).get(instance_id)
        rows.append(
            InstanceCost(
                instance_id=instance_id,
                label=job.label if job else None,
                job_id=str(job.id) if job else None,
                cost_usd=(job.cost_usd or 0.0) if job else 0.0,
                observed_since=job.started_at if job else None,
                observed_only=False,
                billing=job is not None and not job.done,
                listed=None,
                charged_usd=bill.amount_usd if bill is not None else (0.0 if charged is not None else None),
                ghost=None,
                counted=job is not None,
            )
        )
    totals: dict[str, float] = defaultdict(float)
    for row in rows:
        if row.counted:
            job = mine[row.instance_id]
            when = job.finished_at or job.started_at or job.created_at
            key = {
                "instance": str(row.instance_id),
                "job": row.job_id,
                "label": row.label,
                "day": when.date().isoformat(),
            }
            totals[key[by] or "-"] += row.cost_usd
    groups = tuple(sorted(totals.items()))
    return CostReport(by, since, now, tuple(rows), groups, charges_error, list_error, source="jobs")


def _ghost(
    seen: LedgerInstance | None, cost: float, charged: float | None, listed: bool | None, watched: bool
) -> str | None:
    """Why a charge is ghost billing, or None; `watched`: it billed while the ledger was being kept."""
    if not charged:
        return None
    hidden = listed is False or (listed is None and (seen is None or seen.gone_at is not None))
    if not hidden:
        return None
    if seen is None:
        return f"charged ${charged:.2f} but never seen on the instance list" if watched else None
    if charged > cost + tolerance(charged):
        return f"charged ${charged - cost:.2f} more than we saw it bill, and it is no longer on the instance list"
    return None


def _groups(
    intervals: Sequence[Interval], now: datetime, by: GroupBy, since: datetime | None, until: datetime | None
) -> tuple[tuple[str, float], ...]:
    totals: dict[str, float] = defaultdict(float)
    for interval in intervals:
        if by == "day":
            for day, cost in interval.by_day(now, since, until).items():
                totals[day.isoformat()] += cost
        else:
            key = {"instance": str(interval.instance_id), "job": interval.job_id, "label": interval.label}[by]
            totals[key or "-"] += interval.cost_usd(now, since=since, until=until)
    return tuple(sorted(totals.items()))


# --- gathering: the ledger beside what Vast charged ------------------------------------------------------------

_MAX_PAGES = 1000
_WEEK = timedelta(days=7)


def parse_since(text: str) -> datetime:
    """A UTC moment from ``2026-01-31`` or ``2026-01-31T12:00`` (a time without a zone is UTC); ValueError if not."""
    try:
        moment = datetime.fromisoformat(text) if "T" in text or " " in text else None
        if moment is None:
            moment = datetime.combine(date.fromisoformat(text), datetime.min.time())
    except ValueError:
        raise ValueError(f"{text!r}: expected a date like 2026-01-31 or 2026-01-31T12:00") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


async def account_side(
    client: VastClient | None, start: datetime, end: datetime
) -> tuple[dict[int, Charge] | str, set[int] | str]:
    """Vast's charges per instance between `start` and `end`, and the ids the instance list shows; each, when it
    cannot be read, the reason in words."""
    if client is None:
        reason = NO_API_KEY
        return reason, reason
    charges: dict[int, Charge] | str
    listed: set[int] | str
    try:
        items: list[dict[str, Any]] = []
        token: str | None = None
        for _ in range(_MAX_PAGES):
            page = await client.charges(start=start.timestamp(), end=end.timestamp(), after_token=token)
            items += [item for item in page.get("results") or [] if isinstance(item, dict)]
            token = page.get("next_token") or None
            if token is None:
                break
        charges = charged_by_instance(items)
    except VastEventsError as exc:
        charges = str(exc)
    try:
        listed = {instance.id for instance in await client.list_instances()}
    except VastEventsError as exc:
        listed = str(exc)
    return charges, listed


async def cost_report(
    ledger: Ledger | None,
    client: VastClient | None,
    *,
    now: datetime,
    by: GroupBy = "instance",
    since: datetime | None = None,
    jobs: Sequence[Job] | None = None,
) -> CostReport:
    """The report ``cost`` prints: the ledger's intervals (none without a store) beside Vast's charges over the
    ledger's whole span, or the last week. `jobs` stand in for a ledger that was never kept (see the module)."""
    intervals, known = (ledger.intervals(), ledger.instances()) if ledger is not None else ([], {})
    if jobs is not None and not intervals and not known:
        first = min((job.created_at for job in jobs), default=now - _WEEK) - timedelta(days=1)
        charges, listed = await account_side(client, since or first, now + timedelta(days=1))
        return jobs_report(
            jobs,
            now=now,
            by=by,
            since=since,
            charged=charges if isinstance(charges, dict) else None,
            charges_error=charges if isinstance(charges, str) else None,
            list_error=listed if isinstance(listed, str) else None,
        )
    first = min((i.start for i in intervals), default=now - _WEEK) - timedelta(days=1)
    charges, listed = await account_side(client, since or first, now + timedelta(days=1))
    return build_report(
        intervals,
        known,
        now=now,
        by=by,
        since=since,
        charged=charges if isinstance(charges, dict) else None,
        listed=listed if isinstance(listed, set) else None,
        charges_error=charges if isinstance(charges, str) else None,
        list_error=listed if isinstance(listed, str) else None,
    )


# --- budgets ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetLeft:
    name: str
    """The budget in config words, e.g. ``[handlers.billing] daily_budget_usd $10``."""
    left_usd: float


def budgets_left(
    config: Config, intervals: Sequence[Interval], now: datetime, owns: Callable[[str | None], bool]
) -> list[BudgetLeft]:
    """What a new job may still spend under each ``[handlers.billing]`` budget: the total and today's, less the
    accrued spend of owned instances (`owns` tells by label), and the per-job one whole."""
    found = []
    owned = [interval for interval in intervals if owns(interval.label)]
    midnight = datetime.combine(now.astimezone(UTC).date(), datetime.min.time(), UTC)
    for name, handler in config.handlers.items():
        if handler.use != "billing":
            continue
        options = handler.options()
        spent = {
            "budget_usd": sum(i.cost_usd(now) for i in owned),
            "daily_budget_usd": sum(i.cost_usd(now, since=midnight) for i in owned),
            "per_job_usd": 0.0,
        }
        for key, spend in spent.items():
            if isinstance(limit := options.get(key), int | float) and not isinstance(limit, bool):
                found.append(BudgetLeft(f"[handlers.{name}] {key} ${limit:g}", float(limit) - spend))
    return found
