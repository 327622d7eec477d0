"""``vastevents demo``: the whole story on an in-process simulator — no account, no money, about a minute.

Two jobs are submitted. The first is preempted mid-run: recovery rents a replacement on another machine (a host
taking its machine back is not struck: only an unfit host is) and the job resumes from its checkpoint; the second
finishes. A budget warning fires, Slack
messages go to a local sink. The simulator runs on a manual clock stepped poll by poll, so the story is the same
on any machine; only the jobs' own commands take real time, on real sshd hosts. The demo exits 0 only if every
check of the story holds and nothing is left rented.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from vastevents.cli._app import EXIT_FAILED, EXIT_INTERRUPTED, app, existing_store, fail, logs_through
from vastevents.cli._format import cut
from vastevents.clock import ManualClock
from vastevents.config import Config, parse_config
from vastevents.connect import vast_client
from vastevents.costs import build_report, charged_by_instance
from vastevents.errors import VastEventsError
from vastevents.events import Event
from vastevents.jobspec import JobSpec
from vastevents.models import Rental
from vastevents.ports import VastApi
from vastevents.runtime import Runtime
from vastevents.store.hosts import Hosts
from vastevents.store.jobs import Job, Jobs
from vastevents.store.ledger import Ledger

STEP = 15.0
"""Simulated seconds between two polls of the demo."""
MAX_REAL_SECONDS = 170.0
"""A bound on the story's real time; SSH and the jobs' commands take real time, simulated time does not wait."""
MAX_STEPS = 600
SLACK_ENV = "VASTEVENTS_DEMO_SLACK_URL"

TRAIN = """set -e
mkdir -p ckpt out
start=$(cat ckpt/step 2>/dev/null || echo 0)
step=$start
while [ "$step" -lt 12 ]; do step=$((step + 1)); echo "$step" > ckpt/step; echo "step $step"; sleep 0.5; done
echo "trained steps $start..$step" > out/result.txt
"""
EVALUATE = """mkdir -p out && echo "accuracy 0.93" > out/result.txt && echo evaluated"""

_JOBS_SECTION = """[handlers.jobs]
use = "jobs"
ssh_wait = "2h"
ssh_retry = "1s"
poll_first = "1s"
poll_every = "1s"
"""
CONFIG = """
[vast]
url = "{url}"
[watch]
interval = 15
preempt_grace = "60s"
[store]
path = "{store}"
{jobs}[handlers.recovery]
use = "recovery"
on_preempt = "replace"
[handlers.billing]
use = "billing"
budget_usd = {budget}
warn_at = 0.5
on_exceed = "alert"
[handlers.slack]
use = "slack"
webhook_url_env = "{slack_env}"
pace = 0
burst_count = 50
"""


class _Sink(BaseHTTPRequestHandler):
    """A local stand-in for Slack's incoming webhook: keeps the text of every message."""

    messages: list[str]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            self.messages.append(str(json.loads(body).get("text", "")))
        except ValueError:
            self.messages.append(body.decode(errors="replace"))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        return


@dataclass
class _Story:
    """What the run saw, for the tables and the checks."""

    events: list[Event] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    preempted: int | None = None
    preempt_sent: bool = False
    charges: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    interrupted: bool = False


@app.command()
def demo(
    speed: Annotated[
        float,
        typer.Option("--speed", min=0.1, help="How fast to play: real pauses between polls shrink by this factor."),
    ] = 1.0,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the temporary directory (config, store, results).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with the checks and tables.")] = False,
) -> None:
    """Play the whole job story on an in-process simulator: rent, run, preempt, recover, bill, alert, clean up."""
    from vastevents.sim import Simulator, sshhost  # only the demo needs the simulator

    console = Console(stderr=as_json, highlight=False)
    with_jobs = sshhost.find_sshd() is not None and shutil.which("ssh-keygen") is not None
    if not with_jobs:
        console.print(
            "no OpenSSH sshd here, so the demo runs SSH-free: instances are rented, preempted, recovered, billed and"
            " alerted on, but no job runs on them (apt-get install -y openssh-server openssh-client for the rest)",
            style="bold yellow",
        )
    tmp = Path(tempfile.mkdtemp(prefix="vastevents-demo-"))
    sink = ThreadingHTTPServer(("127.0.0.1", 0), type("Sink", (_Sink,), {"messages": []}))
    messages: list[str] = sink.RequestHandlerClass.messages  # type: ignore[attr-defined]
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    os.environ[SLACK_ENV] = f"http://127.0.0.1:{sink.server_port}/hooks/demo"
    story = _Story()
    try:
        with Simulator(api_key="demo-key", clock=ManualClock(), ssh=with_jobs) as sim:
            jobs = _JOBS_SECTION if with_jobs else ""
            config = parse_config(
                CONFIG.format(url=sim.url, store=tmp / "state.db", budget=0.05, slack_env=SLACK_ENV, jobs=jobs)
            )
            console.rule("vastevents demo")
            console.print(
                f"simulator {sim.url}{' with real sshd hosts' if with_jobs else ''} · temporary directory {tmp} ·"
                " a poll every"
                f" {STEP:g} simulated s",
                style="dim",
            )
            try:
                asyncio.run(_play(sim, config, tmp, story, console, pause=0.1 / speed, with_jobs=with_jobs))
            except VastEventsError as exc:
                fail(f"the demo failed: {exc}")
            left = sim.instance_count()
    finally:
        sink.shutdown()
        os.environ.pop(SLACK_ENV, None)
    report = _report(config, story, messages, left, with_jobs=with_jobs)
    _show(console, report, as_json)
    if not keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        console.print(f"kept {tmp}", style="dim")
    if story.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if not all(ok for _, ok in report["checks"]):
        raise typer.Exit(EXIT_FAILED)


async def _play(
    sim: Any, config: Config, tmp: Path, story: _Story, console: Console, *, pause: float, with_jobs: bool
) -> None:
    """Submit the two jobs, step the clock until both are done (preempting the first mid-run), clean up.

    SSH-free, two owned instances stand in for the jobs: the first is preempted once running, and the story
    ends a few polls after its replacement runs.
    """
    from vastevents.ssh import ParamikoSsh, SshSettings

    key = tmp / "id_ed25519"
    if with_jobs:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    ssh = ParamikoSsh(tmp / "known_hosts", key_file=key if with_jobs else None,
                      settings=SshSettings(connect_attempts=3, connect_wait=1.0))  # fmt: skip
    if with_jobs:
        async with vast_client(config, sim.api_key) as client:
            await client.add_ssh_key(key.with_suffix(".pub").read_text())
    runtime = Runtime(config, api_key=sim.api_key, clock=sim.clock, ssh=ssh, observers=[story.events.append])
    async with runtime, _progress(console) as progress:
        jobs = runtime.store.repository(Jobs)
        train, evaluate = await _submit(runtime, tmp) if with_jobs else (None, None)
        stand_ins = [] if with_jobs else await _rent_stand_ins(runtime)
        started, first, after_recovery = time.monotonic(), True, 0
        try:
            while story.steps < MAX_STEPS and time.monotonic() - started < MAX_REAL_SECONDS:
                if stop.is_set():
                    story.interrupted = True
                    break
                await runtime.poll_once(all_periodic=first)
                first = False
                story.steps += 1
                last = story.events[-1].name if story.events else "-"
                progress.update(
                    f"step {story.steps} · simulated {story.steps * STEP / 60:.0f} min · "
                    f"{len(story.events)} events, last: {last} · {sim.instance_count()} instances"
                )
                if train is not None and evaluate is not None:
                    current = jobs.get(train.id)
                    if story.preempted is None and current is not None and _checkpointed(current):
                        story.preempted = current.instance_id
                    finished = [jobs.get(job.id) for job in (train, evaluate)]
                    if all(job is not None and job.done and job.status != "collecting" for job in finished):
                        if sim.instance_count() == 0:
                            break
                elif story.preempted is None and any(
                    event.instance_id == stand_ins[0] and event.new == "running" for event in story.events
                ):
                    story.preempted = stand_ins[0]
                elif "recovered" in [event.name for event in story.events]:
                    after_recovery += 1
                    if after_recovery > 8:
                        break
                if story.preempted is not None and not story.preempt_sent:
                    story.preempt_sent = True
                    console.print(f"preempting instance {story.preempted}", style="bold yellow")
                    sim.preempt(story.preempted)
                sim.advance(STEP)
                await asyncio.sleep(pause)  # the jobs' commands run for real on the sshd hosts
        finally:
            story.jobs = [job for job in map(jobs.get, [j.id for j in (train, evaluate) if j]) if job is not None]
            await _destroy_everything(runtime)
            for _ in range(3):  # journal what the cleanup did
                sim.advance(STEP)
                await runtime.poll_once(all_periodic=True)
            story.charges = await _charges(runtime.client, sim.clock.now().timestamp())
    ssh.close()


@contextlib.asynccontextmanager
async def _progress(console: Console) -> AsyncIterator[Status]:
    """A live line while the story plays, log lines printed above it (a plain console gets none)."""
    with console.status("starting") as status, logs_through(console):
        yield status


async def _submit(runtime: Runtime, tmp: Path) -> tuple[Job, Job]:
    submitted = []
    for name, script, checkpoint in (("train", TRAIN, "ckpt"), ("evaluate", EVALUATE, None)):
        work = tmp / name
        work.mkdir()
        (work / "run.sh").write_text(script)
        spec = JobSpec.model_validate(
            {
                "image": "pytorch/pytorch",
                "query": "num_gpus=1 reliability>0.9",
                "disk": 16,
                "upload": str(work),
                "cmd": "sh run.sh",
                "download": ["out"],
                "out": str(tmp / "results" / name),
                "checkpoint_dir": checkpoint,
                "checkpoint_every": "15s",
            }
        )
        offers = await runtime.client.search_offers(spec.query, limit=3)
        jobs = runtime.store.repository(Jobs)
        submitted.append(jobs.submit(spec.to_json(), [o.id for o in offers], "vastevents", runtime.clock.now()))
    return submitted[0], submitted[1]


async def _rent_stand_ins(runtime: Runtime) -> list[int]:
    """Two owned on-demand instances, rented through the runtime like a handler would."""
    offers = await runtime.client.search_offers("num_gpus=1 reliability>0.9", limit=2)
    context = runtime.context.bound("demo", ())
    return [
        await context.create(Rental(offer.id, image="pytorch/pytorch", disk=16, label=f"vastevents:demo-{name}"))
        for offer, name in zip(offers, ("train", "evaluate"), strict=True)
    ]


def _checkpointed(job: Job) -> bool:
    """True once the job runs and a checkpoint of it has come back to the local copy."""
    if job.results_dir is None:
        return False
    step = Path(job.results_dir) / "ckpt" / "step"
    return job.status == "running" and step.exists() and step.read_text().strip() not in ("", "0")


async def _destroy_everything(runtime: Runtime) -> None:
    """Money safety: whatever the story left (it should be nothing), destroy it."""
    for instance in await runtime.client.list_instances():
        try:
            await runtime.context.bound("demo", ()).destroy(instance)
        except VastEventsError:
            await runtime.client.destroy_instance(instance.id)


async def _charges(client: VastApi, now: float) -> list[dict[str, Any]]:
    """Every charge item of the last day, as Vast's own billing reports it."""
    items: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = await client.charges(start=now - 86400, end=now + 60, after_token=token)
        items += [item for item in page.get("results") or [] if isinstance(item, dict)]
        token = page.get("next_token") or None
        if token is None:
            return items


def _report(config: Config, story: _Story, messages: list[str], left: int, *, with_jobs: bool) -> dict[str, Any]:
    names = [event.name for event in story.events]
    store = existing_store(config)
    if store is None:
        fail(f"the demo's store {config.store.describe()} is gone")
    with store:
        ledger = store.repository(Ledger)
        now = max((event.at for event in story.events), default=None) or ManualClock().now()
        cost = build_report(
            ledger.intervals(), ledger.instances(), now=now + timedelta(seconds=1), by="job",
            charged=charged_by_instance(story.charges),
        )  # fmt: skip
        blocked = store.repository(Hosts).records(now)
    train = story.jobs[0] if story.jobs else None
    result = Path(train.results_dir) / "out" / "result.txt" if train and train.results_dir else None
    resumed = result is not None and result.exists() and not result.read_text().startswith("trained steps 0.")
    matched = bool(cost.instances) and not any(row.flagged for row in cost.instances)
    moved = ("preempted", "recovered")
    machines = {e.name: e.instance.machine_id for e in story.events if e.instance and e.name in moved}
    elsewhere = len(machines) == 2 and machines["preempted"] != machines["recovered"]
    job_checks = [
        ("both jobs finished with exit 0", len(story.jobs) == 2 and all(j.exit_code == 0 for j in story.jobs)),
        ("the job resumed from its checkpoint", resumed),
    ]
    checks = [
        *(job_checks if with_jobs else []),
        ("the first instance was preempted", story.preempted is not None and "preempted" in names),
        ("recovery rented a replacement", "recovered" in names),
        ("the replacement runs on another machine", elsewhere),
        ("a budget warning fired", "budget_warning" in names),
        ("Slack got the preemption", any("preempted" in text for text in messages)),
        ("the ledger matches the simulator's charges", matched),
        ("nothing is left rented", left == 0),
    ]  # fmt: skip
    return {
        "checks": checks,
        "timeline": [(event.id, event.name, event.instance_id, event.detail) for event in story.events],
        "jobs": [job.to_json() for job in story.jobs],
        "cost": cost.to_json(),
        "hosts": [record.to_json() for record in blocked],
        "slack": messages,
        "steps": story.steps,
        "interrupted": story.interrupted,
        "result": result.read_text().strip() if result is not None and result.exists() else None,
    }


def _show(console: Console, report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        document = {**report, "checks": [{"check": name, "ok": ok} for name, ok in report["checks"]]}
        typer.echo(json.dumps(document, indent=2, default=str))
        return
    timeline = Table(title="event timeline", title_justify="left", box=None)
    for column in ("#", "event", "instance", "detail"):
        timeline.add_column(column, header_style="bold")
    for event_id, name, instance_id, detail in report["timeline"]:
        timeline.add_row(str(event_id), escape(name), str(instance_id or ""), escape(cut(detail or "", 70)))
    console.print(timeline)
    jobs = Table(title="jobs", title_justify="left", box=None)
    for column in ("job", "status", "exit", "instance", "gpu", "$/h", "results"):
        jobs.add_column(column, header_style="bold")
    for job in report["jobs"]:
        exit_code = job.get("exit_code")
        jobs.add_row(str(job.get("job_id")), str(job.get("status")), "-" if exit_code is None else str(exit_code),
                     str(job.get("instance_id")), str(job.get("gpu_name") or ""), f"{job.get('dph_total') or 0:.3f}",
                     str(job.get("results_dir") or ""))  # fmt: skip
    console.print(jobs)
    if report["result"]:
        console.print(f"train's result: {report['result']}", style="dim")
    cost = Table(title="cost per instance (ledger vs the simulator's charges)", title_justify="left", box=None)
    for column in ("instance", "job", "ledger $", "charged $"):
        cost.add_column(column, header_style="bold")
    for row in report["cost"]["instances"]:
        charged = row.get("charged_usd")
        cost.add_row(str(row["instance_id"]), str(row.get("job_id") or ""), f"{row['cost_usd']:.4f}",
                     f"{charged:.4f}" if charged is not None else "-")  # fmt: skip
    console.print(cost)
    per_job = ", ".join(f"job {group['key']}: ${group['cost_usd']:.4f}" for group in report["cost"]["groups"])
    if per_job:
        console.print(f"per job: {per_job}", style="dim")
    hosts = Table(title="hosts with strikes", title_justify="left", box=None)
    for column in ("machine", "strikes", "blocked", "reasons"):
        hosts.add_column(column, header_style="bold")
    for host in report["hosts"]:
        hosts.add_row(
            str(host["machine_id"]), str(host["strikes"]), str(host["blocked"]), escape("; ".join(host["reasons"]))
        )
    console.print(hosts)
    console.print(f"Slack (local sink): {len(report['slack'])} messages", style="bold")
    for text in report["slack"]:
        console.print(f"  {escape(cut(text, 110))}", style="dim")
    console.rule("checks")
    for name, ok in report["checks"]:
        console.print(f"{'✓' if ok else '✗'} {name}", style="green" if ok else "bold red")
    if report["interrupted"]:
        console.print(
            f"interrupted after {report['steps']} steps: the story stopped early (so checks of its later part fail);"
            " everything it rented was destroyed",
            style="bold yellow",
        )
