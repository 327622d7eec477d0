"""Instance lifecycle on a ManualClock: scheduling -> created -> loading -> running, stop/start, reboot, expiry."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from vastevents.clock import ManualClock
from vastevents.sim import Simulator
from vastevents.sim.lifecycle import CREATE_S, REBOOT_S, RESTART_S, SCHEDULE_S


def _row(sim: Simulator, instance_id: int, api_key: str) -> Any:
    response = httpx.get(f"{sim.url}/api/v0/instances/{instance_id}/", params={"owner": "me"},
                         headers={"Authorization": f"Bearer {api_key}"})  # fmt: skip
    assert response.status_code == 200
    return response.json()["instances"]


def _states(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["actual_status"], row["intended_status"], row["cur_state"], row["next_state"])


def test_create_goes_through_scheduling_created_loading_running(sim: Simulator, api_key: str) -> None:
    instance_id = sim.create_instance(label="vastevents:job-1", pull=90)
    assert _states(_row(sim, instance_id, api_key)) == (None, "running", "stopped", "running")
    sim.advance(SCHEDULE_S)
    assert _row(sim, instance_id, api_key)["actual_status"] == "created"
    sim.advance(CREATE_S)
    loading = _row(sim, instance_id, api_key)
    assert _states(loading) == ("loading", "running", "running", "running")
    assert "Pulling image" in loading["status_msg"]
    sim.advance(89)
    assert _row(sim, instance_id, api_key)["actual_status"] == "loading"
    sim.advance(1)
    assert _states(_row(sim, instance_id, api_key)) == ("running", "running", "running", "running")


def test_stop_start_and_reboot_keep_the_three_states_consistent(sim: Simulator, api_key: str) -> None:
    instance_id = sim.create_instance(label="x", pull=10)
    sim.advance(30)
    headers = {"Authorization": f"Bearer {api_key}"}
    url = f"{sim.url}/api/v0/instances/{instance_id}/"
    assert httpx.put(url, json={"state": "stopped"}, headers=headers).json() == {"success": True}
    assert _states(_row(sim, instance_id, api_key)) == ("stopped", "stopped", "stopped", "stopped")
    assert httpx.put(url, json={"state": "running"}, headers=headers).status_code == 200
    assert _row(sim, instance_id, api_key)["actual_status"] == "loading"
    sim.advance(RESTART_S)
    assert _row(sim, instance_id, api_key)["actual_status"] == "running"
    reboot = httpx.put(f"{sim.url}/api/v0/instances/reboot/{instance_id}/", json={}, headers=headers)
    assert reboot.status_code == 200
    assert _row(sim, instance_id, api_key)["actual_status"] == "rebooting"
    sim.advance(REBOOT_S)
    assert _row(sim, instance_id, api_key)["actual_status"] == "running"


def test_contract_end_date_stops_the_instance(sim: Simulator, api_key: str) -> None:
    instance_id = sim.create_instance(label="x", pull=10)
    sim.advance(30)
    sim.apply("expire", instance=instance_id, after="10m")
    row = _row(sim, instance_id, api_key)
    assert row["actual_status"] == "running"
    assert row["end_date"] == pytest.approx(sim.clock.now().timestamp() + 600)
    sim.advance(600)
    row = _row(sim, instance_id, api_key)
    assert _states(row) == ("exited", "stopped", "stopped", "stopped")
    assert "Contract ended" in row["status_msg"]


def test_transitions_happen_at_their_own_time_even_when_observed_late() -> None:
    clock = ManualClock()
    with Simulator(clock=clock) as sim:
        instance_id = sim.create_instance(label="x", pull=60)
        clock.advance(3600)
        assert sim.instance(instance_id) is not None
        with sim.world() as world:
            history = world.instances[instance_id].history
        origin = history[0][0]
        assert [(at - origin, status) for at, status in history] == [
            (0.0, None),
            (SCHEDULE_S, "created"),
            (SCHEDULE_S + CREATE_S, "loading"),
            (SCHEDULE_S + CREATE_S + 60, "running"),
        ]
