"""P2: what an unchanged poll costs us without the network: parsing the list, and the pure diff.

Run: ``python bench/diff_cost.py [--sizes 100,1000,10000] [--repeat 7] [--quick] [--json PATH]``.

Rows are the simulator's own instance rows, served as 25-row pages by an in-memory httpx transport:

- ``list cold``: ``VastClient.list_instances()`` parsing every page (a client's first list);
- ``list warm``: the same list again, every page as it was the poll before (the steady state);
- ``observe``: ``observe()`` of an unchanged account (the rows of the warm list against the snapshot of the
  poll before, itself an unchanged one);
- ``observe fresh``: the same diff against rows parsed anew, equal but not the same objects;
- ``bytes/instance``: memory held by a snapshot of the parsed list, per instance.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tracemalloc
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _common import Samples, measure, ms, print_table, write_json

from vastevents.clock import ManualClock
from vastevents.diff import observe
from vastevents.sim import Simulator
from vastevents.snapshot import Snapshot
from vastevents.vast import VastClient

_PAGE = 25


def _rows(count: int) -> list[dict[str, Any]]:
    """`count` running instances as the simulator lists them (a template row repeated under new ids)."""
    clock = ManualClock()
    sim = Simulator(clock=clock, hosts=50, rate_limits=False)
    for n in range(min(count, 50)):
        sim.create_instance(label=f"vastevents:job-{n}")
    clock.advance(600)
    with sim.world() as world:
        templates = [sim.row(instance) for instance in world.instances.values()]
    first = templates[0]["id"]
    return [{**templates[n % len(templates)], "id": first + n, "label": f"vastevents:job-{n}"} for n in range(count)]


def _transport(rows: list[dict[str, Any]]) -> httpx.MockTransport:
    """Serves `rows` as the v1 instance list does: pages of 25 chained by ``next_token``."""
    pages = {}
    for start in range(0, len(rows), _PAGE):
        token = str(start + _PAGE) if start + _PAGE < len(rows) else None
        body = {"success": True, "instances": rows[start : start + _PAGE], "next_token": token}
        pages[str(start) if start else None] = json.dumps(body).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        content = pages[request.url.params.get("after_token")]
        return httpx.Response(200, content=content, headers={"content-type": "application/json"})

    return httpx.MockTransport(handler)


async def _one_size(size: int, repeat: int) -> dict[str, Any]:
    samples = {name: Samples() for name in ("list cold", "list warm", "observe", "observe fresh")}
    rows = _rows(size)
    now = ManualClock().now()
    async with VastClient("bench-key", "http://vast.test", transport=_transport(rows)) as client:
        instances = await client.list_instances()
        base, _ = observe(observe(Snapshot(), instances, now)[0], instances, now)  # as after a steady poll
        for n in range(repeat):
            async with VastClient("bench-key", "http://vast.test", transport=_transport(rows)) as cold:
                with measure(samples["list cold"]):
                    fresh = await cold.list_instances()
            with measure(samples["list warm"]):
                warm = await client.list_instances()
            later = now + timedelta(seconds=15 * (n + 1))
            with measure(samples["observe"]):
                observe(base, warm, later)
            with measure(samples["observe fresh"]):
                observe(base, fresh, later)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    async with VastClient("bench-key", "http://vast.test", transport=_transport(rows)) as client:
        kept = observe(Snapshot(), await client.list_instances(), now)[0]
        held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del kept
    return {"instances": size, "bytes_per_instance": held / size, **{k: s.summary() for k, s in samples.items()}}


def _table(results: list[dict[str, Any]]) -> None:
    header = ["N", "list cold", "list warm", "observe", "observe fresh", "observe cpu", "bytes/instance"]
    rows = [
        [
            str(r["instances"]),
            ms(r["list cold"]["wall"]),
            ms(r["list warm"]["wall"]),
            ms(r["observe"]["wall"]),
            ms(r["observe fresh"]["wall"]),
            ms(r["observe"]["cpu"]),
            f"{r['bytes_per_instance']:.0f}",
        ]
        for r in results
    ]
    print_table("P2 parse and pure diff of an unchanged account (median)", header, rows)


async def _run(sizes: list[int], repeat: int) -> list[dict[str, Any]]:
    return [await _one_size(size, repeat) for size in sizes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,10000", help="instance counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer and smaller")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    repeat = args.repeat
    if args.quick:
        sizes, repeat = [size for size in sizes if size <= 1000] or sizes[:1], 2
    results = asyncio.run(_run(sizes, repeat))
    _table(results)
    write_json(args.json, "diff_cost", results)


if __name__ == "__main__":
    main()
