"""The runbook's checks through the real CLI on the simulator: what is already rented under our labels before
renting (and what to do with it), the account's volumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from vastevents.jobspec import JobSpec
from vastevents.sim import Simulator
from vastevents.store import Jobs, JobStatus, SqliteStore

KEY = "runbook-key-2468"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(api_key=KEY, rate_limits=False) as simulator:
        yield simulator


def api(sim: Simulator, method: str, path: str, **body: Any) -> dict[str, Any]:
    answer = httpx.request(method, f"{sim.url}{path}", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def vastevents(
    sim: Simulator, tmp_path: Path, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "vastevents.toml"
    config.write_text(f'[store]\npath = "{tmp_path / "state.db"}"\n')
    environment = {**os.environ, "HOME": str(tmp_path / "home"), "VAST_URL": sim.url, "VAST_API_KEY": KEY,
                   "COLUMNS": "200", **(env or {})}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "vastevents", *args, "--config", str(config)],
        input=stdin, capture_output=True, text=True, env=environment, timeout=120, cwd=tmp_path,
    )  # fmt: skip


def _job_on(tmp_path: Path, instance_id: int) -> int:
    """A job of this store running on `instance_id` (as a watcher or another `run` would have it)."""
    with SqliteStore(tmp_path / "state.db") as store:
        jobs = store.repository(Jobs)
        spec = JobSpec.model_validate({"image": "img", "cmd": "train"}).to_json()
        job = jobs.submit(spec, [], "vastevents-sim", datetime.now(UTC))
        jobs.update(job.id, status=JobStatus.RUNNING, instance_id=instance_id)
        return job.id


def test_run_lists_what_our_labels_already_rent_and_destroys_the_left_over_when_asked(
    sim: Simulator, tmp_path: Path
) -> None:
    busy = sim.create_instance(label="vastevents-sim:job-1")
    job_id = _job_on(tmp_path, busy)
    leftover = sim.create_instance(label="vastevents:job-77")
    foreign = sim.create_instance(label="notebook")
    dry = vastevents(sim, tmp_path, "run", "--image", "img", "--cmd", "true", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    said = " ".join(dry.stderr.split())
    assert "2 instance(s) under 'vastevents' labels already on the account" in said
    assert f"{busy} vastevents-sim:job-1" in said and f"job {job_id} (running)" in said
    assert f"{leftover} vastevents:job-77" in said and "left over: no running job uses it" in said
    assert "notebook" not in said, "not ours: counted as others only once running"
    assert sim.instance_count() == 3, "a dry run only looks"

    # y: generate the SSH key; destroy: the left-over; n: do not rent after all
    asked = vastevents(sim, tmp_path, "run", "--image", "img", "--cmd", "true", stdin="y\ndestroy\nn\n")
    assert asked.returncode == 0, asked.stderr
    assert "keep, stop or destroy them?" in asked.stderr and "destroyed 1 left-over instance(s)" in asked.stderr
    assert sim.instance(leftover) is None, "the left-over is gone"
    assert sim.instance(busy) is not None and sim.instance(foreign) is not None, "the job's and others' stay"
    for instance_id in (busy, foreign):
        sim.apply("destroy", instance=instance_id)


def test_run_yes_says_what_is_left_over_and_goes_on(sim: Simulator, tmp_path: Path) -> None:
    leftover = sim.create_instance(label="vastevents:job-9")
    done = vastevents(sim, tmp_path, "run", "--image", "img", "--cmd", "true", "--yes", "--json", "--query",
                      "num_gpus=1 dph_total<0.0001")  # fmt: skip
    assert done.returncode == 1 and "no offer matches" in done.stderr, done.stderr
    assert "--yes: leaving the 1 left-over instance(s) as they are" in " ".join(done.stderr.split())
    assert sim.instance(leftover) is not None
    assert done.stdout == "", "--json keeps stdout for the report"
    sim.apply("destroy", instance=leftover)


def test_volumes_lists_the_accounts_volumes_with_their_price_and_users(sim: Simulator, tmp_path: Path) -> None:
    empty = vastevents(sim, tmp_path, "volumes")
    assert empty.returncode == 0 and "No volumes on the account." in empty.stdout, empty.stderr
    machine = next(iter(sim.state()["machines"]))["machine_id"]
    made = api(sim, "PUT", "/api/v0/volumes/", id=90_000_000 + machine, size=12, name="datasets")
    listed = vastevents(sim, tmp_path, "volumes")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.strip().startswith(str(made["volume_id"])))
    assert "datasets" in row and str(machine) in row and " 12 " in row
    rows = json.loads(vastevents(sim, tmp_path, "volumes", "--json").stdout)
    assert rows[0]["id"] == made["volume_id"] and rows[0]["disk_space"] == 12 and rows[0]["dph_total"] > 0
    dry = vastevents(sim, tmp_path, "run", "--image", "img", "--cmd", "true", "--dry-run")
    assert "1 volume(s) on the account bill $" in dry.stderr, "run's preflight counts them: they bill too"
    api(sim, "DELETE", f"/api/v0/volumes/?id={made['volume_id']}")


def test_a_submitted_jobs_label_names_the_account_unless_the_config_sets_the_prefix(
    sim: Simulator, tmp_path: Path
) -> None:
    def submitted(*extra: str, env: dict[str, str] | None = None) -> str:
        done = vastevents(sim, tmp_path, "run", "--image", "img", "--cmd", "true", "--submit", "--yes", "--json",
                          *extra, env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr
        label: str = json.loads(done.stdout.strip().splitlines()[-1])["label"]
        return label

    assert submitted().startswith("vastevents-sim:job-"), "the simulator's account is called sim"
    assert submitted(env={"VAST_API_KEY": ""}).startswith("vastevents-vast-user:job-"), "no key here: the fallback"
    configured = tmp_path / "lab.toml"
    configured.write_text(f'[vast]\nlabel_prefix = "lab"\n[store]\npath = "{tmp_path / "state.db"}"\n')
    done = subprocess.run(
        [sys.executable, "-m", "vastevents", "run", "--image", "img", "--cmd", "true", "--submit", "--yes", "--json",
         "--config", str(configured)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "HOME": str(tmp_path / "home"), "VAST_URL": sim.url, "VAST_API_KEY": KEY},
    )  # fmt: skip
    assert json.loads(done.stdout.strip().splitlines()[-1])["label"].startswith("lab:job-"), done.stderr
