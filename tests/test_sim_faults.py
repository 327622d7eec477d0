"""Every fault the simulator injects, through its admin HTTP API (`/_sim/<action>`) and seen on the wire."""

from __future__ import annotations

import time
from typing import Any

import httpx

from vastevents.sim import Simulator
from vastevents.sim.faults import DISK_FULL_MSG, GPU_BROKEN_MSG, OCI_PULL_ERROR


def _admin(sim_client: httpx.Client, action: str, **body: Any) -> dict[str, Any]:
    response = sim_client.post(f"/_sim/{action}", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _row(sim_client: httpx.Client, instance_id: int) -> Any:
    return sim_client.get(f"/api/v0/instances/{instance_id}/").json()["instances"]


def _states(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["actual_status"], row["intended_status"], row["cur_state"], row["next_state"])


def _running(sim: Simulator, sim_client: httpx.Client, **create: Any) -> int:
    body = {"label": "vastevents:job", "pull": 10, **create}
    instance_id = int(_admin(sim_client, "create", **body)["new_contract"])
    sim.advance(30)
    assert _row(sim_client, instance_id)["actual_status"] == "running"
    return instance_id


def test_admin_api_needs_the_key(sim: Simulator) -> None:
    assert httpx.get(f"{sim.url}/_sim/state").status_code == 403
    assert httpx.post(f"{sim.url}/_sim/preempt", json={"instance": 1}).status_code == 403


def test_outbid_bid_instance_has_all_three_states_stopped(sim: Simulator, sim_client: httpx.Client) -> None:
    instance_id = _running(sim, sim_client, bid=True)
    _admin(sim_client, "outbid", instance=instance_id)
    row = _row(sim_client, instance_id)
    assert _states(row) == ("exited", "stopped", "stopped", "stopped")
    assert "outbid" in row["status_msg"]


def test_preempted_on_demand_instance_still_intends_running(sim: Simulator, sim_client: httpx.Client) -> None:
    instance_id = _running(sim, sim_client)
    _admin(sim_client, "preempt", instance="vastevents:job")
    assert _states(_row(sim_client, instance_id))[:2] == ("exited", "running")


def test_host_offline_then_back_and_offers_hidden_meanwhile(sim: Simulator, sim_client: httpx.Client) -> None:
    instance_id = _running(sim, sim_client)
    machine_id = _row(sim_client, instance_id)["machine_id"]
    _admin(sim_client, "offline", instance=instance_id)
    assert _row(sim_client, instance_id)["actual_status"] == "offline"
    offers = sim_client.post("/api/v0/bundles/", json={"limit": 1000}).json()["offers"]
    assert machine_id not in {o["machine_id"] for o in offers}
    _admin(sim_client, "online", machine=machine_id)
    assert _states(_row(sim_client, instance_id)) == ("running", "running", "running", "running")


def test_flap_goes_offline_and_comes_back_after_its_duration(sim: Simulator, sim_client: httpx.Client) -> None:
    instance_id = _running(sim, sim_client)
    _admin(sim_client, "flap", instance=instance_id, duration="45s", count=2)
    seen = []
    for _ in range(4):
        seen.append(_row(sim_client, instance_id)["actual_status"])
        sim.advance(45)
    assert seen == ["offline", "running", "offline", "running"]


def test_a_flapping_host_comes_back_though_the_instance_it_was_aimed_at_was_destroyed(
    sim: Simulator, sim_client: httpx.Client
) -> None:
    """A host's return is the machine's: it stayed offline for ever once the flap's instance was destroyed (the
    other instances on it with it), as no rented instance named it any more."""
    instance_id = _running(sim, sim_client)
    machine_id = _row(sim_client, instance_id)["machine_id"]
    _admin(sim_client, "flap", instance=instance_id, duration="45s")
    _admin(sim_client, "destroy", instance=instance_id)  # replaced while its host was away
    sim.advance(45)
    (machine,) = [m for m in sim.state()["machines"] if m["machine_id"] == machine_id]
    assert machine["offline"] is False


def test_offline_while_loading_resumes_the_pull_when_back(sim: Simulator, sim_client: httpx.Client) -> None:
    instance_id = int(_admin(sim_client, "create", label="x", pull=100)["new_contract"])
    sim.advance(60)  # loading since t=10, 50 s of pull left
    sim.set_offline(instance_id)
    sim.advance(600)
    assert _row(sim_client, instance_id)["actual_status"] == "offline"
    sim.set_online(instance_id)
    sim.advance(49)
    assert _row(sim_client, instance_id)["actual_status"] == "loading"
    sim.advance(1)
    assert _row(sim_client, instance_id)["actual_status"] == "running"


def test_stuck_loading_with_an_image_pull_error_never_recovers(sim: Simulator, sim_client: httpx.Client) -> None:
    instance_id = int(_admin(sim_client, "create", label="x", pull=60)["new_contract"])
    sim.advance(20)
    _admin(sim_client, "stuck_loading", instance=instance_id)
    sim.advance(86400)
    row = _row(sim_client, instance_id)
    assert row["actual_status"] == "loading"
    assert row["status_msg"] == OCI_PULL_ERROR and "OCI runtime create failed" in row["status_msg"]


def test_no_such_ask_race_on_create(sim: Simulator, sim_client: httpx.Client) -> None:
    ask = sim_client.post("/api/v0/bundles/", json={"num_gpus": {"eq": 1}, "limit": 1}).json()["offers"][0]
    _admin(sim_client, "no_such_ask")
    response = sim_client.put(f"/api/v0/asks/{ask['id']}/", json={"image": "x", "disk": 10})
    assert response.status_code == 404 and response.json()["error"] == "no_such_ask"
    offers = sim_client.post("/api/v0/bundles/", json={"limit": 1000}).json()["offers"]
    assert ask["id"] not in {o["id"] for o in offers}, "the offer was rented by someone else"
    assert sim.instance_count() == 0


def test_create_that_errors_yet_leaves_an_instance(sim: Simulator, sim_client: httpx.Client) -> None:
    ask = sim_client.post("/api/v0/bundles/", json={"num_gpus": {"eq": 1}, "limit": 1}).json()["offers"][0]
    _admin(sim_client, "create_error")
    response = sim_client.put(
        f"/api/v0/asks/{ask['id']}/", json={"image": "x", "disk": 10, "label": "vastevents:ghost"}
    )
    assert response.status_code == 500 and response.json()["success"] is False
    listed = sim_client.get("/api/v1/instances/").json()["instances"]
    assert [r["label"] for r in listed] == ["vastevents:ghost"]
    assert sim_client.delete(f"/api/v0/instances/{listed[0]['id']}/").json() == {"success": True}
    assert sim.instance_count() == 0, "reconciled by label and destroyed"


def test_rate_limit_storm_then_server_error_storm(sim: Simulator, sim_client: httpx.Client) -> None:
    _admin(sim_client, "rate_limit", duration="60s")
    limited = sim_client.get("/api/v1/instances/")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) == 60
    sim.advance(61)
    assert sim_client.get("/api/v1/instances/").status_code == 200
    _admin(sim_client, "server_error", duration="30s", status=502)
    assert sim_client.get("/api/v0/users/current/").status_code == 502
    assert sim_client.get("/_sim/state").status_code == 200, "the admin API is never stormed"
    sim.advance(30)
    assert sim_client.get("/api/v0/users/current/").status_code == 200


def test_gpu_broken_and_disk_full_show_on_the_row(sim: Simulator, sim_client: httpx.Client) -> None:
    gpu = _running(sim, sim_client, label="gpu")
    disk = _running(sim, sim_client, label="disk")
    _admin(sim_client, "gpu_broken", instance="gpu")
    _admin(sim_client, "disk_full", instance="disk")
    broken = _row(sim_client, gpu)
    assert broken["status_msg"] == GPU_BROKEN_MSG and broken["gpu_util"] == 0.0
    full = _row(sim_client, disk)
    assert full["status_msg"] == DISK_FULL_MSG and full["disk_util"] == 100.0


def test_vanish_removes_the_instance_without_a_destroy(sim: Simulator, sim_client: httpx.Client) -> None:
    keep = _running(sim, sim_client, label="keep")
    gone = _running(sim, sim_client, label="gone")
    _admin(sim_client, "vanish", instance=gone)
    assert [r["id"] for r in sim_client.get("/api/v1/instances/").json()["instances"]] == [keep]
    assert sim_client.get(f"/api/v0/instances/{gone}/").json() == {"instances": None}


def test_slow_responses_are_delayed(sim: Simulator, sim_client: httpx.Client) -> None:
    _admin(sim_client, "slow", duration="10s", delay=0.3)
    started = time.monotonic()
    assert sim_client.get("/api/v1/instances/").status_code == 200
    assert time.monotonic() - started >= 0.3
    sim.advance(10)
    assert sim_client.get("/api/v1/instances/").status_code == 200


def test_unknown_action_and_unknown_instance_are_clear_errors(sim_client: httpx.Client) -> None:
    unknown = sim_client.post("/_sim/explode", json={})
    assert unknown.status_code == 404 and "Unknown action" in unknown.json()["msg"]
    missing = sim_client.post("/_sim/preempt", json={"instance": "nobody"})
    assert missing.status_code == 404 and missing.json()["error"] == "no_such_instance"


def test_state_view_shows_hosts_instances_spend(sim: Simulator, sim_client: httpx.Client) -> None:
    instance_id = _running(sim, sim_client, label="seen")
    state = sim_client.get("/_sim/state").json()
    assert [i["id"] for i in state["instances"]] == [instance_id]
    assert any(m["free_gpus"] < m["num_gpus"] for m in state["machines"])
    assert state["spend"]["total_usd"] > 0
    assert state == sim.state()


def test_python_admin_helpers_mirror_the_http_actions(sim: Simulator, sim_client: httpx.Client) -> None:
    stuck = int(_admin(sim_client, "create", label="vastevents:stuck", pull=60)["new_contract"])
    sim.advance(20)
    sim.stick_loading("stuck", "pull access denied for ghcr.io/x/y")
    running = _running(sim, sim_client, label="vastevents:flappy")
    machine_id = _row(sim_client, running)["machine_id"]
    sim.set_offline(machine_id=machine_id)
    assert _row(sim_client, running)["actual_status"] == "offline"
    sim.set_online(machine_id=machine_id)
    sim.advance(3600)
    assert (_row(sim_client, stuck)["actual_status"], _row(sim_client, stuck)["status_msg"]) == (
        "loading",
        "pull access denied for ghcr.io/x/y",
    )
    assert _row(sim_client, running)["actual_status"] == "running"
    sim.vanish(stuck)
    sim.preempt(running)
    assert sim.instance(stuck) is None and sim.instance(running)["actual_status"] == "exited"  # type: ignore[index]


def test_raw_status_reports_a_status_vast_may_invent(sim: Simulator, sim_client: httpx.Client) -> None:
    instance_id = _running(sim, sim_client)
    _admin(sim_client, "raw_status", instance=instance_id, status="Migrating-To-Mars")
    assert _row(sim_client, instance_id)["actual_status"] == "Migrating-To-Mars"
    listed = sim_client.get("/api/v1/instances/").json()["instances"]
    assert [row["actual_status"] for row in listed] == ["Migrating-To-Mars"]
    missing = sim_client.post("/_sim/raw_status", json={"instance": instance_id})
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_args"
