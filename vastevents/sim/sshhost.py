"""Real SSH hosts for simulated instances: one OpenSSH ``sshd`` per running instance on 127.0.0.1.

Each instance gets its own port, authorized_keys (the account's keys plus attached ones) and a directory
that stands in for the container's filesystem: every session starts there with ``HOME`` pointing at it
(a ``ForceCommand`` wrapper), so ``ssh -p PORT root@127.0.0.1 'python train.py'`` really runs a job.
The machine's own ``python3`` runs it; what the image would add is stood in for: ``nvidia-smi`` on every host,
and on a PyTorch image (its name says ``torch``) a ``torch`` module that imports and reports the simulated GPUs
and CUDA (so a job's preflight ``imports = ["torch"]`` passes), but computes nothing.
sshd runs as the current user, so it can only log that user in: as root (CI) ``root@`` works as on Vast;
as another user connect as ``$USER@127.0.0.1``. Stopping an instance ends its sshd and every process its
sessions started (found by a marker variable in their environment); the directory stays until destroy.

The instance's directory stands in for the container's ``/`` (``/root`` is its home): a volume mounted at
``/root/data`` is a link at ``root/data`` in it to the volume's own directory, which outlives the instance.
``execute`` runs Vast's constrained commands (``ls``, ``rm``, ``du``) there, on relative paths only.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from vastevents.errors import VastEventsError

if TYPE_CHECKING:
    from vastevents.sim.model import SimInstance

logger = logging.getLogger("vastevents.sim.ssh")

MARKER = "VASTEVENTS_SIM_INSTANCE"
"""Environment variable set in every session and onstart job: its value is the instance's directory."""
DIRECTORY_PREFIX = "vastevents-sim-ssh-"
"""Prefix of the temporary directory holding the host key and one directory (with sshd_config) per instance."""
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/opt/homebrew/sbin/sshd")
SFTP_CANDIDATES = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server")
INSTALL_HINT = (
    "sshd (OpenSSH server) was not found. Install it: `sudo apt-get install openssh-server` (Debian/Ubuntu), "
    "`sudo dnf install openssh-server` (Fedora), or run the simulator without --ssh."
)


class SshdMissing(VastEventsError):
    """`--ssh` was asked for but no sshd binary exists on this machine."""


def find_sshd() -> str | None:
    found = shutil.which("sshd")
    if found:
        return found
    return next((c for c in SSHD_CANDIDATES if os.access(c, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class Gpus:
    """What an instance's ``nvidia-smi`` reports."""

    name: str = "RTX 4090"
    count: int = 1
    memory_mb: float = 24564.0
    cuda: float = 12.4


NO_DRIVER = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."


def _nvidia_smi(gpus: Gpus, broken_flag: Path) -> str:
    """A stand-in ``nvidia-smi``: the query form prints CSV rows, bare it prints a banner with the CUDA version."""
    rows = "".join(f"{gpus.name}, {gpus.memory_mb:.0f} MiB, 550.54\n" for _ in range(gpus.count))
    banner = f"| NVIDIA-SMI 550.54  Driver Version: 550.54  CUDA Version: {gpus.cuda:g} |\n"
    table = "".join(f"|   {i}  {gpus.name:<30} | {gpus.memory_mb:.0f}MiB |\n" for i in range(gpus.count))
    return (
        "#!/bin/sh\n"
        f"if [ -e {shlex.quote(str(broken_flag))} ]; then echo {shlex.quote(NO_DRIVER)}; exit 9; fi\n"
        'case "$*" in\n'
        f"  *--query-gpu*) printf %s {shlex.quote(rows)} ;;\n"
        f"  *) printf %s {shlex.quote(banner + table)} ;;\n"
        "esac\n"
    )


def _torch_stand_in(gpus: Gpus) -> dict[str, str]:
    """The files of a stand-in ``torch`` package (relative path -> text) reporting `gpus`."""
    return {
        "torch/__init__.py": (
            '"""Stand-in for the torch of a PyTorch image on a simulated vastevents host: it computes nothing."""\n'
            "from torch import cuda, version\n"
            '__version__ = "2.3.1+sim"\n'
        ),
        "torch/version.py": f"cuda = {f'{gpus.cuda:g}'!r}\n",
        "torch/cuda.py": (
            "def is_available():\n    return True\n\n\n"
            f"def device_count():\n    return {gpus.count}\n\n\n"
            f"def get_device_name(device=0):\n    return {gpus.name!r}\n"
        ),
    }


@dataclass
class _Host:
    directory: Path
    port: int
    sshd: subprocess.Popen[bytes] | None = None
    onstart: subprocess.Popen[bytes] | None = None
    logs: list[IO[bytes]] = field(default_factory=list)
    host_key: Path | None = None
    """Its own host key after a ``host_key`` fault; else every instance presents the simulator's."""


class SSHHosts:
    """Starts and ends the sshd behind each running instance; implements the world's HostBackend."""

    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._hosts: dict[int, _Host] = {}
        self._sshd: str | None = None
        self._sftp = next((c for c in SFTP_CANDIDATES if os.access(c, os.X_OK)), None)
        self.gpus_for: Callable[[SimInstance], Gpus] = lambda instance: Gpus(count=instance.num_gpus)
        """What each instance's nvidia-smi reports (the Simulator answers from the instance's machine)."""
        self.broken_machines: set[int] = set()

    @property
    def root(self) -> Path:
        if self._tmp is None:
            self.start()
        assert self._tmp is not None
        return Path(self._tmp.name)

    def start(self) -> None:
        """Find sshd and make the host key; raises SshdMissing with install instructions."""
        if self._tmp is not None:
            return
        self._sshd = find_sshd()
        if self._sshd is None:
            raise SshdMissing(INSTALL_HINT)
        if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir sshd needs as root
        self._tmp = tempfile.TemporaryDirectory(prefix=DIRECTORY_PREFIX)
        key = Path(self._tmp.name) / "ssh_host_ed25519_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vastevents-sim", "-f", str(key)],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def port_for(self, instance_id: int) -> int:
        return self._host(instance_id).port

    def _host(self, instance_id: int) -> _Host:
        host = self._hosts.get(instance_id)
        if host is None:
            directory = self.root / f"instance-{instance_id}"
            (directory / "root").mkdir(parents=True, exist_ok=True)
            host = _Host(directory=directory, port=_free_port())
            self._hosts[instance_id] = host
        return host

    def directory(self, instance_id: int) -> Path:
        return self._host(instance_id).directory

    def ports(self) -> dict[int, int]:
        return {i: h.port for i, h in self._hosts.items() if h.sshd is not None and h.sshd.poll() is None}

    def instance_up(self, instance: SimInstance, authorized_keys: Sequence[str]) -> None:
        host = self._host(instance.id)
        if instance.ssh_port != host.port:
            host.port = instance.ssh_port  # restored from a state file
        if host.sshd is not None and host.sshd.poll() is None:
            return
        self.update_keys(instance.id, authorized_keys)
        if instance.volume_id is not None and instance.mount_path is not None:
            self._mount(host, instance.volume_id, instance.mount_path)
        if not self._spawn_sshd(host, self._write_config(host, instance), instance.id):
            return
        if instance.onstart:
            out = (host.directory / "onstart.log").open("ab")
            host.logs.append(out)
            host.onstart = subprocess.Popen(
                ["/bin/sh", "-c", instance.onstart],
                cwd=host.directory / "root",
                env=_session_env(host, instance.env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _spawn_sshd(self, host: _Host, config: Path, instance_id: int) -> bool:
        """Start the instance's sshd listener; True once it accepts connections."""
        log = (host.directory / "sshd.log").open("ab")
        host.logs.append(log)
        assert self._sshd is not None
        host.sshd = subprocess.Popen(
            [self._sshd, "-D", "-e", "-f", str(config)], stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.monotonic() + 10.0
        while not _port_open(host.port):
            if host.sshd.poll() is not None or time.monotonic() > deadline:
                logger.error("sshd for instance %s did not start; see %s", instance_id, host.directory / "sshd.log")
                return False
            time.sleep(0.02)
        return True

    def rekey(self, instance_id: int) -> None:
        """The instance's SSH server presents a new host key from now on (reinstalled, or something sits in
        between); sessions already open and the job's processes go on."""
        host = self._host(instance_id)
        key = host.directory / "ssh_host_ed25519_key"
        key.unlink(missing_ok=True)
        key.with_name(f"{key.name}.pub").unlink(missing_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vastevents-sim", "-f", str(key)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        host.host_key = key
        config = host.directory / "sshd_config"
        if host.sshd is None or host.sshd.poll() is not None or not config.exists():
            return  # the next start writes its config with the new key
        lines = config.read_text().splitlines()
        config.write_text("".join(f"HostKey {key}\n" if line.startswith("HostKey ") else f"{line}\n" for line in lines))
        host.sshd.terminate()  # the listener only: each session is a process of its own and goes on
        host.sshd.wait(timeout=10)
        self._spawn_sshd(host, config, instance_id)

    def ssh_down(self, instance_id: int) -> None:
        """The instance's SSH server stops, its open sessions with it (until the instance comes up again); the
        instance's jobs go on."""
        host = self._hosts.get(instance_id)
        if host is None or host.sshd is None:
            return
        _kill_tree([host.sshd.pid], None)
        host.sshd.wait(timeout=5)
        host.sshd = None

    def _volume_directory(self, volume_id: int) -> Path:
        directory = self.root / "volumes" / f"volume-{volume_id}"
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def _mount(self, host: _Host, volume_id: int, mount_path: str) -> None:
        link = host.directory / mount_path.strip("/")
        target = self._volume_directory(volume_id)
        if link.is_symlink() and link.resolve() == target.resolve():
            return
        if link.exists() or link.is_symlink():
            logger.warning("volume %s not mounted at %s: something is already there", volume_id, mount_path)
            return
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)

    def volume_gone(self, volume_id: int) -> None:
        shutil.rmtree(self.root / "volumes" / f"volume-{volume_id}", ignore_errors=True)

    def volume_cloned(self, source_id: int, volume_id: int) -> None:
        shutil.copytree(self._volume_directory(source_id), self._volume_directory(volume_id), dirs_exist_ok=True)

    def instance_reset(self, instance_id: int) -> None:
        """A recreated container: the processes end and its filesystem starts empty (volumes keep their files)."""
        self.instance_down(instance_id)
        host = self._hosts.get(instance_id)
        if host is not None:
            root = host.directory / "root"
            shutil.rmtree(root, ignore_errors=True)  # a mounted volume is a link: removed, never followed
            root.mkdir()
            (host.directory / "onstart.log").unlink(missing_ok=True)

    def execute(self, instance_id: int, argv: Sequence[str]) -> str:
        """Run one of Vast's constrained commands in the instance's filesystem: its output (and errors)."""
        host = self._host(instance_id)
        try:
            done = subprocess.run(
                list(argv), cwd=host.directory, capture_output=True, text=True, timeout=30, check=False
            )
        except subprocess.TimeoutExpired:
            return f"{argv[0]}: timed out after 30 s\n"
        return done.stdout + done.stderr

    def update_keys(self, instance_id: int, keys: Iterable[str]) -> None:
        host = self._host(instance_id)
        (host.directory / "authorized_keys").write_text("".join(f"{k.strip()}\n" for k in keys))

    def onstart_output(self, instance_id: int) -> str:
        host = self._hosts.get(instance_id)
        path = host.directory / "onstart.log" if host else None
        return path.read_text(errors="replace") if path is not None and path.exists() else ""

    def break_gpus(self, machine_id: int, instance_ids: Iterable[int] = ()) -> None:
        """Make nvidia-smi fail ("GPU not visible") on every instance of `machine_id`, now and later."""
        self.broken_machines.add(machine_id)
        for instance_id in instance_ids:
            (self._host(instance_id).directory / "gpu_broken").touch()

    def _write_tools(self, host: _Host, instance: SimInstance) -> None:
        tools = host.directory / "bin"
        tools.mkdir(exist_ok=True)
        broken = host.directory / "gpu_broken"
        if instance.machine_id in self.broken_machines:
            broken.touch()
        smi = tools / "nvidia-smi"
        smi.write_text(_nvidia_smi(self.gpus_for(instance), broken))
        smi.chmod(0o755)
        if "torch" in instance.image.lower():
            for name, text in _torch_stand_in(self.gpus_for(instance)).items():
                (host.directory / "site" / name).parent.mkdir(parents=True, exist_ok=True)
                (host.directory / "site" / name).write_text(text)

    def _write_config(self, host: _Host, instance: SimInstance) -> Path:
        self._write_tools(host, instance)
        session = host.directory / "session.sh"
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in _session_env(host, instance.env).items())
        sftp = f'  *sftp-server*) exec {shlex.quote(self._sftp)} -d "$HOME" ;;\n' if self._sftp else ""
        session.write_text(
            "#!/bin/sh\n"
            f"{exports}"
            'cd "$HOME" || exit 1\n'
            'case "$SSH_ORIGINAL_COMMAND" in\n'
            '  "") exec "${SHELL:-/bin/sh}" -l ;;\n'
            f"{sftp}"
            "esac\n"
            'exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"\n'
        )
        session.chmod(0o755)
        config = host.directory / "sshd_config"
        lines = [
            f"Port {host.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {host.host_key or self.root / 'ssh_host_ed25519_key'}",
            f"PidFile {host.directory / 'sshd.pid'}",
            f"AuthorizedKeysFile {host.directory / 'authorized_keys'}",
            "StrictModes no",
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            f"ForceCommand {session}",
            # sshd starts the ForceCommand through the user's own shell, and bash then reads ~/.bashrc; with HOME
            # on the instance's directory it reads none, so a machine's shell setup (a pyenv rehash waiting on
            # its lock, say) cannot slow or hang the simulated host's logins.
            f"SetEnv HOME={_session_env(host, instance.env)['HOME']}",
            "PrintMotd no",
            "LogLevel ERROR",
        ]
        if self._sftp:
            lines.append(f"Subsystem sftp {self._sftp}")
        config.write_text("\n".join(lines) + "\n")
        return config

    def instance_down(self, instance_id: int) -> None:
        host = self._hosts.get(instance_id)
        if host is None:
            return
        procs = [p for p in (host.sshd, host.onstart) if p is not None]
        _kill_tree([p.pid for p in procs], str(host.directory))
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                logger.warning("process %s of instance %s did not exit", proc.pid, instance_id)
        host.sshd = host.onstart = None
        for log in host.logs:
            log.close()
        host.logs.clear()

    def instance_gone(self, instance_id: int) -> None:
        self.instance_down(instance_id)
        host = self._hosts.pop(instance_id, None)
        if host is not None:
            shutil.rmtree(host.directory, ignore_errors=True)

    def pids(self) -> list[int]:
        """Live sshd servers and every process marked as one of our instances' jobs."""
        alive = [h.sshd.pid for h in self._hosts.values() if h.sshd is not None and h.sshd.poll() is None]
        if self._tmp is not None:
            alive += _marked(self._tmp.name)
        return sorted(set(alive))

    def close(self) -> None:
        for instance_id in list(self._hosts):
            self.instance_down(instance_id)
        self._hosts.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _session_env(host: _Host, env: dict[str, str]) -> dict[str, str]:
    safe = {k: v for k, v in env.items() if k.isidentifier()}
    return {
        **safe,
        "PATH": f"{host.directory / 'bin'}:{os.environ.get('PATH', '/usr/local/bin:/usr/bin:/bin')}",
        "PYTHONPATH": ":".join(filter(None, (str(host.directory / "site"), safe.get("PYTHONPATH")))),
        "HOME": str(host.directory / "root"),
        MARKER: str(host.directory),
    }


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _marked(prefix: str) -> list[int]:
    """Processes whose marker variable names `prefix` or a directory below it (jobs that outlived their session)."""
    needle = f"{MARKER}={prefix}".encode()
    found: list[int] = []
    if not Path("/proc").is_dir():
        return found
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(item == needle or item.startswith(needle + b"/") for item in environ.split(b"\0")):
            found.append(int(entry.name))
    return found


def _kill_tree(roots: Sequence[int], marker_prefix: str | None) -> None:
    """SIGTERM the roots, their descendants and the jobs marked with `marker_prefix`; SIGKILL whatever is left
    after 2 s."""
    if not Path("/proc").is_dir():
        targets = set(roots)
    else:
        tree = _children()
        targets = set()
        stack = list(roots)
        while stack:
            pid = stack.pop()
            if pid not in targets:
                targets.add(pid)
                stack.extend(tree.get(pid, []))
        if marker_prefix is not None:
            targets.update(_marked(marker_prefix))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in targets:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            targets = {pid for pid in targets if _alive(pid)}
            if not targets:
                return
            time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
