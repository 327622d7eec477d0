"""`cost` as a user meets it: without a billing handler (each job's own cost, and how to keep a ledger), and
README's pairing of `vastevents sim --speed 30` with a watcher keeping a ledger (no false ghost billing)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
from typer.testing import CliRunner

from vastevents.cli import app
from vastevents.sim import Simulator
from vastevents.store import Jobs, SqliteStore
from vastevents.store.ledger import Ledger


def test_cost_without_a_ledger_shows_each_jobs_own_cost_and_how_to_keep_one(
    sim: Simulator, api_key: str, tmp_path: Path
) -> None:
    started = sim.clock.now()
    ours = sim.create_instance(label="vastevents:job-1", pull="30s")
    stray = sim.create_instance(label="by-hand", pull="30s")
    sim.advance(3600)
    for ref in (ours, stray):
        sim.apply("destroy", instance=ref)
    with SqliteStore(tmp_path / "s.db") as store:
        jobs = store.repository(Jobs)
        job = jobs.submit({"image": "x", "cmd": "true"}, [], "vastevents", started)
        jobs.update(job.id, status="finished", instance_id=ours, cost_usd=0.1234, exit_code=0, started_at=started,
                    finished_at=sim.clock.now())  # fmt: skip
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\npath = "{tmp_path / "s.db"}"\n')  # no [handlers.billing]: no ledger
    env = {"VAST_URL": sim.url, "VAST_API_KEY": api_key, "COLUMNS": "80"}

    human = CliRunner().invoke(app, ["cost", "--config", str(config)], env=env)
    assert human.exit_code == 0, human.output
    assert "job cost" in human.stdout and "$0.12" in human.stdout
    assert re.search(rf"{stray}\s+-\s+-\s+-\s+-\s+\$\d+\.\d\d", human.stdout), human.stdout  # none of ours
    assert "-0.00" not in human.stdout and "differs" not in human.stdout and "GHOST" not in human.output
    assert '[handlers.billing] with use = "billing"' in human.stdout  # how to keep a ledger

    report = json.loads(CliRunner().invoke(app, ["cost", "--json", "--config", str(config)], env=env).stdout)
    rows = {row["instance_id"]: row for row in report["instances"]}
    assert report["source"] == "jobs" and report["total_usd"] == 0.1234
    assert (rows[ours]["job_id"], rows[ours]["cost_usd"], rows[ours]["counted"]) == ("1", 0.1234, True)
    assert rows[stray]["counted"] is False and rows[stray]["difference_usd"] is None and not rows[stray]["flagged"]
    assert rows[stray]["charged_usd"] > 0 and report["ghost_billing"] == []


def _wait(condition: Callable[[], bool], what: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        time.sleep(0.1)


def test_a_ledger_kept_on_wall_time_agrees_with_a_simulator_at_speed_30(tmp_path: Path) -> None:
    """README: `vastevents sim --speed 30` and a watcher with the billing handler. The world runs 30 times faster,
    but charges accrue per wall second like the ledger: no difference flagged, no ghost once it is gone."""
    key = "speed-key-1234"
    sim_command = [sys.executable, "-m", "vastevents", "sim", "--port", "0", "--api-key", key, "--speed", "30"]
    config = tmp_path / "c.toml"
    billing = '[handlers.billing]\nuse = "billing"\n'
    config.write_text(f'[watch]\ninterval = 1\n[store]\npath = "{tmp_path / "s.db"}"\n{billing}')
    with subprocess.Popen(sim_command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as sim:
        assert sim.stdout is not None
        url = re.search(r"listening on (http://\S+)", sim.stdout.readline())
        assert url is not None
        env = {**os.environ, "VAST_URL": url[1], "VAST_API_KEY": key, "HOME": str(tmp_path)}
        watch = subprocess.Popen([sys.executable, "-m", "vastevents", "watch", "--config", str(config)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        auth = {"Authorization": f"Bearer {key}"}
        try:
            offer = httpx.post(f"{url[1]}/api/v0/bundles/", json={"order": [["dph_total", "desc"]], "limit": 1},
                               headers=auth).json()["offers"][0]  # fmt: skip
            created = httpx.put(f"{url[1]}/api/v0/asks/{offer['id']}/",
                                json={"image": "x", "disk": 10, "label": "vastevents:speed"}, headers=auth)  # fmt: skip
            instance_id = created.json()["new_contract"]

            def accrued() -> float:
                if not (tmp_path / "s.db").exists():
                    return 0.0
                with SqliteStore(tmp_path / "s.db", read_only=True) as store:
                    now = datetime.now(UTC)
                    return sum(i.cost_usd(now) for i in store.repository(Ledger).intervals() if i.state == "running")

            # Charged on the simulated clock, 30 times this would be charged: over a cent more than the ledger.
            _wait(lambda: accrued() >= 0.001, "the ledger accrues a tenth of a cent of running")
            httpx.delete(f"{url[1]}/api/v0/instances/{instance_id}/", headers=auth).raise_for_status()

            def vanished() -> bool:
                with SqliteStore(tmp_path / "s.db", read_only=True) as store:
                    return bool(store.events(name="vanished", instance_id=instance_id))

            _wait(vanished, "the watcher sees it gone")
        finally:
            watch.send_signal(signal.SIGTERM)
            watch.communicate(timeout=30)
        result = CliRunner().invoke(app, ["cost", "--json", "--config", str(config)], env=env)
        sim.send_signal(signal.SIGTERM)
        sim.communicate(timeout=30)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (row,) = report["instances"]
    assert row["charged_usd"] > 0 and abs(row["cost_usd"] - row["charged_usd"]) < 0.01, row
    assert not row["flagged"] and report["ghost_billing"] == [] and "GHOST" not in result.stderr
