"""Which offer a job rents, and how: ranked by what one *finished* job is expected to cost there, or by price.

The cheapest offer is often the host that never brings SSH up, is outbid within minutes or fails the preflight,
and every such attempt is paid for, plus the work a job loses. :func:`rank` prices each candidate as

    GPU $/h x (SSH + upload + the job + work redone after expected interruptions + their restarts
               + the hours of expected failed starts)
    + storage $/h x all of that plus the boots
    + inet_down_cost x what is uploaded (once per attempt) + inet_up_cost x what comes back

with the host's own history (:class:`HostStats`) where there is enough of it, blended with a prior from the
offer's ``reliability`` and from our record of the rest of the market (:class:`Priors`) where there is not (a
Beta-style average with :data:`PRIOR_RENTALS` pseudo-rentals and :data:`PRIOR_HOURS` pseudo-hours, so one bad
rental moves the estimate without deciding it). Interruptions are a Poisson process: the work since the last
checkpoint is redone after each one.

It also decides bid or on-demand per offer (unless the job fixes it) and the bid: the offer's ``min_bid``, or
``min_bid`` plus a margin learned from our own outbids (:func:`learned_margin`), whichever is expected to cost
less. A margin pays only through the outbids it avoids: competing bids are taken to fall anywhere between
``min_bid`` and the on-demand price, so a bid that far up is beaten by that share of them (:func:`_beaten`).

Pure: offers, history and the workload come in, a ranking comes out; no I/O, no clock.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from vastevents.models import Offer

HOURS_PER_MONTH = 720.0
"""Vast prices disk per GB per month of 30 days."""

BOOT_S = 120.0
"""Create to running (image pull and start) when nothing of ours has booted anywhere yet."""
SSH_S = 20.0
"""Running to SSH answering, likewise."""
FAILED_START_S = 600.0
"""GPU-billed seconds a start that fails costs (SSH that never answers: the jobs handler's ``ssh_wait``), likewise."""
PRIOR_MACHINES = 2
"""How many machines' weight the constants above carry against the medians of the machines we know."""
PRIOR_RENTALS = 2.0
"""How many rentals' weight the prior carries against a host's own record."""
PRIOR_HOURS = 2.0
"""How many hours' weight the prior interruption rate carries against a host's own record."""
OUTBIDS_PER_HOUR = 0.1
"""The prior rate of outbids at the floor (``min_bid``), before any bid of ours was outbid; a host's own record
of outbids per hour is taken as its rate at the floor too (so a margin is credited with no more than it avoids)."""
ON_DEMAND_INTERRUPTIONS = 0.1
"""On-demand interruptions per hour of a host whose reliability is 0 (the prior scales with 1 - reliability)."""
MARGIN = 0.1
"""A bid's margin over ``min_bid`` before any outbid taught us otherwise."""
MARGIN_STEP = 0.1
"""Over the highest margin at which we were outbid."""
MAX_MARGIN = 1.0
"""Never more than twice ``min_bid``: above that, on-demand is the better buy anyway."""
UPLOAD_MBPS = 100.0
"""Megabits per second an upload gets when the offer says nothing of its ``inet_down``."""


class Strategy(StrEnum):
    """``[jobs] choose``: how `run`, submitted jobs and recovery pick among matching offers."""

    EXPECTED_COST = "expected_cost"
    """The lowest expected cost per finished job (the default)."""
    CHEAPEST = "cheapest"
    """The lowest price, bids at the floor: what most tools do."""
    SECOND_CHEAPEST = "second_cheapest"
    """The runbooks' conservative rule: the second-lowest price (the lowest when it is the only one)."""


class Kind(StrEnum):
    """How an instance is rented."""

    ON_DEMAND = "on-demand"
    BID = "bid"
    """Interruptible, at a bid price."""


@dataclass(frozen=True)
class HostStats:
    """What our own rentals on one machine showed.

    A rental *carried a job* when a job was run there; a start *failed* when that job never got going on it (SSH
    never answered, the preflight found the host unfit, it stayed stuck loading); `failed_start_s` is what those
    took from running to their end (GPU-billed time).
    """

    machine_id: int
    host_id: int | None = None
    rentals: int = 0
    job_rentals: int = 0
    failed_starts: int = 0
    failed_start_s: float = 0.0
    s_to_running: tuple[float, ...] = ()
    s_to_ssh: tuple[float, ...] = ()
    bid_hours: float = 0.0
    outbids: int = 0
    on_demand_hours: float = 0.0
    interruptions: int = 0
    """On-demand instances taken back by the host (outbids are counted apart)."""
    outbid_margins: tuple[float, ...] = ()
    """Each outbid bid's margin over the ``min_bid`` of its time (0.1: 10 % above)."""
    preflight_failures: int = 0
    jobs_finished: int = 0
    jobs_failed: int = 0
    dph_paid: tuple[float, ...] = ()

    @property
    def median_s_to_running(self) -> float | None:
        return statistics.median(self.s_to_running) if self.s_to_running else None

    @property
    def median_s_to_ssh(self) -> float | None:
        return statistics.median(self.s_to_ssh) if self.s_to_ssh else None

    @property
    def hours(self) -> float:
        return self.bid_hours + self.on_demand_hours

    @property
    def outbids_per_hour(self) -> float | None:
        """Outbids per hour rented (None before an hour's worth of anything was rented, or nothing was)."""
        return self.outbids / self.hours if self.hours > 0 else None

    @property
    def mean_dph(self) -> float | None:
        return statistics.fmean(self.dph_paid) if self.dph_paid else None

    def to_json(self) -> dict[str, object]:
        """The object ``vastevents hosts --history --json`` prints for this machine."""
        return {
            "machine_id": self.machine_id,
            "host_id": self.host_id,
            "rentals": self.rentals,
            "median_s_to_running": self.median_s_to_running,
            "median_s_to_ssh": self.median_s_to_ssh,
            "outbids_per_hour": self.outbids_per_hour,
            "preflight_failures": self.preflight_failures,
            "jobs_finished": self.jobs_finished,
            "jobs_failed": self.jobs_failed,
            "mean_dph": self.mean_dph,
        }


@dataclass(frozen=True)
class Workload:
    """What the job asks of a host, as the estimate needs it."""

    seconds: float
    """The command's run time: ``max_duration``, an hour when unset."""
    disk_gb: float
    checkpoint_every: float | None = None
    """Seconds between checkpoints; None: an interruption restarts the job from the beginning."""
    upload_gb: float = 0.0
    download_gb: float = 0.0
    kind: Kind | None = None
    """Fixed by the job; None: bid or on-demand, whichever is expected to cost less on each offer."""
    bid: float | None = None
    """A bid the job fixes ($/h for the GPUs); with None ``min_bid``, or plus the learned margin if that pays."""


@dataclass(frozen=True)
class Estimate:
    """One way to rent one offer, and what a finished job is expected to cost that way."""

    offer: Offer
    kind: Kind
    bid: float | None
    """The $/h bid for the GPUs (kind bid), else None."""
    dph: float
    """What it bills per hour running: the GPUs (the bid, or the on-demand price) and the disk."""
    expected_cost_usd: float
    why: str

    def bound(self, seconds: float) -> float:
        """The most `seconds` of it running can cost: what a budget must still hold."""
        return self.dph * seconds / 3600.0

    def to_json(self) -> dict[str, object]:
        """The object ``run --dry-run --json`` lists for one offer."""
        return {"id": self.offer.id, "dph_total": self.dph, "expected_cost_usd": self.expected_cost_usd,
                "why": self.why}  # fmt: skip


@dataclass(frozen=True)
class Ranking:
    """Estimates in the order to try them (the chosen one first), under one strategy."""

    strategy: Strategy
    estimates: tuple[Estimate, ...] = field(default_factory=tuple)

    @property
    def chosen(self) -> Estimate | None:
        return self.estimates[0] if self.estimates else None

    def to_json(self, top: int | None = None) -> dict[str, object]:
        """``{"chosen": offer id, "offers": [...]}`` as ``run --dry-run --json`` prints it."""
        shown = self.estimates if top is None else self.estimates[:top]
        return {"chosen": self.chosen.offer.id if self.chosen else None, "offers": [e.to_json() for e in shown]}


@dataclass(frozen=True)
class Priors:
    """What a host without (enough) history of its own is expected to do, from our record of the market."""

    boot_s: float = BOOT_S
    ssh_s: float = SSH_S
    failed_start_s: float = FAILED_START_S
    margin: float = MARGIN
    """A bid's margin over ``min_bid`` (see :func:`learned_margin`)."""

    @classmethod
    def of(cls, history: Iterable[HostStats]) -> Priors:
        """The median machine's boot and SSH times (with :data:`PRIOR_MACHINES` machines at the constants, so one
        slow host does not make every host look slow), a failed start's mean cost, the learned bid margin."""
        known = list(history)
        failures = sum(h.failed_starts for h in known)
        margins = [m for h in known for m in h.outbid_margins]
        return cls(
            boot_s=_median_machine([h.median_s_to_running for h in known], BOOT_S),
            ssh_s=_median_machine([h.median_s_to_ssh for h in known], SSH_S),
            failed_start_s=sum(h.failed_start_s for h in known) / failures if failures else FAILED_START_S,
            margin=learned_margin(margins),
        )


def learned_margin(outbid_margins: Sequence[float]) -> float:
    """A bid's margin over ``min_bid``: :data:`MARGIN` until we are outbid, then a step over the highest margin
    we were outbid at (`outbid_margins`, anywhere), at most :data:`MAX_MARGIN`."""
    if not outbid_margins:
        return MARGIN
    return min(MAX_MARGIN, max(MARGIN, max(outbid_margins) + MARGIN_STEP))


def rank(
    offers: Sequence[Offer],
    workload: Workload,
    history: Mapping[int, HostStats],
    *,
    strategy: Strategy = Strategy.EXPECTED_COST,
) -> Ranking:
    """Every offer priced for `workload` with what `history` (by machine id) says of its host and of the market,
    in the order `strategy` would try them."""
    priors = Priors.of(history.values())
    margins = (0.0, priors.margin) if strategy is Strategy.EXPECTED_COST else (0.0,)  # by price: the floor
    best: list[Estimate] = []
    for offer in offers:
        host = history.get(offer.machine_id) if offer.machine_id is not None else None
        ways = [
            _estimate(offer, kind, workload, host, priors, margin)
            for kind in _kinds(offer, workload, strategy)
            for margin in (margins if kind is Kind.BID and workload.bid is None else (0.0,))
        ]
        if ways:
            best.append(min(ways, key=lambda e: e.expected_cost_usd))
    if strategy is Strategy.EXPECTED_COST:
        ordered = sorted(best, key=lambda e: (e.expected_cost_usd, e.dph, e.offer.id))
    else:
        ordered = sorted(best, key=lambda e: (e.dph, e.offer.id))
        ordered = [_cheapest(e, i, strategy) for i, e in enumerate(ordered)]
        if strategy is Strategy.SECOND_CHEAPEST and len(ordered) > 1:
            ordered = [*ordered[1:], ordered[0]]
    return Ranking(strategy, tuple(ordered))


def _cheapest(estimate: Estimate, place: int, strategy: Strategy) -> Estimate:
    said = {0: "the cheapest", 1: "the second cheapest"}.get(place, f"cheapest #{place + 1}")
    rule = "choose = second_cheapest" if strategy is Strategy.SECOND_CHEAPEST else "choose = cheapest"
    return Estimate(estimate.offer, estimate.kind, estimate.bid, estimate.dph, estimate.expected_cost_usd,
                    f"{said} ({rule}); {estimate.why}")  # fmt: skip


def _kinds(offer: Offer, workload: Workload, strategy: Strategy) -> list[Kind]:
    """The ways `offer` may be rented: as the job fixes it, else both (by expected cost) or on-demand (by price)."""
    can_bid = workload.bid is not None or offer.min_bid is not None
    if workload.kind is Kind.ON_DEMAND:
        return [Kind.ON_DEMAND]
    if workload.kind is Kind.BID or workload.bid is not None:
        return [Kind.BID] if can_bid else []
    if strategy is Strategy.EXPECTED_COST and can_bid:
        return [Kind.ON_DEMAND, Kind.BID]
    return [Kind.ON_DEMAND]


def _estimate(
    offer: Offer, kind: Kind, work: Workload, host: HostStats | None, priors: Priors, margin: float
) -> Estimate:
    storage_ph = (offer.storage_cost or 0.0) * work.disk_gb / HOURS_PER_MONTH
    on_demand = offer.dph_base if offer.dph_base is not None else max(0.0, (offer.dph_total or 0.0) - storage_ph)
    bid: float | None = None
    if kind is Kind.BID:
        bid = work.bid if work.bid is not None else (offer.min_bid or 0.0) * (1.0 + margin)
        gpu_ph = bid
    else:
        gpu_ph = on_demand
    own = host or HostStats(offer.machine_id or 0, offer.host_id)
    reliability = min(1.0, max(0.0, offer.reliability2 if offer.reliability2 is not None else 0.99))

    boot = _blend(sum(own.s_to_running), len(own.s_to_running), priors.boot_s, 1.0)
    ssh = _blend(sum(own.s_to_ssh), len(own.s_to_ssh), priors.ssh_s, 1.0)
    upload = work.upload_gb * 8000.0 / (offer.inet_down or UPLOAD_MBPS)
    p_fail = _blend(own.failed_starts, own.job_rentals, 1.0 - reliability, PRIOR_RENTALS)
    p_fail = min(p_fail, 0.95)
    fail_s = _blend(own.failed_start_s, own.failed_starts, priors.failed_start_s, 1.0)
    if kind is Kind.BID and bid is not None:
        rate_h = _blend(own.outbids, own.bid_hours, OUTBIDS_PER_HOUR, PRIOR_HOURS) * _beaten(offer, bid, on_demand)
    else:
        rate_h = _blend(own.interruptions, own.on_demand_hours, ON_DEMAND_INTERRUPTIONS * (1.0 - reliability),
                        PRIOR_HOURS)  # fmt: skip

    restart = ssh + upload  # GPU-billed part of bringing the job back on a replacement (its boot bills storage)
    segment = work.checkpoint_every if work.checkpoint_every else work.seconds
    segment = min(segment, work.seconds) if work.seconds > 0 else 0.0
    rate_s = rate_h / 3600.0
    if rate_s > 0 and segment > 0:
        # Poisson interruptions: each checkpointed segment is redone from its start until it runs through.
        segments = work.seconds / segment
        tries = math.expm1(min(rate_s * segment, 50.0))
        running = segments * tries / rate_s
        interruptions = segments * tries
    else:
        running, interruptions = work.seconds, 0.0
    retries = p_fail / (1.0 - p_fail)
    gpu_s = ssh + upload + running + interruptions * restart + retries * fail_s
    boots = 1.0 + interruptions + retries
    cost = (gpu_ph * gpu_s + storage_ph * (gpu_s + boots * boot)) / 3600.0
    transfer = boots * work.upload_gb * _per_gb(offer, "inet_down_cost")  # inputs go up again on each attempt
    cost += transfer + work.download_gb * _per_gb(offer, "inet_up_cost")

    why = _why(kind, bid, margin, own, boot, ssh, p_fail, rate_h, interruptions, reliability)
    return Estimate(offer, kind, bid, gpu_ph + storage_ph, cost, why)


def _beaten(offer: Offer, bid: float, on_demand: float) -> float:
    """The share of competing bids above `bid`, with competing bids anywhere between ``min_bid`` and the on-demand
    price: 1 at the floor, 0 at the on-demand price and above."""
    floor = offer.min_bid
    if floor is None or on_demand <= floor:
        return 1.0
    return min(1.0, max(0.0, (on_demand - bid) / (on_demand - floor)))


def _median_machine(values: Iterable[float | None], constant: float) -> float:
    known = [value for value in values if value is not None]
    return statistics.median([*known, *[constant] * PRIOR_MACHINES])


def _blend(count: float, exposure: float, prior: float, weight: float) -> float:
    """``count / exposure`` pulled towards `prior` by `weight` units of exposure."""
    return (count + prior * weight) / (exposure + weight)


def _per_gb(offer: Offer, name: str) -> float:
    value = (offer.model_extra or {}).get(name)
    return float(value) if isinstance(value, int | float) and value > 0 else 0.0


def _why(
    kind: Kind,
    bid: float | None,
    margin: float,
    host: HostStats,
    boot: float,
    ssh: float,
    p_fail: float,
    rate_h: float,
    interruptions: float,
    reliability: float,
) -> str:
    evidence = (
        f"host: {host.rentals} rental{'s' if host.rentals != 1 else ''}"
        if host.rentals
        else f"no history here, reliability {reliability:.3f}"
    )
    how = f"bid ${bid:.4f}/h (min_bid +{margin:.0%})" if kind is Kind.BID and bid is not None else str(kind)
    parts = [how, evidence, f"boot {boot:.0f}s", f"SSH {ssh:.0f}s", f"{p_fail:.0%} failed starts"]
    if rate_h > 0:
        parts.append(f"{rate_h:.2f} {'outbids' if kind is Kind.BID else 'interruptions'}/h"
                     f" ({interruptions:.2f} expected)")  # fmt: skip
    return ", ".join(parts)
