"""The SSH edge: commands and tar-stream transfers on instances with paramiko, every blocking call in a thread.

Host keys are trusted on first use *per instance*: the first key an instance's address presents is recorded in
an OpenSSH-format known_hosts file under the alias ``vast-instance-<id>`` (Vast reuses addresses across
instances, so ``[host]:port`` alone would be the wrong identity); a later connection presenting another key is
refused. Transfers are one uncompressed tar stream over the channel (compression costs more than it saves on
the fast links GPU hosts have and on already-compressed data); archives from the host are extracted with
``tarfile`` ``filter="data"``, so nothing lands outside the target directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import shutil
import subprocess
import tarfile
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, cast

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from vastevents.errors import HostKeyMismatch as HostKeyMismatch  # the edge's errors, defined with the others
from vastevents.errors import SshError as SshError
from vastevents.ports import CommandResult, SshTarget

if TYPE_CHECKING:
    import paramiko  # imported where a connection is made: a watcher starts without it

log = logging.getLogger(__name__)

CHUNK = 1 << 20
WINDOW = 64 << 20
"""A large channel window and packet size: paramiko's defaults cap a loopback stream far below the link."""
OPENSSH_FAILED = 255
"""``ssh``'s own exit status when it fails (cannot connect, host key refused), apart from the remote command's."""
PACKET = 1 << 18
"""Packets up to 256 KiB from the host (what OpenSSH accepts): fewer, larger reads on downloads."""


@dataclass(frozen=True)
class SshSettings:
    """How hard to try: bounded connect attempts with backoff (as users do by hand: 3 tries, 30 s apart)."""

    connect_attempts: int = 3
    connect_wait: float = 30.0
    connect_timeout: float = 20.0
    keepalive: float = 15.0
    openssh_transfers: bool = True
    """Move bulk tar streams through OpenSSH's ``ssh`` when it is installed (measurably faster than paramiko's
    pure-Python packet layer); the host key it checks is the one recorded on first use."""


def host_alias(target: SshTarget) -> str:
    return f"vast-instance-{target.instance_id}" if target.instance_id is not None else f"[{target.host}]:{target.port}"


class _TrustOnFirstUse:
    """Record the first key of an alias; refuse any other key later (the client holds no keys of its own).

    A ``paramiko.MissingHostKeyPolicy``: paramiko calls only :meth:`missing_host_key` on it."""

    def __init__(self, edge: ParamikoSsh, alias: str) -> None:
        self.edge = edge
        self.alias = alias

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        self.edge.check_host_key(self.alias, key)


def fingerprint(key: paramiko.PKey) -> str:
    """A host key as OpenSSH names it (``ssh-ed25519 SHA256:...``): safe to log, compared with ``ssh-keygen -l``."""
    return f"{key.get_name()} {key.fingerprint}"


def _default_keys() -> list[Path]:
    """The private keys under ``$HOME/.ssh`` that paramiko's ``look_for_keys`` tries."""
    ssh_dir = Path.home() / ".ssh"
    return [ssh_dir / name for name in ("id_ed25519", "id_ecdsa", "id_rsa") if (ssh_dir / name).is_file()]


ENDED_KEPT = 64
"""How many ended transfers a :class:`Transfer` remembers (a long-running watcher makes many)."""


@dataclass
class Transfer:
    """The upload or download in progress, or the last one: what it moves and how many bytes so far, and the
    latest that ended, with how many ended in all (for progress lines; written by the thread that moves the
    bytes, read by anyone)."""

    direction: Literal["upload", "download"] = "upload"
    path: str = ""
    done: int = 0
    active: bool = False
    ended: deque[tuple[Literal["upload", "download"], str, int]] = field(
        default_factory=lambda: deque(maxlen=ENDED_KEPT)
    )
    ended_count: int = 0

    def begin(self, direction: Literal["upload", "download"], path: str) -> None:
        self.direction, self.path, self.done, self.active = direction, path, 0, True

    def end(self) -> None:
        self.active = False
        self.ended.append((self.direction, self.path, self.done))
        self.ended_count += 1

    def ended_since(self, count: int) -> list[tuple[Literal["upload", "download"], str, int]]:
        """The transfers that ended after the first `count` (those still remembered)."""
        new = min(self.ended_count - count, len(self.ended))
        return list(self.ended)[len(self.ended) - new :] if new > 0 else []


class _Counted:
    """A stream that adds every byte it reads or writes to `transfer`."""

    def __init__(self, stream: Any, transfer: Transfer) -> None:
        self._stream, self._transfer = stream, transfer

    def write(self, data: bytes) -> int:
        self._transfer.done += len(data)
        written: int = self._stream.write(data)
        return written

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._stream.read(size)
        self._transfer.done += len(data)
        return data


def _counted(stream: Any, transfer: Transfer) -> IO[bytes]:
    """`stream` counting its bytes into `transfer` (tarfile's stream modes only read or write)."""
    return cast(IO[bytes], _Counted(stream, transfer))


class ParamikoSsh:
    """The :class:`~vastevents.ports.Ssh` port over paramiko; one cached connection per target.

    :attr:`transfer` tells how far the upload or download in progress is.
    """

    def __init__(
        self,
        known_hosts: Path,
        *,
        key_file: Path | None = None,
        settings: SshSettings | None = None,
    ) -> None:
        self.known_hosts = Path(known_hosts).expanduser()
        self.key_file = key_file
        self.settings = settings or SshSettings()
        self._lock = threading.Lock()
        self._clients: dict[SshTarget, paramiko.SSHClient] = {}
        self._closing = threading.Event()
        """Set by :meth:`close`: a worker thread waiting to retry a connect gives up at once."""
        self._connecting: set[paramiko.SSHClient] = set()
        self._processes: set[subprocess.Popen[bytes]] = set()
        self.transfer = Transfer()

    # --- host keys ----------------------------------------------------------------------------------------

    def check_host_key(self, alias: str, key: paramiko.PKey) -> None:
        import paramiko

        with self._lock:
            keys = paramiko.HostKeys()
            if self.known_hosts.exists():
                keys.load(str(self.known_hosts))
            known = keys.lookup(alias)
            if known is None or key.get_name() not in known:
                self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
                keys.add(alias, key.get_name(), key)
                keys.save(str(self.known_hosts))
                log.info("recorded the host key of %s (%s) on first use", alias, key.get_name())
                return
            if known[key.get_name()] != key:
                raise HostKeyMismatch(alias, presented=fingerprint(key), recorded=fingerprint(known[key.get_name()]))

    # --- connections --------------------------------------------------------------------------------------

    def _connect_once(self, target: SshTarget) -> paramiko.SSHClient:
        import paramiko

        self._check_open()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_TrustOnFirstUse(self, host_alias(target)))
        with self._lock:
            self._connecting.add(client)
        try:
            client.connect(
                target.host,
                port=target.port,
                username=target.user,
                key_filename=str(self.key_file) if self.key_file else None,
                look_for_keys=self.key_file is None,
                allow_agent=self.key_file is None,
                timeout=self.settings.connect_timeout,
                banner_timeout=self.settings.connect_timeout,
                auth_timeout=self.settings.connect_timeout,
                transport_factory=_fast_transport,
            )
        except HostKeyMismatch:
            client.close()
            raise
        except (OSError, paramiko.SSHException, EOFError) as exc:
            client.close()
            raise SshError(
                f"cannot reach {target.user}@{target.host}:{target.port}: {exc or type(exc).__name__}"
            ) from None
        finally:
            with self._lock:
                self._connecting.discard(client)
        if self._closing.is_set():
            client.close()
            self._check_open()
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(int(self.settings.keepalive))
        transport.window_size = WINDOW
        transport.packetizer.REKEY_BYTES = pow(2, 40)  # no rekey pauses inside one transfer
        transport.packetizer.REKEY_PACKETS = pow(2, 40)
        return client

    def _client(self, target: SshTarget) -> paramiko.SSHClient:
        with self._lock:
            client = self._clients.get(target)
        transport = client.get_transport() if client is not None else None
        if client is not None and transport is not None and transport.is_active():
            return client
        s = self.settings
        for attempt in Retrying(
            stop=stop_after_attempt(max(1, s.connect_attempts)),
            wait=wait_exponential(multiplier=s.connect_wait, max=s.connect_wait * 4),
            retry=retry_if_exception(_worth_retrying),
            sleep=self._pause,
            reraise=True,
        ):
            with attempt:
                client = self._connect_once(target)
        assert client is not None
        with self._lock:
            self._clients[target] = client
        return client

    def _channel(self, target: SshTarget, command: str, timeout: float | None) -> paramiko.Channel:
        import paramiko

        transport = self._client(target).get_transport()
        assert transport is not None
        try:
            channel = transport.open_session(window_size=WINDOW, max_packet_size=PACKET)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.forget(target)
            raise SshError(f"{target.host}:{target.port} dropped the connection: {exc}") from None
        channel.settimeout(timeout)
        channel.exec_command(command)
        return channel

    def _check_open(self) -> None:
        if self._closing.is_set():
            raise SshError("the SSH edge is closed (the watcher is stopping)")

    def _pause(self, seconds: float) -> None:
        """The wait between connect attempts, cut short by :meth:`close`."""
        if self._closing.wait(seconds):
            self._check_open()

    def forget(self, target: SshTarget) -> None:
        with self._lock:
            client = self._clients.pop(target, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        """Close every connection and end what worker threads are doing with them: a connect in progress or
        waiting to be retried, a command, a transfer (its ``ssh`` process too). A process exits only once its
        worker threads have returned, so nothing here may keep one waiting (SIGTERM must end ``watch`` promptly)."""
        self._closing.set()
        with self._lock:
            clients = [*self._clients.values(), *self._connecting]
            self._clients.clear()
            processes = list(self._processes)
        for client in clients:
            client.close()
        for process in processes:
            process.kill()

    # --- the port ------------------------------------------------------------------------------------------

    def public_key(self) -> str | None:
        """The public half of the key this edge logs in with (``key_file``, else the first of the default keys),
        as one ``authorized_keys`` line; None without a key."""
        for key in [self.key_file] if self.key_file else _default_keys():
            try:
                line = Path(f"{key}.pub").read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                line = ""
            if line:
                return line
            import paramiko

            try:
                pkey = paramiko.PKey.from_path(key)
            except (OSError, paramiko.SSHException):
                continue  # unreadable, or protected by a passphrase: not one this edge can use either
            return f"{pkey.get_name()} {pkey.get_base64()}"
        return None

    async def run(self, target: SshTarget, command: str, *, timeout: float | None = None) -> CommandResult:
        return await asyncio.to_thread(self._run, target, command, timeout)

    async def upload(self, target: SshTarget, local: Path, remote: str) -> None:
        """Copy the contents of directory `local` into `remote` (created), as one tar stream."""
        upload = self._upload_openssh if self._openssh() else self._upload
        self.transfer.begin("upload", str(local))
        try:
            await asyncio.to_thread(upload, target, Path(local), remote)
        finally:
            self.transfer.end()

    async def download(self, target: SshTarget, remote: str, local: Path) -> None:
        """Copy `remote` (a file or directory) into directory `local`, keeping its name."""
        download = self._download_openssh if self._openssh() else self._download
        self.transfer.begin("download", remote)
        try:
            await asyncio.to_thread(download, target, remote, Path(local))
        finally:
            self.transfer.end()

    def _openssh(self) -> bool:
        return self.settings.openssh_transfers and shutil.which("ssh") is not None

    def _openssh_command(self, target: SshTarget, command: str) -> list[str]:
        """``ssh`` checking the host key recorded on first use (paramiko connects first, recording it)."""
        self._client(target)
        if self.key_file:
            identity = ["-i", str(self.key_file), "-o", "IdentitiesOnly=yes"]
        else:  # the keys paramiko looks for: OpenSSH would read the passwd entry's home, not $HOME
            identity = [arg for key in _default_keys() for arg in ("-i", str(key))]
        return ["ssh", "-p", str(target.port), *identity, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", f"HostKeyAlias={host_alias(target)}",
                "-o", f"ConnectTimeout={int(self.settings.connect_timeout)}", "-o", "LogLevel=ERROR",
                "-o", f"ServerAliveInterval={int(self.settings.keepalive)}", "-o", "Compression=no",
                f"{target.user}@{target.host}", command]  # fmt: skip

    @contextlib.contextmanager
    def _tracked(self, process: subprocess.Popen[bytes]) -> Iterator[None]:
        """While inside, :meth:`close` kills `process` (a transfer's ``ssh``)."""
        with self._lock:
            self._processes.add(process)
        try:
            if self._closing.is_set():
                process.kill()
            yield
        finally:
            with self._lock:
                self._processes.discard(process)

    def _recheck(self, target: SshTarget, returncode: int) -> None:
        """After ``ssh`` itself failed (exit 255: the connection, or the host key it checks), connect anew with
        paramiko: a host key changed since the connection it kept raises HostKeyMismatch, naming both keys."""
        if returncode == OPENSSH_FAILED:
            self.forget(target)
            self._client(target)

    def _upload_openssh(self, target: SshTarget, local: Path, remote: str) -> None:
        if not local.is_dir():
            raise SshError(f"{local} is not a directory")
        quoted = shlex.quote(remote)
        command = self._openssh_command(target, f"mkdir -p {quoted} && tar -x -f - -C {quoted}")
        with subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE) as proc, self._tracked(proc):
            assert proc.stdin is not None and proc.stderr is not None
            try:
                with tarfile.open(fileobj=_counted(proc.stdin, self.transfer), mode="w|", bufsize=CHUNK) as archive:
                    for child in sorted(local.iterdir()):
                        archive.add(child, arcname=child.name)
            except BrokenPipeError:
                pass  # the remote side failed: its message follows
            finally:
                proc.stdin.close()
            err = proc.stderr.read()
        if proc.returncode != 0:
            self._recheck(target, proc.returncode)
            raise SshError(f"upload to {remote} failed (exit {proc.returncode}): {_tar_error(err)}")

    def _download_openssh(self, target: SshTarget, remote: str, local: Path) -> None:
        parent, _, name = remote.rstrip("/").rpartition("/")
        command = self._openssh_command(target, f"tar -c -f - -C {shlex.quote(parent or '.')} -- {shlex.quote(name)}")
        local.mkdir(parents=True, exist_ok=True)
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc, self._tracked(proc):
            assert proc.stdout is not None and proc.stderr is not None
            try:
                extract(_counted(proc.stdout, self.transfer), local)
            except tarfile.ReadError as exc:
                if proc.wait() == 0:
                    raise SshError(f"{remote}: not a valid archive from the host: {exc}") from None
            finally:
                proc.stdout.read()
            err = proc.stderr.read()
        if proc.returncode != 0:
            self._recheck(target, proc.returncode)
            raise SshError(f"{remote}: {_tar_error(err) or f'ssh/tar exit {proc.returncode}'}")

    # --- blocking parts (worker threads) -------------------------------------------------------------------

    def _run(self, target: SshTarget, command: str, timeout: float | None) -> CommandResult:
        channel = self._channel(target, command, timeout)
        try:
            channel.shutdown_write()
            out, err = _drain(channel)
            return CommandResult(channel.recv_exit_status(), out.decode(errors="replace"), err.decode(errors="replace"))
        except TimeoutError:
            raise SshError(f"{command.split()[0] if command else 'command'} timed out after {timeout}s") from None
        finally:
            channel.close()

    def _upload(self, target: SshTarget, local: Path, remote: str) -> None:
        import paramiko

        if not local.is_dir():
            raise SshError(f"{local} is not a directory")
        quoted = shlex.quote(remote)
        channel = self._channel(target, f"mkdir -p {quoted} && tar -x -f - -C {quoted}", None)
        try:
            stream = channel.makefile("wb", CHUNK)
            with tarfile.open(fileobj=_counted(stream, self.transfer), mode="w|", bufsize=CHUNK) as archive:
                for child in sorted(local.iterdir()):
                    archive.add(child, arcname=child.name)
            stream.flush()
            channel.shutdown_write()
            _, err = _drain(channel)
            status = channel.recv_exit_status()
        except (OSError, paramiko.SSHException) as exc:
            raise SshError(f"upload to {target.host}:{target.port} failed: {exc}") from None
        finally:
            channel.close()
        if status != 0:
            raise SshError(f"upload to {remote} failed (tar exit {status}): {err.decode(errors='replace').strip()}")

    def _download(self, target: SshTarget, remote: str, local: Path) -> None:
        parent, _, name = remote.rstrip("/").rpartition("/")
        command = f"tar -c -f - -C {shlex.quote(parent or '.')} -- {shlex.quote(name)}"
        local.mkdir(parents=True, exist_ok=True)
        channel = self._channel(target, command, None)
        try:
            channel.shutdown_write()
            reader = channel.makefile("rb", CHUNK)
            try:
                extract(_counted(reader, self.transfer), local)
            except tarfile.ReadError as exc:
                if channel.recv_exit_status() == 0:
                    raise SshError(f"{remote}: not a valid archive from the host: {exc}") from None
            err = channel.makefile_stderr("rb").read()
            status = channel.recv_exit_status()
        finally:
            channel.close()
        if status != 0:
            raise SshError(f"{remote}: {_tar_error(err) or f'tar exit {status}'}")


FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")
"""AES-GCM first: authenticated in one pass, it moves a bulk stream markedly faster than CTR with a separate MAC."""


def _fast_transport(sock: object, **kwargs: object) -> paramiko.Transport:
    import paramiko

    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    options.ciphers = tuple(c for c in FAST_CIPHERS if c in options.ciphers) + tuple(
        c for c in options.ciphers if c not in FAST_CIPHERS
    )
    return transport


def _worth_retrying(error: BaseException) -> bool:
    return isinstance(error, SshError) and not isinstance(error, HostKeyMismatch)


def extract(stream: IO[bytes], target: Path) -> None:
    """Extract a tar stream under `target`; members escaping it (.., absolute, links out) are rejected."""
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        try:
            archive.extractall(target, filter="data")
        except tarfile.FilterError as exc:
            raise SshError(f"refused an archive from the host: {exc}") from None


def _tar_error(stderr: bytes) -> str:
    lines = [line for line in stderr.decode(errors="replace").splitlines() if "Exiting with failure" not in line]
    return "; ".join(line.removeprefix("tar: ") for line in lines).strip()


def _drain(channel: paramiko.Channel) -> tuple[bytes, bytes]:
    """All of stdout, then stderr (paramiko buffers stderr apart, so reading stdout first cannot stall)."""
    out = channel.makefile("rb", CHUNK).read()
    err = channel.makefile_stderr("rb", CHUNK).read()
    return bytes(out), bytes(err)
