"""Compatibility proof: every renter method of the official Python SDK (`vastai.VastAI`, 1.9.1) works against
the simulator. Renter methods: the SDK's instance, search, key, billing, storage, env-var and template methods
acting on the user's own offers, instances, keys, templates, volumes and bills; the same scope as the CLI's
(see tests/test_sim_vastai_cli.py for what is left out and why).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from vastai import VastAI
from vastai_session import requests_served

from vastevents.clock import ManualClock
from vastevents.sim import Simulator

KEY = "vastai-sdk-test-key"
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheSimulatorOnly0123456789abcdef sdk@test"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(api_key=KEY, clock=ManualClock(datetime.now(UTC))) as simulator:
        yield simulator


def test_every_renter_method_of_the_official_sdk(sim: Simulator) -> None:
    vast = VastAI(api_key=KEY, server_url=sim.url, retry=1)
    with requests_served() as served:
        offers = vast.search_offers(query="num_gpus=1 geolocation in [TW,US]", order="dph_total", limit=5)
        assert offers and {o["geolocation"][-2:] for o in offers} <= {"TW", "US"}
        assert [o["id"] for o in vast.search_offers_new(query="num_gpus=1", order="dph_total", limit=5)] == [
            o["id"] for o in vast.search_offers(query="num_gpus=1", order="dph_total", limit=5)
        ]
        volume_offers = vast.search_volumes(query="disk_space>100")
        here = next(v for v in volume_offers if v["machine_id"] == offers[0]["machine_id"])
        template = vast.create_template(name="sdk", image="python", image_tag="3.11", env="-e MODE=sdk -p 9000:9000",
                                        onstart_cmd="echo from-template", ssh=True)["template"]  # fmt: skip
        assert vast.search_templates("name=sdk")[0]["hash_id"] == template["hash_id"]

        created = vast.create_instance(offers[0]["id"], template_hash=template["hash_id"], disk=20, label="sdk",
                                       create_volume=here["id"], volume_size=25, mount_path="/root/ckpt")  # fmt: skip
        first = created["new_contract"]
        sim.advance(120)
        row = vast.show_instance(first)
        assert row is not None and row["image_uuid"] == "python:3.11" and row["extra_env"]["MODE"] == "sdk"
        assert "9000/tcp" in row["ports"] and row["onstart"] == "echo from-template"
        volume_id = row["volume_info"][0]["id"]
        assert [r["id"] for r in vast.show_instances()] == [first]
        assert vast.show_instances_v1({"limit": 1})["total_instances"] == 1
        assert vast.show_instance_filters() == []
        port = row["ports"]["22/tcp"][0]["HostPort"]
        assert vast.ssh_url(first) == vast.scp_url(first).replace("scp", "ssh") == f"ssh://root@127.0.0.1:{port}"
        assert "no container filesystems" in vast.execute(first, "ls -l")  # without ssh hosts there is none
        assert "status running" in vast.logs(first, tail="10")
        assert vast.logs(first, filter="loading", daemon_logs=True).count("\n") == 1
        assert vast.label_instance(first, "renamed")["success"] is True
        assert vast.stop_instance(first)["success"] and vast.start_instance(first)["success"]
        sim.advance(60)
        assert vast.reboot_instance(first)["success"] is True
        sim.advance(60)
        assert vast.recycle_instance(first)["success"] is True
        assert vast.update_instance(first, image="python:3.12")["success"] is True
        sim.advance(120)
        assert vast.show_instance(first)["image_uuid"] == "python:3.12"  # type: ignore[index]
        terms = vast.prepay_instance(first, 5.0)
        assert 0 < terms["discount_rate"] <= 0.3 and vast.show_deposit(first)["deposit"] == pytest.approx(5.0)
        assert vast.show_pending_price_increases()["pending_price_increases"] == []
        with pytest.raises(LookupError):  # the SDK itself finds none pending: no request beyond the list
            vast.accept_price_increase(first)
        with pytest.raises(LookupError):
            vast.reject_price_increase(first)

        more = [o["id"] for o in vast.search_offers(query="num_gpus=1", order="dph_total", limit=4)[1:3]]
        assert len(vast.create_instances(more, image="ubuntu")["new_contracts"]) == 2
        launched = vast.launch_instance(gpu_name="RTX_4090", num_gpus="1", image="ubuntu", region="Europe")
        assert launched["success"] is True
        others = [r["id"] for r in vast.show_instances() if r["id"] != first]
        assert len(others) == 3
        assert vast.stop_instances(others)["success"] and vast.start_instances(others)["success"]
        assert vast.destroy_instances(others)["success"] is True
        assert vast.change_bid(first, price=4.0)["success"] is True

        key = vast.create_ssh_key(PUBKEY)
        assert [k["id"] for k in vast.show_ssh_keys()] == [key["id"]]
        assert vast.update_ssh_key(key["id"], PUBKEY.replace("sdk@", "new@"))["public_key"].endswith("new@test")
        attached = vast.attach_ssh(first, PUBKEY)
        assert vast.detach_ssh(first, str(attached["key_id"]))["success"] is True
        assert vast.delete_ssh_key(key["id"])["success"] and vast.show_ssh_keys() == []
        made = vast.create_api_key("ci", {"api": {"instance_read": {}}})
        assert len(made["key"]) == 64 and vast.show_api_key(made["id"])["name"] == "ci"
        assert [k["name"] for k in vast.show_api_keys()] == ["main key", "ci"]
        assert VastAI(api_key=made["key"], server_url=sim.url, retry=1).show_user()["id"] == 1, "the new key works"
        assert vast.delete_api_key(made["id"])["success"] is True
        vast.create_env_var("WANDB_MODE", "offline")
        vast.update_env_var("WANDB_MODE", "disabled")
        assert vast.show_env_vars() == {"WANDB_MODE": "****"}
        assert vast.show_env_vars(show_values=True) == {"WANDB_MODE": "disabled"}
        assert vast.delete_env_var("WANDB_MODE")["success"] is True

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            report = vast.show_invoices(end_date="2100-01-01")
        assert {r["type"] for r in report["invoices"]} == {"payment", "charge"} and report["current"]["charges"] > 0
        assert any(r["source"] == f"instance-{first}" for r in vast.show_invoices_v1(charges=True)["results"])
        assert vast.show_invoices_v1()["results"][0]["amount"] == 100.0
        assert {r["service"] for r in vast.search_invoices()} == {"transfer", "instance_prepay"}
        assert vast.show_user()["balance"] < 95
        assert vast.show_ipaddrs()[0]["ip"] == "127.0.0.1"
        assert [c["id"] for c in vast.fetch_contracts(label="renamed")] == [first]
        assert vast.show_connections() == []

        copy = vast.clone_volume(volume_id, here["id"])["volume_id"]
        alone = vast.create_volume(volume_offers[-1]["id"], size=10, name="scratch")["volume_id"]
        assert {v["id"] for v in vast.show_volumes()} == {volume_id, copy, alone}
        assert vast.delete_volume(copy)["success"] and vast.delete_volume(alone)["success"]
        assert vast.update_template(template["hash_id"], name="sdk", image="python", image_tag="3.13")["success"]
        assert vast.destroy_instance(first)["success"] is True
        assert vast.delete_volume(volume_id)["success"] is True
        assert vast.delete_template(hash_id=vast.search_templates("name=sdk")[0]["hash_id"])["success"] is True

    assert served and not [s for s in served if s[2] in (404, 405)], [s for s in served if s[2] in (404, 405)]
    assert sim.instance_count() == 0
