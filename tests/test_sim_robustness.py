"""Bad input never crashes the simulator, and its state file survives a restart."""

from __future__ import annotations

import base64
import json
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from vastevents.clock import ManualClock
from vastevents.sim import Simulator, sshhost
from vastevents.sim.simulator import SimStateError


def test_unknown_routes_are_404_json(sim_client: httpx.Client) -> None:
    for method, path in [("GET", "/nope"), ("GET", "/api/v0/instances/abc/"), ("POST", "/api/v9/things/")]:
        response = sim_client.request(method, path)
        assert response.status_code == 404
        assert response.headers["Content-Type"] == "application/json"
        assert response.json()["success"] is False
    wrong_method = sim_client.request("PATCH", "/api/v0/ssh/")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "method_not_allowed"


def test_malformed_json_is_400_with_a_message(sim_client: httpx.Client) -> None:
    response = sim_client.post("/api/v0/bundles/", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json" and "Malformed JSON" in response.json()["msg"]
    ask = sim_client.post("/api/v0/bundles/", json={"limit": 1}).json()["offers"][0]["id"]
    not_object = sim_client.put(f"/api/v0/asks/{ask}/", json=[1, 2])
    assert not_object.status_code == 400 and "JSON object" in not_object.json()["msg"]


def test_bad_values_get_clear_errors_and_the_server_keeps_serving(sim: Simulator, sim_client: httpx.Client) -> None:
    ask = sim_client.post("/api/v0/bundles/", json={"num_gpus": {"eq": 1}, "limit": 1}).json()["offers"][0]["id"]
    cases = [
        sim_client.put("/api/v0/asks/999/", json={"image": "x"}),
        sim_client.put(f"/api/v0/asks/{ask}/", json={"disk": 10}),
        sim_client.put(f"/api/v0/asks/{ask}/", json={"image": "x", "disk": "big"}),
        sim_client.put(f"/api/v0/asks/{ask}/", json={"image": "x", "disk": -5}),
        sim_client.put(f"/api/v0/asks/{ask}/", json={"image": "x", "price": "cheap"}),
        sim_client.put(f"/api/v0/asks/{ask}/", json={"image": "x", "env": 5}),
        sim_client.post("/api/v0/bundles/", json={"num_gpus": {"between": 1}}),
        sim_client.post("/api/v0/bundles/", json={"type": "free"}),
        sim_client.get("/api/v1/instances/", params={"select_filters": "{oops"}),
        sim_client.get("/api/v1/instances/", params={"after_token": "!!!"}),
        sim_client.get("/api/v1/instances/", params={"limit": "many"}),
        sim_client.put("/api/v0/instances/12345/", json={"state": "running"}),
        sim_client.put("/api/v0/instances/reboot/12345/", json={}),
        sim_client.post("/_sim/advance", json={"seconds": "soon"}),
    ]
    errors = [(r.status_code, r.json()["error"]) for r in cases]
    assert errors == [
        (404, "no_such_ask"),
        (400, "invalid_args"),
        (400, "invalid_args"),
        (400, "invalid_args"),
        (400, "invalid_price"),
        (400, "invalid_args"),
        (400, "invalid_args"),
        (400, "invalid_args"),
        (400, "invalid_args"),
        (400, "invalid_args"),
        (400, "invalid_args"),
        (404, "no_such_instance"),
        (404, "no_such_instance"),
        (400, "invalid_args"),
    ]
    assert sim.instance_count() == 0, "no failed create left an instance behind"
    assert sim_client.get("/api/v0/users/current/").status_code == 200


def test_state_file_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "sim-state.json"
    clock = ManualClock()
    with Simulator(clock=clock, state=state) as first:
        kept = first.create_instance(label="vastevents:keep", pull=10)
        gone = first.create_instance(label="vastevents:gone", pull=10)
        clock.advance(60)
        with httpx.Client(base_url=first.url, headers={"Authorization": f"Bearer {first.api_key}"}) as sim_client:
            assert sim_client.delete(f"/api/v0/instances/{gone}/").status_code == 200
            sim_client.post("/api/v0/ssh/", json={"ssh_key": "ssh-ed25519 AAAAkey me@x"})
            template = sim_client.post("/api/v0/template/", json={"name": "kept", "image": "python"}).json()
            volume = sim_client.put("/api/v0/volumes/", json={"id": 90_000_000 + first.instance(kept)["machine_id"],
                                                              "size": 5}).json()  # fmt: skip
            sim_client.post("/api/v0/secrets/", json={"key": "TOKEN", "value": "t-123"})
            extra_key = sim_client.post("/api/v0/auth/apikeys/", json={"name": "ci"}).json()["key"]
            sim_client.put(f"/api/v0/instances/prepay/{kept}/", json={"amount": 1})
        before = first.state()
    assert state.exists()
    with Simulator(clock=clock, state=state) as second:
        after = second.state()
        assert after["instances"] == before["instances"]
        assert after["spend"] == before["spend"]
        assert second.instance(kept) is not None and second.instance(gone) is None
        new = second.create_instance(label="vastevents:new")
        assert new > max(kept, gone), "ids keep counting after a restart"
        with httpx.Client(base_url=second.url, headers={"Authorization": f"Bearer {second.api_key}"}) as sim_client:
            assert [k["public_key"] for k in sim_client.get("/api/v0/ssh/").json()] == ["ssh-ed25519 AAAAkey me@x"]
            search = sim_client.get("/api/v0/template/", params={"select_filters": '{"name": {"eq": "kept"}}'})
            assert [t["hash_id"] for t in search.json()["templates"]] == [template["template"]["hash_id"]]
            assert [v["id"] for v in sim_client.get("/api/v0/volumes/").json()["volumes"]] == [volume["volume_id"]]
            assert sim_client.get("/api/v0/secrets/").json()["secrets"] == {"TOKEN": "t-123"}
            assert sim_client.get(f"/api/v0/instances/balance/{kept}/").json()["prepaid"] == 1
        extra = httpx.get(f"{second.url}/api/v0/users/current/", headers={"Authorization": f"Bearer {extra_key}"})
        assert extra.status_code == 200, "a key made with create api-key still authenticates"
        assert extra_key not in state.read_text(), "the state file keeps its hash only"


def test_unreadable_state_file_is_a_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "broken.json"
    state.write_text("{")
    with pytest.raises(SimStateError, match=r"broken\.json"):
        Simulator(clock=ManualClock(), state=state)


def test_a_start_that_fails_leaves_nothing_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        simulator = Simulator(clock=ManualClock(), port=port, ssh=sshhost.find_sshd() is not None)
        with pytest.raises(OSError):
            simulator.start()
    assert not [t for t in threading.enumerate() if t.name == "vastevents-sim-http"]
    assert not list(tmp_path.glob(f"{sshhost.DIRECTORY_PREFIX}*")), "the ssh host directory is removed again"
    with simulator:
        assert httpx.get(f"{simulator.url}/api/v0/users/current/", params={"api_key": simulator.api_key}).is_success


def test_bad_parameters_are_clear_4xx_never_internal_errors(sim: Simulator, sim_client: httpx.Client) -> None:
    instance_id = sim.create_instance(label="vastevents:kept", pull=10)
    token = base64.urlsafe_b64encode(json.dumps({"after_id": "x"}).encode()).decode()
    requests: list[tuple[str, str, Any]] = [
        ("POST", "/_sim/create", {"disk": "big"}),
        ("POST", "/_sim/create", {"pull": "soon"}),
        ("POST", "/_sim/flap", {"instance": instance_id, "count": "x"}),
        ("POST", "/_sim/no_such_ask", {"count": None}),
        ("POST", "/_sim/offline", {"machine": "abc"}),
        ("POST", "/_sim/expire", {"instance": instance_id, "after": "x"}),
        ("POST", "/_sim/slow", {"delay": "x"}),
        ("POST", "/_sim/server_error", {"status": 99999}),
        ("POST", "/_sim/rate_limit", {"status": 200}),
        ("POST", "/api/v0/bundles/", {"order": [5]}),
        ("POST", "/api/v0/bundles/", {"order": "dph_total"}),
        ("GET", "/api/v1/instances/?order_by=[5]", None),
        ("GET", f"/api/v1/instances/?after_token={token}", None),
        ("PUT", f"/api/v0/instances/bid_price/{instance_id}/", {"price": "inf"}),
    ]
    for method, path, body in requests:
        response = sim_client.request(method, path, json=body) if body is not None else sim_client.request(method, path)
        assert response.status_code == 400, (path, body, response.text)
        assert response.json()["error"] in ("invalid_args", "invalid_price") and response.json()["msg"]
    assert sim_client.get("/api/v0/users/current/").status_code == 200, "no storm was started by a bad request"
    assert sim.instance(instance_id)["label"] == "vastevents:kept"  # type: ignore[index]
    assert sim.instance_count() == 1
