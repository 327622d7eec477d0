"""P3: how long after a change in the account its event is journaled, and exactly-once under SIGKILLs.

Run: ``python bench/detection.py [--intervals 5,15,60] [--trials 40] [--kills 100] [--quick] [--json PATH]``.

- ``simulated``: the real Runtime against the simulator on a manual clock. Each trial changes one instance
  at a seeded random moment between two polls (it vanishes, or is preempted) and polls every interval until
  the event is journaled; the latency is the event's time minus the change's, in simulated seconds, so it
  is exact and independent of the machine. ``vanished`` and an outbid bid instance show the interval alone
  (uniform over it); an on-demand preemption adds the ``[watch] preempt_grace`` (120 s) it must stay down
  before it is told apart from a short outage.
- ``wall``: the real watch loop (``Runtime.run``) on the system clock at short intervals, against a
  simulator in its own process; an instance vanishes at a random wall moment and the latency runs until
  the journal has its event (so it includes the list, the diff and the commit).
- ``webhook``: the running watch loop with Vast's webhooks (``[webhooks] listen``) and a poll interval of an hour,
  so only the delivery can explain the event: the simulator outbids a bid instance and sends its signed ``outbid``
  notification; the latency runs from the moment it starts sending until ``preempted`` is journaled (goal 1 s).
- ``kills``: ``vastevents watch --jsonl`` as a subprocess, SIGKILLed at a random moment ``--kills`` times
  while instances keep disappearing, then one clean run. Every instance must then have exactly one
  ``appeared`` and every destroyed one exactly one ``vanished`` in the journal, and the JSONL file must
  hold every journal id exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import admin, instance_ids, percentiles, print_table, simulator_process, write_json

from vastevents.clock import ManualClock
from vastevents.config import Config
from vastevents.events import PREEMPTED, VANISHED, Event
from vastevents.runtime import Runtime
from vastevents.sim import Simulator
from vastevents.store import SqliteStore
from vastevents.vast import VastClient

CHANGES = {
    "vanished": ("vanish", True, VANISHED),
    "preempted, bid (outbid)": ("preempt", True, PREEMPTED),
    "preempted, on-demand": ("preempt", False, PREEMPTED),
}
"""What each trial does, by name: the admin action, on a bid instance or not, and the event that tells it."""


async def _simulated(interval: float, trials: int, seed: int) -> dict[str, Any]:
    """Exact detection latency in simulated seconds, per kind of change."""
    rng = random.Random(seed)
    latencies: dict[str, list[float]] = {kind: [] for kind in CHANGES}
    clock = ManualClock()
    hosts = trials * len(CHANGES)
    with Simulator(clock=clock, hosts=hosts, rate_limits=False) as sim, tempfile.TemporaryDirectory() as tmp:
        ids = {
            kind: [sim.create_instance(label=f"vastevents:{n}-{kind}", bid=bid) for n in range(trials)]
            for kind, (_, bid, _) in CHANGES.items()
        }
        sim.advance(600)
        config = Config.model_validate({"store": {"path": str(Path(tmp) / "s.db")}, "watch": {"interval": interval}})
        async with (
            VastClient(sim.api_key, sim.url) as client,
            Runtime(config, client=client, clock=clock, handlers=[]) as runtime,
        ):
            await runtime.poll_once()
            for trial in range(trials):
                offset = rng.uniform(0, interval)
                sim.advance(offset)
                changed: dict[tuple[str, int | None], tuple[str, datetime]] = {}
                for kind, (action, _, event_name) in CHANGES.items():
                    sim.apply(action, instance=ids[kind][trial])
                    changed[(event_name, ids[kind][trial])] = (kind, clock.now())
                sim.advance(interval - offset)
                while changed:
                    for event in await runtime.poll_once():
                        found = changed.pop((event.name, event.instance_id), None)
                        if found is not None:
                            latencies[found[0]].append((event.at - found[1]).total_seconds())
                    if changed:
                        sim.advance(interval)
            for instance in sim.state()["instances"]:
                sim.apply("destroy", instance=instance["id"])
        assert sim.instance_count() == 0
    return {kind: percentiles(values) for kind, values in latencies.items()}


async def _wall(interval: float, trials: int, seed: int) -> dict[str, Any]:
    """Wall seconds from a vanish to its ``vanished`` event, through the running watch loop."""
    rng = random.Random(seed)
    seen: dict[int, float] = {}
    arrived = asyncio.Event()

    def on_event(event: Event) -> None:
        if event.name == VANISHED and event.instance_id is not None:
            seen[event.instance_id] = time.perf_counter()
            arrived.set()

    latencies = []
    with simulator_process(trials) as (url, key), tempfile.TemporaryDirectory() as tmp:
        config = Config.model_validate({"store": {"path": str(Path(tmp) / "s.db")}, "watch": {"interval": interval}})
        async with (
            VastClient(key, url) as client,
            Runtime(config, client=client, handlers=[], observers=[on_event]) as runtime,
        ):
            await runtime.poll_once()
            stop = asyncio.Event()
            loop = asyncio.create_task(runtime.run(stop))
            for instance in instance_ids(url, key):
                await asyncio.sleep(rng.uniform(0, interval))
                await asyncio.to_thread(admin, url, key, "vanish", instance=instance)
                changed = time.perf_counter()
                arrived.clear()
                while instance not in seen:
                    await asyncio.wait_for(arrived.wait(), timeout=interval * 5 + 30)
                    arrived.clear()
                latencies.append(seen[instance] - changed)
            stop.set()
            await loop
    return percentiles(latencies)


WEBHOOK_GOAL = 1.0
"""Seconds from a signed delivery to its event in the journal (issue goal)."""


async def _webhook(trials: int) -> dict[str, Any]:
    """Wall seconds from a signed ``outbid`` delivery leaving the simulator to ``preempted`` journaled."""
    seen: dict[int, float] = {}
    arrived = asyncio.Event()

    def on_event(event: Event) -> None:
        if event.name == PREEMPTED and event.instance_id is not None:
            seen[event.instance_id] = time.perf_counter()
            arrived.set()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    latencies = []
    clock = ManualClock(auto_advance=False)  # the watcher's hour-long sleep never ends by itself
    with Simulator(clock=clock, hosts=trials * 2, rate_limits=False) as sim, tempfile.TemporaryDirectory() as tmp:
        ids = [sim.create_instance(label=f"vastevents:bid-{n}", bid=True) for n in range(trials)]
        sim.advance(600)
        async with VastClient(sim.api_key, sim.url) as client:
            hook = await client.create_webhook(f"http://127.0.0.1:{port}/vast-webhook", ["client:outbid"])
        secret_env = f"BENCH_WEBHOOK_SECRET_{secrets.token_hex(4)}"
        os.environ[secret_env] = hook["secret"]
        config = Config.model_validate({"store": {"path": str(Path(tmp) / "s.db")}, "watch": {"interval": 3600},
                                        "webhooks": {"secret_env": secret_env}})  # fmt: skip
        async with (
            VastClient(sim.api_key, sim.url) as client,
            Runtime(config, client=client, clock=clock, handlers=[], observers=[on_event],
                    webhook_listen=f"127.0.0.1:{port}") as runtime,
        ):  # fmt: skip
            stop = asyncio.Event()
            loop = asyncio.create_task(runtime.run(stop))
            assert runtime.webhooks is not None
            while not (runtime.webhooks.listening.is_set() and runtime.watcher.status.polls >= 1):
                await asyncio.sleep(0.01)
            for instance in ids:
                sim.preempt(instance)
                arrived.clear()
                sent = time.perf_counter()
                statuses = await asyncio.to_thread(sim.notify, "outbid", "Instance outbid", {"instance_id": instance})
                if statuses != [204]:
                    raise RuntimeError(f"the delivery was answered {statuses}")
                while instance not in seen:
                    await asyncio.wait_for(arrived.wait(), timeout=30)
                    arrived.clear()
                latencies.append(seen[instance] - sent)
            stop.set()
            await loop
        for instance in ids:
            sim.apply("destroy", instance=instance)
    return {**percentiles(latencies), "goal": WEBHOOK_GOAL}


def _watch_command(config: Path, jsonl: Path, interval: float) -> list[str]:
    return [sys.executable, "-m", "vastevents", "watch", "--config", str(config), "--interval", str(interval),
            "--jsonl", str(jsonl)]  # fmt: skip


def _journal(store_path: Path) -> list[Event]:
    with SqliteStore(store_path) as store:
        return list(store.events())


def _kills(kills: int, instances: int, seed: int) -> dict[str, Any]:
    """SIGKILL a running watch `kills` times while instances vanish, then check the journal and the JSONL."""
    rng = random.Random(seed)
    with simulator_process(instances) as (url, key), tempfile.TemporaryDirectory() as tmp:
        store_path, jsonl = Path(tmp) / "s.db", Path(tmp) / "events.jsonl"
        config = Path(tmp) / "vastevents.toml"
        config.write_text(f'[store]\npath = "{store_path}"\n')
        env = {**os.environ, "VAST_URL": url, "VAST_API_KEY": key, "HOME": tmp}
        command = _watch_command(config, jsonl, 0.1)
        ids = instance_ids(url, key)
        # One clean cycle first, so every instance is known (one destroyed before any poll is never seen at all).
        subprocess.run([*command, "--once"], env=env, capture_output=True, check=True, timeout=120)
        destroyed: list[int] = []
        for _ in range(kills):
            watcher = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # Somewhere in its start, its first catch-up poll or a later poll: an instance goes meanwhile.
            life = rng.uniform(0.5, 4.0)  # the CLI's start takes a good part of a second
            before = rng.uniform(0, life)
            time.sleep(before)
            if len(destroyed) < len(ids) - 1:
                destroyed.append(ids[len(destroyed)])
                admin(url, key, "destroy", instance=destroyed[-1])
            time.sleep(life - before)
            watcher.send_signal(signal.SIGKILL)
            watcher.wait()
        # The clean run: one whole cycle, which catches up with whatever the last kill left.
        final = subprocess.run([*command, "--once"], env=env, capture_output=True, text=True, timeout=120)
        if final.returncode != 0:
            raise RuntimeError(f"the clean watch run exited {final.returncode}: {final.stderr.strip()[-500:]}")
        journal = _journal(store_path)
        lines = [json.loads(line)["id"] for line in jsonl.read_text().splitlines()]
    per_instance = Counter((e.name, e.instance_id) for e in journal if e.instance_id is not None)
    wanted = Counter({**{("appeared", i): 1 for i in ids}, **{(VANISHED, i): 1 for i in destroyed}})
    problems = [
        f"{name} {instance}: {per_instance[(name, instance)]}x"
        for (name, instance) in sorted(wanted.keys() | per_instance.keys(), key=str)
        if per_instance[(name, instance)] != wanted[(name, instance)]
    ]
    line_counts = Counter(lines)
    problems += [f"JSONL id {i}: {n}x" for i, n in line_counts.items() if n != 1]
    problems += [f"journal id {e.id} missing from JSONL" for e in journal if e.id not in line_counts]
    return {
        "kills": kills,
        "instances": instances,
        "destroyed": len(destroyed),
        "journaled": len(journal),
        "jsonl_lines": len(lines),
        "problems": problems[:20],
        "exactly_once": not problems,
    }


def _table(results: dict[str, Any]) -> None:
    rows = []
    for interval, by_name in results["simulated"].items():
        for name, p in by_name.items():
            rows.append([f"simulated, {name}", f"{interval:g} s", f"{p['mean']:.1f} s", f"{p['p50']:.1f} s",
                         f"{p['p90']:.1f} s", f"{p['max']:.1f} s", f"{p['mean'] / interval:.2f}"])  # fmt: skip
    for interval, p in results["wall"].items():
        rows.append([f"wall, {VANISHED}", f"{interval:g} s", f"{p['mean']:.3f} s", f"{p['p50']:.3f} s",
                     f"{p['p90']:.3f} s", f"{p['max']:.3f} s", f"{p['mean'] / interval:.2f}"])  # fmt: skip
    header = ["detection", "interval", "mean", "p50", "p90", "max", "mean/interval"]
    print_table("P3 detection latency: change in the account -> event journaled", header, rows)
    hook = results["webhook"]
    print(
        f"P3 webhook: signed outbid delivery -> preempted journaled ({hook['count']} deliveries, poll interval 1 h):"
        f" mean {hook['mean']:.3f} s, p90 {hook['p90']:.3f} s, max {hook['max']:.3f} s (goal {hook['goal']:g} s)"
    )
    k = results["kills"]
    verdict = "exactly once" if k["exactly_once"] else "VIOLATED: " + "; ".join(k["problems"])
    print(
        f"P3 journal under {k['kills']} SIGKILLs of a running watch ({k['instances']} instances, "
        f"{k['destroyed']} destroyed, {k['journaled']} events, {k['jsonl_lines']} JSONL lines): {verdict}"
    )


async def _latencies(intervals: list[float], wall: list[float], trials: int, wall_trials: int) -> dict[str, Any]:
    return {
        "simulated": {i: await _simulated(i, trials, seed=n) for n, i in enumerate(intervals)},
        "wall": {i: await _wall(i, wall_trials, seed=n) for n, i in enumerate(wall)},
        "webhook": await _webhook(wall_trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--intervals", default="5,15,60", help="simulated poll intervals (s), comma-separated")
    parser.add_argument("--trials", type=int, default=40, help="changes per simulated interval")
    parser.add_argument("--wall-intervals", default="0.5,2", help="wall-clock poll intervals (s), comma-separated")
    parser.add_argument("--wall-trials", type=int, default=15, help="changes per wall-clock interval")
    parser.add_argument("--kills", type=int, help="SIGKILLs of a running watch (default 100, 5 with --quick)")
    parser.add_argument("--kill-instances", type=int, default=200, help="instances the killed watcher sees")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few trials, 5 kills")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    intervals = [float(i) for i in args.intervals.split(",")]
    wall = [float(i) for i in args.wall_intervals.split(",")]
    trials, wall_trials, kills, instances = args.trials, args.wall_trials, 100, args.kill_instances
    if args.quick:
        intervals, wall, trials, wall_trials, kills, instances = intervals[:2], [0.2], 5, 4, 5, 50
    kills = args.kills if args.kills is not None else kills
    results = asyncio.run(_latencies(intervals, wall, trials, wall_trials))
    results["kills"] = _kills(kills, instances, seed=len(intervals))
    _table(results)
    write_json(args.json, "detection", results)
    if not results["kills"]["exactly_once"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
