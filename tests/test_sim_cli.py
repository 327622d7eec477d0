"""`vastevents sim` as a process: serves until SIGTERM, then stops within seconds and ends its sshd hosts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from vastevents.cli import app
from vastevents.sim import Simulator, sshhost

KEY = "sim-cli-test-key"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sshd_children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"sshd" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class SimProcess:
    """`vastevents sim` on a free port with a scenario (the demo, by name) and a state file, as its own process."""

    def __init__(self, state: Path, *options: str, scenario: str = "demo", key: str = KEY) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = state
        self.key = key
        command = [sys.executable, "-m", "vastevents", "sim", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--api-key", key, "--scenario", scenario, "--state", str(state), *options]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def get(self, path: str) -> Any:
        """The JSON at `path`, or None while the simulator does not answer yet."""
        try:
            return httpx.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {self.key}"}, timeout=2).json()
        except httpx.HTTPError:
            assert self.proc.poll() is None, f"the simulator exited: {self.proc.communicate()}"
            return None

    def terminate(self) -> tuple[str, str]:
        """SIGTERM, then its output; it must exit 130 (interrupted: the only way a server ends). The wait is bounded
        against a hang, not timed: on a loaded machine ending each sshd host takes its share of a busy CPU."""
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 130, err
        return out, err

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.mark.ssh
@pytest.mark.skipif(
    sshhost.find_sshd() is None, reason="OpenSSH sshd is not installed (apt-get install openssh-server)"
)
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the sshd processes")
def test_sigterm_stops_the_simulator_and_every_sshd_it_started(tmp_path: Path) -> None:
    demo = str(Simulator.builtin_scenario("demo"))
    with SimProcess(tmp_path / "s.json", "--ssh", "--speed", "60", scenario=demo) as sim:
        _wait_for(lambda: bool((sim.get("/_sim/state") or {}).get("ssh")), 30, "a running instance with sshd")
        status = subprocess.run([sys.executable, "-m", "vastevents", "sim", "--status", "--port", str(sim.port),
                                 "--api-key", KEY], capture_output=True, text=True, timeout=30)  # fmt: skip
        assert status.returncode == 0 and "vastevents:job-1" in status.stdout and "total spend" in status.stdout
        sshds = _sshd_children(sim.proc.pid)
        assert sshds
        out, err = sim.terminate()
    assert sim.url in out and "ssh hosts" in out and "stopped" in out
    assert f"VAST_API_KEY={KEY} vastevents watch" in out, "the hint shows the simulator's own key"
    assert KEY not in err and out.count(KEY) == 1, "and nothing else does"
    assert not any(_alive(pid) for pid in sshds)
    assert sim.state.exists()


def test_without_ssh_rows_still_name_an_ssh_port_and_sigterm_stops_it(tmp_path: Path) -> None:
    with SimProcess(tmp_path / "s.json", "--no-ssh") as sim:  # --scenario demo: the built-in story by name
        _wait_for(lambda: sim.get("/api/v1/instances/") is not None, 30, "the simulator to answer")
        listed = sim.get("/api/v1/instances/")["instances"]
        assert len(listed) == 6, "the demo's instances exist from the start"
        assert all(row["ssh_host"] == "127.0.0.1" and isinstance(row["ssh_port"], int) for row in listed)
        out, err = sim.terminate()
    assert "ssh hosts" not in out and "vastevents sim stopped" in out
    assert f"use it: VAST_URL={sim.url} VAST_API_KEY={KEY} vastevents watch\n" in out
    assert KEY not in err
    assert sim.state.exists(), "the state is saved on the way out"


def test_a_key_shaped_like_a_real_vast_key_is_not_echoed(tmp_path: Path) -> None:
    key = "0123456789abcdef" * 4
    with SimProcess(tmp_path / "s.json", key=key) as sim:
        _wait_for(lambda: sim.get("/api/v1/instances/") is not None, 30, "the simulator to answer")
        out, err = sim.terminate()
    assert "VAST_API_KEY=<the key you passed>" in out and key not in out + err


def test_a_port_in_use_is_named_with_the_way_out() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        command = [sys.executable, "-m", "vastevents", "sim", "--port", str(port), "--scenario", "demo"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr == f"error: port {port} on 127.0.0.1 is already in use: stop what listens there, " \
                            "or pass --port 0 for a free one\n"  # fmt: skip


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        (
            "no-such-story",
            "no-such-story: cannot read scenario: No such file or directory (or name a built-in one: demo, flaky)",
        ),
        ("bad.toml", "bad.toml: step 1: unknown action 'explode'"),
    ],
)
def test_a_bad_scenario_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text('[[step]]\nat = "1m"\naction = "explode"\n')
    result = CliRunner().invoke(app, ["sim", "--port", "0", "--scenario", scenario])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1


def test_status_without_a_simulator_is_a_one_line_error() -> None:
    command = [sys.executable, "-m", "vastevents", "sim", "--status", "--port", str(_free_port())]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode == 1
    assert result.stderr.startswith("error: no simulator answering at http://127.0.0.1:")


def test_status_names_a_wrong_key_and_shows_hosts_instances_spend(sim: Simulator, api_key: str) -> None:
    instance_id = sim.create_instance(label="vastevents:shown", pull=10)
    sim.advance(3600)
    port = str(sim.port)
    wrong = CliRunner().invoke(app, ["sim", "--status", "--port", port, "--api-key", "not-the-key"])
    assert wrong.exit_code == 1
    assert wrong.stderr == f"error: the simulator at {sim.url} refused the key: pass the one it was started with " \
                           "(--api-key or VAST_API_KEY)\n"  # fmt: skip
    shown = CliRunner().invoke(app, ["sim", "--status", "--port", port, "--api-key", api_key], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert str(instance_id) in shown.stdout and "vastevents:shown" in shown.stdout and "running" in shown.stdout
    assert "Hosts" in shown.stdout and "Spend" in shown.stdout
    assert f"total spend ${sim.state()['spend']['total_usd']:.4f}" in shown.stdout
    assert api_key not in shown.output
    sim.vanish(instance_id)


def test_status_uses_vast_url_and_vast_api_key_unless_options_say_otherwise(sim: Simulator, api_key: str) -> None:
    instance_id = sim.create_instance(label="vastevents:by-env")
    env = {"VAST_URL": sim.url, "VAST_API_KEY": api_key, "COLUMNS": "200", "VASTEVENTS_SIM_KEY": None}
    by_env = CliRunner().invoke(app, ["sim", "--status"], env=env)
    assert by_env.exit_code == 0, by_env.output
    assert sim.url in by_env.stdout and "vastevents:by-env" in by_env.stdout
    dead = f"http://127.0.0.1:{_free_port()}"
    by_port = CliRunner().invoke(app, ["sim", "--status", "--port", str(sim.port)], env={**env, "VAST_URL": dead})
    assert by_port.exit_code == 0, "an explicit --port wins over VAST_URL"
    wrong_env_key = {**env, "VAST_API_KEY": "not-the-key"}
    by_option = CliRunner().invoke(app, ["sim", "--status", "--api-key", api_key], env=wrong_env_key)
    assert by_option.exit_code == 0, "an explicit --api-key wins over VAST_API_KEY"
    refused = CliRunner().invoke(app, ["sim", "--status"], env=wrong_env_key)
    assert refused.exit_code == 1 and "refused the key" in refused.stderr
    assert api_key not in by_env.output + by_port.output + by_option.output + refused.output
    sim.vanish(instance_id)
