"""P4: from a preemption becoming visible to the replacement's create request being sent.

Run: ``python bench/recovery_overhead.py [--rounds 10] [--quick] [--json PATH]``.

The real Runtime with the real recovery handler, against a simulator on a manual clock in its own process.
Each round preempts one running instance, advances simulated time and polls until a poll journals
``preempted``; the overhead runs from the start of that poll (its list included) until the create request
for the replacement leaves the client (a transport records when ``PUT /api/v0/asks/{id}/`` is sent). The
simulator answers at once on loopback, so the simulated API latency is zero and everything measured is ours:
the list, the diff, the commit, the delivery and the handler's own list, destroy and search.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _common import admin, instance_ids, percentiles, print_table, simulator_process, write_json

from vastevents.clock import ManualClock
from vastevents.config import Config
from vastevents.events import PREEMPTED
from vastevents.plugins import load_handlers
from vastevents.runtime import Runtime
from vastevents.vast import VastClient

GOAL = 2.0
"""Seconds the overhead may take beyond the simulated API latency (issue goal)."""


class _CreateClock(httpx.AsyncBaseTransport):
    """Loopback HTTP that notes the moment each create request is sent."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[float] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and request.url.path.startswith("/api/v0/asks/"):
            self.sent.append(time.perf_counter())
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _run(instances: int, rounds: int) -> dict[str, Any]:
    walls, cpus = [], []
    with simulator_process(instances, hosts=instances * 4) as (url, key), tempfile.TemporaryDirectory() as tmp:
        config = Config.model_validate(
            {
                "store": {"path": str(Path(tmp) / "s.db")},
                "handlers": {"recovery": {"use": "recovery", "min_reliability": 0.9}},
            }
        )
        transport, clock = _CreateClock(), ManualClock()  # our clock moves with the simulator's
        async with (
            VastClient(key, url, transport=transport) as client,
            Runtime(config, client=client, clock=clock, handlers=load_handlers(config)) as runtime,
        ):
            await runtime.poll_once()
            for victim in instance_ids(url, key)[:rounds]:
                admin(url, key, "preempt", instance=victim)
                for _ in range(20):
                    admin(url, key, "advance", seconds=60)
                    clock.advance(60)
                    creates = len(transport.sent)
                    cpu, start = time.process_time(), time.perf_counter()
                    events = await runtime.poll_once()
                    if any(e.name == PREEMPTED and e.instance_id == victim for e in events):
                        break
                else:
                    raise RuntimeError(f"instance {victim}'s preemption was never journaled")
                if len(transport.sent) == creates:
                    raise RuntimeError(f"no replacement requested for {victim}: {[e.name for e in events]}")
                walls.append(transport.sent[creates] - start)
                cpus.append(time.process_time() - cpu)
        for victim in instance_ids(url, key):
            admin(url, key, "destroy", instance=victim)
        left = len(instance_ids(url, key))
    if left:
        raise RuntimeError(f"{left} instances left in the simulator")
    return {"instances": instances, "wall": percentiles(walls), "cycle_cpu": percentiles(cpus), "goal": GOAL}


def _table(result: dict[str, Any]) -> None:
    wall, cpu = result["wall"], result["cycle_cpu"]
    rows = [[str(wall["count"]), f"{wall['p50']:.3f} s", f"{wall['p90']:.3f} s", f"{wall['max']:.3f} s",
             f"{cpu['p50']:.3f} s", f"{GOAL:.0f} s", f"{wall['max'] / GOAL:.3f}"]]  # fmt: skip
    header = ["rounds", "p50", "p90", "max", "cycle cpu p50", "goal", "max/goal"]
    print_table("P4 recovery overhead: poll that sees the preemption -> replacement create sent", header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="preemptions, one instance each")
    parser.add_argument("--instances", type=int, default=20, help="running instances in the account")
    parser.add_argument("--quick", action="store_true", help="a smoke run: two preemptions")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    rounds, instances = (2, 5) if args.quick else (args.rounds, max(args.instances, args.rounds))
    result = asyncio.run(_run(instances, rounds))
    _table(result)
    write_json(args.json, "recovery_overhead", result)


if __name__ == "__main__":
    main()
