"""The missed edge with a real ``vastevents watch`` process: SIGKILLed right after recovery rented a replacement,
which then loads, runs and is outbid while no watcher runs; a new ``watch`` on the same store recovers it and
the job finishes from its checkpoint. The watcher runs on the simulator's time (``simtime_watch.py``), which
the test moves a second at a time while it waits (bounded) on what the store says.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from simtime_watch import write_moment
from sshkit import USER, keypair, needs_openssh, register

from vastevents import JobStatus
from vastevents.clock import ManualClock
from vastevents.jobspec import JobSpec
from vastevents.sim import Simulator
from vastevents.store import Jobs, SqliteStore

pytestmark = [pytest.mark.ssh, needs_openssh]

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = Path(__file__).with_name("simtime_watch.py")
CMD = (
    "mkdir -p ckpt; if [ -f ckpt/state ]; then echo resumed > result.txt;"
    " else echo 1 > ckpt/state; echo run >> ckpt/runs; sleep 600; fi"
)
CONFIG = """
[watch]
interval = 5
[handlers.jobs]
use = "jobs"
ssh_retry = "1s"
poll_first = "1s"
poll_every = "1s"
[handlers.recovery]
use = "recovery"
on_preempt = "replace"
min_reliability = 0.9
"""


def test_a_replacement_outbid_while_the_watch_process_was_killed_is_recovered_and_the_job_finishes(
    tmp_path: Path, api_key: str
) -> None:
    (tmp_path / ".ssh").mkdir()
    key = keypair(tmp_path / ".ssh")
    store_path = tmp_path / "state.db"
    config = tmp_path / "vastevents.toml"
    config.write_text(CONFIG + f'[store]\npath = "{store_path}"\n')
    out = tmp_path / "out"
    clock = ManualClock()
    with Simulator(api_key=api_key, clock=clock, ssh=True) as sim:
        register(sim, key)
        moment = tmp_path / "simtime"
        write_moment(moment, clock.now())
        env = {k: v for k, v in os.environ.items() if not k.startswith("VASTEVENTS_")}
        env |= {"VAST_URL": sim.url, "VAST_API_KEY": api_key, "HOME": str(tmp_path), "SIMTIME_FILE": str(moment),
                "PYTHONPATH": str(ROOT)}  # fmt: skip
        store = SqliteStore(store_path)
        jobs = store.repository(Jobs)
        spec = {"image": "pytorch/pytorch", "ssh_user": USER, "cmd": CMD, "download": ["result.txt"],
                "checkpoint_dir": "ckpt", "checkpoint_every": 1, "bid": 1.0, "out": str(out)}  # fmt: skip
        with sim.world() as market:
            offers = [int(row["id"]) for row in sorted(market.search({}), key=lambda r: r["dph_total"])[:3]]
        job = jobs.submit(JobSpec.model_validate(spec).to_json(), offers, "vastevents", clock.now())
        watch = None
        log = (tmp_path / "watch.log").open("w")

        def start() -> subprocess.Popen[bytes]:
            command = [sys.executable, str(LAUNCHER), "watch", "--config", str(config)]
            return subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log)

        def until(condition: Callable[[], bool], what: str, seconds: float = 90) -> None:
            """Move simulated time a second every 50 ms of wall time until `condition()` holds (bounded)."""
            deadline = time.monotonic() + seconds
            while not condition():
                assert time.monotonic() < deadline, f"{what}: not within {seconds:g} s; see {tmp_path / 'watch.log'}"
                write_moment(moment, sim.advance(1))
                time.sleep(0.05)

        try:
            watch = start()
            until(lambda: (out / f"job-{job.id}" / "ckpt" / "state").exists(), "the job runs and is checkpointed")
            first = jobs.get(job.id)
            assert first is not None and first.instance_id is not None
            sim.preempt(first.instance_id)  # outbid: recovery rents a replacement at once
            until(lambda: any(e.name == "recovered" for e in store.events()), "a replacement is rented")
            watch.send_signal(signal.SIGKILL)
            watch.wait(timeout=30)
            (recovered,) = [e for e in store.events() if e.name == "recovered"]
            replacement = recovered.instance_id
            assert replacement is not None
            write_moment(moment, sim.advance(300))  # no watcher: the replacement loads and runs ...
            assert (sim.instance(replacement) or {}).get("actual_status") == "running"
            sim.preempt(replacement)  # ... and is outbid, unseen
            watch = start()
            until(lambda: (jobs.get(job.id) or first).done, "the job ends", seconds=120)
            done = jobs.get(job.id)
        finally:
            if watch is not None and watch.poll() is None:
                watch.send_signal(signal.SIGTERM)
                watch.wait(timeout=30)
            log.close()
            store.close()
        assert done is not None and (done.status, done.exit_code) == (JobStatus.FINISHED, 0), done
        assert done.instance_id not in (first.instance_id, replacement)
        assert (out / f"job-{job.id}" / "result.txt").read_text() == "resumed\n"
        assert (out / f"job-{job.id}" / "ckpt" / "runs").read_text() == "run\n", "never started twice at once"
        assert sim.instance_count() == 0, "nothing left rented"
