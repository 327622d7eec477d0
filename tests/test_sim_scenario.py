"""Scenario files: a 20-step story with every fault, the built-in demo, and clear errors for bad files."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from vastevents.clock import ManualClock
from vastevents.sim import Simulator
from vastevents.sim.faults import DISK_FULL_MSG, GPU_BROKEN_MSG
from vastevents.sim.scenario import ScenarioError, load_scenario

STORY = """
[world]
seed = 3
hosts = 20

[[step]]
at = "0s"
action = "create"
label = "vastevents:job-1"
pull = "60s"
[[step]]
at = "0s"
action = "create"
label = "vastevents:job-2"
bid = true
[[step]]
at = "0s"
action = "create"
label = "vastevents:job-3"
gpu_name = "H100 SXM"
[[step]]
at = "0s"
action = "create"
label = "vastevents:job-4"
pull = "5m"
[[step]]
at = "0s"
action = "create"
label = "vastevents:job-5"
[[step]]
at = "0s"
action = "create"
label = "vastevents:job-6"
[[step]]
at = "0s"
action = "create"
label = "vastevents:job-7"
[[step]]
at = "0s"
action = "create"
label = "vastevents:job-8"
[[step]]
at = "30s"
action = "stuck_loading"
instance = "job-4"
[[step]]
at = "2m"
action = "outbid"
instance = "job-2"
[[step]]
at = "3m"
action = "flap"
instance = "job-3"
duration = "30s"
[[step]]
at = "4m"
action = "gpu_broken"
instance = "job-6"
[[step]]
at = "5m"
action = "disk_full"
instance = "job-7"
[[step]]
at = "6m"
action = "vanish"
instance = "job-5"
[[step]]
at = "7m"
action = "no_such_ask"
[[step]]
at = "7m"
action = "create_error"
[[step]]
at = "8m"
action = "rate_limit"
duration = "60s"
[[step]]
at = "10m"
action = "server_error"
duration = "30s"
status = 502
[[step]]
at = "11m"
action = "slow"
duration = "10s"
delay = 0.05
[[step]]
at = "12m"
action = "expire"
instance = "job-8"
[[step]]
at = "13m"
action = "preempt"
instance = "job-1"
"""


def _rows(client: httpx.Client) -> dict[str, dict[str, Any]]:
    response = client.get("/api/v1/instances/")
    assert response.status_code == 200, response.text
    return {row["label"]: row for row in response.json()["instances"]}


def _states(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["actual_status"], row["intended_status"], row["cur_state"], row["next_state"])


def test_twenty_step_story_with_every_fault(tmp_path: Path) -> None:
    story = tmp_path / "story.toml"
    story.write_text(STORY)
    assert len(load_scenario(story).steps) == 21
    clock = ManualClock()
    start = clock.now()

    def at(minutes: float) -> None:
        clock.advance((start + timedelta(minutes=minutes) - clock.now()).total_seconds())

    with (
        Simulator(clock=clock, scenario=story) as sim,
        httpx.Client(base_url=sim.url, headers={"Authorization": f"Bearer {sim.api_key}"}) as client,
    ):
        assert sim.scenario_end == start + timedelta(minutes=13)
        rows = _rows(client)
        assert sorted(rows) == [f"vastevents:job-{n}" for n in range(1, 9)], "created by the scenario at start"
        assert all(row["actual_status"] is None for row in rows.values())

        at(2.5)
        rows = _rows(client)
        assert rows["vastevents:job-1"]["actual_status"] == "running"
        assert _states(rows["vastevents:job-2"]) == ("exited", "stopped", "stopped", "stopped")
        assert "OCI runtime create failed" in rows["vastevents:job-4"]["status_msg"]

        at(3.25)
        assert _rows(client)["vastevents:job-3"]["actual_status"] == "offline"
        at(3.5)
        assert _rows(client)["vastevents:job-3"]["actual_status"] == "running"

        at(7)
        assert "vastevents:job-5" not in _rows(client)
        ask = client.post("/api/v0/bundles/", json={"num_gpus": {"eq": 1}, "limit": 1}).json()["offers"][0]
        race = client.put(f"/api/v0/asks/{ask['id']}/", json={"image": "x", "disk": 10, "label": "vastevents:r"})
        assert race.status_code == 404 and race.json()["error"] == "no_such_ask"
        ask = client.post("/api/v0/bundles/", json={"num_gpus": {"eq": 1}, "limit": 1}).json()["offers"][0]
        ghost = client.put(f"/api/v0/asks/{ask['id']}/", json={"image": "x", "disk": 10, "label": "vastevents:ghost"})
        assert ghost.status_code == 500
        assert "vastevents:ghost" in _rows(client)

        at(8.5)
        limited = client.get("/api/v1/instances/")
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) == 30
        at(9.1)
        assert client.get("/api/v1/instances/").status_code == 200
        at(10.1)
        assert client.get("/api/v1/instances/").status_code == 502
        at(10.6)
        assert client.get("/api/v1/instances/").status_code == 200
        at(11.05)
        assert client.get("/api/v1/instances/").status_code == 200, "slow, not failing"

        at(14)
        rows = _rows(client)
        assert _states(rows["vastevents:job-1"])[:2] == ("exited", "running"), "on-demand preempted by its host"
        assert _states(rows["vastevents:job-2"]) == ("exited", "stopped", "stopped", "stopped")
        assert rows["vastevents:job-3"]["actual_status"] == "running"
        assert rows["vastevents:job-4"]["actual_status"] == "loading"
        assert "vastevents:job-5" not in rows
        assert rows["vastevents:job-6"]["status_msg"] == GPU_BROKEN_MSG
        full = rows["vastevents:job-7"]
        assert full["disk_util"] == 100.0 and full["status_msg"] == DISK_FULL_MSG
        assert _states(rows["vastevents:job-8"]) == ("exited", "stopped", "stopped", "stopped")
        assert "Contract ended" in rows["vastevents:job-8"]["status_msg"]
        assert rows["vastevents:ghost"]["actual_status"] == "running"
        assert sim.state()["steps_done"] == sim.state()["steps_total"] == 22  # the flap is two steps


def test_builtin_demo_scenario_tells_the_documented_story() -> None:
    clock = ManualClock()
    start = clock.now()
    with Simulator(clock=clock, scenario=Simulator.builtin_scenario("demo")) as sim:
        assert sim.scenario_end is not None
        assert timedelta(minutes=10) <= sim.scenario_end - start <= timedelta(minutes=20)
        labels = {row["label"] for row in sim.state()["instances"]}
        assert {"vastevents:job-1", "vastevents:job-2", "notebook"} <= labels
        assert sum(1 for label in labels if label.startswith("vastevents:")) >= 4
        seen: dict[str, set[Any]] = {}
        while clock.now() < sim.scenario_end:
            clock.advance(15)
            for row in sim.state()["instances"]:
                seen.setdefault(row["label"], set()).add(row["actual_status"])
        final = {row["label"]: row for row in sim.state()["instances"]}
    assert "running" in seen["vastevents:job-1"] and "loading" in seen["vastevents:job-1"]
    assert _states(final["vastevents:job-2"]) == ("exited", "stopped", "stopped", "stopped")
    assert "offline" in seen["vastevents:job-3"] and final["vastevents:job-3"]["actual_status"] == "running"
    assert "OCI runtime create failed" in final["vastevents:job-4"]["status_msg"]
    assert "vastevents:job-5" not in final and "running" in seen["vastevents:job-5"]
    assert final["notebook"]["actual_status"] == "stopped"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[step]]\nat = "1m"\naction = "explode"\n', "step 1: unknown action 'explode'"),
        ('[[step]]\nat = "soon"\naction = "preempt"\n', "step 1: expected a duration"),
        ("[[step]]\nat = 1\n", "step 1: each [[step]] needs an action"),
        ("not toml [", "not valid TOML"),
        ("[wrold]\nseed = 1\n", "unknown top-level keys ['wrold']"),
        ('[[machine]]\ngpu_nam = "X"\n', "[[machine]] machine 1: unknown field(s) gpu_nam; known: cpu_cores"),
        (
            '[[machine]]\nnum_gpus = 1\n[[machine]]\nnum_gpus = "two"\n',
            "[[machine]] machine 2: invalid literal for int()",
        ),
    ],
)
def test_bad_scenarios_name_the_file_and_step(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=r"bad\.toml") as caught:
        load_scenario(path)
    assert message in str(caught.value)


def test_a_scripted_step_that_cannot_happen_is_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[[machine]]\ngpu_name = "RTX 5090"\n\n'  # every field but the name defaulted
                    '[[step]]\nat = 0\naction = "create"\nlabel = "a"\n'
                    '[[step]]\nat = 0\naction = "create"\nlabel = "b"\n'  # the one GPU is taken
                    '[[step]]\nat = "1m"\naction = "preempt"\ninstance = "ghost"\n')  # fmt: skip
    clock = ManualClock()
    with caplog.at_level("WARNING", logger="vastevents.sim"), Simulator(clock=clock, scenario=path) as sim:
        assert [row["label"] for row in sim.state()["instances"]] == ["a"]
        clock.advance(120)
        with httpx.Client(base_url=sim.url, headers={"Authorization": f"Bearer {sim.api_key}"}) as client:
            assert [row["label"] for row in _rows(client).values()] == ["a"], "requests after the bad step still work"
        assert sim.state()["steps_done"] == 3
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 2
    assert "step 2 at 0.0s (create) skipped: No free offer with 1 GPU(s)" in skipped[0]
    assert "step 3 at 60.0s (preempt) skipped: No live instance matches 'ghost'" in skipped[1]


def test_json_scenarios_and_explicit_machines(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"machine": [{"gpu_name": "RTX 5090", "num_gpus": 2, "gpu_ram_gb": 32}],'
                    ' "step": [{"at": 0, "action": "create", "label": "a", "num_gpus": 2}]}')  # fmt: skip
    with Simulator(clock=ManualClock(), scenario=path) as sim:
        (row,) = sim.state()["instances"]
        assert (row["label"], row["gpu_name"], row["num_gpus"], row["gpu_ram"]) == ("a", "RTX 5090", 2, 32 * 1024)
        assert sim.state()["machines"][0]["free_gpus"] == 0
