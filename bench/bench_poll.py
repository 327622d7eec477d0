"""How much of a poll cycle is vastevents' own work, next to the HTTP list it cannot avoid.

Run: ``python bench/bench_poll.py [--instances 1000] [--repeat 7]``. Everything runs side by side in one
process against the in-process simulator on loopback, so the printed ratios compare like with like:

- ``observe/list``: the pure diff of an unchanged account versus listing it (40 pages for 1000 instances).
- ``commit/list``: journaling that poll (incremental snapshot write) versus listing it.
- ``full write/incremental``: rewriting every snapshot row versus writing only the rows that changed,
  which is why the store diffs before it writes.
- ``poll_once/list``: a whole watcher cycle (list + observe + commit + delivery) versus the list alone.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from vastevents.clock import ManualClock
from vastevents.config import Config
from vastevents.diff import observe
from vastevents.runtime import Runtime
from vastevents.sim import Simulator
from vastevents.snapshot import Snapshot
from vastevents.store import SqliteStore
from vastevents.vast import VastClient


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


async def _timed(repeat: int, work: Callable[[], Awaitable[object]]) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await work()
        samples.append(time.perf_counter() - start)
    return _median(samples)


async def _run(instances: int, repeat: int) -> None:
    clock = ManualClock()
    with Simulator(clock=clock, hosts=max(10, instances // 2), rate_limits=False) as sim:
        for n in range(instances):
            sim.create_instance(label=f"vastevents:job-{n}")
        clock.advance(600)  # every instance running
        async with VastClient(sim.api_key, sim.url) as client:
            rows = await client.list_instances()
            assert len(rows) == instances
            t_list = await _timed(repeat, client.list_instances)

            base, _ = observe(Snapshot({}, None), rows, clock.now())
            later = clock.now() + timedelta(seconds=15)

            async def observe_unchanged() -> None:
                observe(base, rows, later)

            t_observe = await _timed(repeat, observe_unchanged)

            with tempfile.TemporaryDirectory() as tmp:
                store = SqliteStore(Path(tmp) / "bench.db")
                store.commit(store.load_snapshot(), base, [])
                previous = base

                async def commit_incremental() -> None:
                    nonlocal previous
                    snapshot, events = observe(previous, rows, clock.advance(15))
                    store.commit(previous, snapshot, events)
                    previous = snapshot

                t_commit = await _timed(repeat, commit_incremental)

                async def commit_full() -> None:
                    nonlocal previous
                    snapshot, events = observe(previous, rows, clock.advance(15))
                    store.commit(Snapshot({}, previous.taken_at), snapshot, events)
                    previous = snapshot

                t_full = await _timed(repeat, commit_full)
                store.close()

            with tempfile.TemporaryDirectory() as tmp:
                config = Config.model_validate({"store": {"path": str(Path(tmp) / "watch.db")}})
                async with Runtime(config, client=client, clock=clock, handlers=[]) as runtime:
                    await runtime.poll_once()
                    t_cycle = await _timed(repeat, runtime.poll_once)

    print(f"instances: {instances} ({-(-instances // 25)} list pages), median of {repeat} runs")
    print(f"  list         {t_list * 1000:9.2f} ms")
    print(f"  observe      {t_observe * 1000:9.2f} ms   observe/list          = {t_observe / t_list:.3f}")
    print(f"  commit       {t_commit * 1000:9.2f} ms   commit/list           = {t_commit / t_list:.3f}")
    print(f"  full write   {t_full * 1000:9.2f} ms   full write/incremental = {t_full / t_commit:.2f}")
    print(f"  poll_once    {t_cycle * 1000:9.2f} ms   poll_once/list        = {t_cycle / t_list:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(_run(args.instances, args.repeat))


if __name__ == "__main__":
    main()
