"""SIGTERM ends a real ``vastevents watch`` within seconds while a job's SSH connect is being retried.

The instance's SSH port is a listener of the test's own that accepts and hangs up at once, so the job's monitor
keeps retrying. The watcher's edge connects once per call and the jobs handler retries on the runtime's clock, a
wait cancelled with its task; the edge's own wall-clock backoff (30 s, then 60 s, in a worker thread a process
waits for before it exits) used to keep a stopping watcher for up to a minute (the chaos benchmark saw it). That
close() ends such a wait for the edges that still retry is tested in ``test_ssh``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from simtime_watch import write_moment

from vastevents.clock import ManualClock
from vastevents.jobspec import JobSpec
from vastevents.sim import Simulator
from vastevents.store import Jobs, SqliteStore

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = Path(__file__).with_name("simtime_watch.py")
STOP_WITHIN = 10.0
"""Wall seconds from SIGTERM to the process's end (it took 30-60 s)."""
CONFIG = """
[watch]
interval = 5
[handlers.jobs]
use = "jobs"
ssh_retry = "1s"
ssh_wait = "600s"
poll_first = "1s"
poll_every = "1s"
"""


class Knocks:
    """A TCP listener that accepts every connection and closes it at once, counting them."""

    def __init__(self, port: int) -> None:
        self.count = 0
        self.server = socket.create_server(("127.0.0.1", port))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.count += 1
            conn.close()

    def close(self) -> None:
        self.server.close()


def test_sigterm_ends_watch_within_seconds_while_a_jobs_ssh_connect_waits_to_be_retried(
    tmp_path: Path, api_key: str
) -> None:
    store_path = tmp_path / "state.db"
    config = tmp_path / "vastevents.toml"
    config.write_text(CONFIG + f'[store]\npath = "{store_path}"\n')
    (tmp_path / ".ssh").mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / ".ssh" / "id_ed25519")],
                   check=True, timeout=30)  # fmt: skip
    clock = ManualClock()
    with Simulator(api_key=api_key, clock=clock, ssh=False) as sim:
        moment = tmp_path / "simtime"
        write_moment(moment, clock.now())
        env = {k: v for k, v in os.environ.items() if not k.startswith("VASTEVENTS_")}
        env |= {"VAST_URL": sim.url, "VAST_API_KEY": api_key, "HOME": str(tmp_path), "SIMTIME_FILE": str(moment),
                "PYTHONPATH": str(ROOT)}  # fmt: skip
        store = SqliteStore(store_path)
        jobs = store.repository(Jobs)
        spec = {"image": "pytorch/pytorch", "cmd": "true", "out": str(tmp_path / "out")}
        with sim.world() as market:
            offers = [int(row["id"]) for row in sorted(market.search({}), key=lambda r: r["dph_total"])[:1]]
        job = jobs.submit(JobSpec.model_validate(spec).to_json(), offers, "vastevents", clock.now())
        log = (tmp_path / "watch.log").open("w")
        command = [sys.executable, str(LAUNCHER), "watch", "--config", str(config)]
        watch = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log)
        knocks: Knocks | None = None

        def until(condition: Callable[[], bool], what: str, seconds: float = 90) -> None:
            deadline = time.monotonic() + seconds
            while not condition():
                assert time.monotonic() < deadline, f"{what}: not within {seconds:g} s; see {tmp_path / 'watch.log'}"
                write_moment(moment, sim.advance(1))
                time.sleep(0.05)

        try:
            until(lambda: (jobs.get(job.id) or job).instance_id is not None, "the job rents its instance")
            instance_id = (jobs.get(job.id) or job).instance_id
            assert instance_id is not None
            knocks = Knocks(int((sim.instance(instance_id) or {})["ssh_port"]))
            until(lambda: knocks is not None and knocks.count > 0, "the job's monitor tries SSH")
            watch.send_signal(signal.SIGTERM)
            began = time.monotonic()
            try:
                watch.wait(timeout=STOP_WITHIN)
            except subprocess.TimeoutExpired:
                watch.kill()
                watch.wait(timeout=30)
                raise AssertionError(f"watch did not end within {STOP_WITHIN:g} s of SIGTERM") from None
            took = time.monotonic() - began
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait(timeout=30)
            if knocks is not None:
                knocks.close()
            log.close()
            store.close()
            with sim.world() as world:
                for inst in list(world.instances.values()):
                    world.destroy(inst.id)
        assert took < STOP_WITHIN
        assert watch.returncode in (0, 130), (tmp_path / "watch.log").read_text()
