"""P9: from a preemption to the job running again on a replacement, against SkyPilot's 60 s between attempts.

Run: ``python bench/preemption.py [--rounds 5] [--quick] [--json PATH]``.

A watcher with the ``jobs`` and ``recovery`` handlers (polling every 15 s, ``[watch] interval``'s default) runs a
checkpointed job on the seeded flaky market (``_market``, real sshd hosts, the simulator's clock); five minutes
(one with ``--quick``) into its command the simulator takes its instance away. The time runs, in simulated
seconds, from that moment to ``job_started`` on the replacement: the command running again, its checkpoint
restored. It splits into detection (to ``preempted`` journaled), recovery to the replacement's create, the
replacement's boot (create to running: the image pull, the provider's part) and running to the command started
(SSH, upload, checkpoint restore: real work that takes no simulated time here).

- an on-demand instance the host takes back: told apart from a short outage only after ``[watch] preempt_grace``
  (2 minutes by default), then replaced;
- a bid instance outbid, with ``on_preempt = "replace"`` (by default recovery first waits ``wait_timeout`` for an
  outbid instance to resume by itself): told at once.

SkyPilot documents at least 60 s between its attempts to relaunch a preempted job, before its own provisioning;
the ratio compares ours without the provider's boot (detection, our steps, SSH and restore) with those 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_json
from _market import STEP, job_spec, market, watching

from vastevents.store import Job, Jobs

SKYPILOT_S = 60.0
INTERVAL = 15.0


def _running_again(runtime: Any, job: Job | None, victim: int) -> bool:
    """The job's command started on an instance other than `victim`."""
    return (
        job is not None
        and job.instance_id not in (None, victim)
        and (_at(runtime, "job_started", job.instance_id) is not None)
    )


def _at(runtime: Any, name: str, instance_id: int | None = None) -> datetime | None:
    found = [e.at for e in runtime.store.events(name=name) if instance_id is None or e.instance_id == instance_id]
    return found[-1] if found else None


async def _round(kind: str, n: int, into_s: float) -> dict[str, float]:
    handlers = {"jobs": {"use": "jobs"}, "recovery": {"use": "recovery", "min_reliability": 0.9}}
    if kind == "bid":
        handlers["recovery"]["on_preempt"] = "replace"
    with market() as place:
        inputs = place.job_dir()
        async with watching(place, f"p9-{kind}-{n}", handlers=handlers, interval=INTERVAL) as w:
            runtime = w.runtime
            jobs = runtime.store.repository(Jobs)
            spec = job_spec(place, inputs, 1800 + 7 * n, out=place.root / "results", interruptible=kind == "bid",
                            checkpoint_every=60.0)  # fmt: skip
            job = jobs.submit(spec.to_json(), [], "vastevents", runtime.clock.now())
            await w.cycle()
            while (current := jobs.get(job.id)) is not None and current.started_at is None:
                await w.step()
            for _ in range(int(into_s / STEP)):
                await w.step()
            current = jobs.get(job.id)
            assert current is not None and current.instance_id is not None
            victim = current.instance_id
            place.sim.preempt(victim)
            preempted_at = runtime.clock.now()
            while not _running_again(runtime, jobs.get(job.id), victim):
                await w.step()
            current = jobs.get(job.id)
            assert current is not None and current.instance_id is not None
            new = current.instance_id
            told = _at(runtime, "preempted", victim)
            row = place.sim.instance(new)
            assert row is not None
            created = datetime.fromtimestamp(float(row["start_date"]), preempted_at.tzinfo)
            running = _at(runtime, "loading_to_running", new) or _at(runtime, "appeared", new)
            started = _at(runtime, "job_started", new)
            assert told and running and started
            jobs.request_cancel(job.id, runtime.clock.now())
            while (current := jobs.get(job.id)) is not None and not current.done:
                await w.step()
    return {
        "total": (started - preempted_at).total_seconds(),
        "detection": (told - preempted_at).total_seconds(),
        "to_create": (created - told).total_seconds(),
        "boot": (running - created).total_seconds(),
        "to_command": (started - running).total_seconds(),
    }


def _summary(rounds: list[dict[str, float]]) -> dict[str, Any]:
    parts = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    ours = [r["total"] - r["boot"] for r in rounds]
    return {"rounds": rounds, "median": parts, "ours_p50": statistics.median(ours), "ours_max": max(ours)}


def _table(result: dict[str, Any]) -> None:
    rows = []
    for kind, s in result["kinds"].items():
        m = s["median"]
        rows.append([kind, str(len(s["rounds"])), f"{m['total']:.0f} s", f"{m['detection']:.0f} s",
                     f"{m['to_create']:.0f} s", f"{m['boot']:.0f} s", f"{m['to_command']:.0f} s",
                     f"{s['ours_p50']:.0f} s", f"{s['ours_p50'] / SKYPILOT_S:.2f}"])  # fmt: skip
    header = ["preemption", "rounds", "total p50", "detect", "to create", "boot", "to command", "ours p50",
              "ours/60 s"]  # fmt: skip
    print_table("P9 preemption -> job running again on a replacement (simulated seconds, medians)", header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="preemptions of each kind")
    parser.add_argument("--quick", action="store_true", help="a smoke run: one outbid")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    kinds, rounds, into = (["bid"], 1, 60.0) if args.quick else (["on-demand", "bid"], args.rounds, 300.0)
    result = {
        "kinds": {kind: _summary([asyncio.run(_round(kind, n, into)) for n in range(rounds)]) for kind in kinds},
        "skypilot_s": SKYPILOT_S,
    }
    _table(result)
    write_json(args.json, "preemption", result)


if __name__ == "__main__":
    main()
