"""``run --submit`` and ``jobs --follow``: queue a job for the team's watcher, and follow one from any machine.

A submitted job is only written to the store (its upload dir as an archive); the leading ``watch`` claims it,
rents, runs and collects it like a local ``run``, its results landing on the leader's machine. Following reads
the shared store: on PostgreSQL each change arrives by NOTIFY, on a SQLite file the row is re-read every second.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import socket
import sys
from datetime import UTC, datetime

import typer
from rich.console import Console

from vastevents.cli._app import existing_store, fail
from vastevents.config import Config
from vastevents.connect import configured_store, vast_client
from vastevents.errors import ConfigError, VastEventsError
from vastevents.jobspec import JobSpec, pack_dir
from vastevents.labels import job_label_prefix, prefix_configured
from vastevents.store import Job, Jobs
from vastevents.store.jobs import check_inputs
from vastevents.team import leading_watcher, no_watcher

CANCELLED_EXIT = 130


def submit(config: Config, spec: JobSpec, *, jobs_handler: bool, yes: bool, dry_run: bool, as_json: bool) -> None:
    """Queue `spec` for the leader; print the job (one JSON object with ``--json``)."""
    err = Console(stderr=True)
    archive = pack_dir(spec.upload) if spec.upload is not None else None
    try:
        if archive is not None:
            check_inputs(archive)  # before the dry run and the question, not only when it is written
    except ValueError as exc:
        fail(f"--upload {spec.upload}: {exc}; let the job fetch large data itself", 2)
    queued = spec.model_copy(update={"upload": None}).to_json()
    size = f", upload {len(archive) / 1024:.0f} KiB" if archive is not None else ""
    err.print(f"job: {spec.cmd!r} on {spec.image or spec.template_hash}, query {spec.query!r}{size}")
    if not jobs_handler:
        err.print("[yellow]note:[/] the config names no jobs handler; the watcher runs submitted jobs only with"
                  ' [handlers.jobs] use = "jobs"')  # fmt: skip
    if dry_run:
        if as_json:
            sys.stdout.write(json.dumps({"dry_run": True, "spec": queued}) + "\n")
        return
    if not yes and not typer.confirm("Queue it for the team's watcher (it rents the cheapest match)?",
                                     default=True, err=True):  # fmt: skip
        return
    try:
        with configured_store(config) as store:
            job = store.repository(Jobs).submit(
                queued,
                [],
                _label_prefix(config),
                datetime.now(UTC),
                submitted_by=f"{getpass.getuser()}@{socket.gethostname()}",
                inputs=archive,
            )
            watched = leading_watcher(store, config.watch.interval) is not None
    except VastEventsError as exc:
        fail(str(exc), 1)
    err.print(f"job {job.id} queued ({job.label}) in {config.store.describe()}")
    if not watched:
        err.print(f"[yellow]note:[/] {no_watcher(config.watch.interval)}; the job waits in the queue until one does")
    err.print(f"follow it with: vastevents jobs --follow {job.id}")
    if as_json:
        sys.stdout.write(json.dumps(job.to_json()) + "\n")


def _label_prefix(config: Config) -> str:
    """The new job's label prefix (see :mod:`vastevents.labels`); the account is read only when it names it."""
    if prefix_configured(config):
        return config.vast.label_prefix

    async def lookup() -> str:
        try:
            client = vast_client(config, max_attempts=2, max_wait=2.0)
        except ConfigError:  # no API key here: the fallback name
            return await job_label_prefix(config, None)
        async with client:
            return await job_label_prefix(config, client)

    return asyncio.run(lookup())


def follow(config: Config, job_id: int, *, as_json: bool) -> int:
    """Print job `job_id` now and at each change until it ends; its exit status (130 if cancelled)."""
    store = existing_store(config)
    if store is None:
        fail(f"no job {job_id}: no watch has made the store yet", 2)
    with store:
        jobs = store.repository(Jobs)
        last: Job | None = None
        try:
            for job in jobs.follow(job_id):
                _show(job, last, as_json)
                last = job
        except KeyboardInterrupt:
            return CANCELLED_EXIT
    if last is None:
        fail(f"no job {job_id} in the store", 2)
    if last.status == "cancelled":
        return CANCELLED_EXIT
    if last.status == "finished":
        return last.exit_code or 0
    return last.exit_code if last.exit_code not in (None, 0) else 1


def _show(job: Job, last: Job | None, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(job.to_json()) + "\n")
        sys.stdout.flush()
        return
    parts = [f"job {job.id} {job.status}"]
    if job.instance_id is not None:
        parts.append(f"instance {job.instance_id}" + (f" ({job.gpu_name})" if job.gpu_name else ""))
    if job.exit_code is not None:
        parts.append(f"exit code {job.exit_code}")
    if job.done and job.results_dir:
        parts.append(f"results in {job.results_dir} on the watcher's machine")
    if job.done and job.cost_usd is not None:
        parts.append(f"${job.cost_usd:.4f}")
    print(", ".join(parts), flush=True)
    for error in job.errors[len(last.errors) if last else 0 :]:
        print(f"  {error}", flush=True)
