"""P10: how long the dashboard takes to render each page of a large store.

Run: ``python bench/dashboard_pages.py [--events 100000] [--jobs 1000] [--repeat 15] [--quick] [--json PATH]``.

A SQLite store is filled with `events` journaled events about 1 000 instances over 30 days, `jobs` jobs, a
ledger of three intervals per instance, 200 instances in the current snapshot, 100 struck hosts and a pending
outbox. Each page is then asked for `repeat` times through Starlette's TestClient (the whole request: routing,
parameter checks, the read-only queries, the template), after one warm-up request. Measured: wall time (p50,
p90, max), and the CPU time the whole process spent per request (the server's own work, whatever else the
machine is doing). Goal: every page under 200 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import percentiles, print_table, write_json
from starlette.testclient import TestClient

from vastevents.config import parse_config
from vastevents.dashboard import create_app
from vastevents.diff import observe
from vastevents.events import Event
from vastevents.models import Instance
from vastevents.store import Jobs, SqliteStore, open_store
from vastevents.store.hosts import Hosts
from vastevents.store.ledger import Ledger
from vastevents.store.outbox import Outbox

GOAL_MS = 200.0
INSTANCES = 1000
NAMES = ("appeared", "loading_to_running", "running_to_exited", "preempted", "vanished", "job_started")


def fill(path: Path, events: int, jobs: int, now: datetime) -> None:
    start = now - timedelta(days=30)
    step = timedelta(days=30) / events
    with SqliteStore(path) as store, store.db.transaction() as conn:
        rows = [
            Instance.model_validate({"id": n, "actual_status": "running", "label": f"vastevents:job-{n % jobs + 1}",
                                     "dph_total": 0.4, "gpu_name": "RTX 4090", "machine_id": n % 300})
            for n in range(1, 201)
        ]  # fmt: skip
        previous = store.load_snapshot()
        snapshot, _ = observe(previous, rows, now)
        store.snapshots.replace(conn, previous, snapshot)
        batch = [
            Event(name=NAMES[n % len(NAMES)], instance_id=n % INSTANCES + 1, at=start + n * step,
                  instance=rows[n % 200], detail="outbid" if n % 7 == 0 else "")
            for n in range(events)
        ]  # fmt: skip
        store.journal.insert(conn, batch)
        repository = store.repository(Jobs)
        for n in range(jobs):
            job = repository.submit({"image": "python:3.11", "cmd": "python train.py"}, [], "vastevents", start)
            done = n < jobs - 20
            repository.update(
                job.id, status="finished" if done else "running", instance_id=n % INSTANCES + 1, started_at=start,
                finished_at=start + timedelta(hours=1) if done else None, cost_usd=0.4, gpu_name="RTX 4090",
            )  # fmt: skip
        ledger = store.repository(Ledger)
        for n in range(1, INSTANCES + 1):
            seen = start + timedelta(minutes=43 * n)
            row = Instance.model_validate({"id": n, "actual_status": "running", "dph_total": 0.4,
                                           "label": f"vastevents:job-{n % jobs + 1}"})  # fmt: skip
            ledger.observe(conn, n, row.model_copy(update={"actual_status": "loading"}), seen)
            ledger.observe(conn, n, row, seen + timedelta(minutes=5))
            if n > 200:
                ledger.observe(conn, n, None, seen + timedelta(hours=2))
        hosts = store.repository(Hosts)
        for n in range(300):
            hosts.strike(f"strike-{n}", n % 100, n % 100 + 1000, "preempted", start, threshold=3, ttl=86400)
        outbox = store.repository(Outbox)
        for n in range(50):
            outbox.queue(conn, handler="slack", key=str(n), channel="#gpu", payload={"text": "x"}, created_at=now)


def pages(now: datetime, events: int, jobs: int) -> list[tuple[str, str]]:
    middle = (now - timedelta(days=15)).strftime("%Y-%m-%dT%H:%M")
    later = (now - timedelta(days=14)).strftime("%Y-%m-%dT%H:%M")
    month = (now - timedelta(days=30)).date().isoformat()
    last_page = events // 50
    return [
        ("overview", "/"),
        ("jobs", "/jobs"),
        ("jobs, page 20", "/jobs?page=20"),
        ("a job", f"/jobs/{jobs // 2}"),
        ("events", "/events"),
        (f"events, page {last_page} (the oldest)", f"/events?page={last_page}"),
        ("events of a name", "/events?name=preempted"),
        ("events of an instance", "/events?instance=500"),
        ("events of one day", f"/events?since={middle}&until={later}"),
        ("cost by day, 30 days", f"/cost?since={month}&by=day"),
        ("cost by instance, 30 days", f"/cost?since={month}&by=instance"),
        ("cost by job, 30 days", f"/cost?since={month}&by=job"),
        ("hosts", "/hosts"),
        ("healthz", "/healthz"),
    ]


def measure(path: Path, now: datetime, events: int, jobs: int, repeat: int) -> list[dict[str, Any]]:
    config = parse_config('[handlers.billing]\nuse = "billing"\nbudget_usd = 500.0\ndaily_budget_usd = 50.0\n')
    results = []
    reader = open_store(path, read_only=True)
    with TestClient(create_app(config, reader.db)) as client:
        for name, url in pages(now, events, jobs):
            assert client.get(url).status_code == 200, url  # warm-up (and a check that it renders)
            seconds, cpu = [], []
            for _ in range(repeat):
                start, start_cpu = time.perf_counter(), time.process_time()
                response = client.get(url)
                seconds.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)  # every thread of this process: the server's work
                assert response.status_code == 200, url
            results.append(
                {"page": name, "url": url, "bytes": len(response.content), "cpu_p50": statistics.median(cpu),
                 **percentiles(seconds)}
            )  # fmt: skip
    reader.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 10 000 events, 100 jobs, 3 requests each")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    events, jobs, repeat = (10_000, 100, 3) if args.quick else (args.events, args.jobs, args.repeat)
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        started = time.perf_counter()
        fill(path, events, jobs, now)
        filled = time.perf_counter() - started
        results = measure(path, now, events, jobs, repeat)
    rows = [
        [r["page"], f"{r['p50'] * 1000:.1f} ms", f"{r['p90'] * 1000:.1f} ms", f"{r['max'] * 1000:.1f} ms",
         f"{r['cpu_p50'] * 1000:.1f} ms", f"{r['bytes'] / 1024:.0f} KiB", f"{r['p90'] * 1000 / GOAL_MS:.2f}"]
        for r in results
    ]  # fmt: skip
    title = (
        f"P10 dashboard page render: SQLite store of {events} events, {jobs} jobs, {INSTANCES} instances in the "
        f"ledger (filled in {filled:.0f} s); {repeat} requests per page"
    )
    print_table(title, ["page", "p50", "p90", "max", "cpu p50", "size", "p90/200ms"], rows)
    worst = max(r["p90"] for r in results)
    print(f"slowest page p90 {worst * 1000:.1f} ms (goal {GOAL_MS:.0f} ms); median over pages "
          f"{statistics.median(r['p50'] for r in results) * 1000:.1f} ms")  # fmt: skip
    write_json(args.json, "dashboard_pages", {"events": events, "jobs": jobs, "goal_ms": GOAL_MS, "pages": results})


if __name__ == "__main__":
    main()
