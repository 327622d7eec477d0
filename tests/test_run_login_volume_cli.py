"""``vastevents run`` with a private image's login and a volume, as users run it: a subprocess against a simulator
with real sshd hosts. The login shows nowhere; a volume the job made is gone when run ends, however it ends."""

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

SECRET = "-u robot -p hunter2-Registry-Token-0815 registry.example.com"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(api_key="cli-key-1357", ssh=True, speed=120) as simulator:
        yield simulator
        assert simulator.instance_count() == 0, "run destroys what it rented"
        with simulator.world() as world:
            assert [v.id for v in world.volumes.values() if v.ended_at is None] == [], "and deletes its volume"


def _env(sim: Simulator, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(tmp_path / "home"), "VAST_URL": sim.url, "VAST_API_KEY": sim.api_key,
            "REGISTRY_LOGIN": SECRET}  # fmt: skip


def _command(tmp_path: Path, *args: str) -> list[str]:
    config = tmp_path / "vastevents.toml"
    config.write_text(f'[watch]\ninterval = 1\n[store]\npath = "{tmp_path / "state.db"}"\n')
    return [sys.executable, "-m", "vastevents", *args, "--config", str(config)]


def _vastevents(sim: Simulator, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_command(tmp_path, *args), capture_output=True, text=True, env=_env(sim, tmp_path),
                          timeout=240, cwd=tmp_path)  # fmt: skip


def test_a_private_images_login_never_shows_in_output_debug_logs_store_or_journal(
    sim: Simulator, tmp_path: Path
) -> None:
    spec = tmp_path / "job.toml"
    spec.write_text(f'image = "registry.example.com/team/trainer:1"\nlogin_env = "REGISTRY_LOGIN"\n'
                    f'ssh_user = "{USER}"\ncmd = "echo trained"\n'
                    '[volume]\nmount_path = "/root/data"\nsize = 4\n')  # fmt: skip
    done = _vastevents(sim, tmp_path, "run", str(spec), "--yes", "--json", "--debug")
    assert done.returncode == 0, done.stderr
    assert "PUT /api/v0/asks/" in done.stderr, "--debug logs the create request"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["exit_code"] == 0 and report["destroyed"] is True
    shown = [done.stdout, done.stderr]
    for args in (("jobs", "--json"), ("jobs",), ("events", "--json"), ("logs", str(report["job_id"]))):
        looked = _vastevents(sim, tmp_path, *args)
        assert looked.returncode == 0, looked.stderr
        shown += [looked.stdout, looked.stderr]
    assert json.loads(shown[2])[0]["status"] == "finished"
    for text in shown:
        assert "hunter2" not in text
    for path in tmp_path.rglob("state.db*"):
        assert b"hunter2" not in path.read_bytes(), f"the login is not in {path.name}"


def test_sigterm_during_a_volume_job_destroys_the_instance_and_deletes_its_volume(
    sim: Simulator, tmp_path: Path
) -> None:
    spec = tmp_path / "job.toml"
    spec.write_text(f'image = "python:3.11"\nssh_user = "{USER}"\ncmd = "touch ckpt/begun; sleep 120"\n'
                    'checkpoint_dir = "ckpt"\n[volume]\nmount_path = "/root/ckpt"\nsize = 4\n')  # fmt: skip
    command = _command(tmp_path, "run", str(spec), "--yes", "--json")
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=_env(sim, tmp_path)) as proc:  # fmt: skip
        deadline = time.monotonic() + 120
        while not _volume_used(sim) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)  # bounded wait on a real subprocess
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["destroyed"] is True and any("interrupted" in e for e in report["errors"])


def _volume_used(sim: Simulator) -> bool:
    """The job's volume exists and its instance runs with it."""
    with sim.world() as world:
        live = [v.id for v in world.volumes.values() if v.ended_at is None]
        return bool(live) and any(
            i.volume_id in live and i.actual_status == "running" for i in world.instances.values()
        )


def test_run_refuses_before_renting_when_the_login_variable_is_unset_or_the_linked_volume_is_gone(
    sim: Simulator, tmp_path: Path
) -> None:
    spec = tmp_path / "job.toml"
    spec.write_text('image = "registry.example.com/team/trainer:1"\nlogin_env = "NO_SUCH_LOGIN"\ncmd = "true"\n')
    done = _vastevents(sim, tmp_path, "run", str(spec), "--yes", "--json")
    assert done.returncode == 1 and done.stdout == "", done.stderr
    assert "login_env names NO_SUCH_LOGIN, which is not set" in " ".join(done.stderr.split())
    spec.write_text('image = "python:3.11"\ncmd = "true"\n[volume]\nmount_path = "/root/data"\nid = 4242\n')
    gone = _vastevents(sim, tmp_path, "run", str(spec), "--yes", "--json")
    assert gone.returncode == 1 and "volume 4242 is not on the account" in " ".join(gone.stderr.split())
    assert sim.instance_count() == 0
