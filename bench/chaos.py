"""C1: a real ``vastevents watch`` SIGKILLed at random while the simulator's world misbehaves, and what each job
came to.

Run: ``python bench/chaos.py [--seeds 1,2,3,4,5] [--kills 30] [--jobs 10] [--quick] [--check] [--json PATH]
[--keep DIR]``.

The watcher (``jobs``, ``recovery``, ``billing`` and ``reaper`` handlers; ``[watch] preempt_grace`` 30 s, not the
default 120 s: see :data:`PREEMPT_GRACE`; recovery rebids an outbid instance: :data:`ON_PREEMPT`) runs as its own
process on the simulator's time (``tests/simtime_watch.py``), against a simulator with real sshd hosts whose clock a
ticker moves :data:`TICK` simulated seconds every 50 ms of wall time (ten times the wall clock; its ``Retry-After``
headers count wall seconds at that speed, as a real API's count real ones). Jobs are submitted to the
watcher's store one after another; each uploads a data file, works a set number of simulated seconds (it reads the
simulator's time from the file the ticker writes, so a host's process and the watcher agree on it), checkpoints its
progress and writes the data file's digest. A seeded schedule, in simulated seconds, SIGKILLs the watcher and
restarts it, preempts an on-demand job's instance or outbids a bid job's, flaps a job's host offline and back,
makes every API request fail for a while (503 and 429 storms) and makes creates fail (an error that leaves the
instance behind, an offer rented away under us).

Asserted and reported per seed: every job ended (finished, or failed with a cause) within :data:`BOUND_S` of its
submission, every finished job's result byte-exact, nothing left rented in the simulator, no sshd left once it
stopped, no duplicate in the journal (one ``appeared`` and at most one ``vanished`` per instance, one
``job_finished`` per job), and the ledger within max(1 cent, 2 %) of what the simulator charged. The exit status is 1
with ``--check`` when a seed broke one of them (``--quick`` is CI's smoke run: one seed, 3 kills, two jobs).
Reported beside each job's latency: its floor (``chaos_floor.py``), the least a watcher that sees and acts at once
would have taken given the faults that hit the job, the kills and the storms; latency minus floor is the time the
watcher added.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_json
from chaos_floor import Hit, Window, floor_s

from vastevents import Event
from vastevents.clock import ManualClock
from vastevents.config import parse_duration
from vastevents.costs import tolerance
from vastevents.sim import Simulator
from vastevents.sim.sshhost import find_sshd
from vastevents.store import Job, Jobs, SqliteStore
from vastevents.store.jobs import JobStatus

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "tests" / "simtime_watch.py"
"""``vastevents watch`` on the time of a file the driver writes (the simulator's)."""
USER = "root" if os.geteuid() == 0 else os.environ.get("USER", "root")
TICK = 0.5
"""Simulated seconds the ticker adds every :data:`TICK_EVERY` wall seconds."""
TICK_EVERY = 0.05
BOUND_S = 420.0
"""Submission to the job's end, at most (simulated seconds): the issue's seven minutes."""
INTERVAL = 10.0
PREEMPT_GRACE = "30s"
"""``[watch] preempt_grace`` of the benchmark's watcher (the default is 120 s). An on-demand instance taken back is
told apart from an outage only once it has been down that long (the contract's ``preempted``), and its replacement
then boots in the simulator's 60-100 s: with the default, a job preempted late in its work cannot end within seven
minutes whatever the watcher does. A user who wants fast recovery sets a short grace, as this run does; its cost is
that a host offline longer than the grace (the run's flaps last 20-60 s) is replaced rather than waited for."""
ON_PREEMPT = "rebid"
"""``[handlers.recovery] on_preempt``: an outbid bid instance gets a higher bid and resumes on its host (15 s in the
simulator, its disk and checkpoint there), rather than a new rental's 60-100 s boot; an on-demand one taken back is
replaced (rebid does not apply to it)."""
WAIT_TIMEOUT = "60s"
"""``[handlers.recovery] wait_timeout``: how long a rebid instance may take to resume (a bid one whose host is
offline, a flap, waits for its host that long) before it is replaced (the default is 10 min)."""
WORK_S = 90.0
"""Simulated seconds each job's command works (checkpointing every few seconds)."""
TERM_S = 15.0
"""Wall seconds the watcher is given to end after SIGTERM at the end of a run."""
SETTLE_S = 600.0
"""Simulated seconds after the last job's submission plus :data:`BOUND_S` before the run is called hung."""
DEFAULT_FAULTS = {"preempt": 3, "outbid": 3, "flap": 4, "storm_503": 2, "storm_429": 2, "create_error": 2,
                  "no_such_ask": 2}  # fmt: skip
"""Faults of each kind in a run: preempt (an on-demand instance taken back), outbid (a bid one), flap (the host
offline 20-60 s and back), 503 and 429 storms (every API request fails 20-40 s), create_error (a create answers
500 yet leaves the instance), no_such_ask (the offer rented away under us)."""

JOB_PY = """\
import datetime, hashlib, os, pathlib, time
clock, work = pathlib.Path(os.environ["CHAOS_CLOCK"]), float(os.environ["CHAOS_WORK_S"])
def now():
    while True:
        try:
            return datetime.datetime.fromisoformat(clock.read_text()).timestamp()
        except ValueError:
            time.sleep(0.01)
checkpoint = pathlib.Path("ckpt")
checkpoint.mkdir(exist_ok=True)
saved = checkpoint / "done"
before = float(saved.read_text() or 0) if saved.exists() else 0.0
start = now()
while True:
    done = before + now() - start
    (checkpoint / "done.tmp").write_text(repr(done))
    os.replace(checkpoint / "done.tmp", saved)
    if done >= work:
        break
    time.sleep(0.05)
digest = hashlib.sha256(pathlib.Path("data.bin").read_bytes()).hexdigest()
pathlib.Path("out").mkdir(exist_ok=True)
pathlib.Path("out/result.txt").write_text(f"{digest} {work:g}\\n")
"""

CONFIG = """\
[watch]
interval = {interval}
preempt_grace = "{grace}"
[store]
path = "{store}"
[handlers.jobs]
use = "jobs"
ssh_retry = "5s"
ssh_wait = "180s"
poll_first = "5s"
poll_every = "10s"
[handlers.recovery]
use = "recovery"
on_preempt = "{on_preempt}"
wait_timeout = "{wait_timeout}"
min_reliability = 0.9
backoff = "10s"
[handlers.billing]
use = "billing"
[handlers.reaper]
use = "reaper"
"""


def write_moment(path: Path, moment: datetime) -> None:
    part = path.with_suffix(".part")
    part.write_text(moment.isoformat())
    os.replace(part, path)


@dataclass(frozen=True)
class Plan:
    """What one run does: how many jobs, how many kills, and the faults of each kind."""

    seed: int
    jobs: int = 10
    kills: int = 30
    faults: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_FAULTS))
    submit_every: float = 150.0
    """Simulated seconds between two submissions."""
    work_s: float = WORK_S
    tick: float = TICK
    bound_s: float = BOUND_S


@dataclass
class Outcome:
    seed: int
    bound_s: float = BOUND_S
    kills: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    leaked: int = 0
    sshd_left: int = 0
    duplicates: list[str] = field(default_factory=list)
    ledger_usd: float = 0.0
    charged_usd: float = 0.0
    sim_seconds: float = 0.0
    wall_seconds: float = 0.0
    timeline: list[str] = field(default_factory=list)
    """What the driver did and when (simulated seconds from the start), for a reader of a failing run."""
    ledger_rows: list[dict[str, Any]] = field(default_factory=list)
    submitted: dict[int, float] = field(default_factory=dict)
    """Each job's submission, in simulated seconds from the start (as the other moments here)."""
    hits: list[Hit] = field(default_factory=list)
    blocked: list[Window] = field(default_factory=list)
    """When the watcher could not act on the account: down (SIGKILLed, not restarted yet), or a storm."""

    @property
    def worst_latency(self) -> float:
        return max((j["latency_s"] for j in self.jobs if j["latency_s"] is not None), default=0.0)

    @property
    def worst_job(self) -> dict[str, Any] | None:
        ended = [j for j in self.jobs if j["latency_s"] is not None]
        return max(ended, key=lambda j: j["latency_s"], default=None)

    @property
    def most_over_floor(self) -> float:
        """The most time the watcher added to a job over what its faults alone cost (see chaos_floor)."""
        return max((j["latency_s"] - j["floor_s"] for j in self.jobs if j["latency_s"] is not None), default=0.0)

    @property
    def ledger_error(self) -> float:
        return self.ledger_usd - self.charged_usd

    def failures(self) -> list[str]:
        """Every property this run broke, in words (empty: all held)."""
        bound = self.bound_s
        found = []
        for job in self.jobs:
            if job["status"] not in ("finished", "failed", "cancelled"):
                found.append(f"job {job['id']} never ended ({job['status']})")
            elif job["status"] != "finished":
                found.append(f"job {job['id']} {job['status']} ({job['cause']}: {job['errors'][-1:]})")
            elif not job["exact"]:
                found.append(f"job {job['id']} result not byte-exact")
            if job["latency_s"] is not None and job["latency_s"] > bound:
                floor = f" (its floor {job['floor_s']:.0f} s)" if job.get("floor_s") is not None else ""
                found.append(f"job {job['id']} ended {job['latency_s']:.0f} s after its submission{floor}")
        if self.leaked:
            found.append(f"{self.leaked} instances left rented")
        if self.sshd_left:
            found.append(f"{self.sshd_left} sshd processes left")
        found += [f"journal duplicate: {d}" for d in self.duplicates]
        if abs(self.ledger_error) > tolerance(self.charged_usd):
            found.append(f"ledger ${self.ledger_usd:.4f} vs charged ${self.charged_usd:.4f}")
        return found

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "kills": self.kills, "faults": dict(self.faults), "jobs": self.jobs,
                "leaked": self.leaked, "sshd_left": self.sshd_left, "duplicates": self.duplicates,
                "ledger_usd": self.ledger_usd, "charged_usd": self.charged_usd, "ledger_error_usd": self.ledger_error,
                "worst_latency_s": self.worst_latency,
                "worst_floor_s": self.worst_job["floor_s"] if self.worst_job else None,
                "most_over_floor_s": self.most_over_floor, "sim_seconds": self.sim_seconds,
                "wall_seconds": self.wall_seconds, "failures": self.failures(), "timeline": self.timeline,
                "ledger_rows": self.ledger_rows}  # fmt: skip


class Ticker:
    """Moves the simulator's clock, and the file every process reads it from, `tick` simulated seconds every 50 ms."""

    def __init__(self, sim: Simulator, moment: Path, tick: float) -> None:
        self.sim, self.moment, self.tick = sim, moment, tick
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ticker", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(TICK_EVERY):
            write_moment(self.moment, self.sim.advance(self.tick))

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=10)


class Watcher:
    """The ``watch`` process: started, SIGKILLed, started again; its stderr appended to one log."""

    def __init__(self, root: Path, config: Path, env: dict[str, str]) -> None:
        self.root, self.config, self.env = root, config, env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.root / "watch.log").open("ab") as log:
            command = [sys.executable, str(LAUNCHER), "watch", "--config", str(self.config)]
            self.process = subprocess.Popen(command, env=self.env, cwd=self.root, stdout=subprocess.DEVNULL, stderr=log)

    @property
    def up(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)

    def stop(self) -> bool:
        """SIGTERM; False if it had to be SIGKILLed after :data:`TERM_S` (it sometimes does not end on SIGTERM)."""
        if not self.up:
            return True
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=TERM_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
            return False
        return True


def need_sshd() -> None:
    if find_sshd() is None:
        raise SystemExit("this benchmark needs OpenSSH (apt-get install -y openssh-server openssh-client)")


@contextmanager
def _world(root: Path, plan: Plan) -> Iterator[tuple[Simulator, Path, dict[str, str]]]:
    """A simulator with sshd hosts on a manual clock, the key registered, the time file written."""
    clock = ManualClock(auto_advance=False)
    (root / ".ssh").mkdir()
    key = root / ".ssh" / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    # `speed`: the simulator's Retry-After headers are wall seconds, so a storm's is its simulated rest / speed
    speed = plan.tick / TICK_EVERY
    with Simulator(clock=clock, speed=speed, ssh=True, seed=plan.seed, hosts=30, rate_limits=False) as sim:
        _register(sim, key)
        moment = root / "simtime"
        write_moment(moment, clock.now())
        # The watcher's bytecode is cached as an installed program's is (some machines set PYTHONDONTWRITEBYTECODE):
        # compiling the package again at each of 30 restarts would cost each one seconds of simulated time.
        dropped = ("PYTHONDONTWRITEBYTECODE",)
        env = {k: v for k, v in os.environ.items() if not k.startswith("VASTEVENTS_") and k not in dropped}
        env |= {"VAST_URL": sim.url, "VAST_API_KEY": sim.api_key, "HOME": str(root), "SIMTIME_FILE": str(moment),
                "PYTHONPYCACHEPREFIX": str(root / "pycache")}  # fmt: skip
        yield sim, moment, env


def _register(sim: Simulator, key: Path) -> None:
    import httpx

    answer = httpx.post(f"{sim.url}/api/v0/ssh/", json={"ssh_key": key.with_suffix(".pub").read_text()},
                        headers={"Authorization": f"Bearer {sim.api_key}"}, timeout=30)  # fmt: skip
    answer.raise_for_status()


def _schedule(plan: Plan, rng: random.Random) -> list[tuple[float, str]]:
    """(simulated seconds from the start, what) for every kill and fault, in order; submissions are separate."""
    span = (plan.jobs - 1) * plan.submit_every + plan.work_s
    items = [(rng.uniform(5.0, span), "kill") for _ in range(plan.kills)]
    for kind, count in plan.faults.items():
        items += [(rng.uniform(20.0, span), kind) for _ in range(count)]
    return sorted(items)


def _job_inputs(root: Path, n: int, rng: random.Random, work_s: float) -> tuple[Path, bytes]:
    directory = root / f"job{n}-input"
    directory.mkdir()
    (directory / "job.py").write_text(JOB_PY)
    data = rng.randbytes(32 * 1024 + n)
    (directory / "data.bin").write_bytes(data)
    return directory, f"{hashlib.sha256(data).hexdigest()} {work_s:g}\n".encode()


def _spec(inputs: Path, out: Path, moment: Path, interruptible: bool, work_s: float) -> dict[str, Any]:
    return {
        "image": "pytorch/pytorch",
        "query": "num_gpus=1",
        "disk": 16,
        "upload": str(inputs),
        "cmd": "python3 job.py",
        "env": {"CHAOS_CLOCK": str(moment), "CHAOS_WORK_S": f"{work_s:g}"},
        "download": ["out"],
        "out": str(out),
        "checkpoint_dir": "ckpt",
        "checkpoint_every": 15.0,
        "max_duration": 4 * work_s,
        "interruptible": interruptible,
        "max_offers": 5,
        "ssh_user": USER,
    }


def _running_job_instance(sim: Simulator, jobs: list[Job], bid: bool, rng: random.Random) -> tuple[int, int] | None:
    """(instance, job): a running instance of an unfinished job (a bid one's or an on-demand one's), drawn with
    `rng`."""
    found = []
    for job in jobs:
        if job.done or job.instance_id is None or bool(job.spec.get("interruptible")) != bid:
            continue
        row = sim.instance(job.instance_id)
        if row is not None and row.get("actual_status") == "running":
            found.append((job.instance_id, job.id))
    return rng.choice(sorted(found)) if found else None


@dataclass(frozen=True)
class Injected:
    """A fault applied: what it hit in words, and the job it hit or the time it kept the API refusing."""

    text: str
    hit: Hit | None = None
    storm: Window | None = None


def _inject(sim: Simulator, kind: str, jobs: list[Job], rng: random.Random, now: float) -> Injected | None:
    """Apply one fault (`now`: simulated seconds from the start); None when it has no target yet (no job running of
    the kind it needs)."""
    if kind in ("preempt", "outbid", "flap"):
        target = _running_job_instance(sim, jobs, kind == "outbid", rng)
        if target is None and kind == "flap":
            target = _running_job_instance(sim, jobs, True, rng)
        if target is None:
            return None
        instance, job = target
        if kind == "flap":
            seconds = round(rng.uniform(20, 60))
            sim.apply("flap", instance=instance, duration=f"{seconds}s", count=1)
            return Injected(f"instance {instance} for {seconds}s", Hit(now, kind, job, instance, seconds))
        sim.apply("preempt", instance=instance)
        return Injected(f"instance {instance}", Hit(now, kind, job, instance))
    if kind in ("storm_503", "storm_429"):
        seconds = round(rng.uniform(20, 40))
        if kind == "storm_503":
            sim.apply("server_error", duration=f"{seconds}s", status=503)
        else:
            sim.apply("rate_limit", duration=f"{seconds}s")
        return Injected(f"{seconds}s", storm=(now, now + seconds))
    sim.apply(kind, count=1)
    return Injected("")


def _seen_gone(store: SqliteStore) -> bool:
    """The watcher saw every instance it ever saw vanish (so the ledger closed every interval)."""
    events = store.events()
    seen = {e.instance_id for e in events if e.name == "appeared"}
    return seen <= {e.instance_id for e in events if e.name == "vanished"}


def _duplicates(store: SqliteStore) -> list[str]:
    events = store.events()
    found = []
    for name in ("appeared", "vanished", "job_finished", "job_started"):
        counts = Counter((e.instance_id, e.detail if name == "job_started" else None) for e in events if e.name == name)
        found += [f"{n} x {name} for instance {key[0]}" for key, n in counts.items() if n > 1]
    return found + _running_twice(events)


def _running_twice(events: list[Event]) -> list[str]:
    """Two instances of one job's label running at once, as the journal saw them. (A replacement rented while its
    dead instance's host is offline loads beside it: whichever of the two runs first keeps the job, and the other
    is destroyed before it runs.)"""
    running: dict[str, set[int]] = {}
    found = []
    changes = [e for e in events if e.instance is not None and e.instance_id is not None
               and (e.name in ("appeared", "vanished") or e.name == f"{e.old}_to_{e.new}")]  # fmt: skip
    for event in sorted(changes, key=lambda e: (e.at, e.id)):
        assert event.instance is not None and event.instance_id is not None
        label = event.instance.label or ""
        live = running.setdefault(label, set())
        if event.name == "vanished" or event.new != "running":
            live.discard(event.instance_id)
            continue
        if live - {event.instance_id} and label:
            found.append(f"instances {sorted(live)} and {event.instance_id} of {label} running at once")
        live.add(event.instance_id)
    return found


def _ledger(root: Path, config: Path, env: dict[str, str]) -> dict[str, Any]:
    """``vastevents cost --json``: the ledger's total and what the simulator charged, per instance too."""
    answer = subprocess.run([sys.executable, str(LAUNCHER), "cost", "--json", "--config", str(config)], env=env,
                            cwd=root, capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    report: dict[str, Any] = json.loads(answer.stdout)
    return report


def _sshd_alive(pids: set[int]) -> int:
    alive = 0
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        alive += state != "Z"
    return alive


@contextmanager
def _directory(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="vastevents-chaos-") as tmp:
        yield Path(tmp)


def run(plan: Plan, *, keep: Path | None = None) -> Outcome:
    """One chaos run; every process it started is stopped on the way out."""
    need_sshd()
    rng = random.Random(plan.seed)
    outcome = Outcome(plan.seed, plan.bound_s)
    wall = time.monotonic()
    with _directory(keep) as root, _world(root, plan) as (sim, moment, env):
        config = root / "vastevents.toml"
        (root / "state").mkdir()
        config.write_text(
            CONFIG.format(
                interval=INTERVAL,
                grace=PREEMPT_GRACE,
                on_preempt=ON_PREEMPT,
                wait_timeout=WAIT_TIMEOUT,
                store=root / "state" / "state.db",
            )
        )
        store = SqliteStore(root / "state" / "state.db")
        jobs_repo = store.repository(Jobs)
        watcher = Watcher(root, config, env)
        ticker: Ticker | None = None
        sshd: set[int] = set()
        expected: dict[int, bytes] = {}
        try:
            start = sim.clock.now().timestamp()
            watcher.start()
            ticker = Ticker(sim, moment, plan.tick)
            schedule = _schedule(plan, rng)
            submissions = [(n * plan.submit_every, n) for n in range(plan.jobs)]
            restart_at: float | None = None
            last_submit = (plan.jobs - 1) * plan.submit_every
            while True:
                now = sim.clock.now().timestamp() - start
                sshd.update(sim.ssh_pids())
                while submissions and submissions[0][0] <= now:
                    _, n = submissions.pop(0)
                    inputs, result = _job_inputs(root, n, rng, plan.work_s)
                    spec = _spec(inputs, root / "results" / f"job{n}", moment, n % 2 == 1, plan.work_s)
                    job = jobs_repo.submit(spec, [], "vastevents", sim.clock.now())
                    expected[job.id] = result
                    outcome.submitted[job.id] = now
                    outcome.timeline.append(f"{now:.0f} submit job {job.id}")
                if restart_at is not None and now >= restart_at:
                    watcher.start()
                    restart_at = None
                current = jobs_repo.list()
                while schedule and schedule[0][0] <= now:
                    _, kind = schedule.pop(0)
                    if kind == "kill" and restart_at is not None:
                        schedule.append(((restart_at or now) + 5.0, kind))  # down already: kill the next one
                        schedule.sort()
                    elif kind == "kill":
                        watcher.kill()
                        outcome.kills += 1
                        restart_at = now + rng.uniform(0.0, 20.0)
                        outcome.blocked.append((now, restart_at))
                        outcome.timeline.append(f"{now:.0f} kill, restart at {restart_at:.0f}")
                    elif (injected := _inject(sim, kind, current, rng, now)) is not None:
                        outcome.faults[kind] += 1
                        outcome.hits += [injected.hit] if injected.hit else []
                        outcome.blocked += [injected.storm] if injected.storm else []
                        outcome.timeline.append(f"{now:.0f} {kind} {injected.text}")
                    elif submissions or not all(j.done for j in current):
                        schedule.append((now + 15.0, kind))  # nothing to hit yet: try again a little later
                        schedule.sort()
                    else:
                        outcome.timeline.append(f"{now:.0f} {kind} skipped: every job ended")
                if restart_at is None and not watcher.up:
                    watcher.start()  # it exited by itself: a crash the log shows
                    outcome.faults["watcher_exit"] += 1
                ended = len(expected) == plan.jobs and all(j.done for j in current if j.id in expected)
                if ended and not schedule and restart_at is None and sim.instance_count() == 0 and _seen_gone(store):
                    break
                if now > last_submit + plan.bound_s + SETTLE_S:
                    break
                time.sleep(0.05)
            outcome.sim_seconds = sim.clock.now().timestamp() - start
        finally:
            if not watcher.stop():
                outcome.timeline.append(f"the watcher did not end within {TERM_S:g} s of SIGTERM; SIGKILLed")
            if ticker is not None:
                ticker.stop()
        outcome.leaked = sim.instance_count()
        outcome.duplicates = _duplicates(store)
        grace = parse_duration(PREEMPT_GRACE)
        for job_id, result in expected.items():
            hits = [h for h in outcome.hits if h.job == job_id]
            floor = floor_s(outcome.submitted[job_id], hits, outcome.blocked, work_s=plan.work_s, grace_s=grace)
            outcome.jobs.append(_job_report(jobs_repo.get(job_id), result, floor))
        try:
            report = _ledger(root, config, env)
            outcome.ledger_usd, outcome.charged_usd = report["total_usd"], report["charged_total_usd"] or 0.0
            outcome.ledger_rows = report["instances"]
        except (subprocess.CalledProcessError, KeyError, ValueError) as error:
            outcome.duplicates.append(f"cost --json failed: {error}")
        store.close()
    outcome.sshd_left = _sshd_alive(sshd)
    outcome.wall_seconds = time.monotonic() - wall
    return outcome


def _job_report(job: Job | None, result: bytes, floor: float) -> dict[str, Any]:
    assert job is not None
    latency = (job.finished_at - job.created_at).total_seconds() if job.finished_at is not None else None
    exact = False
    if job.status is JobStatus.FINISHED and job.results_dir is not None:
        found = list(Path(job.results_dir).rglob("result.txt"))
        exact = len(found) == 1 and found[0].read_bytes() == result
    return {"id": job.id, "status": job.status.value, "cause": job.cause.value if job.cause else None,
            "latency_s": latency, "floor_s": floor, "exact": exact, "errors": job.errors,
            "interruptible": bool(job.spec.get("interruptible"))}  # fmt: skip


def _table(outcomes: list[Outcome]) -> None:
    rows = []
    for o in outcomes:
        finished = sum(j["status"] == "finished" for j in o.jobs)
        faults = ", ".join(f"{k} {v}" for k, v in sorted(o.faults.items()))
        floor = f"{o.worst_job['floor_s']:.0f} s" if o.worst_job else "-"
        green = "yes" if not o.failures() else "NO"
        rows.append([str(o.seed), str(o.kills), faults, f"{finished}/{len(o.jobs)}", f"{o.worst_latency:.0f} s",
                     floor, f"{o.most_over_floor:.0f} s", str(o.leaked), str(o.sshd_left), str(len(o.duplicates)),
                     f"{o.ledger_error:+.4f} $", f"{o.charged_usd:.4f} $", green])  # fmt: skip
    header = ["seed", "kills", "faults", "finished", "worst job", "its floor", "most over floor", "leaked", "sshd",
              "dupes", "ledger - charged", "charged", "green"]  # fmt: skip
    print_table("C1 chaos: SIGKILLed watcher under faults (simulated seconds)", header, rows)
    for o in outcomes:
        for failure in o.failures():
            print(f"  seed {o.seed}: {failure}")
        if o.failures() and os.environ.get("CHAOS_VERBOSE"):
            print("\n".join(f"    {line}" for line in o.timeline))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated seeds, one run each")
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="a smoke run: one seed, 3 kills, 2 jobs, few faults")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 when a run broke a property")
    parser.add_argument("--keep", metavar="DIR", type=Path, help="run in DIR/seed-N and keep it (store, watch.log)")
    args = parser.parse_args()
    if args.quick:
        faults = {"outbid": 1, "storm_503": 1, "create_error": 1}
        plans = [Plan(seed=1, jobs=2, kills=3, faults=faults, submit_every=60.0, work_s=40.0, tick=1.0)]
    else:
        plans = [Plan(seed=int(s), jobs=args.jobs, kills=args.kills) for s in args.seeds.split(",")]
    outcomes = []
    for plan in plans:
        outcomes.append(run(plan, keep=args.keep / f"seed-{plan.seed}" if args.keep else None))
        print(f"seed {plan.seed}: {outcomes[-1].wall_seconds:.0f} s wall", flush=True)
    _table(outcomes)
    write_json(args.json, "chaos", {"bound_s": BOUND_S, "runs": [o.to_json() for o in outcomes]})
    if args.check and any(o.failures() for o in outcomes):
        sys.exit(1)


if __name__ == "__main__":
    main()
