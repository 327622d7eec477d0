"""The expected-cost model and the choice among offers (vastevents.choosing): pure functions, exact numbers."""

from __future__ import annotations

import math

import pytest

from vastevents import HostStats, Kind, Offer, Strategy, Workload, rank
from vastevents.choosing import BOOT_S, MARGIN, MARGIN_STEP, OUTBIDS_PER_HOUR, SSH_S, learned_margin

HOUR = 3600.0


def offer(ask: int, base: float, *, machine: int | None = None, reliability: float = 1.0, **extra: object) -> Offer:
    fields: dict[str, object] = {
        "id": ask,
        "machine_id": machine if machine is not None else ask * 10,
        "host_id": ask * 100,
        "dph_base": base,
        "dph_total": base + 0.001,
        "storage_cost": 0.1,
        "min_bid": base / 2,
        "reliability2": reliability,
        "inet_down": 1000.0,
        **extra,
    }
    return Offer.model_validate(fields)


def stats(machine: int, **fields: object) -> HostStats:
    return HostStats(machine, machine * 10, **fields)  # type: ignore[arg-type]


ON_DEMAND_HOUR = Workload(seconds=HOUR, disk_gb=72.0, kind=Kind.ON_DEMAND)


def test_without_history_or_risk_the_cost_is_the_price_of_ssh_plus_the_job_and_storage_over_the_boot_too() -> None:
    ranking = rank([offer(1, 0.5)], ON_DEMAND_HOUR, {})
    estimate = ranking.chosen
    assert estimate is not None
    storage_ph = 0.1 * 72 / 720  # $0.01/h
    gpu_s = SSH_S + HOUR
    assert estimate.expected_cost_usd == pytest.approx((0.5 * gpu_s + storage_ph * (gpu_s + BOOT_S)) / HOUR)
    assert estimate.dph == pytest.approx(0.5 + storage_ph)
    assert estimate.kind is Kind.ON_DEMAND and estimate.bid is None
    assert "no history here" in estimate.why


def test_a_host_whose_ssh_comes_up_late_loses_to_a_slightly_dearer_one() -> None:
    cheap, dear = offer(1, 0.40), offer(2, 0.42)
    slow = {10: stats(10, rentals=3, job_rentals=3, s_to_ssh=(480.0, 500.0, 460.0), s_to_running=(70.0,) * 3)}
    by_cost = rank([cheap, dear], ON_DEMAND_HOUR, slow)
    by_price = rank([cheap, dear], ON_DEMAND_HOUR, slow, strategy=Strategy.CHEAPEST)
    assert [e.offer.id for e in by_cost.estimates] == [2, 1]
    assert [e.offer.id for e in by_price.estimates] == [1, 2]
    assert "host: 3 rentals" in by_cost.estimates[1].why
    # Both strategies price both offers the same way; they only order them differently.
    assert {e.offer.id: e.expected_cost_usd for e in by_cost.estimates} == pytest.approx(
        {e.offer.id: e.expected_cost_usd for e in by_price.estimates}
    )


def test_failed_starts_cost_their_billed_time_once_per_expected_retry() -> None:
    clean = rank([offer(1, 0.5)], ON_DEMAND_HOUR, {}).estimates[0].expected_cost_usd
    record = stats(10, rentals=4, job_rentals=4, failed_starts=2, failed_start_s=2 * 600.0)
    flaky = rank([offer(1, 0.5)], ON_DEMAND_HOUR, {10: record}).estimates[0]
    p_fail = (2 + 0.0 * 2) / (4 + 2)  # reliability 1: the prior says no failures, weight 2 rentals
    retries = p_fail / (1 - p_fail)
    boots = 1 + retries
    storage_ph = 0.01
    gpu_s = SSH_S + HOUR + retries * 600.0
    expected = (0.5 * gpu_s + storage_ph * (gpu_s + boots * BOOT_S)) / HOUR
    assert flaky.expected_cost_usd == pytest.approx(expected)
    assert flaky.expected_cost_usd > clean
    assert "33% failed starts" in flaky.why


def test_interruptions_redo_the_work_since_the_last_checkpoint_as_a_poisson_process() -> None:
    record = stats(10, rentals=10, bid_hours=100.0, outbids=200)
    own_rate = (200 + OUTBIDS_PER_HOUR * 2) / (100 + 2)  # its record, weighted against the prior's two hours
    own_rate *= (0.5 - 0.3) / (0.5 - 0.25)  # the share of competing bids (min_bid to on-demand) over a bid of 0.3
    bid = Workload(seconds=HOUR, disk_gb=0.0, kind=Kind.BID, bid=0.3)
    whole = rank([offer(1, 0.5)], bid, {10: record}).estimates[0]
    lam = own_rate / HOUR
    running = math.expm1(lam * HOUR) / lam
    interruptions = math.expm1(lam * HOUR)
    assert whole.expected_cost_usd == pytest.approx(0.3 * (SSH_S + running + interruptions * SSH_S) / HOUR)
    checkpointed = rank([offer(1, 0.5)], Workload(seconds=HOUR, disk_gb=0.0, kind=Kind.BID, bid=0.3,
                                                  checkpoint_every=600.0), {10: record}).estimates[0]  # fmt: skip
    assert checkpointed.expected_cost_usd < whole.expected_cost_usd
    assert whole.kind is Kind.BID and whole.bid == 0.3 and "outbids/h" in whole.why


def test_the_job_chooses_a_bid_on_a_quiet_host_and_on_demand_where_it_is_outbid_all_the_time() -> None:
    auto = Workload(seconds=2 * HOUR, disk_gb=32.0)
    quiet = rank([offer(1, 0.5)], auto, {}).chosen
    assert quiet is not None and quiet.kind is Kind.BID
    assert quiet.bid == pytest.approx(0.25), "a margin would cost more than the rare outbid it avoids"
    stormy = {10: stats(10, rentals=6, bid_hours=3.0, outbids=30)}
    noisy = rank([offer(1, 0.5)], auto, stormy).chosen
    assert noisy is not None and noisy.kind is Kind.ON_DEMAND and noisy.bid is None


def test_a_kind_the_job_fixes_is_kept_and_cheapest_bids_the_floor() -> None:
    forced = rank([offer(1, 0.5)], ON_DEMAND_HOUR, {}).chosen
    assert forced is not None and forced.kind is Kind.ON_DEMAND
    floor = rank([offer(1, 0.5)], Workload(seconds=HOUR, disk_gb=0.0, kind=Kind.BID), {},
                 strategy=Strategy.CHEAPEST).chosen  # fmt: skip
    assert floor is not None and floor.kind is Kind.BID and floor.bid == pytest.approx(0.25)
    no_bids = offer(2, 0.5, min_bid=None)
    assert rank([no_bids], Workload(seconds=HOUR, disk_gb=0.0, kind=Kind.BID), {}).chosen is None


def test_a_bid_pays_the_margin_learned_from_our_outbids_only_where_the_outbids_it_avoids_cost_more() -> None:
    assert learned_margin(()) == MARGIN
    assert learned_margin((0.1, 0.25)) == pytest.approx(0.25 + MARGIN_STEP)
    assert learned_margin((3.0,)) == 1.0
    outbid_at = stats(99, rentals=1, bid_hours=0.5, outbids=1, outbid_margins=(0.3,))  # elsewhere: margin 0.4
    bid = Workload(seconds=HOUR, disk_gb=0.0, kind=Kind.BID)  # an hour's work without checkpoints
    quiet = rank([offer(1, 0.5)], bid, {99: outbid_at}).chosen
    assert quiet is not None and quiet.bid == pytest.approx(0.25) and "min_bid +0%" in quiet.why
    # Outbid about 1.7 times an hour at the floor: bidding 0.35 (beaten by 60 % of the bids between min_bid 0.25
    # and the on-demand 0.5) loses less work than the 40 % it costs.
    stormy = {99: outbid_at, 10: stats(10, rentals=4, bid_hours=10.0, outbids=20)}
    kept = rank([offer(1, 0.5)], bid, stormy).chosen
    assert kept is not None and kept.bid == pytest.approx(0.25 * 1.4) and "min_bid +40%" in kept.why


def test_second_cheapest_tries_the_second_first_and_the_cheapest_last() -> None:
    offers = [offer(3, 0.30), offer(1, 0.10), offer(2, 0.20)]
    ranking = rank(offers, ON_DEMAND_HOUR, {}, strategy=Strategy.SECOND_CHEAPEST)
    assert [e.offer.id for e in ranking.estimates] == [2, 3, 1]
    assert ranking.estimates[0].why.startswith("the second cheapest (choose = second_cheapest)")
    alone = rank([offer(1, 0.1)], ON_DEMAND_HOUR, {}, strategy=Strategy.SECOND_CHEAPEST)
    assert [e.offer.id for e in alone.estimates] == [1]


def test_uploads_and_downloads_cost_what_the_offer_charges_per_gb_and_uploads_again_on_each_retry() -> None:
    work = Workload(seconds=HOUR, disk_gb=0.0, kind=Kind.ON_DEMAND, upload_gb=2.0, download_gb=5.0)
    free = rank([offer(1, 0.5)], work, {}).estimates[0]
    paid = rank([offer(1, 0.5, inet_down_cost=0.02, inet_up_cost=0.01)], work, {}).estimates[0]
    assert paid.expected_cost_usd - free.expected_cost_usd == pytest.approx(2.0 * 0.02 + 5.0 * 0.01)
    record = {10: stats(10, rentals=2, job_rentals=2, failed_starts=1, failed_start_s=100.0)}
    retried = rank([offer(1, 0.5, inet_down_cost=0.02)], work, record).estimates[0]
    free_retried = rank([offer(1, 0.5)], work, record).estimates[0]
    retries = (1 / 4) / (1 - 1 / 4)
    assert retried.expected_cost_usd - free_retried.expected_cost_usd == pytest.approx((1 + retries) * 2.0 * 0.02)


def test_unreliable_hosts_without_history_are_priced_by_their_reliability() -> None:
    shaky, solid = offer(1, 0.50, reliability=0.80), offer(2, 0.51, reliability=0.999)
    ranking = rank([shaky, solid], ON_DEMAND_HOUR, {})
    assert [e.offer.id for e in ranking.estimates] == [2, 1]
    assert "reliability 0.800" in ranking.estimates[1].why


def test_the_median_machine_sets_what_a_host_without_history_is_expected_to_take_one_slow_host_does_not() -> None:
    booted = {m: stats(m, rentals=1, s_to_running=(300.0 + m,), s_to_ssh=(40.0,)) for m in (1, 2, 3)}
    estimate = rank([offer(7, 0.5)], ON_DEMAND_HOUR, booted).estimates[0]
    assert "boot 301s" in estimate.why and "SSH 40s" in estimate.why  # median of 301, 302, 303 and twice 120
    one_slow = {1: stats(1, rentals=3, s_to_ssh=(480.0, 480.0, 480.0))}
    unknown = rank([offer(7, 0.5)], ON_DEMAND_HOUR, one_slow).estimates[0]
    assert f"SSH {SSH_S:.0f}s" in unknown.why


def test_host_stats_show_what_hosts_history_prints() -> None:
    record = stats(7, rentals=3, s_to_running=(60.0, 80.0, 70.0), s_to_ssh=(5.0, 9.0), bid_hours=1.5,
                   on_demand_hours=0.5, outbids=3, preflight_failures=1, jobs_finished=2, jobs_failed=1,
                   dph_paid=(0.2, 0.4))  # fmt: skip
    assert record.to_json() == {
        "machine_id": 7,
        "host_id": 70,
        "rentals": 3,
        "median_s_to_running": 70.0,
        "median_s_to_ssh": 7.0,
        "outbids_per_hour": 1.5,
        "preflight_failures": 1,
        "jobs_finished": 2,
        "jobs_failed": 1,
        "mean_dph": pytest.approx(0.3),
    }
    assert HostStats(1).to_json()["outbids_per_hour"] is None


def test_the_dry_run_json_names_the_chosen_offer_and_each_offers_two_numbers() -> None:
    ranking = rank([offer(1, 0.2), offer(2, 0.1)], ON_DEMAND_HOUR, {})
    shown = ranking.to_json(top=1)
    assert shown["chosen"] == 2
    first = ranking.estimates[0]
    assert shown["offers"] == [
        {"id": 2, "dph_total": pytest.approx(0.11), "expected_cost_usd": first.expected_cost_usd, "why": first.why}
    ]
    assert ranking.estimates[0].bound(7200.0) == pytest.approx(0.22)
