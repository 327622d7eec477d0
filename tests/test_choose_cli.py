"""Choosing offers through the real CLI on the simulator: ``run --dry-run`` explains the choice, a job that could
break a budget is refused before anything is rented, ``hosts --history`` shows what rentals taught."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vastevents.sim import Simulator


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(api_key="choose-key-1234", seed=3, hosts=12) as simulator:
        yield simulator
        assert simulator.instance_count() == 0, "nothing may be left rented"


def vastevents(sim: Simulator, tmp_path: Path, *args: str, config: str = "") -> subprocess.CompletedProcess[str]:
    path = tmp_path / "vastevents.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "state.db"}"\n{config}')
    env = {**os.environ, "HOME": str(tmp_path / "home"), "VAST_URL": sim.url, "VAST_API_KEY": sim.api_key}
    return subprocess.run(
        [sys.executable, "-m", "vastevents", *args, "--config", str(path)],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )  # fmt: skip


def test_dry_run_json_names_the_chosen_offer_and_each_offers_price_expected_cost_and_why(
    sim: Simulator, tmp_path: Path
) -> None:
    args = ("run", "--image", "x", "--cmd", "true", "--query", "num_gpus=1", "--max-duration", "7200", "--dry-run")
    done = vastevents(sim, tmp_path, *args, "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert set(shown) == {"chosen", "offers"} and 1 <= len(shown["offers"]) <= 5
    assert shown["chosen"] == shown["offers"][0]["id"]
    for offer in shown["offers"]:
        assert set(offer) == {"id", "dph_total", "expected_cost_usd", "why"}
        assert offer["expected_cost_usd"] > offer["dph_total"] * 2, "two hours of it, and more"
        assert "no history here" in offer["why"]
    costs = [offer["expected_cost_usd"] for offer in shown["offers"]]
    assert costs == sorted(costs), "best expected cost first"
    by_price = vastevents(sim, tmp_path, *args, "--json", config='[jobs]\nchoose = "cheapest"\n')
    prices = [offer["dph_total"] for offer in json.loads(by_price.stdout)["offers"]]
    assert prices == sorted(prices)
    second = vastevents(sim, tmp_path, *args, "--json", config='[jobs]\nchoose = "second_cheapest"\n')
    assert json.loads(second.stdout)["chosen"] == json.loads(by_price.stdout)["offers"][1]["id"]
    words = vastevents(sim, tmp_path, *args)
    assert words.returncode == 0 and "expected $" in words.stdout and f"offer {shown['chosen']}" in words.stdout


def test_a_job_whose_cost_bound_is_over_what_is_left_of_a_budget_is_refused_before_renting(
    sim: Simulator, tmp_path: Path
) -> None:
    billing = '[handlers.billing]\nuse = "billing"\nbudget_usd = 0.05\n'
    args = ("run", "--image", "x", "--cmd", "true", "--query", "num_gpus=1", "--max-duration", "7200", "--yes")
    done = vastevents(sim, tmp_path, *args, config=billing)
    assert done.returncode == 1, done.stderr
    assert "[handlers.billing] budget_usd $0.05" in done.stderr and "Traceback" not in done.stderr
    assert "more than the $0.05 left" in done.stderr
    assert sim.state()["spend"]["instances"] == [], "nothing was rented"
    per_job = vastevents(sim, tmp_path, *args, "--dry-run", config='[handlers.billing]\nuse = "billing"\n'
                         'per_job_usd = 0.01\n')  # fmt: skip
    assert per_job.returncode == 1 and "[handlers.billing] per_job_usd $0.01" in per_job.stderr
    roomy = vastevents(sim, tmp_path, *args, "--dry-run", config='[handlers.billing]\nuse = "billing"\n'
                       'budget_usd = 500\n')  # fmt: skip
    assert roomy.returncode == 0, roomy.stderr
