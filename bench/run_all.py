"""Every benchmark in one run, one table of ratios against the issue's goals, and bench/RESULTS.md.

Run: ``python bench/run_all.py [--quick] [--only P7,P9] [--json PATH]``.

Each benchmark runs as its own process (``--json`` to a temporary file), one after the other, its own table
printed as it finishes. A full run writes ``bench/RESULTS.md`` (the ratio table, every benchmark's table and
the machine it ran on); ``--quick`` is the smoke run CI uses: a few seconds per benchmark, RESULTS.md left
alone. ``--only`` runs the benchmarks named and replaces just their rows and sections in RESULTS.md, each
section then saying when and under what load it ran. The exit status is 1 only if a benchmark crashed (or broke
the journal's exactly-once guarantee), never because of a number.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent

Row = list[str]


@dataclass(frozen=True)
class Benchmark:
    key: str
    script: str
    what: str
    rows: Callable[[Any], list[Row]]
    """The ratio rows of its JSON results: measure, value, goal, value/goal, met."""


def _row(measure: str, value: float, goal: float, unit: str, *, lower_is_better: bool = True) -> Row:
    def show(x: float) -> str:
        return f"{x:.3g}{unit}" if unit != "%" else f"{x:.2%}"

    ratio = value / goal if lower_is_better else goal / value
    return [measure, show(value), ("≤ " if lower_is_better else "≥ ") + show(goal), f"{ratio:.2f}", _met(ratio <= 1)]


def _met(ok: bool) -> str:
    return "yes" if ok else "NO"


def _p1(results: list[dict[str, Any]]) -> list[Row]:
    rows = []
    for r in results:
        n, ours, floor = r["instances"], r["ours"], r["floor"]
        rows.append(_row(f"N={n} ours/floor cpu", ours["cpu"] / floor["cpu"], 2.0, "x"))
        rows.append(_row(f"N={n} ours/floor wall", ours["wall"] / floor["wall"], 2.0, "x"))
        if n == 100 and "seed" in r:
            rows.append(
                _row("N=100 seed/ours wall", r["seed"]["wall"] / ours["wall"], 100.0, "x", lower_is_better=False)
            )
    return rows


def _p2(results: list[dict[str, Any]]) -> list[Row]:
    largest = max(results, key=lambda r: r["instances"])
    observe = largest["observe"]
    return [
        _row(f"N={largest['instances']} unchanged diff cpu", observe["cpu"] * 1000, 10.0, " ms"),
        _row(f"N={largest['instances']} unchanged diff wall", observe["wall"] * 1000, 10.0, " ms"),
    ]


def _p3(results: dict[str, Any]) -> list[Row]:
    rows = []
    for interval, by_name in results["simulated"].items():
        p = by_name["vanished"]
        rows.append([f"simulated {float(interval):g} s: vanish latency/interval", f"{p['mean'] / float(interval):.2f}",
                     "≈ 0.5 (uniform)", "-", "-"])  # fmt: skip
    for interval, p in results["wall"].items():
        rows.append([f"wall {float(interval):g} s: mean latency/interval", f"{p['mean'] / float(interval):.2f}",
                     "≈ 0.5 + poll/interval", "-", "-"])  # fmt: skip
    hook = results["webhook"]
    rows.append(_row("webhook: signed delivery -> event journaled, max", hook["max"], hook["goal"], " s"))
    k = results["kills"]
    rows.append([f"exactly-once after {k['kills']} SIGKILLs", "held" if k["exactly_once"] else "BROKEN",
                 "held", "-", _met(k["exactly_once"])])  # fmt: skip
    return rows


def _p4(result: dict[str, Any]) -> list[Row]:
    return [
        _row("preemption seen -> create sent, max", result["wall"]["max"], result["goal"], " s"),
        _row("preemption seen -> create sent, p50", result["wall"]["p50"], result["goal"], " s"),
    ]


def _p5(result: dict[str, Any]) -> list[Row]:
    worst = min(result["cases"], key=lambda case: case["default_vs_best"])
    return [_row(f"{result['mb']} MB, slowest case ({worst['case']}): default / best of paramiko, tar|ssh",
                 worst["default_vs_best"], result["goal"], "x", lower_is_better=False)]  # fmt: skip


def _p6(result: dict[str, Any]) -> list[Row]:
    label = f"N={result['instances']} every {result['interval']:g} s: share of a core"
    return [_row(label, result["share"], result["goal"], "%")]


def _p7(result: dict[str, Any]) -> list[Row]:
    runbook, ours = result["runbook"], result["vastevents"]
    said = f"{result['jobs']} jobs: run's overhead / the runbook's (${ours['overhead_usd']:.4f} vs"
    said += f" ${runbook['overhead_usd']:.4f})"
    finished = f"{ours['finished']} / {runbook['finished']}"
    return [
        _row(said, result["ratio"], result["goal"], "x"),
        ["jobs finished, run / runbook", finished, "equal", "-", _met(ours["finished"] >= runbook["finished"])],
    ]


def _p8(result: dict[str, Any]) -> list[Row]:
    rows = []
    for key, ratio in result["ratios"].items():
        by = {run["choose"]: run for run in result["runs"] if f"{run['gpu']} {run['kind']}" == key}
        cheap, ours = by["cheapest"], by["expected_cost"]
        said = f"{key}: expected_cost / cheapest per finished job (${ours['per_finished_usd']:.4f} vs"
        said += f" ${cheap['per_finished_usd']:.4f})"
        finished = f"{ours['finished']} / {cheap['finished']}"
        rows.append(_row(said, ratio, result["goal"], "x"))
        rows.append([f"{key}: jobs finished, expected_cost / cheapest", finished, "equal", "-",
                     _met(ours["finished"] >= cheap["finished"])])  # fmt: skip
    return rows


def _p9(result: dict[str, Any]) -> list[Row]:
    rows = []
    for kind, summary in result["kinds"].items():
        said = (
            f"{kind}: preemption -> running again, without the new boot, p50 (total {summary['median']['total']:.0f} s)"
        )
        rows.append(_row(said, summary["ours_p50"], result["skypilot_s"], " s"))
    return rows


def _p10(result: dict[str, Any]) -> list[Row]:
    pages = result["pages"]
    slowest = max(pages, key=lambda page: page["p90"])
    size = f"{result['events']} events, {result['jobs']} jobs"
    return [
        _row(f"{size}: slowest page p90 ({slowest['page']})", slowest["p90"] * 1000, result["goal_ms"], " ms"),
        _row(f"{size}: median page p50", statistics.median(p["p50"] for p in pages) * 1000, result["goal_ms"], " ms"),
        _row(f"{size}: most CPU per page (p50)", max(p["cpu_p50"] for p in pages) * 1000, result["goal_ms"], " ms"),
    ]


def _p11(result: dict[str, Any]) -> list[Row]:
    if "skipped" in result:
        return [["team failover", "skipped: no PostgreSQL", "-", "-", "-"]]
    goal = result["failover"] + result["interval"]
    return [
        _row("leader SIGKILL -> follower's first poll, max", result["took"]["max"], goal, " s"),
        _row("leader SIGKILL -> follower's first poll, p50", result["took"]["p50"], goal, " s"),
    ]


def _p12(result: dict[str, Any]) -> list[Row]:
    return [
        ["watch: spawn -> first API request, median", f"{result['median']:.3g} s", "-", "-", "-"],
        ["watch: imports' share of it", f"{result['import_share']:.0%}", "-", "-", "-"],
    ]


def _c1(result: dict[str, Any]) -> list[Row]:
    rows = []
    for run in result["runs"]:
        seed, jobs = run["seed"], run["jobs"]
        finished = sum(job["status"] == "finished" for job in jobs)
        faults = sum(run["faults"].values())
        said = f"seed {seed}, {run['kills']} SIGKILLs, {faults} faults: worst job, submission -> end"
        rows.append(_row(said, run["worst_latency_s"], result["bound_s"], " s"))
        rows.append([f"seed {seed}: that job's floor (the least a watcher acting at once takes, given its faults)",
                     f"{run['worst_floor_s']:.0f} s", "-", "-", "-"])  # fmt: skip
        rows.append([f"seed {seed}: jobs finished, results byte-exact", f"{finished} / {len(jobs)}", "all", "-",
                     _met(finished == len(jobs) and all(job["exact"] for job in jobs))])  # fmt: skip
        held = run["leaked"] == 0 and run["sshd_left"] == 0 and not run["duplicates"]
        left = f"{run['leaked']}, {run['sshd_left']}, {len(run['duplicates'])}"
        rows.append([f"seed {seed}: left rented, sshd left, journal duplicates", left, "0, 0, 0", "-", _met(held)])
        goal = max(0.01, 0.02 * abs(run["charged_usd"]))
        rows.append(_row(f"seed {seed}: |ledger - charged| (${run['charged_usd']:.4f} charged)",
                         abs(run["ledger_error_usd"]), goal, " $"))  # fmt: skip
    return rows


BENCHMARKS = [
    Benchmark("P1", "poll_cycle.py", "poll cycle vs the seed's way and the bare httpx floor", _p1),
    Benchmark("P2", "diff_cost.py", "parse and pure diff of an unchanged account", _p2),
    Benchmark("P3", "detection.py", "detection latency; journal exactly-once under SIGKILLs", _p3),
    Benchmark("P4", "recovery_overhead.py", "recovery overhead", _p4),
    Benchmark("P5", "bench_transfer.py", "job transfer: the SSH edge against paramiko and tar | ssh", _p5),
    Benchmark("P6", "watcher_cpu.py", "watcher CPU share", _p6),
    Benchmark("P7", "run_overhead.py", "money overhead of a job: vastevents run against the runbook", _p7),
    Benchmark("P8", "cost_per_job.py", "cost per finished job: expected_cost against cheapest", _p8),
    Benchmark("P9", "preemption.py", "preemption to the job running again on a replacement", _p9),
    Benchmark("P10", "dashboard_pages.py", "dashboard page render on a large store", _p10),
    Benchmark("P11", "failover.py", "team failover after the leader's SIGKILL", _p11),
    Benchmark("P12", "startup.py", "a restarted watcher's start, to its first API request", _p12),
    Benchmark("C1", "chaos.py", "a SIGKILLed watcher under preemptions, outbids, storms and flaps", _c1),
]


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


@dataclass
class Outcome:
    benchmark: Benchmark
    seconds: float
    output: str
    results: Any
    error: str | None


def _run(benchmark: Benchmark, quick: bool, tmp: Path) -> Outcome:
    path = tmp / f"{benchmark.key}.json"
    command = [sys.executable, str(HERE / benchmark.script), "--json", str(path), *(["--quick"] if quick else [])]
    print(f"== {benchmark.key} {benchmark.what}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    process = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = "\n".join(line for line in process.stdout.splitlines() if not line.startswith("wrote "))
    print(output, f"({seconds:.0f} s)", sep="\n", flush=True)
    results = json.loads(path.read_text())["results"] if path.exists() else None
    error = None
    if process.returncode != 0:
        error = f"exited {process.returncode}: {process.stderr.strip().splitlines()[-1:] or ''}"
        print(process.stderr, file=sys.stderr, flush=True)
    return Outcome(benchmark, seconds, output, results, error)


def _ratio_rows(outcomes: list[Outcome]) -> list[Row]:
    rows = []
    for o in outcomes:
        if o.results is None:
            rows.append([o.benchmark.key, "crashed", o.error or "", "-", "-", "NO"])
            continue
        rows += [[o.benchmark.key, *row] for row in o.benchmark.rows(o.results)]
    return rows


HEADER = ["bench", "measure", "value", "goal", "to goal (≤ 1 meets it)", "met"]


def _print(rows: list[Row]) -> None:
    widths = [max(len(row[i]) for row in [HEADER, *rows]) for i in range(len(HEADER))]
    print("\n== ratios against the goals")
    for row in [HEADER, *rows]:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def _markdown(rows: list[Row], outcomes: list[Outcome], host: dict[str, Any]) -> str:
    load = ", ".join(f"{x:g}" for x in host["load_average"])
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python bench/run_all.py` on {host['date']}. Machine: {host['nproc']} cores ({host['cpu']}), "
        f"Python {host['python']}, {host['platform']}; load average at start {load}.",
        "",
        f"The machine was shared with other work while this ran (load average {load} on {host['nproc']} cores), so "
        "wall times carry that noise: the CPU-time ratios (our process's CPU against the floor's, measured side "
        "by side in the same run) are the ones to read first.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
        *("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows),
        "",
        "",
    ]
    for o in outcomes:
        lines += _section(o)
    return "\n".join(lines)


def _section(o: Outcome, ran: str = "") -> list[str]:
    return [f"## {o.benchmark.key}: {o.benchmark.what}", "", f"`python bench/{o.benchmark.script}` "
            f"({o.seconds:.0f} s){ran}", "", "```", o.output or o.error or "", "```", ""]  # fmt: skip


def _updated(text: str, rows: list[Row], outcomes: list[Outcome], host: dict[str, Any]) -> str:
    """RESULTS.md with the rows and sections of `outcomes`' benchmarks replaced (or added in their order)."""
    keys = [b.key for b in BENCHMARKS]
    fresh = {o.benchmark.key for o in outcomes}
    load = ", ".join(f"{x:g}" for x in host["load_average"])
    ran = f", run on its own with `--only` on {host['date']}, load average at start {load}"
    head, *parts = text.split("\n## ")
    sections = {part.split(":", 1)[0]: "## " + part for part in parts}
    sections.update({o.benchmark.key: "\n".join(_section(o, ran)) for o in outcomes})
    table = [line for line in head.splitlines() if line.startswith("| ")][1:]
    kept = [line for line in table if line.split("|")[1].strip() not in fresh]
    new_rows = ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    merged = sorted(kept + new_rows, key=lambda line: keys.index(line.split("|")[1].strip()))
    head_lines = head.splitlines()
    first = next(i for i, line in enumerate(head_lines) if line.startswith("| ")) + 2
    head_lines[first : first + len(table)] = merged
    ordered = [sections[k].rstrip("\n") + "\n" for k in sorted(sections, key=keys.index)]
    return "\n".join(head_lines) + "\n\n" + "\n".join(ordered)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke mode: every benchmark in a few seconds")
    parser.add_argument("--json", metavar="PATH", help="also write every benchmark's results as one JSON document")
    parser.add_argument("--only", metavar="KEYS", help="comma-separated benchmarks to run (P7,P9): their rows and "
                        "sections replace those in RESULTS.md, the rest is kept")  # fmt: skip
    args = parser.parse_args()
    chosen = BENCHMARKS
    if args.only:
        wanted = [key.strip().upper() for key in args.only.split(",") if key.strip()]
        unknown = sorted(set(wanted) - {b.key for b in BENCHMARKS})
        if unknown:
            parser.error(f"--only: no benchmark {', '.join(unknown)} (known: {', '.join(b.key for b in BENCHMARKS)})")
        chosen = [b for b in BENCHMARKS if b.key in wanted]
    host = machine()
    print(f"machine: {host['nproc']} cores, {host['cpu']}, Python {host['python']}, load {host['load_average']}")
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = [_run(benchmark, args.quick, Path(tmp)) for benchmark in chosen]
    rows = _ratio_rows(outcomes)
    _print(rows)
    if args.json:
        results = {o.benchmark.key: {"seconds": o.seconds, "results": o.results} for o in outcomes}
        document = {"machine": host, "quick": args.quick, "benchmarks": results}
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.only and not args.quick:
        results_md = HERE / "RESULTS.md"
        results_md.write_text(_updated(results_md.read_text(), rows, outcomes, host))
        print(f"updated {results_md}")
    elif not args.quick:
        (HERE / "RESULTS.md").write_text(_markdown(rows, outcomes, host))
        print(f"wrote {HERE / 'RESULTS.md'}")
    crashed = [o.benchmark.key for o in outcomes if o.error is not None]
    if crashed:
        print(f"failed: {', '.join(crashed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
