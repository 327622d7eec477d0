"""The simulator's Vast wire protocol, through real HTTP with httpx."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from vastevents.clock import ManualClock
from vastevents.sim import Simulator, server

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHn4m5x1c8fJ0bTqQ0nq6b2v0Vf3Vh6dQ2YQq8m3Y0xY test@sim"


def _search(sim_client: httpx.Client, query: dict[str, Any]) -> list[dict[str, Any]]:
    response = sim_client.post("/api/v0/bundles/", json=query)
    assert response.status_code == 200, response.text
    return list(response.json()["offers"])


def _cheapest_single(sim_client: httpx.Client) -> dict[str, Any]:
    return _search(sim_client, {"num_gpus": {"eq": 1}, "order": [["dph_total", "asc"]], "limit": 1})[0]


def _create(sim_client: httpx.Client, ask_id: int, **body: Any) -> httpx.Response:
    body = {"client_id": "me", "image": "pytorch/pytorch", "disk": 20, **body}
    return sim_client.put(f"/api/v0/asks/{ask_id}/", json=body)


def test_auth_accepts_bearer_or_query_key_and_answers_like_vast(sim: Simulator, api_key: str) -> None:
    url = f"{sim.url}/api/v0/users/current/"
    ok = httpx.get(url, headers={"Authorization": f"Bearer {api_key}"})
    assert ok.status_code == 200
    assert ok.headers["Content-Type"] == "application/json"
    assert ok.json()["credit"] == pytest.approx(100.0)
    assert "api_key" not in ok.json()
    assert httpx.get(url, params={"api_key": api_key}).status_code == 200
    missing = httpx.get(url)
    assert missing.status_code == 403
    assert missing.json() == {"success": False, "error": "auth_error", "msg": "This action requires login."}
    wrong = httpx.get(url, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "auth_error"


def test_search_filters_coerce_strings_and_order(sim_client: httpx.Client) -> None:
    everything = _search(sim_client, {"limit": 1000})
    assert len(everything) > 20
    offers = _search(sim_client, {"gpu_ram": {"gte": "24000"}, "num_gpus": {"eq": "1"}, "reliability": {"gt": "0.9"},
                              "verified": {"eq": "true"}, "order": [["dph_total", "asc"]], "limit": 5})  # fmt: skip
    assert 0 < len(offers) <= 5
    assert all(o["gpu_ram"] >= 24000 and o["num_gpus"] == 1 and o["reliability2"] > 0.9 for o in offers)
    assert [o["dph_total"] for o in offers] == sorted(o["dph_total"] for o in offers)
    names = {o["gpu_name"] for o in everything}
    picked = sorted(names)[:2]
    assert {o["gpu_name"] for o in _search(sim_client, {"gpu_name": {"in": picked}, "limit": 1000})} == set(picked)
    assert not {o["gpu_name"] for o in _search(sim_client, {"gpu_name": {"notin": picked}, "limit": 1000})} & set(
        picked
    )
    assert all(o["gpu_name"] != picked[0] for o in _search(sim_client, {"gpu_name": {"neq": picked[0]}, "limit": 1000}))
    assert all(o["num_gpus"] < 2 for o in _search(sim_client, {"num_gpus": {"lt": 2}, "limit": 1000}))
    assert all(o["num_gpus"] <= 2 for o in _search(sim_client, {"num_gpus": {"lte": "2"}, "limit": 1000}))
    descending = _search(sim_client, {"order": [["dph_total", "desc"]], "limit": 1000})
    assert [o["dph_total"] for o in descending] == sorted((o["dph_total"] for o in descending), reverse=True)


def test_search_bid_type_prices_at_min_bid_and_legacy_get_works(sim_client: httpx.Client) -> None:
    on_demand = {o["id"]: o for o in _search(sim_client, {"limit": 1000})}
    bids = _search(sim_client, {"type": "bid", "limit": 1000})
    assert bids and all(o["dph_base"] == pytest.approx(o["min_bid"]) for o in bids)
    assert all(o["dph_base"] < on_demand[o["id"]]["dph_base"] for o in bids)
    legacy = sim_client.get("/api/v0/bundles/", params={"q": json.dumps({"num_gpus": {"eq": 1}, "limit": 3})})
    assert legacy.status_code == 200
    assert len(legacy.json()["offers"]) == 3


def test_create_on_demand_and_bid_then_show_list_destroy(sim: Simulator, sim_client: httpx.Client) -> None:
    offer = _cheapest_single(sim_client)
    created = _create(sim_client, offer["id"], label="vastevents:job-1", onstart="echo hi", env={"A": "1", "B": "x y"})
    assert created.json() == {"success": True, "new_contract": created.json()["new_contract"]}
    instance_id = created.json()["new_contract"]
    assert offer["id"] not in {o["id"] for o in _search(sim_client, {"limit": 1000})}, "renting removes the offer"
    again = _create(sim_client, offer["id"])
    assert again.status_code == 404 and again.json()["error"] == "no_such_ask"

    bid_offer = _search(sim_client, {"type": "bid", "num_gpus": {"eq": 1}, "order": [["dph_total", "asc"]]})[0]
    bid = _create(sim_client, bid_offer["id"], price=bid_offer["min_bid"] * 1.5, label="vastevents:bid")
    bid_id = bid.json()["new_contract"]

    row = sim_client.get(f"/api/v0/instances/{instance_id}/", params={"owner": "me"}).json()["instances"]
    assert row["label"] == "vastevents:job-1" and row["machine_id"] == offer["machine_id"]
    assert row["image_uuid"] == "pytorch/pytorch" and row["onstart"] == "echo hi" and row["disk_space"] == 20
    assert row["extra_env"] == [["A", "1"], ["B", "x y"]]
    assert isinstance(row["start_date"], float) and isinstance(row["ssh_port"], int) and row["ssh_host"]
    assert row["is_bid"] is False
    bid_row = sim_client.get(f"/api/v0/instances/{bid_id}/").json()["instances"]
    assert bid_row["is_bid"] is True and bid_row["dph_base"] == pytest.approx(bid_offer["min_bid"] * 1.5)

    listed = sim_client.get("/api/v1/instances/", params={"limit": 25}).json()
    assert listed["total_instances"] == 2 and listed["next_token"] is None
    assert [r["id"] for r in listed["instances"]] == [instance_id, bid_id]

    assert sim_client.delete(f"/api/v0/instances/{instance_id}/").json() == {"success": True}
    assert sim_client.get(f"/api/v0/instances/{instance_id}/").json() == {"instances": None}
    gone = sim_client.delete(f"/api/v0/instances/{instance_id}/")
    assert gone.status_code == 404 and gone.json()["error"] == "no_such_instance"
    sim_client.delete(f"/api/v0/instances/{bid_id}/")
    assert sim.instance_count() == 0


def test_low_bid_fails_yet_leaves_a_stopped_instance(sim: Simulator, sim_client: httpx.Client) -> None:
    offer = _search(sim_client, {"type": "bid", "num_gpus": {"eq": 1}, "limit": 1})[0]
    response = _create(sim_client, offer["id"], price=offer["min_bid"] / 10, label="vastevents:cheap")
    body = response.json()
    assert body["success"] is False and body["error"] == "bid_too_low"
    row = sim_client.get(f"/api/v0/instances/{body['new_contract']}/").json()["instances"]
    assert (row["actual_status"], row["intended_status"], row["label"]) == ("stopped", "stopped", "vastevents:cheap")
    invalid = _create(sim_client, _cheapest_single(sim_client)["id"], price="lots")
    assert invalid.status_code == 400 and invalid.json()["error"] == "invalid_price"
    assert _create(sim_client, _cheapest_single(sim_client)["id"], price=-1).json()["error"] == "invalid_price"
    assert sim.instance_count() == 1, "only the low bid left an instance"
    assert sim_client.delete(f"/api/v0/instances/{body['new_contract']}/").json() == {"success": True}
    assert sim.instance_count() == 0


def test_label_bid_price_logs_and_ssh_keys(sim: Simulator, sim_client: httpx.Client) -> None:
    instance_id = sim.create_instance(label="old", bid=True, pull=10)
    assert sim_client.put(f"/api/v0/instances/{instance_id}/", json={"label": "new"}).json() == {"success": True}
    rebid = sim_client.put(f"/api/v0/instances/bid_price/{instance_id}/", json={"client_id": "me", "price": 0.77})
    assert rebid.status_code == 200
    row = sim_client.get(f"/api/v0/instances/{instance_id}/").json()["instances"]
    assert row["label"] == "new" and row["dph_base"] == pytest.approx(0.77)
    bad = sim_client.put(f"/api/v0/instances/bid_price/{instance_id}/", json={"price": "x"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_price"

    sim.advance(60)
    logs = sim_client.put(f"/api/v0/instances/request_logs/{instance_id}/", json={"tail": "50"}).json()
    text = httpx.get(logs["result_url"])
    assert text.status_code == 200 and "status running" in text.text

    assert sim_client.get("/api/v0/ssh/").json() == []
    added = sim_client.post("/api/v0/ssh/", json={"ssh_key": PUBKEY}).json()
    assert added["success"] is True and added["public_key"] == PUBKEY
    assert [k["public_key"] for k in sim_client.get("/api/v0/ssh/").json()] == [PUBKEY]
    assert sim_client.post(f"/api/v0/instances/{instance_id}/ssh/", json={"ssh_key": PUBKEY}).json()["success"] is True
    assert sim_client.post("/api/v0/ssh/", json={"ssh_key": "not a key"}).status_code == 400
    for bad in ("not a key", None):
        refused = sim_client.post(f"/api/v0/instances/{instance_id}/ssh/", json={"ssh_key": bad})
        assert refused.status_code == 400 and "OpenSSH public key" in refused.json()["msg"]


def test_charges_bill_gpu_while_running_and_storage_while_stopped(sim: Simulator, sim_client: httpx.Client) -> None:
    instance_id = sim.create_instance(label="bill", disk=72.0, pull=50)
    sim.advance(60)  # running from t=60
    sim.advance(3600)
    sim_client.put(f"/api/v0/instances/{instance_id}/", json={"state": "stopped"})
    sim.advance(7200)
    row = sim_client.get(f"/api/v0/instances/{instance_id}/").json()["instances"]
    storage_per_hour = row["storage_cost"] * 72.0 / 720.0
    charges = sim_client.get("/api/v0/charges/").json()["results"]
    (item,) = [c for c in charges if c["source"] == f"instance-{instance_id}"]
    parts = {part["type"]: part["amount"] for part in item["items"]}
    assert parts["gpu"] == pytest.approx(row["dph_base"] * 1.0)
    assert parts["storage"] == pytest.approx(storage_per_hour * (60 + 3600 + 7200) / 3600)
    assert item["amount"] == pytest.approx(parts["gpu"] + parts["storage"])
    assert sim_client.get("/api/v0/users/current/").json()["credit"] == pytest.approx(100.0 - item["amount"])
    invoices = sim_client.get("/api/v1/invoices/").json()
    assert invoices["results"][0]["amount"] == 100.0


def test_state_spend_names_each_instance_s_machine_ended_ones_too(sim: Simulator, sim_client: httpx.Client) -> None:
    offer = _cheapest_single(sim_client)
    instance_id = _create(sim_client, offer["id"], label="where").json()["new_contract"]
    sim.advance(600)
    sim_client.delete(f"/api/v0/instances/{instance_id}/")
    (row,) = [r for r in sim.state()["spend"]["instances"] if r["id"] == instance_id]
    assert (row["machine_id"], row["ended"]) == (offer["machine_id"], True)
    assert row["gpu_usd"] > 0


def test_charges_keep_to_the_requested_days(sim: Simulator, sim_client: httpx.Client) -> None:
    early = sim.create_instance(label="early")
    sim.advance(3600)
    sim_client.delete(f"/api/v0/instances/{early}/")
    sim.advance(86400)
    late = sim.create_instance(label="late")
    sim.advance(3600)
    now = sim.clock.now().timestamp()

    def charged(window: dict[str, Any]) -> list[str]:
        params = {"select_filters": json.dumps({"day": window})}
        return [
            c["description"].split()[0] for c in sim_client.get("/api/v0/charges/", params=params).json()["results"]
        ]

    assert charged({"gte": now - 7200, "lte": now}) == ["late"]
    assert charged({"gte": now - 3 * 86400, "lte": now - 86400}) == ["early"]
    assert charged({}) == ["early", "late"]
    bad = sim_client.get("/api/v0/charges/", params={"select_filters": json.dumps({"day": {"gte": "yesterday"}})})
    assert bad.status_code == 400 and "select_filters.day.gte" in bad.json()["msg"]
    sim_client.delete(f"/api/v0/instances/{late}/")
    assert sim.instance_count() == 0


def test_log_texts_are_kept_for_the_newest_result_urls_only(
    sim: Simulator, sim_client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "_KEPT_LOGS", 2)
    instance_id = sim.create_instance(label="logs")
    urls = [
        sim_client.put(f"/api/v0/instances/request_logs/{instance_id}/", json={"tail": "5"}).json()["result_url"]
        for _ in range(3)
    ]
    assert [httpx.get(url).status_code for url in urls] == [404, 200, 200]


def test_a_thousand_instances_list_in_forty_pages() -> None:
    with Simulator(clock=ManualClock(), hosts=400) as sim:
        ids = [sim.create_instance(label=f"vastevents:job-{n}") for n in range(1000)]
        pages = 0
        seen: list[int] = []
        params: dict[str, Any] = {"select_filters": "{}", "order_by": json.dumps([{"col": "id", "dir": "asc"}]),
                                  "limit": 25}  # fmt: skip
        with httpx.Client(base_url=sim.url, headers={"Authorization": f"Bearer {sim.api_key}"}) as sim_client:
            while True:
                page = sim_client.get("/api/v1/instances/", params=params).json()
                pages += 1
                assert page["total_instances"] == 1000 and len(page["instances"]) == page["instances_found"] <= 25
                seen += [row["id"] for row in page["instances"]]
                if not page["next_token"]:
                    break
                params["after_token"] = page["next_token"]
        assert pages == 40
        assert seen == ids


def test_rate_limit_answers_429_with_retry_after(sim_client: httpx.Client) -> None:
    statuses = [sim_client.post("/api/v0/bundles/", json={"limit": 1}) for _ in range(11)]
    assert [r.status_code for r in statuses[:10]] == [200] * 10
    limited = statuses[10]
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert "too frequent" in limited.json()["detail"]
    assert sim_client.get("/api/v1/instances/").status_code == 200, "limits are per endpoint"


def test_rate_limits_refill_on_the_simulators_clock(sim: Simulator, sim_client: httpx.Client) -> None:
    """On a ManualClock whether a request is limited depends on simulated time only, never on the machine's speed."""
    for _ in range(10):
        assert sim_client.post("/api/v0/bundles/", json={"limit": 1}).status_code == 200
    limited = sim_client.post("/api/v0/bundles/", json={"limit": 1})
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "6", "search refills 10 a minute"
    sim.advance(5)
    assert sim_client.post("/api/v0/bundles/", json={"limit": 1}).status_code == 429, "5 s: not yet"
    sim.advance(2)
    assert sim_client.post("/api/v0/bundles/", json={"limit": 1}).status_code == 200


def test_select_filters_and_legacy_list(sim: Simulator, sim_client: httpx.Client) -> None:
    sim.create_instance(label="a")
    b = sim.create_instance(label="b")
    listed = sim_client.get(
        "/api/v1/instances/", params={"select_filters": json.dumps({"label": {"in": ["b"]}})}
    ).json()
    assert [r["id"] for r in listed["instances"]] == [b]
    assert sim_client.get("/api/v0/instances/").status_code == 410


def test_filtered_and_ordered_list_pages_by_offset_through_every_match(
    sim: Simulator, sim_client: httpx.Client
) -> None:
    made = {n: sim.create_instance(label=f"{'keep' if n % 3 else 'drop'}-{n:02d}") for n in range(40)}
    kept = {made[n]: f"keep-{n:02d}" for n in range(40) if n % 3}
    params: dict[str, Any] = {"select_filters": json.dumps({"label": {"in": sorted(kept.values())}}),
                              "order_by": json.dumps([{"col": "label", "dir": "desc"}])}  # fmt: skip
    seen: list[int] = []
    while True:
        page = sim_client.get("/api/v1/instances/", params=params).json()
        assert page["total_instances"] == len(kept) and page["instances_found"] == len(page["instances"]) <= 25
        assert page["label_counts"] == {label: 1 for label in kept.values()}
        seen += [row["id"] for row in page["instances"]]
        if not page["next_token"]:
            break
        params["after_token"] = page["next_token"]
    assert len(kept) == 26
    assert seen == sorted(kept, key=lambda i: kept[i], reverse=True)
