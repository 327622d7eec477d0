"""P6: the share of one core a running watcher takes, with 1 000 instances polled every 5 s.

Run: ``python bench/watcher_cpu.py [--instances 1000] [--interval 5] [--seconds 60] [--quick] [--json PATH]``.

``vastevents watch`` runs as its own process against a simulator in another one (an unchanged account, the
steady state). Once its first poll has journaled every instance, its CPU time (user + system, from
``/proc/PID/stat``) is read at the start and the end of a window of ``--seconds`` wall seconds; the share is
their ratio. Only the watcher's process is counted, never the simulator's.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, simulator_process, write_json

GOAL = 0.05
"""At most this share of one core (issue goal)."""


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _run(instances: int, interval: float, seconds: float) -> dict[str, Any]:
    with simulator_process(instances) as (url, key), tempfile.TemporaryDirectory() as tmp:
        config, jsonl = Path(tmp) / "vastevents.toml", Path(tmp) / "events.jsonl"
        config.write_text(f'[store]\npath = "{Path(tmp) / "s.db"}"\n')
        env = {**os.environ, "VAST_URL": url, "VAST_API_KEY": key, "HOME": tmp}
        command = [sys.executable, "-m", "vastevents", "watch", "--config", str(config),
                   "--interval", str(interval), "--jsonl", str(jsonl)]  # fmt: skip
        watcher = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while _lines(jsonl) < instances:  # the first poll: every instance appeared
                if watcher.poll() is not None or time.monotonic() > deadline:
                    _, stderr = watcher.communicate(timeout=60)
                    raise RuntimeError(f"the watcher did not make its first poll: {stderr.strip()[-500:]}")
                time.sleep(0.2)
            cpu, start = _cpu_seconds(watcher.pid), time.perf_counter()
            time.sleep(seconds)
            cpu, wall = _cpu_seconds(watcher.pid) - cpu, time.perf_counter() - start
        finally:
            watcher.send_signal(signal.SIGINT)
            try:
                watcher.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                watcher.kill()
                watcher.communicate()
    share = cpu / wall
    return {"instances": instances, "interval": interval, "wall": wall, "cpu": cpu, "share": share,
            "cpu_per_poll": share * interval, "goal": GOAL}  # fmt: skip


def _table(r: dict[str, Any]) -> None:
    header = ["N", "interval", "window", "watcher cpu", "cpu per poll", "share of a core", "goal", "share/goal"]
    rows = [[str(r["instances"]), f"{r['interval']:g} s", f"{r['wall']:.1f} s", f"{r['cpu']:.2f} s",
             f"{r['cpu_per_poll'] * 1000:.0f} ms", f"{r['share']:.2%}", f"{GOAL:.0%}",
             f"{r['share'] / GOAL:.2f}"]]  # fmt: skip
    print_table("P6 watcher CPU share (steady state, unchanged account)", header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="wall seconds measured")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 200 instances, two 1 s polls")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    instances, interval, seconds = (200, 1.0, 2.0) if args.quick else (args.instances, args.interval, args.seconds)
    result = _run(instances, interval, seconds)
    _table(result)
    write_json(args.json, "watcher_cpu", result)


if __name__ == "__main__":
    main()
