"""The pure diff and cause detectors: names, ordering, thresholds, bad input, and properties."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vastevents.diff import Rules, diff, next_due, observe
from vastevents.events import Event, transition_name
from vastevents.models import Instance, State
from vastevents.snapshot import Snapshot

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def row(instance_id: int, status: str | None, **fields: Any) -> Instance:
    return Instance.model_validate({"id": instance_id, "actual_status": status, **fields})


def names(events: list[Event]) -> list[str]:
    return [event.name for event in events]


def run(*polls: tuple[float, list[Instance]], rules: Rules | None = None) -> list[list[Event]]:
    """Observe each (seconds, rows) in turn from an empty snapshot; the events of each poll."""
    snapshot = Snapshot()
    out = []
    for seconds, rows in polls:
        snapshot, events = observe(snapshot, rows, at(seconds), rules)
        out.append(events)
    return out


def test_transition_names_come_from_states() -> None:
    assert transition_name(State.SCHEDULING, State.LOADING) == "scheduling_to_loading"
    assert transition_name(State.RUNNING, State.OFFLINE) == "running_to_offline"


def test_first_sight_is_appeared_then_transitions_then_vanished() -> None:
    first, second, third, fourth = run(
        (0, [row(1, None)]),
        (10, [row(1, "loading")]),
        (20, [row(1, "running")]),
        (30, []),
    )
    assert [(e.name, e.old, e.new) for e in first] == [("appeared", None, "scheduling")]
    assert names(second) == ["scheduling_to_loading"]
    assert names(third) == ["loading_to_running"]
    assert [(e.name, e.old, e.new) for e in fourth] == [("vanished", "running", None)]
    assert fourth[0].instance is not None and fourth[0].instance.actual_status == "running"
    assert all(e.at == at(s) for e, s in zip([*first, *second, *third, *fourth], [0, 10, 20, 30], strict=True))


def test_unknown_status_keeps_the_raw_value_and_never_crashes() -> None:
    _, events = run((0, [row(1, "running")]), (10, [row(1, "Hibernating")]))
    assert [(e.name, e.raw) for e in events] == [("running_to_unknown", "Hibernating")]


def test_same_status_with_other_fields_changed_is_quiet_but_keeps_the_fresh_row() -> None:
    snapshot, _ = observe(Snapshot(), [row(1, "running", label="a")], at(0))
    snapshot, events = observe(snapshot, [row(1, "running", label="b", gpu_util=99)], at(10))
    assert events == []
    view = snapshot.get(1)
    assert view is not None and view.instance.label == "b"


def test_events_come_in_instance_order_status_event_first() -> None:
    rules = Rules(stuck_after=5)
    _, events = run(
        (0, [row(2, "loading"), row(1, "loading")]), (10, [row(2, "loading"), row(3, "running")]), rules=rules
    )
    assert [(e.instance_id, e.name) for e in events] == [(1, "vanished"), (2, "stuck_loading"), (3, "appeared")]


def test_duplicate_ids_keep_the_last_row() -> None:
    (events,) = run((0, [row(1, "loading"), row(1, "running")]))
    assert [(e.name, e.new) for e in events] == [("appeared", "running")]


def test_missing_fields_and_null_labels_are_fine() -> None:
    (events,) = run((0, [Instance.model_validate({"id": 7, "label": None})]))
    assert [(e.name, e.new) for e in events] == [("appeared", "scheduling")]
    assert "7" in events[0].describe()


def test_huge_list_diffs_without_trouble() -> None:
    rows = [row(i, "running") for i in range(20_000)]
    snapshot, events = observe(Snapshot(), rows, at(0))
    assert len(events) == 20_000
    changed = [*rows[:-1], row(19_999, "exited")]
    assert names(diff(snapshot, Snapshot.of(changed, at(1)), at(1))) == ["running_to_exited"]


def test_json_shape_and_at_in_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    event = Event(id=3, name="appeared", instance_id=1, new="running", at=datetime(2026, 1, 1, 2, tzinfo=plus_two))
    data = event.to_json()
    assert list(data) == "id name instance_id old new at catch_up instance detail cause".split()
    assert data["at"] == "2026-01-01T00:00:00Z"


def test_catch_up_flag_is_carried_on_every_event() -> None:
    snapshot, _ = observe(Snapshot(), [row(1, "loading")], at(0))
    _, events = observe(snapshot, [row(1, "running"), row(2, "running")], at(100), catch_up=True)
    assert [(e.name, e.catch_up) for e in events] == [("loading_to_running", True), ("appeared", True)]


# --- preempted


def running(instance_id: int = 1, **fields: Any) -> Instance:
    return row(instance_id, "running", intended_status="running", **fields)


def test_preempted_after_grace_while_still_meant_to_run() -> None:
    rules = Rules(preempt_grace=120)
    down = row(1, "exited", intended_status="running")
    polls = run((0, [running()]), (10, [down]), (100, [down]), (130, [down]), (200, [down]), rules=rules)
    assert [names(p) for p in polls] == [["appeared"], ["running_to_exited"], [], ["preempted"], []]
    preempted = polls[3][0]
    assert (preempted.old, preempted.new) == ("running", "exited")
    assert "2m" in preempted.detail


def test_next_due_is_the_first_grace_to_end_on_unchanged_rows() -> None:
    rules = Rules(preempt_grace=30, offline_grace=600, stuck_after=900)
    snapshot = Snapshot()
    for seconds, rows in [
        (0, [running(), row(2, "running", intended_status="running"), row(3, "loading")]),
        (10, [row(1, "exited", intended_status="running"), row(2, "offline", intended_status="running"),
              row(3, "loading")]),
    ]:  # fmt: skip
        snapshot, _ = observe(snapshot, rows, at(seconds), rules)
    # instance 1 down since 10 (grace ends at 40); 2 offline since 10 (its preempt grace at 40 too, offline
    # grace at 610); 3 loading since 0 (stuck at 900)
    assert next_due(snapshot, rules, at(10)) == at(40)
    snapshot, events = observe(snapshot, list(snapshot.instances()), at(40), rules)
    assert names(events) == ["preempted", "preempted"]
    assert next_due(snapshot, rules, at(40)) == at(610)  # preempted told: the offline grace is next
    assert next_due(snapshot, rules, at(700)) == at(900)  # a due already past (a poll that failed) is not one
    assert next_due(Snapshot(), rules, at(0)) is None


def test_preempt_grace_zero_reports_on_the_transition_poll() -> None:
    polls = run((0, [running()]), (10, [row(1, "stopped", intended_status="running")]), rules=Rules(preempt_grace=0))
    assert names(polls[1]) == ["running_to_stopped", "preempted"]


def test_offline_then_back_within_grace_is_not_preempted() -> None:
    off = row(1, "offline", intended_status="running")
    polls = run((0, [running()]), (10, [off]), (60, [running()]), rules=Rules(preempt_grace=120))
    assert [names(p) for p in polls] == [["appeared"], ["running_to_offline"], ["offline_to_running"]]


def test_users_own_stop_is_only_a_transition() -> None:
    stopped = row(1, "stopped", intended_status="stopped", cur_state="stopped", next_state="stopped")
    polls = run((0, [running()]), (10, [stopped]), (1000, [stopped]), rules=Rules(preempt_grace=0))
    assert [names(p) for p in polls] == [["appeared"], ["running_to_stopped"], []]


def test_outbid_bid_instance_is_preempted_at_once_unless_we_asked_for_the_stop() -> None:
    outbid = row(1, "stopped", is_bid=True, intended_status="stopped", cur_state="stopped", next_state="stopped")
    before, _ = observe(Snapshot(), [running(is_bid=True)], at(0))
    _, events = observe(before, [outbid], at(10))
    assert names(events) == ["running_to_stopped", "preempted"]
    assert "outbid" in events[1].detail
    _, ours = observe(before, [outbid], at(10), stop_requested={1})
    assert names(ours) == ["running_to_stopped"]


def test_preempted_is_reported_once_per_down_episode() -> None:
    down = row(1, "offline", intended_status="running")
    exited = row(1, "exited", intended_status="running")
    polls = run(
        (0, [running()]),
        (10, [down]),
        (200, [exited]),
        (300, [running()]),
        (310, [exited]),
        (500, [exited]),
        rules=Rules(preempt_grace=120, offline_grace=10_000),
    )
    assert [names(p) for p in polls] == [
        ["appeared"],
        ["running_to_offline"],
        ["offline_to_exited", "preempted"],
        ["exited_to_running"],
        ["running_to_exited"],
        ["preempted"],
    ]


# --- stuck_loading


def test_stuck_loading_counts_from_when_we_first_saw_it_loading() -> None:
    loading = row(1, "loading")
    polls = run((0, [row(1, "created")]), (100, [loading]), (900, [loading]), (1000, [loading]), (5000, [loading]))
    assert [names(p) for p in polls] == [["appeared"], ["created_to_loading"], [], ["stuck_loading"], []]


def test_stuck_loading_at_once_on_an_image_pull_error() -> None:
    bad = row(1, "loading", status_msg="Error response from daemon: OCI runtime create failed: exec format")
    polls = run((0, [row(1, "loading")]), (5, [bad]), (10, [bad]))
    assert [names(p) for p in polls] == [["appeared"], ["stuck_loading"], []]
    assert "OCI runtime create failed" in polls[1][0].detail


def test_a_normal_load_s_progress_messages_are_not_errors() -> None:
    progress = ["Pulling image pytorch/pytorch", "Image pull in progress: 45%", "image pull complete", "Loading image"]
    polls = run(*((float(n), [row(1, "loading", status_msg=msg)]) for n, msg in enumerate(progress)))
    assert [names(p) for p in polls] == [["appeared"], [], [], []]
    (events,) = run((0, [row(1, "loading", status_msg="Back-off pulling image: ImagePullBackOff")]))
    assert names(events) == ["appeared", "stuck_loading"]


def test_stuck_loading_again_after_a_new_loading_episode() -> None:
    rules = Rules(stuck_after=60)
    loading = row(1, "loading")
    polls = run(
        (0, [loading]), (60, [loading]), (70, [row(1, "running")]), (80, [loading]), (140, [loading]), rules=rules
    )
    assert [names(p) for p in polls] == [
        ["appeared"],
        ["stuck_loading"],
        ["loading_to_running"],
        ["running_to_loading"],
        ["stuck_loading"],
    ]


# --- offline_too_long and host_flap


def test_offline_too_long_only_beyond_grace() -> None:
    off = row(1, "offline")
    polls = run((0, [running()]), (10, [off]), (500, [off]), (610, [off]), (700, [off]), rules=Rules(offline_grace=600))
    assert [names(p) for p in polls] == [["appeared"], ["running_to_offline"], [], ["offline_too_long"], []]


def test_host_flap_after_flap_count_offline_episodes_within_window() -> None:
    rules = Rules(flap_count=3, flap_window=3600, preempt_grace=10_000, offline_grace=10_000)
    on, off = running(machine_id=42), row(1, "offline", intended_status="running", machine_id=42)
    polls = run(
        (0, [on]),
        (10, [off]),
        (20, [on]),
        (30, [off]),
        (40, [on]),
        (50, [off]),
        (60, [on]),
        (70, [off]),
        rules=rules,
    )
    flap_polls = [i for i, p in enumerate(polls) if "host_flap" in names(p)]
    assert flap_polls == [5]
    assert names(polls[5]) == ["running_to_offline", "host_flap"]
    assert "machine 42" in polls[5][1].detail


def test_flaps_outside_the_window_do_not_count() -> None:
    rules = Rules(flap_count=2, flap_window=100, preempt_grace=10_000, offline_grace=10_000)
    on, off = running(), row(1, "offline", intended_status="running")
    polls = run((0, [on]), (10, [off]), (20, [on]), (500, [off]), (510, [on]), (520, [off]), rules=rules)
    assert ["host_flap" in names(p) for p in polls] == [False, False, False, False, False, True]


# --- properties

STATUSES = st.sampled_from([None, "created", "loading", "running", "stopped", "exited", "offline", "Weird", ""])
ROWS = st.builds(
    lambda i, status, intended, msg: row(i, status, intended_status=intended, status_msg=msg, is_bid=i % 2 == 0),
    st.integers(1, 8),
    STATUSES,
    st.sampled_from([None, "running", "stopped"]),
    st.sampled_from([None, "", "pulling", "failed to pull image"]),
)
LISTS = st.lists(ROWS, max_size=10)


def replay(states: dict[int, str], events: list[Event]) -> dict[int, str]:
    """An independent oracle: fold the status events over {id: state}."""
    out = dict(states)
    for event in events:
        assert event.instance_id is not None
        if event.name == "appeared":
            assert event.instance_id not in out
            out[event.instance_id] = str(event.new)
        elif event.name == "vanished":
            assert out.pop(event.instance_id) == event.old
        elif "_to_" in event.name:
            assert out[event.instance_id] == event.old
            assert event.name == f"{event.old}_to_{event.new}"
            out[event.instance_id] = str(event.new)
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(LISTS, st.floats(0, 2000)), min_size=1, max_size=6))
def test_applying_events_reconstructs_the_new_snapshot(polls: list[tuple[list[Instance], float]]) -> None:
    snapshot, now = Snapshot(), T0
    states: dict[int, str] = {}
    for rows, step in polls:
        now += timedelta(seconds=step)
        snapshot, events = observe(snapshot, rows, now)
        states = replay(states, events)
        assert states == {i: s.value for i, s in snapshot.states().items()}
        assert [e.instance_id for e in events] == sorted(e.instance_id for e in events if e.instance_id is not None)


@settings(max_examples=200, deadline=None)
@given(LISTS, LISTS, st.floats(0, 5000))
def test_diff_of_a_snapshot_with_itself_is_empty(first: list[Instance], second: list[Instance], later: float) -> None:
    snapshot, _ = observe(Snapshot(), first, T0)
    snapshot, _ = observe(snapshot, second, at(1))
    assert diff(snapshot, snapshot, at(1)) == []
    never = Rules(stuck_after=1e9, offline_grace=1e9, preempt_grace=1e9)
    assert diff(snapshot, snapshot, at(1 + later), never) == []


# --- layering

PURE_CORE = ("events.py", "snapshot.py", "diff.py", "models.py", "errors.py")
PURE_IMPORTS = {"__future__", "collections", "dataclasses", "datetime", "enum", "re", "types", "typing", "pydantic"}


def test_the_pure_core_imports_no_io_and_reads_no_clock() -> None:
    package = Path(__file__).resolve().parents[1] / "vastevents"
    for module in PURE_CORE:
        tree = ast.parse((package / module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                for name in names:
                    top = name.split(".")[0]
                    allowed = top in PURE_IMPORTS or name in {f"vastevents.{m[:-3]}" for m in PURE_CORE}
                    assert allowed, f"{module} imports {name}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in {"now", "utcnow", "today", "time", "monotonic"}, f"{module} reads a clock"
