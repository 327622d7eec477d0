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
from typing import Any

import httpx
import pytest
from sshkit import USER, needs_openssh
from test_team import Lines, wait_until

from vastevents import Cause
from vastevents.clock import ManualClock
from vastevents.sim import Simulator
from vastevents.store import SqliteStore

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
    assert report["results_dir"] == str(tmp_path / "results" / f"job-{report['job_id']}"), "its own, absolute"
    assert (Path(report["results_dir"]) / "out.txt").read_text() == "input\n"
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
    with SqliteStore(tmp_path / "state.db") as store:
        ended = [(e.name, e.cause) for e in store.events() if e.name.startswith("job_")]
    assert ended == [("job_started", None), ("job_failed", Cause.CANCELLED)], "notifiers hear it ended"


def _events(tmp_path: Path) -> bytes:
    store = tmp_path / "state.db"
    if not store.exists():
        return b""
    done = subprocess.run([sys.executable, "-c", _NAMES, str(store)], capture_output=True, timeout=30)
    return done.stdout


_NAMES = "import sqlite3,sys;print([r[0] for r in sqlite3.connect(sys.argv[1]).execute('select name from events')])"


def test_after_renting_a_price_that_changed_is_said_and_one_over_max_dph_loses_the_instance(
    sim: Simulator, tmp_path: Path
) -> None:
    """A host may change its price between the search and the create (the simulator's reprice fault)."""
    spec = tmp_path / "job.toml"
    spec.write_text(
        f'image = "python:3.11"\nssh_user = "{USER}"\ncmd = "echo done"\nquery = "num_gpus=1"\ninterruptible = false\n'
    )  # on-demand: a bid instance outbid by its new price just stops
    sim.apply("reprice", factor=1.2)
    done = _run(sim, tmp_path, str(spec), "--yes", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    (note,) = [error for error in report["errors"] if "bills" in error]
    assert f"instance {report['instance_id']} bills" in note and "was chosen at" in note
    assert note in done.stderr, "said on the console too"

    offered = min(o["dph_total"] for o in _offers(sim))
    capped = tmp_path / "capped.toml"
    capped.write_text(spec.read_text() + f"max_dph = {offered * 1.5}\n")
    sim.apply("reprice", factor=3.0)
    done = _run(sim, tmp_path, str(capped), "--yes", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    lost = [error for error in report["errors"] if "over max_dph" in error]
    assert len(lost) == 1 and f"instance {report['instance_id']}" not in lost[0], "the next offer ran the job"
    rented = [i for i in sim.state()["spend"]["instances"] if i["label"].endswith(":job-2")]
    assert len(rented) == 2, rented


def _offers(sim: Simulator) -> list[dict[str, Any]]:
    answer = httpx.post(
        f"{sim.url}/api/v0/bundles/", json={"num_gpus": {"eq": 1}}, headers={"Authorization": f"Bearer {sim.api_key}"}
    )
    offers: list[dict[str, Any]] = answer.json()["offers"]
    return offers
