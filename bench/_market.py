"""Shared by the money benchmarks (P7, P8, P9): a seeded flaky market with real sshd hosts on a manual clock, jobs
whose command runs a set number of *simulated* seconds, and a driver that moves the clock only when everything
it drives is waiting for it.

Time is the simulator's: it stands still while a command, an SSH session or an HTTP request runs, and moves in
steps the driver chooses (a poll interval, a runbook's ``sleep 10``). So the money measured depends on what each
side does and when, never on how loaded this machine is.

A job's command (:data:`JOB_PY`) reads the simulator's time from a file the driver writes before each step and
acknowledges every value it read; it runs until ``work`` simulated seconds have passed since it started, plus the
progress its checkpoint (``ckpt/done``) brought back from an earlier run. Before the clock moves, the driver waits
until every live command has seen the new time, and, once a command finished, until its runner wrote the exit
status; then until every daemon of the watcher it drives waits on the clock again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from vastevents.clock import ManualClock
from vastevents.config import Config
from vastevents.jobspec import JobSpec
from vastevents.plugins import load_handlers
from vastevents.runtime import Runtime
from vastevents.sim import Simulator
from vastevents.sim.sshhost import find_sshd
from vastevents.ssh import ParamikoSsh, SshSettings
from vastevents.vast import VastClient

USER = "root" if os.geteuid() == 0 else os.environ.get("USER", "root")
SEED = 11
"""The market every money benchmark rents from (hosts and flaky share below)."""
HOSTS = 60
FLAKY = 0.2
QUERY = "num_gpus=1 gpu_name=RTX_4090"
"""What the benchmarks' jobs rent: one GPU of a model whose cheaper offers include flaky machines."""
STEP = 5.0
"""Simulated seconds between two cycles of a watcher a benchmark drives (``run`` polls every 5 s)."""
SETTLE_S = 120.0
"""Wall seconds the driver waits for things to settle before it calls the run stuck."""

JOB_PY = """\
import os, pathlib, time
clock, acks = pathlib.Path(os.environ["BENCH_CLOCK"]), pathlib.Path(os.environ["BENCH_ACKS"])
work, exit_mark = float(os.environ["BENCH_WORK_S"]), os.path.abspath(os.environ["BENCH_EXIT_MARK"])
ack = acks / str(os.getpid())
checkpoint = pathlib.Path("ckpt")
checkpoint.mkdir(exist_ok=True)
saved = checkpoint / "done"
before = float(saved.read_text() or 0) if saved.exists() else 0.0
start = done = last = None
while True:
    seen = clock.read_text()
    if seen != last:  # the checkpoint changes only when time moves, while the driver waits for this command
        now = float(seen)
        start = now if start is None else start
        done = before + now - start
        (checkpoint / "done.tmp").write_text(repr(done))
        os.replace(checkpoint / "done.tmp", saved)
        if done >= work:
            break
        ack.write_text(seen)
        last = seen
    time.sleep(0.02)
pathlib.Path("out").mkdir(exist_ok=True)
pathlib.Path("out/result.txt").write_text(f"{work:g} simulated seconds of work, {before:g} from a checkpoint\\n")
ack.write_text("done " + exit_mark)
"""


@dataclass
class Market:
    """A started simulator on a manual clock, the files its jobs read, and an SSH key registered with it."""

    sim: Simulator
    clock: ManualClock
    root: Path
    key: Path
    ended: set[str] = field(default_factory=set)
    """The exit marks of commands that ran to their end (each written by then)."""

    @property
    def clock_file(self) -> Path:
        return self.root / "clock"

    @property
    def acks(self) -> Path:
        return self.root / "acks"

    def job_dir(self, name: str = "job") -> Path:
        """An upload dir holding :data:`JOB_PY` as ``job.py``."""
        directory = self.root / f"{name}-input"
        directory.mkdir(exist_ok=True)
        (directory / "job.py").write_text(JOB_PY)
        return directory

    def job_env(self, work_s: float, exit_mark: str) -> dict[str, str]:
        """The environment :data:`JOB_PY` reads; `exit_mark`: where its runner writes the exit status."""
        return {"BENCH_CLOCK": str(self.clock_file), "BENCH_ACKS": str(self.acks), "BENCH_WORK_S": f"{work_s:g}",
                "BENCH_EXIT_MARK": exit_mark}  # fmt: skip

    def now(self) -> float:
        return self.clock.now().timestamp()

    async def advance(self, seconds: float, runtime: Runtime | None = None) -> None:
        """Move simulated time `seconds` on: the commands see it first, then the world and the watcher."""
        await self._commands_caught_up(self.clock_file.read_text())  # one started since the last step read it
        target = self.clock.now().timestamp() + seconds
        self._write_clock(target)
        await self._commands_caught_up(repr(target))
        self.clock.advance(seconds)
        await self.quiet(runtime)

    async def quiet(self, runtime: Runtime | None) -> None:
        """Until every daemon of `runtime` waits on the clock (none is in the middle of a step)."""
        if runtime is None:
            return
        deadline = time.monotonic() + SETTLE_S
        while self.clock.waiting() < len(runtime.daemons.running()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"daemons still busy after {SETTLE_S:g} s: {runtime.daemons.running()}")
            await asyncio.sleep(0.005)

    def _write_clock(self, at: float) -> None:
        partial = self.clock_file.with_suffix(".tmp")
        partial.write_text(repr(at))
        os.replace(partial, self.clock_file)

    def commands(self) -> list[int]:
        """The pids of every live :data:`JOB_PY` command of this market (``python3 job.py`` with its acks dir)."""
        return [pid for pid, (command, _) in self._processes().items() if command]

    def _launching(self) -> list[int]:
        """Shells of this market's jobs (they carry its environment) with no command under them yet or any more:
        a command being started, or one whose runner is writing its exit status."""
        found = self._processes()
        covered = set()
        for pid, (command, _) in found.items():
            while command and pid in found:
                covered.add(pid)
                pid = found[pid][1]
        return [pid for pid, (command, _) in found.items() if not command and pid not in covered]

    def _processes(self) -> dict[int, tuple[bool, int]]:
        """Live processes with this market's acks dir in their environment and ``job.py`` on their command line:
        pid -> (whether it is the command itself, its parent's pid)."""
        needle = f"BENCH_ACKS={self.acks}".encode()
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if b"job.py" not in b" ".join(argv) or needle not in (entry / "environ").read_bytes().split(b"\0"):
                    continue
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if stat[0] != "Z":
                command = len(argv) > 1 and argv[0].endswith(b"python3") and argv[1] == b"job.py"
                found[int(entry.name)] = (command, int(stat[1]))
        return found

    async def started(self, before: int) -> None:
        """Until more commands run than `before` (one was just launched), so none starts after time moved."""
        deadline = time.monotonic() + SETTLE_S
        while len(self.commands()) <= before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no new job command started within {SETTLE_S:g} s")
            await asyncio.sleep(0.005)

    async def _commands_caught_up(self, seen: str) -> None:
        """Until every live command has read `seen` or ended, and every one that ended has its exit status written
        (a command killed with its host has nothing to wait for)."""
        deadline = time.monotonic() + SETTLE_S
        orphaned: dict[int, float] = {}
        while True:
            live = set(self.commands())
            waiting = [pid for pid in live if not (self.acks / str(pid)).exists()] + self._launching()
            for ack in list(self.acks.iterdir()):
                pid, said = int(ack.name), ack.read_text()
                mark = said.removeprefix("done ") if said.startswith("done ") else None
                if mark is not None and Path(mark).exists():
                    self.ended.add(mark)
                    ack.unlink()
                elif mark is None and pid not in live:
                    ack.unlink()  # killed with its host
                elif (
                    mark is not None
                    and pid not in live
                    and time.monotonic() - orphaned.setdefault(pid, time.monotonic()) > 2
                ):
                    ack.unlink()  # ended, and its runner was killed before it could say how
                elif mark is not None or said != seen:
                    waiting.append(pid)
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"job commands {waiting} did not see the clock within {SETTLE_S:g} s")
            await asyncio.sleep(0.005)

    def spend(self) -> dict[int, dict[str, Any]]:
        """What the simulator charged for each instance, ever: ``{id: {label, gpu_usd, storage_usd}}``."""
        return {row["id"]: row for row in self.sim.state()["spend"]["instances"]}

    def flaky(self) -> dict[int, str]:
        """Machine id -> how it misbehaves, for every flaky machine."""
        return {m["machine_id"]: m["flaky"] for m in self.sim.state()["machines"] if m["flaky"]}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def need_sshd() -> None:
    if find_sshd() is None or shutil.which("ssh") is None:
        raise SystemExit("these benchmarks need OpenSSH (apt-get install -y openssh-server openssh-client)")


@contextmanager
def market(*, seed: int = SEED, hosts: int = HOSTS, flaky: float = FLAKY) -> Iterator[Market]:
    """A flaky market served on loopback with real sshd hosts, time standing still; stopped on the way out, and
    it must have nothing left rented by then."""
    need_sshd()
    clock = ManualClock(auto_advance=False)
    with tempfile.TemporaryDirectory(prefix="vastevents-bench-") as tmp, Simulator(
        clock=clock, ssh=True, seed=seed, hosts=hosts, flaky=flaky, rate_limits=False
    ) as sim:  # fmt: skip
        root = Path(tmp)
        key = root / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
        answer = httpx.post(f"{sim.url}/api/v0/ssh/", json={"ssh_key": key.with_suffix(".pub").read_text()},
                            headers={"Authorization": f"Bearer {sim.api_key}"}, timeout=30)  # fmt: skip
        answer.raise_for_status()
        place = Market(sim, clock, root, key)
        place.acks.mkdir()
        place._write_clock(place.now())
        yield place
        left = sim.instance_count()
        if left:
            raise RuntimeError(f"{left} instances left rented")


def job_spec(
    place: Market,
    inputs: Path,
    work_s: float,
    *,
    out: Path,
    interruptible: bool | None = None,
    checkpoint_every: float = 120.0,
    query: str = QUERY,
) -> JobSpec:
    """A job that runs :data:`JOB_PY` for `work_s` simulated seconds, checkpointing its progress, on `query`."""
    return JobSpec.model_validate(
        {
            "image": "pytorch/pytorch",
            "query": query,
            "disk": 16,
            "upload": str(inputs),
            "cmd": "python3 job.py",
            "env": place.job_env(work_s, ".vastevents/exit"),
            "download": ["out"],
            "out": str(out),
            "checkpoint_dir": "ckpt",
            "checkpoint_every": checkpoint_every,
            "max_duration": 2 * work_s,
            "interruptible": interruptible,
            "max_offers": 5,
            "ssh_user": USER,
        }
    )


@dataclass
class Watching:
    """A watcher (the real Runtime and handlers) on the market's clock, and the cycle a benchmark drives it by."""

    place: Market
    runtime: Runtime
    interval: float = STEP
    """Simulated seconds between its polls (a multiple of :data:`STEP`; its daemons wake every step)."""
    first: bool = True
    _since_poll: float = 0.0

    async def cycle(self) -> None:
        """One poll with its deliveries and due periodic handlers (all of them the first time), until quiet."""
        await self.runtime.poll_once(all_periodic=self.first)
        self.first = False
        self._since_poll = 0.0
        await self.place.quiet(self.runtime)

    async def step(self) -> None:
        """:data:`STEP` simulated seconds on, polling when the interval has passed."""
        await self.place.advance(STEP, self.runtime)
        self._since_poll += STEP
        if self._since_poll >= self.interval:
            await self.cycle()


@asynccontextmanager
async def watching(
    place: Market,
    name: str,
    *,
    handlers: dict[str, Any],
    choose: str = "expected_cost",
    interval: float = STEP,
    **sections: Any,
) -> AsyncIterator[Watching]:
    """A Runtime with `handlers` on the market (its own store), polling every `interval` simulated seconds."""
    store = {"path": str(place.root / f"{name}.db")}
    config = Config.model_validate(
        {"store": store, "watch": {"interval": interval}, "jobs": {"choose": choose}, "handlers": handlers, **sections}
    )
    ssh = ParamikoSsh(place.root / f"{name}-known_hosts", key_file=place.key,
                      settings=SshSettings(connect_attempts=1, connect_wait=0.1, connect_timeout=5.0))  # fmt: skip
    try:
        async with (
            VastClient(place.sim.api_key, place.sim.url) as client,
            Runtime(config, client=client, clock=place.clock, ssh=ssh, handlers=load_handlers(config)) as runtime,
        ):
            yield Watching(place, runtime, interval)
    finally:
        ssh.close()
