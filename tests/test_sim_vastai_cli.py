"""Compatibility proof: the official `vastai` CLI (1.9.1) works against the simulator with --url."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from vastevents.clock import ManualClock
from vastevents.sim import Simulator

pytestmark = pytest.mark.skipif(shutil.which("vastai") is None, reason="the official vastai CLI is not installed")

KEY = "vastai-cli-test-key"
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheSimulatorOnly0123456789abcdef cli@test"


def _vastai(sim: Simulator, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_STATE_HOME": str(home / ".state"),
        "XDG_DATA_HOME": str(home / ".data"),
        # 1.9.1 fetches GPU names from $VAST_URL at import time, whatever --url says: keep it on loopback.
        "VAST_URL": sim.url,
        "VAST_API_KEY": KEY,
        "VASTAI_NO_UPDATE_CHECK": "1",
        "CI": "1",
    }
    result = subprocess.run(
        ["vastai", *args, "--url", sim.url, "--api-key", KEY], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Failed with error" not in result.stderr, result.stderr
    return result


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


def test_official_cli_search_create_show_destroy_and_ssh_keys(tmp_path: Path) -> None:
    with Simulator(api_key=KEY, clock=ManualClock()) as sim:
        offers = _json(_vastai(sim, tmp_path, "search", "offers", "gpu_ram>=24 num_gpus=1", "--raw"))
        auth = {"Authorization": f"Bearer {KEY}"}
        everything = httpx.post(f"{sim.url}/api/v0/bundles/", json={"limit": 1000}, headers=auth)
        market = {o["id"]: o for o in everything.json()["offers"]}
        assert offers, "the generated market has single 24 GB+ GPUs"
        assert all(o["gpu_ram"] >= 24000 and o["num_gpus"] == 1 for o in offers)
        assert all(market[o["id"]] == o for o in offers)
        ask = offers[0]["id"]

        created = _json(_vastai(sim, tmp_path, "create", "instance", str(ask), "--image", "pytorch/pytorch",
                                "--disk", "64", "--ssh", "--label", "x", "--raw"))  # fmt: skip
        assert created["success"] is True
        instance_id = created["new_contract"]
        row = sim.instance(instance_id)
        assert row is not None
        assert (row["label"], row["image_uuid"], row["disk_space"]) == ("x", "pytorch/pytorch", 64.0)
        assert row["machine_id"] == offers[0]["machine_id"] and row["image_runtype"] == "ssh_proxy"

        listed = _json(_vastai(sim, tmp_path, "show", "instances", "--raw"))
        assert [r["id"] for r in listed] == [r["id"] for r in sim.state()["instances"]] == [instance_id]
        shown = _json(_vastai(sim, tmp_path, "show", "instance", str(instance_id), "--raw"))
        for name in ("id", "label", "actual_status", "intended_status", "machine_id", "ssh_port", "dph_total"):
            assert shown[name] == row[name] == listed[0][name]

        destroyed = _vastai(sim, tmp_path, "destroy", "instance", str(instance_id), "-y")
        assert f"destroying instance {instance_id}" in destroyed.stdout
        assert sim.instance_count() == 0
        assert _json(_vastai(sim, tmp_path, "show", "instance", str(instance_id), "--raw")) == {"instances": None}

        httpx.post(f"{sim.url}/api/v0/ssh/", json={"ssh_key": PUBKEY}, headers=auth)
        keys = _vastai(sim, tmp_path, "show", "ssh-keys")
        assert PUBKEY in keys.stdout
        assert [k["public_key"] for k in _json(_vastai(sim, tmp_path, "show", "ssh-keys", "--raw"))] == [PUBKEY]


def test_official_cli_shows_the_simulators_charges_and_invoices(tmp_path: Path) -> None:
    with Simulator(api_key=KEY, clock=ManualClock()) as sim:
        instance_id = sim.create_instance(label="vastevents:job-1", pull="30s")
        sim.advance(3600)
        window = ("--start-date", "2025-12-31", "--end-date", "2026-01-03")
        charges = _vastai(sim, tmp_path, "show", "invoices-v1", "-c", "--no-color", *window)
        assert "Instance" in charges.stdout and str(instance_id) in charges.stdout, charges.stdout
        invoices = _vastai(sim, tmp_path, "show", "invoices-v1", "-i", "--no-color", *window)
        assert "Transfer" in invoices.stdout and "$100.00" in invoices.stdout, invoices.stdout
        sim.vanish(instance_id)
        assert sim.instance_count() == 0


def test_at_speed_dates_and_charges_are_on_the_wall_clock_the_cli_reads(tmp_path: Path) -> None:
    """One simulated hour per wall second: the lifecycle runs that fast, yet no date lies ahead of the wall clock,
    the CLI's default charges window (the last 7 days) finds the charge, and it accrued per wall second."""
    with Simulator(api_key=KEY, speed=3600) as sim:
        auth = {"Authorization": f"Bearer {KEY}"}
        before = time.time()
        ask = httpx.post(f"{sim.url}/api/v0/bundles/", json={"order": [["dph_total", "asc"]]}, headers=auth)
        offer = ask.json()["offers"][0]
        created = httpx.put(f"{sim.url}/api/v0/asks/{offer['id']}/", json={"image": "x", "disk": 10}, headers=auth)
        instance_id = created.json()["new_contract"]
        deadline = time.monotonic() + 30
        while (sim.instance(instance_id) or {}).get("actual_status") != "running":
            assert time.monotonic() < deadline, "70 simulated seconds of loading take 20 wall milliseconds"
            time.sleep(0.01)
        rows = _json(_vastai(sim, tmp_path, "show", "instances", "--raw"))
        after = time.time()
        assert before <= rows[0]["start_date"] <= after, "the start date is on the wall clock, not hours ahead"
        assert rows[0]["duration"] >= 0, "so the CLI shows no negative age"
        charges = _vastai(sim, tmp_path, "show", "invoices-v1", "-c", "--no-color")
        assert str(instance_id) in charges.stdout, charges.stdout
        charged = httpx.get(f"{sim.url}/api/v0/charges/", headers=auth).json()["results"][0]["amount"]
        assert 0 < charged <= offer["dph_total"] * 1.001 * (time.time() - before) / 3600, "per wall second"
        sim.apply("destroy", instance=instance_id)
