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

import httpx
import pytest

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


@pytest.mark.ssh
@pytest.mark.skipif(
    sshhost.find_sshd() is None, reason="OpenSSH sshd is not installed (apt-get install openssh-server)"
)
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the sshd processes")
def test_sigterm_stops_the_simulator_and_every_sshd_it_started(tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    demo = str(Simulator.builtin_scenario("demo"))
    command = [sys.executable, "-m", "vastevents", "sim", "--port", str(port), "--api-key", KEY, "--ssh"]
    command += ["--speed", "60", "--scenario", demo, "--state", str(tmp_path / "s.json")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        auth = {"Authorization": f"Bearer {KEY}"}

        def serving_with_ssh() -> bool:
            try:
                return bool(httpx.get(f"{url}/_sim/state", headers=auth, timeout=2).json()["ssh"])
            except httpx.HTTPError:
                return proc.poll() is not None

        _wait_for(serving_with_ssh, 30, "the simulator to serve a running instance with sshd")
        assert proc.poll() is None
        status = subprocess.run([sys.executable, "-m", "vastevents", "sim", "--status", "--port", str(port),
                                 "--api-key", KEY], capture_output=True, text=True, timeout=30)  # fmt: skip
        assert status.returncode == 0 and "vastevents:job-1" in status.stdout and "total spend" in status.stdout
        sshds = _sshd_children(proc.pid)
        assert sshds
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert url in out and "stopped" in out
    assert KEY not in out + err, "the key is never printed"
    assert not any(_alive(pid) for pid in sshds)
    assert (tmp_path / "s.json").exists()


def test_without_ssh_rows_still_name_an_ssh_port_and_sigterm_stops_it(tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    demo = str(Simulator.builtin_scenario("demo"))
    command = [sys.executable, "-m", "vastevents", "sim", "--host", "127.0.0.1", "--port", str(port), "--api-key", KEY]
    command += ["--no-ssh", "--speed", "1", "--scenario", demo, "--state", str(tmp_path / "s.json")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        auth = {"Authorization": f"Bearer {KEY}"}
        listed: list[dict[str, object]] = []

        def listing() -> bool:
            try:
                listed[:] = httpx.get(f"{url}/api/v1/instances/", headers=auth, timeout=2).json()["instances"]
            except httpx.HTTPError:
                return proc.poll() is not None
            return True

        _wait_for(listing, 30, "the simulator to answer the instance list")
        assert proc.poll() is None
        assert len(listed) == 6, "the demo's instances exist from the start"
        assert all(row["ssh_host"] == "127.0.0.1" and isinstance(row["ssh_port"], int) for row in listed)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "ssh hosts" not in out and "vastevents sim stopped" in out
    assert (tmp_path / "s.json").exists(), "the state is saved on the way out"


def test_status_without_a_simulator_is_a_one_line_error() -> None:
    command = [sys.executable, "-m", "vastevents", "sim", "--status", "--port", str(_free_port())]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode == 1
    assert result.stderr.startswith("error: no simulator answering at http://127.0.0.1:")
