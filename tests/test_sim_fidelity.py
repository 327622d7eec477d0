"""The simulator behaves as Vast documents it where the official CLI and SDK look: offer fields and filters,
ports, logs, templates, volumes, keys and account routes (over real HTTP, on a ManualClock)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from vastai.api.query import offers_fields


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
