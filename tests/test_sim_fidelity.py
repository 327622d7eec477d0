"""The simulator behaves as Vast documents it where the official CLI and SDK look: offer fields and filters,
ports, logs, templates, volumes, keys and account routes (over real HTTP, on a ManualClock)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from vastai.api.query import offers_fields

from vastevents.sim import Simulator


def _search(client: httpx.Client, query: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post("/api/v0/bundles/", json={"limit": 1000, **query})
    assert response.status_code == 200, response.text
    return list(response.json()["offers"])


def test_offers_carry_every_field_the_cli_filters_on_and_unknown_fields_are_refused(sim_client: httpx.Client) -> None:
    offers = _search(sim_client, {})
    assert offers and all(offers_fields <= set(offer) for offer in offers)
    assert all(o["dlperf_per_dphtotal"] == pytest.approx(o["dlperf"] / o["dph_total"], rel=1e-3) for o in offers)
    assert {o["gpu_arch"] for o in offers} == {"nvidia"} and all(o["pcie_bw"] > 0 for o in offers)
    fast = _search(sim_client, {"gpu_mem_bw": {"gte": 1000}, "cpu_arch": {"eq": "amd64"}})
    assert fast and {o["gpu_mem_bw"] >= 1000 for o in fast} == {True} and len(fast) < len(offers)
    refused = sim_client.post("/api/v0/bundles/", json={"gpu_colour": {"eq": "green"}, "num_gpus": {"eq": 1}})
    assert refused.status_code == 400 and "gpu_colour" in refused.json()["msg"]


def test_geolocation_filters_by_country_code_and_driver_version_by_number(sim_client: httpx.Client) -> None:
    offers = _search(sim_client, {})
    taiwan = _search(sim_client, {"geolocation": {"in": ["TW"]}})
    assert taiwan and {o["geolocation"] for o in taiwan} == {"Taipei, TW"}
    assert len(taiwan) == sum(o["geolocation"].endswith(", TW") for o in offers)
    elsewhere = _search(sim_client, {"geolocation": {"notin": ["TW", "SE"]}})
    assert len(elsewhere) == sum(not o["geolocation"].endswith((", TW", ", SE")) for o in offers)
    assert _search(sim_client, {"geolocation": {"eq": "Taipei, TW"}}) == taiwan
    assert len(_search(sim_client, {"driver_version": {"gte": 535086005}})) == len(offers)
    assert _search(sim_client, {"driver_version": {"gte": 560000000}}) == []


def _cheapest(client: httpx.Client) -> dict[str, Any]:
    return _search(client, {"num_gpus": {"eq": 1}, "order": [["dph_total", "asc"]]})[0]


def _rent(client: httpx.Client, **body: Any) -> int:
    answer = client.put(f"/api/v0/asks/{_cheapest(client)['id']}/", json={"image": "img", "disk": 10, **body})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["new_contract"])


def test_docker_options_expose_ports_and_set_variables(sim_client: httpx.Client) -> None:
    instance_id = _rent(sim_client, env="-e MSG='two words' -p 8888:8888 -p 7000:7000/udp -h ignored")
    row = sim_client.get(f"/api/v0/instances/{instance_id}/").json()["instances"]
    assert set(row["ports"]) == {"22/tcp", "8888/tcp", "7000/udp"}
    host_ports = [int(mapping[0]["HostPort"]) for mapping in row["ports"].values()]
    assert (
        len(set(host_ports)) == 3
        and row["direct_port_start"] <= min(host_ports) <= max(host_ports) <= row["direct_port_end"]
    )
    assert dict(row["extra_env"]) == {"MSG": "two words", "-p 8888:8888": "1", "-p 7000:7000/udp": "1"}
    bad = sim_client.put(f"/api/v0/asks/{_cheapest(sim_client)['id']}/", json={"image": "i", "env": "-e A='x"})
    assert bad.status_code == 400 and "quotes" in bad.json()["msg"]


def test_logs_honour_filter_and_tail(sim: Simulator, sim_client: httpx.Client) -> None:
    instance_id = _rent(sim_client)
    sim.advance(120)

    def logs(**body: Any) -> str:
        url = sim_client.put(f"/api/v0/instances/request_logs/{instance_id}/", json=body).json()["result_url"]
        return httpx.get(url).text

    everything = logs()
    assert "status loading" in everything and "status running" in everything
    assert logs(filter="running").splitlines() == [line for line in everything.splitlines() if "running" in line]
    assert logs(filter="status (created|loading)").count("\n") == 2
    assert logs(filter="[unclosed") == "", "not a regular expression: matched as plain text"
    assert logs(tail="1", daemon_logs="true") == everything.splitlines(keepends=True)[-1]


def _template(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"name": "t", "image": "python", "tag": "3.11", "env": "-e MODE=a -p 7000:7000", "onstart": "echo t",
            **fields}  # fmt: skip
    answer = client.post("/api/v0/template/", json=body)
    assert answer.status_code == 200, answer.text
    return dict(answer.json()["template"])


def test_a_template_gives_what_the_create_leaves_out_and_its_versions_keep_working(sim_client: httpx.Client) -> None:
    first = _template(sim_client)
    by_hash = _rent(sim_client, image=None, template_hash_id=first["hash_id"], env={"EXTRA": "1"})
    row = sim_client.get(f"/api/v0/instances/{by_hash}/").json()["instances"]
    assert (row["image_uuid"], row["onstart"], row["template_id"]) == ("python:3.11", "echo t", first["id"])
    assert dict(row["extra_env"]) == {"MODE": "a", "-p 7000:7000": "1", "EXTRA": "1"} and "7000/tcp" in row["ports"]
    own = _rent(sim_client, template_id=first["id"], image="custom:1", onstart="echo mine", env="-e MODE=b")
    row = sim_client.get(f"/api/v0/instances/{own}/").json()["instances"]
    assert (row["image_uuid"], row["onstart"], dict(row["extra_env"])["MODE"]) == ("custom:1", "echo mine", "b")

    edited = sim_client.put("/api/v1/template/", json={"id": first["id"], "hash_id": first["hash_id"],
                                                        "name": "t", "image": "python", "tag": "3.12"})  # fmt: skip
    second = edited.json()["template"]
    assert second["id"] == first["id"] and second["hash_id"] != first["hash_id"]
    listed = sim_client.get("/api/v0/template/", params={"select_filters": '{"name": {"eq": "t"}}'}).json()
    assert [t["hash_id"] for t in listed["templates"]] == [second["hash_id"]], "search shows the newest version"
    older = _rent(sim_client, image=None, template_hash_id=first["hash_id"])
    assert sim_client.get(f"/api/v0/instances/{older}/").json()["instances"]["image_uuid"] == "python:3.11"
    newer = _rent(sim_client, image=None, template_id=first["id"])
    assert sim_client.get(f"/api/v0/instances/{newer}/").json()["instances"]["image_uuid"] == "python:3.12"

    builtin = sim_client.get("/api/v0/template/", params={"select_filters": '{"private": {"eq": false}}'}).json()
    refused = sim_client.request("DELETE", "/api/v0/template/", json={"template_id": builtin["templates"][0]["id"]})
    assert refused.status_code == 403
    assert sim_client.request("DELETE", "/api/v0/template/", json={"template_id": first["id"]}).status_code == 200
    gone = sim_client.put(f"/api/v0/asks/{_cheapest(sim_client)['id']}/", json={"template_hash_id": second["hash_id"]})
    assert gone.status_code == 404 and gone.json()["error"] == "no_such_template"


def _volume_offer(client: httpx.Client, machine_id: int) -> dict[str, Any]:
    offers = client.post("/api/v0/volumes/search/", json={"machine_id": {"eq": machine_id}}).json()["offers"]
    assert len(offers) == 1
    return dict(offers[0])


def test_volumes_live_on_one_machine_outlive_instances_and_bill_their_size(
    sim: Simulator, sim_client: httpx.Client
) -> None:
    offer = _cheapest(sim_client)
    here = _volume_offer(sim_client, offer["machine_id"])
    elsewhere = next(o for o in _search(sim_client, {}) if o["machine_id"] != offer["machine_id"])
    info = {"create_new": True, "volume_id": here["id"], "size": 50, "mount_path": "/root/data", "name": "ckpt"}
    wrong = sim_client.put(f"/api/v0/asks/{elsewhere['id']}/", json={"image": "i", "volume_info": info})
    assert wrong.status_code == 400 and "machine" in wrong.json()["msg"]
    instance_id = _rent_offer(sim_client, offer["id"], volume_info=info)
    volume = sim_client.get("/api/v0/volumes/").json()["volumes"][0]
    assert (volume["label"], volume["disk_space"], volume["instances"]) == ("ckpt", 50, [instance_id])
    assert _volume_offer(sim_client, offer["machine_id"])["disk_space"] == here["disk_space"] - 50
    in_use = sim_client.delete("/api/v0/volumes/", params={"id": volume["id"]})
    assert in_use.status_code == 400 and in_use.json()["error"] == "volume_in_use"

    sim.advance(3600)
    sim_client.delete(f"/api/v0/instances/{instance_id}/")
    again = _cheapest(sim_client)
    assert again["machine_id"] == offer["machine_id"], "the GPU is free again on the same machine"
    link = {"create_new": False, "volume_id": volume["id"], "mount_path": "/workspace"}
    replacement = _rent_offer(sim_client, again["id"], volume_info=link)
    row = sim_client.get(f"/api/v0/instances/{replacement}/").json()["instances"]
    assert row["volume_info"][0]["id"] == volume["id"] and row["volume_info"][0]["mount_path"] == "/workspace"
    moved = sim_client.put(f"/api/v0/asks/{elsewhere['id']}/", json={"image": "i", "volume_info": link})
    assert moved.status_code == 400, "a local volume is used on its own machine only"

    sim.advance(3600)
    charged = sim_client.get("/api/v0/charges/", params={"select_filters": '{"type": {"in": ["volume"]}}'}).json()
    assert [item["source"] for item in charged["results"]] == [f"volume-{volume['id']}"]
    assert charged["results"][0]["amount"] == pytest.approx(here["storage_cost"] * 50 / 720 * 2)
    for bad in ({**link, "mount_path": "relative"}, {**link, "mount_path": "/a/../b"}, {**link, "mount_path": "/"}):
        refused = sim_client.put(
            f"/api/v0/asks/{_cheapest(sim_client)['id']}/", json={"image": "i", "volume_info": bad}
        )
        assert refused.status_code == 400 and "mount_path" in refused.json()["msg"]


def _rent_offer(client: httpx.Client, ask_id: int, **body: Any) -> int:
    answer = client.put(f"/api/v0/asks/{ask_id}/", json={"image": "img", "disk": 10, **body})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["new_contract"])


def test_a_prepaid_deposit_discounts_the_gpu_until_it_is_used_up(sim: Simulator, sim_client: httpx.Client) -> None:
    offer = _cheapest(sim_client)
    instance_id = _rent_offer(sim_client, offer["id"])
    sim.advance(70)  # running from now on
    rate = offer["dph_base"]
    terms = sim_client.put(f"/api/v0/instances/prepay/{instance_id}/", json={"amount": rate * 360}).json()
    assert terms["timescale"] == pytest.approx(0.5) and terms["discount_rate"] == pytest.approx(0.1)
    balance = sim_client.get("/api/v0/users/current/").json()["balance"]
    assert balance == pytest.approx(100 - rate * 360, abs=0.01), "the deposit left the balance"
    sim.advance(3600)
    left = sim_client.get(f"/api/v0/instances/balance/{instance_id}/").json()["deposit"]
    assert left == pytest.approx(rate * 360 - rate * 0.9, rel=1e-6), "an hour at 90% of the price"
    assert sim_client.get("/api/v0/users/current/").json()["balance"] == pytest.approx(balance, abs=0.01)
    sim.advance(400 * 3600)  # past the deposit: full price again
    assert sim_client.get(f"/api/v0/instances/balance/{instance_id}/").json()["deposit"] == 0
    bid = _rent_offer(sim_client, _cheapest(sim_client)["id"], price=5)
    assert sim_client.put(f"/api/v0/instances/prepay/{bid}/", json={"amount": 1}).status_code == 400
