"""The paramiko SSH edge against a real sshd: commands, quoting, tar-stream transfers, host keys."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import os
import shlex
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshkit import FAST, USER, edge, keypair, needs_openssh, register

from vastevents.clock import ManualClock
from vastevents.ports import SshTarget
from vastevents.sim import Simulator
from vastevents.ssh import HostKeyMismatch, ParamikoSsh, SshError, SshSettings, extract

pytestmark = [pytest.mark.ssh, needs_openssh]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[tuple[Simulator, SshTarget, ParamikoSsh]]:
    key = keypair(tmp_path)
    with Simulator(clock=ManualClock(), ssh=True) as sim:
        register(sim, key)
        instance_id = sim.create_instance(label="vastevents:ssh-test", pull=10)
        sim.advance(30)
        port = sim.instance(instance_id)["ssh_port"]  # type: ignore[index]
        ssh = edge(tmp_path, key)
        try:
            yield sim, SshTarget("127.0.0.1", port, USER, instance_id), ssh
        finally:
            ssh.close()
            sim.apply("destroy", instance=instance_id)
            assert sim.instance_count() == 0


async def test_commands_report_exit_code_and_output(host: tuple[Simulator, SshTarget, ParamikoSsh]) -> None:
    _, target, ssh = host
    result = await ssh.run(target, "echo out; echo err >&2; exit 3")
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")


async def test_upload_and_download_round_trip_byte_identical(
    host: tuple[Simulator, SshTarget, ParamikoSsh], tmp_path: Path
) -> None:
    _, target, ssh = host
    source = tmp_path / "in"
    (source / "sub dir").mkdir(parents=True)
    (source / "sub dir" / 'it\'s "quoted".bin').write_bytes(os.urandom(300_000))
    (source / "train.py").write_text("print('hi')\n")
    await ssh.upload(target, source, "work space")
    listed = await ssh.run(target, "cd 'work space' && find . -type f | sort")
    assert listed.stdout.split("\n")[:2] == ['./sub dir/it\'s "quoted".bin', "./train.py"]
    await ssh.download(target, "work space/sub dir", tmp_path / "out")
    got = tmp_path / "out" / "sub dir" / 'it\'s "quoted".bin'
    assert got.read_bytes() == (source / "sub dir" / 'it\'s "quoted".bin').read_bytes()
    with pytest.raises(SshError, match="missing"):
        await ssh.download(target, "work space/missing", tmp_path / "out")


async def test_a_malicious_archive_from_the_host_writes_nothing_outside(
    host: tuple[Simulator, SshTarget, ParamikoSsh], tmp_path: Path
) -> None:
    _, target, ssh = host
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as archive:
        payload = b"owned\n"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
    # The host answers `tar -c` with a crafted archive: a fake tar first on the sessions' PATH.
    script = "#!/bin/sh\nbase64 -d <<'E'\n" + base64.b64encode(evil.getvalue()).decode() + "\nE\n"
    placed = await ssh.run(target, f"printf %s {shlex.quote(script)} > ../bin/tar && chmod +x ../bin/tar")
    assert placed.exit_code == 0, placed.stderr
    for openssh in (False, True):
        settings = dataclasses.replace(FAST, openssh_transfers=openssh)
        fake = ParamikoSsh(tmp_path / "known_hosts", key_file=ssh.key_file, settings=settings)
        try:
            with pytest.raises(SshError, match="refused an archive"):
                await fake.download(target, "anything", tmp_path / "target")
        finally:
            fake.close()
        assert not (tmp_path / "escaped.txt").exists()
    with pytest.raises(SshError, match="refused"):
        evil.seek(0)
        extract(evil, tmp_path / "direct")
    assert not (tmp_path / "escaped.txt").exists()


async def test_a_changed_host_key_is_refused(host: tuple[Simulator, SshTarget, ParamikoSsh], tmp_path: Path) -> None:
    _, target, ssh = host
    await ssh.run(target, "true")
    text = (tmp_path / "known_hosts").read_text()
    assert text.startswith(f"vast-instance-{target.instance_id} ssh-ed25519 ")
    blob = text.split()[2]
    (tmp_path / "other").mkdir()
    forged = keypair(tmp_path / "other").with_suffix(".pub").read_text().split()[1]
    (tmp_path / "known_hosts").write_text(text.replace(blob, forged))
    other = ParamikoSsh(tmp_path / "known_hosts", key_file=ssh.key_file, settings=FAST)
    try:
        with pytest.raises(HostKeyMismatch):
            await other.run(target, "true")
    finally:
        other.close()


async def test_without_a_key_file_both_clients_use_the_keys_under_home(
    host: tuple[Simulator, SshTarget, ParamikoSsh], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watcher's edge has no key file: paramiko and OpenSSH's client (bulk transfers) must log in with the
    same key from $HOME/.ssh (OpenSSH alone would read the passwd entry's home)."""
    _, target, _ = host
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    for name in ("id_ed25519", "id_ed25519.pub"):
        (home / ".ssh" / name).write_bytes((tmp_path / name).read_bytes())
    (home / ".ssh" / "id_ed25519").chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    source = tmp_path / "in"
    source.mkdir()
    (source / "a.txt").write_text("bulk\n")
    edge = ParamikoSsh(tmp_path / "known_hosts_home", settings=FAST)
    try:
        assert edge._openssh(), "this test covers the OpenSSH transfer path"
        await edge.upload(target, source, "from-home")
        assert (await edge.run(target, "cat from-home/a.txt")).stdout == "bulk\n"
    finally:
        edge.close()


async def test_the_watchers_edge_connects_once_per_call(tmp_path: Path) -> None:
    """The handlers retry SSH on the runtime's clock; the runtime's own edge does not add a wall-clock backoff."""
    from vastevents.config import parse_config
    from vastevents.runtime import Runtime

    config = parse_config(f'[store]\npath = "{tmp_path / "state.db"}"\n')
    async with Runtime(config, client=object(), handlers=[]) as runtime:  # type: ignore[arg-type]
        assert isinstance(runtime.ssh, ParamikoSsh) and runtime.ssh.settings.connect_attempts == 1


async def test_closing_an_edge_ends_a_connect_waiting_to_be_retried(tmp_path: Path) -> None:
    """A refused connect is retried after ``connect_wait`` in a worker thread, which no task cancellation reaches
    and which a process waits for before it exits: close() (at shutdown) must end that wait at once. ``run``'s edge
    retries so; the watcher's connects once per call (the test above)."""
    server = socket.create_server(("127.0.0.1", 0))
    knocked = threading.Event()

    def hang_up() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            knocked.set()
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    slow = ParamikoSsh(tmp_path / "known_hosts", key_file=keypair(tmp_path),
                       settings=SshSettings(connect_attempts=3, connect_wait=60.0, connect_timeout=5.0))  # fmt: skip
    try:
        attempt = asyncio.create_task(slow.run(SshTarget("127.0.0.1", server.getsockname()[1], USER), "true"))
        assert await asyncio.to_thread(knocked.wait, 30), "the first connect reached the listener"
        closed = time.monotonic()
        slow.close()
        with pytest.raises(SshError):
            await asyncio.wait_for(attempt, 10)
        assert time.monotonic() - closed < 10, "not the 60 s wait"
    finally:
        server.close()
