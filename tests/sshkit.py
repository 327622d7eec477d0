"""Shared parts of the tests that log in to the simulator's real sshd hosts."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from vastevents.sim import Simulator, sshhost
from vastevents.ssh import ParamikoSsh, SshSettings

USER = "root" if os.geteuid() == 0 else getpass.getuser()
"""sshd runs as the current user, so it logs in only that user."""

_MISSING = sshhost.find_sshd() is None or shutil.which("ssh-keygen") is None
needs_openssh = pytest.mark.skipif(
    _MISSING and os.environ.get("CI", "").lower() not in ("1", "true"),
    reason="OpenSSH sshd is not installed (apt-get install openssh-server); under CI this fails instead",
)
FAST = SshSettings(connect_attempts=2, connect_wait=0.2, connect_timeout=10.0, keepalive=5.0)


def keypair(directory: Path) -> Path:
    key = directory / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    return key


def register(sim: Simulator, key: Path) -> None:
    auth = {"Authorization": f"Bearer {sim.api_key}"}
    answer = httpx.post(f"{sim.url}/api/v0/ssh/", json={"ssh_key": key.with_suffix(".pub").read_text()}, headers=auth)
    assert answer.status_code == 200


def edge(tmp: Path, key: Path) -> ParamikoSsh:
    return ParamikoSsh(tmp / "known_hosts", key_file=key, settings=FAST)
