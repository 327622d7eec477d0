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
