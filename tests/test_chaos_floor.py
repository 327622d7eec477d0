"""C1's floor of a job: the least time the fastest possible watcher would have taken, given the job's faults."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from chaos_floor import BOOT_S, RESUME_S, Hit, earliest_action, floor_s

WORK, GRACE = 90.0, 30.0


def floor(*hits: Hit, blocked: list[tuple[float, float]] | None = None, submitted: float = 0.0) -> float:
    return floor_s(submitted, hits, blocked or [], work_s=WORK, grace_s=GRACE)


def test_a_job_no_fault_hit_takes_a_boot_and_its_work() -> None:
    assert BOOT_S == 70.0
    assert floor() == BOOT_S + WORK


def test_an_on_demand_preemption_while_running_costs_the_grace_and_a_new_boot_and_no_work() -> None:
    assert floor(Hit(100.0, "preempt", 1, 11)) == BOOT_S + GRACE + BOOT_S + WORK


def test_a_preemption_while_booting_costs_the_boot_so_far_and_a_new_one() -> None:
    assert floor(Hit(40.0, "preempt", 1, 11)) == 40.0 + BOOT_S + WORK


def test_an_outbid_instance_resumes_after_its_rebid() -> None:
    assert floor(Hit(100.0, "outbid", 1, 11)) == BOOT_S + RESUME_S + WORK


def test_a_flap_while_running_costs_its_length_and_one_while_booting_delays_the_boot() -> None:
    assert floor(Hit(100.0, "flap", 1, 11, seconds=40.0)) == BOOT_S + 40.0 + WORK
    assert floor(Hit(30.0, "flap", 1, 11, seconds=40.0)) == BOOT_S + 40.0 + WORK


def test_nothing_is_done_while_the_watcher_is_down_or_the_api_refuses() -> None:
    # outbid at 100; the watcher is down until 120, then a storm refuses every request until 150
    blocked = [(90.0, 120.0), (120.0, 150.0)]
    assert earliest_action(100.0, blocked) == 150.0
    assert floor(Hit(100.0, "outbid", 1, 11), blocked=blocked) == 150.0 + RESUME_S + (WORK - 30.0)
    # a submission while the watcher is down is rented when it is back
    assert floor(blocked=[(0.0, 25.0)]) == 25.0 + BOOT_S + WORK


def test_a_fault_after_the_job_would_have_ended_is_ignored() -> None:
    assert floor(Hit(BOOT_S + WORK + 1.0, "preempt", 1, 11)) == BOOT_S + WORK


@pytest.mark.parametrize("submitted", [0.0, 450.0])
def test_the_floor_counts_from_the_submission(submitted: float) -> None:
    assert floor(Hit(submitted + 100.0, "preempt", 1, 11), submitted=submitted) == 2 * BOOT_S + GRACE + WORK
