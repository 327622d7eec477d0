"""Shared by the benchmarks: a simulator in its own process, timing, the machine, the table and the JSON."""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import signal
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

from vastevents.clock import ManualClock
from vastevents.sim import Simulator


def _unwind(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


# A benchmark stopped by SIGTERM (a kill, a timeout) unwinds as Ctrl-C does: its simulators stop their sshd
# hosts and the jobs on them instead of leaving them running.
signal.signal(signal.SIGTERM, _unwind)


@dataclass
class Samples:
    """Wall and CPU seconds of repeated runs of one thing."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)

    def summary(self) -> dict[str, float]:
        """Median wall and CPU seconds per run."""
        return {"wall": statistics.median(self.wall), "cpu": statistics.median(self.cpu), "runs": len(self.wall)}


@contextmanager
def measure(samples: Samples, *, children: bool = False) -> Iterator[None]:
    """Time the block: wall clock, and this process's CPU (plus its waited-for children's with `children`)."""
    cpu_start = _cpu(children)
    start = time.perf_counter()
    yield
    wall = time.perf_counter() - start
    samples.add(wall, _cpu(children) - cpu_start)


def _cpu(children: bool) -> float:
    own = time.process_time()
    if not children:
        return own
    times = os.times()
    return own + times.children_user + times.children_system


def _serve(instances: int, hosts: int | None, conn: Connection) -> None:
    clock = ManualClock()  # only advanced by `/_sim/advance`: else every poll sees the same account
    with Simulator(clock=clock, hosts=hosts or max(10, instances // 2), rate_limits=False) as sim:
        for n in range(instances):
            sim.create_instance(label=f"vastevents:job-{n}")
        clock.advance(600)  # every instance running
        conn.send((sim.url, sim.api_key))
        conn.recv()  # until the benchmark is done


@contextmanager
def simulator_process(instances: int, hosts: int | None = None) -> Iterator[tuple[str, str]]:
    """A simulator holding `instances` running instances, served from its own process: (url, api key).

    Its own process keeps the server's CPU out of the numbers measured in this one.
    """
    ours, theirs = multiprocessing.get_context("fork").Pipe()
    process = multiprocessing.get_context("fork").Process(target=_serve, args=(instances, hosts, theirs), daemon=True)
    process.start()
    try:
        if not ours.poll(120):
            raise RuntimeError("the simulator did not start within 120 s")
        url, key = ours.recv()
        yield url, key
    finally:
        ours.send("stop")
        process.join(timeout=15)
        if process.is_alive():
            process.kill()
            process.join()


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms" if seconds < 10 else f"{seconds:.1f} s"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    print(title)
    print("  " + "  ".join(str(cell).ljust(width) for cell, width in zip(header, widths, strict=True)))
    for row in rows:
        print("  " + "  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True)))


def write_json(path: str | None, name: str, results: Any) -> None:
    if path:
        Path(path).write_text(json.dumps({"bench": name, "machine": machine(), "results": results}, indent=2) + "\n")
        print(f"wrote {path}")


def admin(url: str, key: str, action: str, **params: Any) -> dict[str, Any]:
    """One simulator admin action (``POST /_sim/<action>``), as the scenario steps use them."""
    response = httpx.post(f"{url}/_sim/{action}", json=params, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def instance_ids(url: str, key: str) -> list[int]:
    """The ids of every instance the simulator holds, in id order."""
    response = httpx.get(f"{url}/_sim/state", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    response.raise_for_status()
    return sorted(row["id"] for row in response.json()["instances"])


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """Mean, median, 90th percentile and maximum."""
    ordered = sorted(values)
    return {
        "mean": statistics.fmean(ordered),
        "p50": statistics.median(ordered),
        "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "max": ordered[-1],
        "count": len(ordered),
    }
