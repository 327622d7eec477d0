"""Compatibility proof: every renter command of the official `vastai` CLI (1.9.1) works against the simulator.

Renter commands: those of the CLI's Search, Instances, Auth & keys, Billing & account and Storage volumes groups
that act on the user's own offers, instances, SSH and API keys, env-vars, templates, volumes and bills. The rest
is out of the simulator's scope (docs/simulator.md says so): host and machine commands, teams, serverless,
clusters, 2FA, subaccounts and credit transfers, scheduled jobs, snapshots, benchmarks, network volumes, backups
and Vast's copy services (copy, cloud copy), reset api-key and set user. `execute` is driven through the SDK
(tests/test_sim_vastai_sdk.py): the 1.9.1 CLI crashes on its success answer whatever the server says.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from vastai_session import Line, VastaiSession, requests_served

from vastevents.clock import ManualClock
from vastevents.sim import Simulator

KEY = "vastai-cli-test-key"
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheSimulatorOnly0123456789abcdef cli@test"
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAnotherFakeKeyForTheSimulator0123456789abcdef other@test"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """On a manual clock that starts at the wall clock's now: the CLI's default date windows see its dates."""
    with Simulator(api_key=KEY, clock=ManualClock(datetime.now(UTC))) as simulator:
        yield simulator


@pytest.fixture
def cli(sim: Simulator, tmp_path: Path) -> Iterator[VastaiSession]:
    with VastaiSession(sim.url, KEY, tmp_path) as session:
        yield session


def ok(line: Line) -> Line:
    """The command answered without an HTTP error or a crash of the CLI."""
    assert "Failed with error" not in line.stdout + line.stderr, line
    assert "Error:" not in line.stderr and "Exception" not in line.stderr, line
    return line


def test_official_cli_search_create_show_destroy_and_ssh_keys(sim: Simulator, cli: VastaiSession) -> None:
    offers = ok(cli("search", "offers", "gpu_ram>=24 num_gpus=1", "--raw")).json()
    auth = {"Authorization": f"Bearer {KEY}"}
    everything = httpx.post(f"{sim.url}/api/v0/bundles/", json={"limit": 1000}, headers=auth)
    market = {o["id"]: o for o in everything.json()["offers"]}
    assert offers, "the generated market has single 24 GB+ GPUs"
    assert all(o["gpu_ram"] >= 24000 and o["num_gpus"] == 1 for o in offers)
    assert all(market[o["id"]] == o for o in offers)
    ask = offers[0]["id"]

    created = ok(cli("create", "instance", str(ask), "--image", "pytorch/pytorch", "--disk", "64", "--ssh",
                     "--label", "x", "--raw")).json()  # fmt: skip
    assert created["success"] is True
    instance_id = created["new_contract"]
    row = sim.instance(instance_id)
    assert row is not None
    assert (row["label"], row["image_uuid"], row["disk_space"]) == ("x", "pytorch/pytorch", 64.0)
    assert row["machine_id"] == offers[0]["machine_id"] and row["image_runtype"] == "ssh_proxy"

    listed = ok(cli("show", "instances", "--raw")).json()
    assert [r["id"] for r in listed] == [r["id"] for r in sim.state()["instances"]] == [instance_id]
    shown = ok(cli("show", "instance", str(instance_id), "--raw")).json()
    for name in ("id", "label", "actual_status", "intended_status", "machine_id", "ssh_port", "dph_total"):
        assert shown[name] == row[name] == listed[0][name]

    destroyed = ok(cli("destroy", "instance", str(instance_id), "-y"))
    assert f"destroying instance {instance_id}" in destroyed.stdout
    assert sim.instance_count() == 0
    assert ok(cli("show", "instance", str(instance_id), "--raw")).json() == {"instances": None}

    httpx.post(f"{sim.url}/api/v0/ssh/", json={"ssh_key": PUBKEY}, headers=auth)
    assert PUBKEY in ok(cli("show", "ssh-keys")).stdout
    assert [k["public_key"] for k in ok(cli("show", "ssh-keys", "--raw")).json()] == [PUBKEY]


def test_official_cli_shows_the_simulators_charges_and_invoices(tmp_path: Path) -> None:
    with Simulator(api_key=KEY, clock=ManualClock()) as sim, VastaiSession(sim.url, KEY, tmp_path) as cli:
        instance_id = sim.create_instance(label="vastevents:job-1", pull="30s")
        sim.advance(3600)
        window = ("--start-date", "2025-12-31", "--end-date", "2026-01-03")
        charges = ok(cli("show", "invoices-v1", "-c", "--no-color", *window))
        assert "Instance" in charges.stdout and str(instance_id) in charges.stdout, charges.stdout
        invoices = ok(cli("show", "invoices-v1", "-i", "--no-color", *window))
        assert "Transfer" in invoices.stdout and "$100.00" in invoices.stdout, invoices.stdout
        sim.vanish(instance_id)
        assert sim.instance_count() == 0


def test_at_speed_dates_and_charges_are_on_the_wall_clock_the_cli_reads(tmp_path: Path) -> None:
    """One simulated hour per wall second: the lifecycle runs that fast, yet no date lies ahead of the wall clock,
    the CLI's default charges window (the last 7 days) finds the charge, and it accrued per wall second."""
    with Simulator(api_key=KEY, speed=3600) as sim, VastaiSession(sim.url, KEY, tmp_path) as cli:
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
        rows = ok(cli("show", "instances", "--raw")).json()
        after = time.time()
        assert before <= rows[0]["start_date"] <= after, "the start date is on the wall clock, not hours ahead"
        assert rows[0]["duration"] >= 0, "so the CLI shows no negative age"
        # The CLI's window ends at the current whole second: a charge that began less than a second ago (within
        # the same second) is rightly outside it, on Vast as here. Ask once the start's second has passed.
        while time.time() < math.ceil(rows[0]["start_date"]):
            time.sleep(0.01)
        charges = ok(cli("show", "invoices-v1", "-c", "--no-color"))
        assert str(instance_id) in charges.stdout, charges.stdout
        charged = httpx.get(f"{sim.url}/api/v0/charges/", headers=auth).json()["results"][0]["amount"]
        assert 0 < charged <= offer["dph_total"] * 1.001 * (time.time() - before) / 3600, "per wall second"
        sim.apply("destroy", instance=instance_id)


def test_every_renter_command_of_the_official_cli(sim: Simulator, cli: VastaiSession, tmp_path: Path) -> None:
    """A tour of the renter commands (see the module's docstring); no request meets a 404 or a 405."""
    with requests_served() as served:
        # Search: offers by country code and the documented fields, templates, volumes, invoices.
        offers = ok(cli("search", "offers", "num_gpus=1 geolocation in [TW,SE] pcie_bw>1", "-o", "dph", "--raw")).json()
        assert offers and {o["geolocation"][-2:] for o in offers} <= {"TW", "SE"}
        table = ok(cli("search", "offers", "num_gpus=1 cpu_arch=amd64", "--limit", "3")).stdout
        assert "PCIE" in table and "DLP/$" in table and table.count("verified") == 3
        public = json.loads(ok(cli("search", "templates", "private=False")).stdout)
        assert "PyTorch (Vast)" in {t["name"] for t in public}
        volume_offers = ok(cli("search", "volumes", "disk_space>100", "--raw")).json()
        assert volume_offers and all(v["disk_space"] > 100 for v in volume_offers)
        assert json.loads(ok(cli("search", "invoices", "amount_cents>=10000")).stdout)[0]["service"] == "transfer"

        # Templates: create, update (a new version), rent from it, delete.
        ok(cli("create", "template", "--name", "mine", "--image", "python", "--image_tag", "3.11",
               "--env", "-e GREETING=hi -p 8080:8080", "--onstart-cmd", "echo hello", "--ssh"))  # fmt: skip
        mine = json.loads(ok(cli("search", "templates", "name=mine")).stdout)[0]
        updated = ok(cli("update", "template", mine["hash_id"], "--name", "mine", "--image", "python",
                         "--image_tag", "3.12", "--env", "-e GREETING=hello -p 8080:8080", "--ssh"))  # fmt: skip
        new_hash = json.loads(updated.stdout.split(":", 1)[1])["hash_id"]
        assert new_hash != mine["hash_id"]

        # Instances: create (from the template, with a new volume on its machine), show, label, stop/start, ...
        ask = offers[0]
        volume_offer = next(v["id"] for v in volume_offers if v["machine_id"] == ask["machine_id"])
        created = ok(cli("create", "instance", str(ask["id"]), "--template_hash", new_hash, "--disk", "20",
                         "--create-volume", str(volume_offer), "--volume-size", "30", "--mount-path", "/root/data",
                         "--label", "tour", "--raw")).json()  # fmt: skip
        first = created["new_contract"]
        sim.advance(120)
        row = ok(cli("show", "instance", str(first), "--raw")).json()
        assert row["image_uuid"] == "python:3.12" and row["extra_env"]["GREETING"] == "hello"
        assert "8080/tcp" in row["ports"] and row["template_hash_id"] == new_hash
        assert row["volume_info"][0]["mount_path"] == "/root/data" and row["actual_status"] == "running"
        listing = ok(cli("show", "instances")).stdout
        assert "tour" in listing and "python:3.12" in listing
        assert (
            ok(cli("ssh-url", str(first))).stdout.strip()
            == f"ssh://root@127.0.0.1:{row['ports']['22/tcp'][0]['HostPort']}"
        )
        assert ok(cli("scp-url", str(first))).stdout.startswith("scp://root@127.0.0.1:")
        assert "set to renamed" in ok(cli("label", "instance", str(first), "renamed")).stdout
        assert "status running" in ok(cli("logs", str(first), "--tail", "5")).stdout
        filtered = ok(cli("logs", str(first), "--filter", "loading", "--daemon-logs")).stdout
        assert "status loading" in filtered and "running" not in filtered
        ok(cli("reboot", "instance", str(first)))
        sim.advance(60)
        assert "Recycling" in ok(cli("recycle", "instance", str(first))).stdout
        sim.advance(120)
        ok(cli("update", "instance", str(first), "--image", "python:3.13"))
        sim.advance(120)
        assert sim.instance(first)["image_uuid"] == "python:3.13"  # type: ignore[index]
        assert "discount" in ok(cli("prepay", "instance", str(first), "10")).stdout
        assert json.loads(ok(cli("show", "deposit", str(first))).stdout)["deposit"] == pytest.approx(10.0)
        ok(cli("change", "bid", str(first), "--price", "5"))
        assert "No pending price increases" in ok(cli("show", "pending-price-increases")).stdout

        # Several at once, and the best offer of a query.
        more = [o["id"] for o in ok(cli("search", "offers", "num_gpus=1", "-o", "dph", "--raw")).json()[1:3]]
        ok(cli("create", "instances", *map(str, more), "--image", "ubuntu", "--disk", "10"))
        launched = ok(cli("launch", "instance", "-g", "RTX_4090", "-n", "1", "-i", "ubuntu", "-r", "[US,DE,SE,TW]",
                          "--raw")).json()  # fmt: skip
        assert launched["success"] is True
        every = [r["id"] for r in ok(cli("show", "instances", "--raw")).json()]
        assert len(every) == 4 and first in every and launched["new_contract"] in every
        others = [str(i) for i in every if i != first]
        assert "stopping instance" in ok(cli("stop", "instances", *others)).stdout
        assert {sim.instance(int(i))["actual_status"] for i in others} == {"stopped"}  # type: ignore[index]
        assert "starting instance" in ok(cli("start", "instances", *others)).stdout
        ok(cli("destroy", "instances", *others, "-y"))
        assert sim.instance_count() == 1

        # Keys and env-vars.
        assert "ssh-key created" in ok(cli("create", "ssh-key", PUBKEY)).stdout
        key_id = ok(cli("show", "ssh-keys", "--raw")).json()[0]["id"]
        assert OTHER_KEY in ok(cli("update", "ssh-key", str(key_id), OTHER_KEY)).stdout
        attached = ok(cli("attach", "ssh", str(first), PUBKEY)).stdout
        ok(cli("detach", "ssh", str(first), attached.split("'key_id': ")[1].split("}")[0]))
        ok(cli("delete", "ssh-key", str(key_id)))
        assert ok(cli("show", "ssh-keys", "--raw")).json() == []
        permissions = tmp_path / "permissions.json"
        permissions.write_text('{"api": {"instance_read": {}}}')
        made = ok(cli("create", "api-key", "--name", "ci", "--permission_file", str(permissions))).stdout
        assert "'name': 'ci'" in made
        keys = ok(cli("show", "api-keys", "--raw")).json()["apikeys"]
        assert [k["name"] for k in keys] == ["main key", "ci"] and all("key" not in k for k in keys)
        assert "'ci'" in ok(cli("show", "api-key", str(keys[1]["id"]))).stdout
        ok(cli("delete", "api-key", str(keys[1]["id"])))
        ok(cli("create", "env-var", "HF_HOME", "/data/hf"))
        ok(cli("update", "env-var", "HF_HOME", "/data/cache"))
        assert ok(cli("show", "env-vars", "-s", "--raw")).json() == {"HF_HOME": "/data/cache"}
        ok(cli("delete", "env-var", "HF_HOME"))
        assert "No environment variables" in ok(cli("show", "env-vars")).stdout

        # Billing and account.
        assert "127.0.0.1" in ok(cli("show", "ipaddrs")).stdout
        assert ok(cli("show", "connections", "--raw")).json() == []
        assert ok(cli("show", "user", "--raw")).json()["balance"] < 90, "the deposit left the balance"
        assert ok(cli("show", "invoices", "-q")).stdout.split() == ["1"], "the starting credit, by id"
        tomorrow = datetime.fromtimestamp(time.time() + 86400, UTC).strftime("%Y-%m-%d")  # the clock ran ahead
        report_rows = ok(cli("show", "invoices", "-e", tomorrow, "--raw")).json()
        assert {r["description"].split()[0] for r in report_rows} >= {"Simulator", "Deposit", "renamed"}
        labelled = ok(cli("show", "invoices", "-e", tomorrow, "--instance_label", "renamed", "--raw")).json()
        assert labelled and {r["instance_id"] for r in labelled} == {first}
        assert str(first) in ok(cli("show", "invoices-v1", "-c", "--no-color")).stdout
        assert "$100.00" in ok(cli("show", "invoices-v1", "-i", "--no-color")).stdout

        # Volumes: the one made with the instance, another one, a clone, deletes (refused while in use).
        volume_id = row["volume_info"][0]["id"]
        alone = ok(cli("create", "volume", str(volume_offers[-1]["id"]), "-s", "12", "-n", "scratch", "--raw"))
        clone = ok(cli("clone", "volume", str(volume_id), str(volume_offer), "--raw")).json()["volume_id"]
        shown = {v["id"]: v for v in ok(cli("show", "volumes", "--raw")).json()}
        assert shown[volume_id]["instances"] == [first] and shown[clone]["disk_space"] == 30
        assert "volume_in_use" not in ok(cli("delete", "volume", str(clone))).stdout
        refused = cli("delete", "volume", str(volume_id))
        assert "Failed with error 400" in refused.stdout + refused.stderr
        ok(cli("destroy", "instance", str(first), "-y"))
        ok(cli("delete", "volume", str(volume_id)))
        ok(cli("delete", "volume", str(alone.json()["volume_id"])))
        assert ok(cli("show", "volumes", "--raw")).json() == []
        ok(cli("delete", "template", "--hash-id", new_hash))
        assert json.loads(ok(cli("search", "templates", "name=mine")).stdout) == []

    assert served and not [s for s in served if s[2] in (404, 405)], [s for s in served if s[2] in (404, 405)]
    assert sim.instance_count() == 0
