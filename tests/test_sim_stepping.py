"""Stepping a ManualClock through `Simulator.next_due`: every change of the demo is seen, the same way every run.

Each poll's list also goes through the pure diff the watcher uses, so the event names a stepped run yields are
checked too: every transition the demo promises, and the same ones every run.
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path

from vastevents.clock import ManualClock
from vastevents.diff import observe
from vastevents.sim import Simulator
from vastevents.snapshot import Snapshot
from vastevents.vast import VastClient

# (seconds after the start, label, actual_status, cur_state, intended_status, next_state), one per row per poll
Seen = list[tuple[float, str, str | None, str | None, str | None, str | None]]


async def _step_through(scenario: Path) -> tuple[Seen, int, list[tuple[float, str, str | None]]]:
    """List instances over HTTP at the start and at every due moment up to the scenario's end; then clean up.

    Returns what each poll saw, the number of polls, and the events (offset, name, label) those lists make.
    """
    clock = ManualClock()
    start = clock.now()
    seen: Seen = []
    polls = 0
    snapshot = Snapshot()
    events: list[tuple[float, str, str | None]] = []
    with Simulator(clock=clock, scenario=scenario) as sim:
        end = sim.scenario_end
        assert end is not None
        async with VastClient(sim.api_key, sim.url) as client:
            while True:
                offset = (clock.now() - start).total_seconds()
                rows = await client.list_instances()
                for row in rows:
                    seen.append((offset, row.label or "", row.actual_status, row.cur_state, row.intended_status,
                                 row.next_state))  # fmt: skip
                snapshot, found = observe(snapshot, rows, clock.now())
                events += [(offset, e.name, e.instance.label if e.instance else None) for e in found]
                polls += 1
                due = sim.next_due()
                if due is None or due > end:
                    break
                assert due > clock.now()
                clock.advance((due - clock.now()).total_seconds())
            for row in await client.list_instances():
                await client.destroy_instance(row.id)
        assert sim.instance_count() == 0
    return seen, polls, events


def _statuses(seen: Seen, label: str) -> list[str | None]:
    """The label's statuses in order, repeats folded: what a watcher turns into transition events."""
    return [status for status, _ in itertools.groupby(s[2] for s in seen if s[1] == label)]


async def test_stepping_the_demo_sees_every_transition_it_promises() -> None:
    seen, polls, events = await _step_through(Simulator.builtin_scenario("demo"))
    loaded: list[str | None] = [None, "created", "loading", "running"]
    assert _statuses(seen, "vastevents:job-1") == loaded
    assert _statuses(seen, "vastevents:job-2") == [*loaded, "exited"], "the bid instance is outbid"
    outbid = next(s for s in seen if s[1] == "vastevents:job-2" and s[2] == "exited")
    assert outbid[0] == 300 and outbid[3:] == ("stopped", "stopped", "stopped")
    assert _statuses(seen, "vastevents:job-3") == [*loaded, *["offline", "running"] * 3], "its host flaps 3 times"
    assert _statuses(seen, "vastevents:job-4") == [None, "created", "loading"], "the image pull sticks"
    assert _statuses(seen, "vastevents:job-5") == loaded
    assert max(s[0] for s in seen if s[1] == "vastevents:job-5") < 9 * 60 <= seen[-1][0], "then it vanishes"
    assert _statuses(seen, "notebook") == [*loaded, "stopped"], "its owner stops it at the very end"
    assert seen[-1][0] == 15 * 60
    first_seen = {s[1]: s[0] for s in reversed(seen)}
    assert set(first_seen.values()) == {0}, "every instance exists from the first list"
    # every due moment changed something a poll can see: no idle steps
    by_poll = [list(group) for _, group in itertools.groupby(seen, key=lambda s: s[0])]
    assert len(by_poll) == polls
    assert all([s[1:] for s in a] != [s[1:] for s in b] for a, b in itertools.pairwise(by_poll))
    names = {(name, label) for _, name, label in events}
    for label in ("vastevents:job-1", "vastevents:job-2", "vastevents:job-3", "vastevents:job-5", "notebook"):
        for name in ("appeared", "scheduling_to_created", "created_to_loading", "loading_to_running"):
            assert (name, label) in names, (name, label)
    assert {("preempted", "vastevents:job-2"), ("running_to_exited", "vastevents:job-2")} <= names
    assert {("running_to_offline", "vastevents:job-3"), ("offline_to_running", "vastevents:job-3")} <= names
    assert {("stuck_loading", "vastevents:job-4"), ("vanished", "vastevents:job-5")} <= names
    assert ("running_to_stopped", "notebook") in names and ("preempted", "notebook") not in names


async def test_the_same_demo_gives_the_same_observations_every_run() -> None:
    demo = Simulator.builtin_scenario("demo")
    first, second = await _step_through(demo), await _step_through(demo)
    assert first == second, "the same lists at the same moments, so the same events"
    assert "scheduling_to_loading" not in {name for _, name, _ in first[2]}, "no state is skipped between polls"


async def test_a_stuck_pull_shows_its_message_and_next_due_follows_client_actions() -> None:
    clock = ManualClock()
    with Simulator(clock=clock, scenario=Simulator.builtin_scenario("demo")) as sim:
        assert sim.next_due() == clock.now() + timedelta(seconds=5), "scheduling -> created"
        clock.advance(11)
        row = sim.instance("job-4")
        assert row is not None and "OCI runtime create failed" in row["status_msg"]
        created = sim.create_instance(label="vastevents:extra")
        assert sim.next_due() == clock.now() + timedelta(seconds=5), "a create brings an earlier moment"
        for instance_id in [row["id"] for row in sim.state()["instances"]]:
            sim.apply("destroy", instance=instance_id)
        assert sim.instance(created) is None and sim.instance_count() == 0
        assert sim.next_due() is not None and sim.next_due() == clock.now() + timedelta(seconds=4 * 60 - 11), (
            "with nothing alive, only the scenario's steps are due (the flap at 4m)"
        )


def test_without_a_scenario_or_instances_nothing_is_due(sim: Simulator) -> None:
    assert sim.scenario_end is None and sim.next_due() is None
    sim.apply("rate_limit", duration="30s")
    assert sim.next_due() == sim.clock.now() + timedelta(seconds=30), "the end of a storm changes answers"


def test_a_due_moment_off_the_microsecond_grid_still_plays_when_the_clock_reaches_it(sim: Simulator) -> None:
    instance_id = sim.create_instance(label="vastevents:odd", pull=1 / 3)
    for expected in ("created", "loading", "running"):
        due = sim.next_due()
        assert due is not None
        sim.advance((due - sim.clock.now()).total_seconds())
        row = sim.instance(instance_id)
        assert row is not None and row["actual_status"] == expected
    sim.vanish(instance_id)
