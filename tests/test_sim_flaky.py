"""A seeded flaky market: which machines misbehave and how (slow or no SSH, outbids, broken GPUs), bids that
compete, and a host that changes its price between the search and the create."""

from __future__ import annotations

import subprocess
from dataclasses import asdict
from pathlib import Path

import httpx
import pytest
from sshkit import USER, keypair, needs_openssh, register

from vastevents.clock import ManualClock
from vastevents.sim import Simulator
from vastevents.sim.market import FLAKY_KINDS, MARKET_OUTBID_EVERY_S, SLOW_SSH_S, generate_machines


def _by_kind(sim: Simulator) -> dict[str, int]:
    return {m["flaky"]: m["machine_id"] for m in sim.state()["machines"] if m["flaky"]}


def _ask(sim: Simulator, machine_id: int, *, bid: bool = False) -> dict[str, object]:
    query = {"machine_id": {"eq": machine_id}, "num_gpus": {"eq": 1}, "type": "bid" if bid else "on-demand"}
    answer = httpx.post(f"{sim.url}/api/v0/bundles/", json=query, headers={"Authorization": f"Bearer {sim.api_key}"})
    (row,) = answer.json()["offers"]
    return dict(row)


def test_a_seed_marks_a_share_of_each_models_machines_in_its_cheaper_half_and_leaves_the_rest_alone() -> None:
    plain = generate_machines(seed=11, hosts=40, origin=0.0)
    flaky = generate_machines(seed=11, hosts=40, origin=0.0, flaky=0.2)
    again = generate_machines(seed=11, hosts=40, origin=0.0, flaky=0.2)
    assert [asdict(m) for m in flaky] == [asdict(m) for m in again], "the same seed, the same market"
    behaviour = {"flaky", "ssh_delay_s", "outbid_every_s", "gpu_broken"}
    assert [{k: v for k, v in asdict(m).items() if k not in behaviour} for m in flaky] == [
        {k: v for k, v in asdict(m).items() if k not in behaviour} for m in plain
    ]
    marked = [m for m in flaky if m.flaky]
    assert {m.flaky for m in marked} == set(FLAKY_KINDS)
    for model in {m.gpu_name for m in flaky}:
        mine = sorted((m for m in flaky if m.gpu_name == model), key=lambda m: m.dph_per_gpu)
        cheaper = mine[: (len(mine) + 1) // 2]
        assert all(m in cheaper for m in mine if m.flaky), f"{model}: only the cheaper half misbehaves"
        assert sum(1 for m in mine if m.flaky) == min(len(cheaper), round(0.2 * len(mine)))
    assert all(m.outbid_every_s >= 600 for m in flaky) and not any(m.outbid_every_s for m in plain)
    slow = next(m for m in marked if m.flaky == "slow_ssh")
    never = next(m for m in marked if m.flaky == "no_ssh")
    assert slow.ssh_delay_s == SLOW_SSH_S and never.ssh_delay_s is None


@pytest.mark.ssh
@needs_openssh
def test_slow_ssh_answers_minutes_after_running_no_ssh_never_and_a_broken_gpu_fails_nvidia_smi(tmp_path: Path) -> None:
    key = keypair(tmp_path)
    clock = ManualClock()
    with Simulator(clock=clock, ssh=True, scenario="flaky") as sim:
        register(sim, key)
        kinds = _by_kind(sim)
        ids = {kind: sim.create_instance(int(str(_ask(sim, kinds[kind])["id"])), pull=10)
               for kind in ("slow_ssh", "no_ssh", "broken_gpu")}  # fmt: skip
        clock.advance(30)
        assert all(sim.instance(i)["actual_status"] == "running" for i in ids.values())  # type: ignore[index]
        answering = set(sim.state()["ssh"])  # instance id -> the port its sshd listens on
        assert ids["broken_gpu"] in answering and not {ids["slow_ssh"], ids["no_ssh"]} & answering
        clock.advance(SLOW_SSH_S)
        answering = set(sim.state()["ssh"])
        assert ids["slow_ssh"] in answering and ids["no_ssh"] not in answering
        port = sim.instance(ids["broken_gpu"])["ssh_port"]  # type: ignore[index]
        smi = subprocess.run(
            ["ssh", "-p", str(port), "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"{USER}@127.0.0.1", "nvidia-smi"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert smi.returncode != 0 and "NVIDIA-SMI has failed" in smi.stdout
        for instance_id in ids.values():
            sim.apply("destroy", instance=instance_id)


def test_bids_compete_a_bid_at_the_floor_is_outbid_and_one_at_the_on_demand_price_never() -> None:
    clock = ManualClock()
    with Simulator(clock=clock, scenario="flaky") as sim:
        quiet = next(m for m in sim.state()["machines"] if not m["flaky"] and m["num_gpus"] >= 2)
        floor_ask = _ask(sim, quiet["machine_id"], bid=True)
        floor = sim.create_instance(int(str(floor_ask["id"])), bid=float(str(floor_ask["min_bid"])), pull=10)
        top_ask = _ask(sim, quiet["machine_id"], bid=True)
        top = sim.create_instance(int(str(top_ask["id"])), bid=quiet["dph_per_gpu"], pull=10)
        for _ in range(int(10 * MARKET_OUTBID_EVERY_S / 600)):
            clock.advance(600)
            if sim.instance(floor)["actual_status"] == "exited":  # type: ignore[index]
                break
        outbid = sim.instance(floor)
        assert outbid is not None and outbid["actual_status"] == "exited"
        assert str(outbid["status_msg"]).startswith("Instance outbid: a higher bid")
        assert sim.instance(top)["actual_status"] == "running"  # type: ignore[index]
    with Simulator(clock=ManualClock(), seed=11, hosts=40) as calm:  # no flaky share: nobody competes
        machine = calm.state()["machines"][0]["machine_id"]
        ask = _ask(calm, machine, bid=True)
        instance = calm.create_instance(int(str(ask["id"])), bid=float(str(ask["min_bid"])), pull=10)
        calm.advance(30 * 86400)
        assert calm.instance(instance)["actual_status"] == "running"  # type: ignore[index]


def test_the_same_seed_outbids_at_the_same_moments() -> None:
    def outbid_at() -> float:
        clock = ManualClock()
        with Simulator(clock=clock, scenario="flaky") as sim:
            machine = _by_kind(sim)["outbids"]
            ask = _ask(sim, machine, bid=True)
            instance = sim.create_instance(int(str(ask["id"])), bid=float(str(ask["min_bid"])), pull=10)
            for minute in range(1, 24 * 60):
                clock.advance(60)
                if sim.instance(instance)["actual_status"] == "exited":  # type: ignore[index]
                    return minute
        raise AssertionError("a floor bid on the outbid-prone machine survived a day")

    first = outbid_at()
    assert first == outbid_at() and first < 120


def test_a_host_that_raised_its_price_since_the_search_bills_the_new_one(
    sim: Simulator, sim_client: httpx.Client
) -> None:
    offer = sim_client.post("/api/v0/bundles/", json={"num_gpus": {"eq": 1}, "order": [["dph_total", "asc"]]})
    row = offer.json()["offers"][0]
    answer = sim_client.post("/_sim/reprice", json={"factor": 2.0})
    assert answer.status_code == 200 and sim.state()["faults"]["pending_reprices"] == [2.0]
    created = sim_client.put(f"/api/v0/asks/{row['id']}/", json={"image": "x", "disk": 5, "label": "vastevents:p"})
    instance = sim.instance(created.json()["new_contract"])
    assert instance is not None
    assert instance["dph_base"] == pytest.approx(row["dph_base"] * 2, rel=0.01)
    assert sim.state()["faults"]["pending_reprices"] == []
    assert sim_client.post("/_sim/reprice", json={"factor": 0}).status_code == 400
