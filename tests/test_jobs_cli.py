"""``vastevents run`` as users run it: a subprocess against a simulator with real sshd hosts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshkit import USER, needs_openssh
from test_team import Lines, wait_until

from vastevents.clock import ManualClock
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
    done = _run(sim, tmp_path, str(spec), "--yes", "--out", str(tmp_path / "r"))
    assert done.returncode == 5, done.stderr
    report = done.stdout  # for a person: words and rounded numbers
    assert re.search(r"^job 1 failed, exit code 5 *$", report, flags=re.MULTILINE), report
    assert re.search(r"^ *destroyed +yes *$", report, flags=re.MULTILINE), report
    assert re.search(r"^ *ran for +\d+ (s|min)", report, flags=re.MULTILINE), report
    assert re.search(r"^ *cost +(<\$0\.01|\$\d+\.\d\d) *$", report, flags=re.MULTILINE), report
    assert not re.search(r"\d\.\d{4,}|e-0\d", report), report  # no raw floats
    assert "failing" in done.stderr  # a short job's own output reaches the console


def test_run_shows_where_the_job_is_what_the_host_says_and_the_bytes_it_moves(tmp_path: Path) -> None:
    """Piped: a plain line at each step. The simulator's clock stands still until the line that quotes the host's
    image pull is out, so that moment is seen however slow the machine is."""
    with Simulator(api_key="progress-key-1234", ssh=True, clock=ManualClock()) as sim:
        work = tmp_path / "work"
        work.mkdir()
        (work / "weights.bin").write_bytes(os.urandom(300_000))
        spec = tmp_path / "job.toml"
        spec.write_text(f'image = "python:3.11"\nssh_user = "{USER}"\nupload = "work"\ncmd = "echo read it"\n'
                        'download = ["weights.bin"]\n')  # fmt: skip
        config = tmp_path / "vastevents.toml"
        config.write_text(f'[watch]\ninterval = 1\n[store]\npath = "{tmp_path / "state.db"}"\n')
        env = {**os.environ, "HOME": str(tmp_path / "home"), "VAST_URL": sim.url, "VAST_API_KEY": sim.api_key}
        command = [sys.executable, "-m", "vastevents", "run", str(spec), "--yes", "--config", str(config)]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=tmp_path)  # fmt: skip
        try:
            err, stdout = Lines(proc.stderr), Lines(proc.stdout)
            wait_until(lambda: sim.instance_count() == 1, "the job rents")
            sim.advance(10)  # created -> loading: the host pulls the image
            wait_until(lambda: any("Pulling image python:3.11" in line for line in err.lines), "the pull is shown")
            sim.advance(600)  # the image is pulled, the host boots
            proc.wait(timeout=240)
            err.join()
            stdout.join()
            out = "".join(stdout.lines)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, "".join(err.lines)
        assert sim.instance_count() == 0
    said = "".join(err.lines)
    assert re.search(r"^job 1 · loading.* · Pulling image python:3\.11 · \d+ s", said, flags=re.MULTILINE), said
    assert re.search(r"^job 1: uploaded 3\d\d\.\d kB \(.*work\)$", said, flags=re.MULTILINE), said
    assert re.search(r"^job 1: downloaded 3\d\d\.\d kB \(job/weights\.bin\)$", said, flags=re.MULTILINE), said
    assert re.search(r"^read it$", said, flags=re.MULTILINE), said  # the job's own output
    assert re.search(r"^job 1 · finished · \d+ s · (<\$0\.01|\$\d+\.\d\d)$", said, flags=re.MULTILINE), said
    assert "job 1 finished, exit code 0" in out


def test_dry_run_rents_nothing_and_bad_spec_names_the_key(sim: Simulator, tmp_path: Path) -> None:
    done = _run(sim, tmp_path, "--image", "x", "--cmd", "true", "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["chosen"] == shown["offers"][0]["id"]
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
