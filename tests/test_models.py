"""The tolerant Vast models: unknown fields kept, strings coerced, unknown statuses never crash."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vastevents.models import Instance, Offer, State


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        (None, State.SCHEDULING),
        ("created", State.CREATED),
        ("loading", State.LOADING),
        ("running", State.RUNNING),
        ("Running ", State.RUNNING),
        ("exited", State.EXITED),
        ("offline", State.OFFLINE),
        ("unknown", State.UNKNOWN),
        ("hibernating", State.UNKNOWN),
    ],
)
def test_status_maps_to_state(raw: str | None, state: State) -> None:
    instance = Instance.model_validate({"id": 1, "actual_status": raw})
    assert instance.state is state
    assert instance.raw_status == raw


@given(st.text())
def test_any_status_string_maps_without_crashing(raw: str) -> None:
    assert State.from_raw(raw) in set(State)


def test_instance_coerces_strings_and_keeps_unknown_fields() -> None:
    row = {
        "id": "42",
        "actual_status": "running",
        "dph_total": "0.35",
        "num_gpus": "2",
        "ssh_port": "41022",
        "machine_id": "",
        "extra_env": [["A", "1"]],
        "brand_new_field": {"x": 1},
    }
    instance = Instance.model_validate(row)
    assert instance.id == 42
    assert instance.dph_total == pytest.approx(0.35)
    assert instance.num_gpus == 2
    assert instance.ssh_port == 41022
    assert instance.machine_id is None
    dumped = instance.model_dump()
    assert dumped["brand_new_field"] == {"x": 1}
    assert dumped["extra_env"] == [["A", "1"]]


def test_missing_fields_and_null_label_are_fine() -> None:
    instance = Instance.model_validate({"id": 7, "label": None})
    assert instance.label is None
    assert instance.state is State.SCHEDULING


def test_models_are_frozen() -> None:
    instance = Instance(id=1)
    with pytest.raises(ValueError, match="frozen"):
        instance.label = "x"  # type: ignore[misc]


def test_offer_coerces_strings() -> None:
    offer = Offer.model_validate({"id": "9", "gpu_ram": "24576", "dph_total": "0.4", "rentable": "true"})
    assert (offer.id, offer.gpu_ram, offer.dph_total, offer.rentable) == (9, 24576.0, 0.4, True)
