"""The diff's fast paths (an unchanged row, a state no detector can fire in) change no result.

Every property runs the same random polls twice: once as shipped, once with the fast paths turned off
(``_settled`` answering False sends every instance through the detectors), and the snapshots, their order and
the events must be equal.
"""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from vastevents.diff import observe
from vastevents.models import Instance
from vastevents.snapshot import Snapshot

diff_module = importlib.import_module("vastevents.diff")

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STATUSES = ["running", "running", "stopped", "loading", "offline", "exited", None, "created", "Running ", "weird"]
SHAPES = [None, "running", "stopped"]

fields = st.fixed_dictionaries(
    {
        "actual_status": st.sampled_from(STATUSES),
        "intended_status": st.sampled_from(["running", *SHAPES]),
        "cur_state": st.sampled_from(SHAPES),
        "next_state": st.sampled_from(SHAPES),
        "is_bid": st.sampled_from([None, False, True]),
        "status_msg": st.sampled_from([None, "Pulling image", "OCI runtime create failed"]),
        "machine_id": st.sampled_from([None, 7]),
    }
)
# One poll: for each listed id, None keeps last poll's very row object (if there was one), else new fields.
poll = st.tuples(
    st.sampled_from([0, 15, 130, 700, 2000]),  # seconds since the last poll
    st.dictionaries(st.integers(min_value=1, max_value=6), st.none() | fields, max_size=6),
    st.booleans(),  # list the rows in id order (as the client does) or shuffled
    st.frozensets(st.integers(min_value=1, max_value=6), max_size=2),  # stop requests
    st.randoms(use_true_random=False),
)


def _rows(
    listed: dict[int, dict[str, Any] | None], last: dict[int, Instance], ordered: bool, rnd: Any
) -> list[Instance]:
    rows = []
    for instance_id in sorted(listed):
        spec = listed[instance_id]
        if spec is None and instance_id in last:
            rows.append(last[instance_id])
        else:
            rows.append(Instance.model_validate({"id": instance_id, **(spec or {})}))
    if not ordered:
        rnd.shuffle(rows)
        if rows and rnd.random() < 0.3:
            rows.append(rows[0])  # a page listed twice
    return rows


@settings(max_examples=400, deadline=None)
@given(st.lists(poll, min_size=1, max_size=8), st.none() | st.lists(st.integers(1, 6), unique=True))
def test_fast_paths_give_the_same_snapshots_and_events(polls: list[Any], start: list[int] | None) -> None:
    """From an empty snapshot, or from one made by ``Snapshot.of`` in any id order from rows polled again."""
    now = T0
    last = {n: Instance.model_validate({"id": n, "actual_status": "running"}) for n in start or []}
    fast = slow = Snapshot.of(last.values(), now) if start is not None else Snapshot()
    for seconds, listed, ordered, stops, rnd in polls:
        now += timedelta(seconds=seconds)
        rows = _rows(listed, last, ordered, rnd)
        last = {row.id: row for row in rows}
        with mock.patch.object(diff_module, "_settled", lambda view: False):
            slow, slow_events = observe(slow, rows, now, stop_requested=stops)
        fast, fast_events = observe(fast, rows, now, stop_requested=stops)
        assert fast == slow
        assert list(fast.views) == list(slow.views)
        assert fast_events == slow_events


def test_an_unchanged_account_keeps_every_view_object() -> None:
    rows = [Instance.model_validate({"id": n, "actual_status": "running"}) for n in range(1, 6)]
    first, _ = observe(Snapshot(), rows, T0)
    second, events = observe(first, rows, T0 + timedelta(seconds=15))
    assert events == []
    assert all(second.views[n] is first.views[n] for n in first.views)
    assert second.taken_at == T0 + timedelta(seconds=15)


def test_an_equal_snapshot_with_an_empty_memo_is_still_equal() -> None:
    rows = [Instance.model_validate({"id": 1, "actual_status": "running"})]
    first, _ = observe(Snapshot(), rows, T0)
    second, _ = observe(first, rows, T0)
    assert second.settled and not Snapshot(second.views, second.taken_at).settled
    assert Snapshot(second.views, second.taken_at) == second


def test_views_come_out_in_id_order_even_from_a_snapshot_in_another_order() -> None:
    rows = [Instance.model_validate({"id": n, "actual_status": "running"}) for n in (3, 2, 1)]
    snapshot, events = observe(Snapshot.of(rows, T0), rows, T0 + timedelta(seconds=15))
    assert events == []
    assert list(snapshot.views) == [1, 2, 3]


def test_an_unchanged_outbid_row_is_still_reported_once_our_stop_request_is_gone() -> None:
    bid = {"id": 1, "is_bid": True, "actual_status": "running"}
    outbid = Instance.model_validate(
        {**bid, "cur_state": "stopped", "intended_status": "stopped", "next_state": "stopped"}
    )
    snapshot, _ = observe(Snapshot(), [Instance.model_validate(bid)], T0)
    snapshot, events = observe(snapshot, [outbid], T0 + timedelta(seconds=15), stop_requested={1})
    assert events == []
    snapshot, events = observe(snapshot, [outbid], T0 + timedelta(seconds=30))
    assert [event.name for event in events] == ["preempted"]
