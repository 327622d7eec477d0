"""README's "try it without an account", typed as a user types it: `vastevents sim --ssh` in one terminal, the
shipped example job (`examples/job/job.toml`, unchanged) run against it in another, from the repository's root."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sshkit import needs_openssh

from vastevents.cli._sim import DEFAULT_KEY, DEFAULT_PORT

ROOT = Path(__file__).resolve().parents[1]
KEY = "readme-sim-key"

pytestmark = [
    pytest.mark.ssh,
    needs_openssh,
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="the example logs in as root, as on Vast; the simulated hosts log in only the user that runs them",
    ),
]


@pytest.fixture
def sim_url() -> Iterator[str]:
    """`vastevents sim --ssh` as its own process (faster than real time, so the image pull takes half a second)."""
    command = [sys.executable, "-m", "vastevents", "sim", "--ssh", "--port", "0", "--api-key", KEY, "--speed", "120"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        first = process.stdout.readline()
        found = re.search(r"listening on (http://\S+)", first)
        try:
            assert found is not None, first + (process.stderr.read() if process.stderr else "")
            yield found[1]
            state = httpx.get(f"{found[1]}/_sim/state", headers={"Authorization": f"Bearer {KEY}"}).json()
            assert state["instances"] == [], "run destroyed what it rented"
        finally:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=60)


def test_the_example_job_runs_on_the_simulator_as_the_readme_says(sim_url: str, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    typed = f"VAST_URL=http://127.0.0.1:{DEFAULT_PORT} VAST_API_KEY={DEFAULT_KEY} vastevents run examples/job/job.toml"
    assert "vastevents sim --ssh " in readme and f"{typed} --yes" in readme  # the simulator's defaults
    shutil.copytree(ROOT / "examples", tmp_path / "examples")  # the repository's root, without writing into it
    env = {**os.environ, "HOME": str(tmp_path / "home"), "VAST_URL": sim_url, "VAST_API_KEY": KEY}
    done = subprocess.run(
        [sys.executable, "-m", "vastevents", "run", "examples/job/job.toml", "--yes", "--json"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["errors"] == [] and report["destroyed"] is True
    assert "torch 2.3.1+sim" in done.stderr  # the preflight's import of the image's torch, with its version
    results = tmp_path / report["results_dir"]  # absolute, or relative to where run was started
    assert json.loads((results / "metrics.json").read_text()) == {"epochs": 3, "loss": 0.1}
    assert (results / "out" / "ckpt" / "epoch").read_text() == "3"
