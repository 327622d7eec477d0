"""P1: one poll of an unchanged account, ours versus the seed's way versus the floor, side by side.

Run: ``python bench/poll_cycle.py [--sizes 10,100,1000] [--repeat 7] [--quick] [--json PATH]``.

Against one simulator per size (in its own process, so only the client's CPU is counted here), each
repetition runs, one after the other:

- ``seed``: ``vastai show instances --raw`` as a subprocess, then a dict diff against the previous poll
  (CPU includes the subprocess);
- ``ours``: a whole ``Runtime.poll_once()`` in steady state (list + parse + observe + commit + delivery);
- ``list``: ``VastClient.list_instances()`` alone (so the rest of ``ours`` is the diff and the store);
- ``floor``: a bare ``httpx.AsyncClient`` page loop that only decodes each page to follow ``next_token``.

Medians per poll; the ratios compare wall and CPU of the same repetitions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _common import Samples, measure, ms, print_table, simulator_process, write_json

from vastevents.clock import ManualClock
from vastevents.config import Config
from vastevents.runtime import Runtime
from vastevents.vast import VastClient

_LIST_PARAMS = {"select_filters": "{}", "order_by": json.dumps([{"col": "id", "dir": "asc"}]), "limit": "25"}


async def _floor(http: httpx.AsyncClient) -> int:
    """Every page of the list, decoded only to find the next one: what any client must at least do."""
    params = dict(_LIST_PARAMS)
    count = 0
    while True:
        page = (await http.get("/api/v1/instances/", params=params)).json()
        count += len(page["instances"])
        if not page.get("next_token"):
            return count
        params["after_token"] = str(page["next_token"])


class _SeedWay:
    """The seed's poll: the official CLI as a subprocess, then a dict diff of its JSON."""

    def __init__(self, url: str, key: str, home: Path) -> None:
        self.command = ["vastai", "show", "instances", "--raw", "--url", url, "--api-key", key]
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "VAST_URL": url,  # 1.9.1 reads it at import time whatever --url says: keep it on loopback
            "VAST_API_KEY": key,
            "VASTAI_NO_UPDATE_CHECK": "1",
        }
        self.previous: dict[int, Any] = {}

    def poll(self) -> int:
        result = subprocess.run(self.command, env=self.env, capture_output=True, text=True, timeout=120, check=True)
        rows = {row["id"]: row for row in json.loads(result.stdout)}
        changed = [i for i in rows.keys() | self.previous.keys() if rows.get(i) != self.previous.get(i)]
        self.previous = rows
        del changed
        return len(rows)


async def _one_size(size: int, repeat: int, seed_repeat: int) -> dict[str, Any]:
    samples = {name: Samples() for name in ("seed", "ours", "list", "floor")}
    with simulator_process(size) as (url, key), tempfile.TemporaryDirectory() as tmp:
        seed = _SeedWay(url, key, Path(tmp)) if seed_repeat and shutil.which("vastai") else None
        config = Config.model_validate({"store": {"path": str(Path(tmp) / "watch.db")}})
        async with (
            VastClient(key, url) as client,
            httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http,
            Runtime(config, client=client, clock=ManualClock(), handlers=[]) as runtime,
        ):
            # Warm up every path once: the first poll journals `appeared` for everything.
            await runtime.poll_once()
            assert len(await client.list_instances()) == size
            assert await _floor(http) == size
            if seed is not None:
                assert seed.poll() == size
            for n in range(repeat):
                if seed is not None and n < seed_repeat:
                    with measure(samples["seed"], children=True):
                        seed.poll()
                with measure(samples["ours"]):
                    await runtime.poll_once()
                with measure(samples["list"]):
                    await client.list_instances()
                with measure(samples["floor"]):
                    await _floor(http)
    return {"instances": size, **{name: s.summary() for name, s in samples.items() if s.wall}}


def _table(results: list[dict[str, Any]]) -> None:
    header = ["N", "seed wall", "seed cpu", "ours wall", "ours cpu", "list wall", "floor wall", "floor cpu",
              "ours/floor wall", "ours/floor cpu", "seed/ours wall"]  # fmt: skip
    rows = []
    for r in results:
        ours, floor, seed = r["ours"], r["floor"], r.get("seed")
        rows.append([
            str(r["instances"]),
            ms(seed["wall"]) if seed else "-", ms(seed["cpu"]) if seed else "-",
            ms(ours["wall"]), ms(ours["cpu"]), ms(r["list"]["wall"]), ms(floor["wall"]), ms(floor["cpu"]),
            f"{ours['wall'] / floor['wall']:.2f}x", f"{ours['cpu'] / floor['cpu']:.2f}x",
            f"{seed['wall'] / ours['wall']:.0f}x" if seed else "-",
        ])  # fmt: skip
    print_table("P1 poll cycle of an unchanged account (median per poll)", header, rows)


async def _run(sizes: list[int], repeat: int, seed_repeat: int) -> list[dict[str, Any]]:
    return [await _one_size(size, repeat, seed_repeat) for size in sizes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000", help="instance counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=7, help="polls measured per size")
    parser.add_argument("--seed-repeat", type=int, default=3, help="of those, how many also run the CLI (0: none)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer and smaller")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    repeat, seed_repeat = args.repeat, args.seed_repeat
    if args.quick:
        sizes, repeat, seed_repeat = [size for size in sizes if size <= 100] or sizes[:1], 2, min(seed_repeat, 1)
    results = asyncio.run(_run(sizes, repeat, seed_repeat))
    _table(results)
    write_json(args.json, "poll_cycle", results)


if __name__ == "__main__":
    main()
