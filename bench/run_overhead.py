"""P7: money overhead of a job, ``vastevents run`` against a script that follows the seeds' runbook literally.

Run: ``python bench/run_overhead.py [--jobs 10] [--work 600] [--quick] [--json PATH]``.

The overhead of a job is what it was billed (every instance it rented, GPU and disk, as the simulator charges)
beyond what its command's run time costs at the price it paid (the $/h of the instance it finished on). Both sides
run the same jobs one after the other, each on a fresh copy of the same seeded flaky market (``_market``), with
real sshd hosts and a command that runs ``--work`` simulated seconds; time is the simulator's and moves only when
a side waits (see ``_market``), so neither side pays for this machine's speed.

- ``runbook``: the official ``vastai`` CLI as the runbook says: search, take the cheapest offer, create it, ``show
  instance`` every 10 s until it runs, wait 20 s, check the GPU with ``nvidia-smi`` over ``ssh`` (retried every
  10 s for up to 10 minutes; a host without SSH or without a GPU is destroyed and the next cheapest taken),
  ``scp`` the inputs up, run the command over ``ssh`` and look every 10 s whether it ended, ``scp`` the results
  down, destroy.
- ``vastevents run``: what ``run`` does, on the simulator's clock: choose among the offers (``[jobs] choose``,
  default ``expected_cost``, from the host history its earlier jobs left), submit the job with its terms, and
  drive the watcher's cycle every 5 s (``run`` polls every 5 s) until the job is done.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_json
from _market import QUERY, USER, Market, job_spec, market, watching

from vastevents.store import Jobs, Terms

GOAL = 1 / 3
"""``vastevents run``'s overhead at most a third of the runbook's (issue goal)."""
POLL_S = 10.0
AFTER_RUNNING_S = 20.0
SSH_GIVE_UP_S = 600.0
DISK_GB = 16.0
IMAGE = "pytorch/pytorch"


class Runbook:
    """The seeds' runbook, step by step, with the official CLI against the market's simulator."""

    def __init__(self, place: Market) -> None:
        self.place = place
        self.vastai = str(Path(sys.executable).parent / "vastai")
        self.env = {**os.environ, "HOME": str(place.root / "runbook-home")}

    def cli(self, *args: str) -> Any:
        command = [self.vastai, "--url", self.place.sim.url, "--api-key", self.place.sim.api_key, *args]
        done = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"vastai {' '.join(args)} failed: {done.stdout[-300:]} {done.stderr[-300:]}")
        return json.loads(done.stdout) if "--raw" in args else done.stdout

    def ssh(self, port: int, command: str) -> list[str]:
        return ["ssh", "-p", str(port), "-i", str(self.place.key), "-o", "BatchMode=yes", "-o",
                "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o",
                "ConnectTimeout=5", f"{USER}@127.0.0.1", command]  # fmt: skip

    def scp(self, port: int, source: str, dest: str) -> None:
        command = ["scp", "-r", "-q", "-P", str(port), "-i", str(self.place.key), "-o", "BatchMode=yes", "-o",
                   "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                   source, dest]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    async def job(self, n: int, work_s: float, inputs: Path) -> dict[str, Any]:
        """One job to its end; the instances it rented and the price of the one it finished on."""
        tried: list[int] = []
        rented: list[int] = []
        while True:
            offers = self.cli("search", "offers", QUERY, "-o", "dph_total", "--storage", f"{DISK_GB:g}", "--raw")
            offer = next(o for o in offers if o["machine_id"] not in tried)
            tried.append(offer["machine_id"])
            created = self.cli("create", "instance", str(offer["id"]), "--image", IMAGE, "--disk", f"{DISK_GB:g}",
                               "--ssh", "--direct", "--label", f"runbook:job-{n}", "--raw")  # fmt: skip
            instance_id = int(created["new_contract"])
            rented.append(instance_id)
            while (row := self.cli("show", "instance", str(instance_id), "--raw"))["actual_status"] != "running":
                await self.place.advance(POLL_S)
            await self.place.advance(AFTER_RUNNING_S)
            port = int(row["ssh_port"])
            if await self._gpu_ready(port):
                break
            self.cli("destroy", "instance", str(instance_id), "-y")
        self.scp(port, str(inputs), f"{USER}@127.0.0.1:job")
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.place.job_env(work_s, ".exit").items())
        running = len(self.place.commands())
        command = self.ssh(port, f"cd job && {env} python3 job.py > job.log 2>&1; echo $? > .exit")
        runner = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await self.place.started(running)
        try:
            while runner.poll() is None:  # the runbook looks every 10 s
                await self.place.advance(POLL_S)
                if any(f"/instance-{instance_id}/" in mark for mark in self.place.ended):
                    runner.wait(timeout=60)  # the command ended: its ssh session ends in a moment of real time
        finally:
            if runner.poll() is None:
                runner.kill()
        results = self.place.root / "runbook-results" / f"job-{n}"
        results.mkdir(parents=True, exist_ok=True)
        self.scp(port, f"{USER}@127.0.0.1:job/out", str(results))
        self.cli("destroy", "instance", str(instance_id), "-y")
        return {"instances": rented, "dph_paid": float(row["dph_total"]), "ok": (results / "out").is_dir()}

    async def _gpu_ready(self, port: int) -> bool:
        """``nvidia-smi`` over SSH: True once it works; False if SSH never comes up or the GPU is not there."""
        waited = 0.0
        while waited <= SSH_GIVE_UP_S:
            done = subprocess.run(self.ssh(port, "nvidia-smi"), capture_output=True, text=True, timeout=60)
            if done.returncode == 0:
                return True
            if done.returncode != 255:  # SSH worked, nvidia-smi did not
                return False
            await self.place.advance(POLL_S)
            waited += POLL_S
        return False


async def _runbook(jobs: int, work_s: float) -> list[dict[str, Any]]:
    with market() as place:
        inputs = place.job_dir()
        runbook = Runbook(place)
        done = [await runbook.job(n, work_s, inputs) for n in range(1, jobs + 1)]
        spend = place.spend()
    for job in done:
        job["billed_usd"] = sum(spend[i]["gpu_usd"] + spend[i]["storage_usd"] for i in job["instances"])
    return done


async def _vastevents(jobs: int, work_s: float) -> list[dict[str, Any]]:
    with market() as place:
        inputs = place.job_dir()
        done = []
        async with watching(place, "run", handlers={"jobs": {"use": "jobs"}}) as watcher:
            runtime = watcher.runtime
            repository = runtime.store.repository(Jobs)
            for n in range(1, jobs + 1):
                spec = job_spec(place, inputs, work_s, out=place.root / "run-results" / f"job-{n}")
                ranking = await spec.choose(runtime.client, runtime.store, now=runtime.clock.now(),
                                            strategy=runtime.config.jobs.choose)  # fmt: skip
                terms = {e.offer.id: Terms(e.bid, e.dph) for e in ranking.estimates}
                job = repository.submit(spec.to_json(), list(terms), runtime.config.vast.label_prefix,
                                        runtime.clock.now(), terms=terms)  # fmt: skip
                watcher.first = True  # run's first cycle runs every periodic handler: the job is rented at once
                await watcher.cycle()
                finished = repository.get(job.id)
                while finished is not None and not finished.done:
                    await watcher.step()
                    finished = repository.get(job.id)
                assert finished is not None
                done.append({"job": finished, "ok": finished.exit_code == 0})
        spend = place.spend()
    for entry in done:
        job = entry.pop("job")
        entry["instances"] = [i for i, row in spend.items() if row["label"] == job.label]
        entry["billed_usd"] = sum(spend[i]["gpu_usd"] + spend[i]["storage_usd"] for i in entry["instances"])
        entry["dph_paid"] = job.dph_total or 0.0
    return done


def _summary(jobs: list[dict[str, Any]], work_s: float) -> dict[str, Any]:
    for job in jobs:
        job["overhead_usd"] = job["billed_usd"] - work_s * job["dph_paid"] / 3600.0
    finished = [j for j in jobs if j["ok"]]
    return {
        "jobs": jobs,
        "finished": len(finished),
        "billed_usd": sum(j["billed_usd"] for j in jobs),
        "overhead_usd": sum(j["overhead_usd"] for j in jobs),
        "rentals": sum(len(j["instances"]) for j in jobs),
    }


def _table(result: dict[str, Any]) -> None:
    rows = []
    for side in ("runbook", "vastevents"):
        s = result[side]
        rows.append([side, str(s["finished"]), str(s["rentals"]), f"${s['billed_usd']:.4f}",
                     f"${s['overhead_usd']:.4f}", f"${s['overhead_usd'] / max(s['finished'], 1):.4f}"])  # fmt: skip
    title = (f"P7 money overhead: {result['jobs']} jobs of {result['work_s']:g} simulated s each, one after the"
             f" other, on a seeded flaky market ({QUERY})")  # fmt: skip
    print_table(title, ["side", "finished", "rentals", "billed", "overhead", "overhead/job"], rows)
    print(f"vastevents run / runbook overhead: {result['ratio']:.3f} (goal {GOAL:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10, help="jobs per side, one after the other")
    parser.add_argument("--work", type=float, default=600.0, help="simulated seconds each command runs")
    parser.add_argument("--quick", action="store_true", help="a smoke run: one short job per side")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    jobs, work = (1, 60.0) if args.quick else (args.jobs, args.work)
    runbook = _summary(asyncio.run(_runbook(jobs, work)), work)
    ours = _summary(asyncio.run(_vastevents(jobs, work)), work)
    ratio = ours["overhead_usd"] / runbook["overhead_usd"] if runbook["overhead_usd"] > 0 else float("inf")
    result = {"jobs": jobs, "work_s": work, "runbook": runbook, "vastevents": ours, "ratio": ratio, "goal": GOAL}
    _table(result)
    write_json(args.json, "run_overhead", result)


if __name__ == "__main__":
    main()
