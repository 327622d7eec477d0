"""The scenarios users read: examples/my-story.toml (README's) and the built-in demo do what their comments say."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from vastevents.clock import ManualClock
from vastevents.sim import Simulator
from vastevents.sim.scenario import ScenarioError, load_scenario

ROOT = Path(__file__).resolve().parents[1]
MY_STORY = ROOT / "examples" / "my-story.toml"


def _rows(client: httpx.Client) -> dict[str, dict[str, Any]]:
    response = client.get("/api/v1/instances/")
    assert response.status_code == 200, response.text
    return {row["label"]: row for row in response.json()["instances"]}


def test_readme_names_the_example_story_and_its_header_says_how_to_run_it() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = re.search(r"vastevents sim (.*)--scenario (\S*my-story\.toml)", readme)
    assert command is not None, "README's sim section runs my-story.toml"
    assert (ROOT / command[2]).is_file(), "README's path works from the repository's root"
    header = MY_STORY.read_text(encoding="utf-8").split("\ndescription", 1)[0]
    assert f"vastevents sim {command[1]}--scenario examples/my-story.toml" in header
    assert "10 simulated minutes, 20 s of wall time at --speed 30" in header
    scenario = load_scenario(MY_STORY)
    assert max(step.at for step in scenario.steps) == 10 * 60 == 20 * 30
    assert scenario.description.startswith("Two training jobs")


def test_my_story_plays_as_its_comments_say() -> None:
    clock = ManualClock()
    start = clock.now()

    def at(seconds: float) -> None:
        clock.advance((start + timedelta(seconds=seconds) - clock.now()).total_seconds())

    with (
        Simulator(clock=clock, scenario=MY_STORY) as sim,
        httpx.Client(base_url=sim.url, headers={"Authorization": f"Bearer {sim.api_key}"}) as client,
    ):
        assert sim.scenario_end == start + timedelta(minutes=10)
        assert [m["gpu_name"] for m in sim.state()["machines"]] == ["RTX 4090", "A100 SXM4", "RTX 3090"]
        at(100)
        rows = _rows(client)
        assert rows["vastevents:train-1"]["gpu_name"] == "RTX 4090" and not rows["vastevents:train-1"]["is_bid"]
        assert rows["vastevents:train-2"]["gpu_name"] == "A100 SXM4" and rows["vastevents:train-2"]["is_bid"]
        assert {row["actual_status"] for row in rows.values()} == {"running"}

        at(3 * 60)
        throttled = client.get("/api/v1/instances/")
        assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "60"
        at(4 * 60)
        assert client.get("/api/v1/instances/").status_code == 200, "the storm is over"

        at(5 * 60)
        train_1 = _rows(client)["vastevents:train-1"]
        assert (train_1["actual_status"], train_1["intended_status"]) == ("exited", "running"), "preempted"

        at(6 * 60)
        ask = client.post("/api/v0/bundles/", json={"gpu_name": {"eq": "RTX 3090"}, "limit": 1}).json()["offers"][0]
        failed = client.put(f"/api/v0/asks/{ask['id']}/", json={"image": "x", "disk": 10, "label": "vastevents:retry"})
        assert failed.status_code == 500 and "vastevents:retry" in _rows(client), "failed, yet it exists"
        assert client.delete(f"/api/v0/instances/{_rows(client)['vastevents:retry']['id']}/").status_code == 200

        at(7 * 60)
        assert _rows(client)["vastevents:train-2"]["actual_status"] == "offline"
        at(510)
        assert _rows(client)["vastevents:train-2"]["actual_status"] == "running"

        at(10 * 60)
        train_2 = _rows(client)["vastevents:train-2"]
        assert (train_2["actual_status"], train_2["intended_status"]) == ("stopped", "stopped"), "a user stop"
        assert sim.state()["steps_done"] == sim.state()["steps_total"]
        for row in _rows(client).values():
            sim.apply("destroy", instance=row["id"])
        assert sim.instance_count() == 0


def test_the_demo_comments_say_what_it_does() -> None:
    demo = Simulator.builtin_scenario("demo")
    text = demo.read_text(encoding="utf-8")
    scenario = load_scenario(demo)
    owned = [s for s in scenario.steps if s.action == "create" and str(s.params["label"]).startswith("vastevents:")]
    assert len(owned) == 5 and "five owned jobs" in text
    end = max(step.at for step in scenario.steps)
    assert end == 15 * 60 and "15 simulated minutes" in text
    assert "--speed 45` serves it in 20 s" in text and end / 45 == 20
    flap = next(s for s in scenario.steps if s.action == "flap")
    assert (flap.params["count"], flap.params["duration"]) == (3, "45s") and "three times (a flap), 45 s each" in text


def test_a_builtin_scenario_is_named_like_a_file() -> None:
    assert load_scenario("demo").source == Simulator.builtin_scenario("demo")
    with Simulator(clock=ManualClock(), scenario="demo") as sim:
        assert sim.description.startswith("Jobs load and run") and sim.instance_count() == 6
        for row in sim.state()["instances"]:
            sim.apply("destroy", instance=row["id"])
        assert sim.instance_count() == 0
    with pytest.raises(ScenarioError, match=r"cannot read scenario: .*\(or name a built-in one: demo, flaky\)"):
        load_scenario("dmeo")


def test_a_file_wins_over_a_builtin_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("demo").write_text('description = "mine"\n')
    assert load_scenario("demo").description == "mine"
