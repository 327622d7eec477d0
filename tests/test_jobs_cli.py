"""``vastevents run`` as users run it: a subprocess against a simulator with real sshd hosts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshkit import USER, needs_openssh

from vastevents.sim import Simulator

pytestmark = [pytest.mark.ssh, needs_openssh]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(api_key="cli-key-4321", ssh=True, speed=120) as simulator:
        yield simulator
        assert simulator.instance_count() == 0, "run destroys what it rented"


def _run(sim: Simulator, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "vastevents.toml"
    config.write_text(f'[watch]\ninterval = 1\n[store]\npath = "{tmp_path / "state.db"}"\n')
    env = {**os.environ, "HOME": str(tmp_path / "home"), "VAST_URL": sim.url, "VAST_API_KEY": sim.api_key}
    return subprocess.run(
        [sys.executable, "-m", "vastevents", "run", *args, "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path,
    )  # fmt: skip


def test_run_yes_json_uploads_runs_collects_and_destroys(sim: Simulator, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "in.txt").write_text("input\n")
    spec = tmp_path / "job.toml"
    spec.write_text(f'image = "python:3.11"\nssh_user = "{USER}"\ncmd = "cp in.txt out.txt && echo \'hi there\'"\n'
                    f'upload = "work"\ndownload = ["out.txt"]\nout = "results"\n')  # fmt: skip
    done = _run(sim, tmp_path, str(spec), "--yes", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["exit_code"] == 0 and report["destroyed"] is True and report["errors"] == []
    assert set(report) >= {"job_id", "instance_id", "gpu_name", "dph_total", "runtime_s", "cost_usd", "results_dir"}
    assert (tmp_path / "results" / "out.txt").read_text() == "input\n"
    assert (tmp_path / "home" / ".ssh" / "id_ed25519").exists(), "--yes generated the key"


def test_a_failing_job_exits_with_its_own_code_and_is_destroyed(sim: Simulator, tmp_path: Path) -> None:
    spec = tmp_path / "job.toml"
    spec.write_text(f'image = "python:3.11"\nssh_user = "{USER}"\ncmd = "echo failing; exit 5"\n')
    done = _run(sim, tmp_path, str(spec), "--yes", "--json", "--out", str(tmp_path / "r"))
    assert done.returncode == 5, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["exit_code"] == 5 and report["destroyed"] is True


def test_dry_run_rents_nothing_and_bad_spec_names_the_key(sim: Simulator, tmp_path: Path) -> None:
    done = _run(sim, tmp_path, "--image", "x", "--cmd", "true", "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["dry_run"] is True
    bad = _run(sim, tmp_path, "--image", "x", "--cmd", "true", "--disk", "-3")
    assert bad.returncode == 2 and "'disk'" in bad.stderr and "Traceback" not in bad.stderr


def test_sigterm_during_the_job_destroys_it_and_exits_130(sim: Simulator, tmp_path: Path) -> None:
    spec = tmp_path / "job.toml"
    spec.write_text(f'image = "python:3.11"\nssh_user = "{USER}"\ncmd = "sleep 120"\n')
    config = tmp_path / "vastevents.toml"
    config.write_text(f'[watch]\ninterval = 1\n[store]\npath = "{tmp_path / "state.db"}"\n')
    env = {**os.environ, "HOME": str(tmp_path / "home"), "VAST_URL": sim.url, "VAST_API_KEY": sim.api_key}
    command = [sys.executable, "-m", "vastevents", "run", str(spec), "--yes", "--json", "--config", str(config)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        deadline = time.monotonic() + 120
        while b"job_started" not in _events(tmp_path) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)  # bounded wait on a real subprocess
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["destroyed"] is True and any("interrupted" in e for e in report["errors"])


def _events(tmp_path: Path) -> bytes:
    store = tmp_path / "state.db"
    if not store.exists():
        return b""
    done = subprocess.run([sys.executable, "-c", _NAMES, str(store)], capture_output=True, timeout=30)
    return done.stdout


_NAMES = "import sqlite3,sys;print([r[0] for r in sqlite3.connect(sys.argv[1]).execute('select name from events')])"
