"""``vastevents run``, ``jobs`` and ``logs``: rent a GPU for one job, run it over SSH, collect, always destroy.

``run`` searches, confirms the offer and its estimate, records the job and drives the same runtime as ``watch``
(the ``jobs`` handler does the renting, SSH, monitoring and collecting) until the job is done. Ctrl-C, SIGTERM or
any error destroys what the job rented before the report. The exit status is the job's exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from vastevents.choosing import Ranking
from vastevents.cli._app import ConfigOption, app, existing_store, fail, table_console
from vastevents.cli._format import format_duration, money, narrow_table, rate
from vastevents.cli._preflight import account_preflight
from vastevents.cli._progress import JobProgress
from vastevents.cli._submit import follow as follow_job
from vastevents.cli._submit import submit as queue_job
from vastevents.config import Config, HandlerConfig, load_config
from vastevents.errors import ConfigError, VastEventsError
from vastevents.events import Cause
from vastevents.jobspec import DEFAULT_QUERY, JobSpec, load_spec
from vastevents.labels import job_label_prefix
from vastevents.plugins import load_handlers
from vastevents.ports import SshTarget
from vastevents.runtime import Runtime
from vastevents.ssh import ParamikoSsh
from vastevents.store import Job, Jobs, JobStatus, Terms

JOBS_HANDLER = "jobs"
SHOWN = 5
"""How many offers ``--dry-run`` (and the confirmation) shows."""
KEY_FILES = ("id_ed25519", "id_rsa")


def _with_jobs_handler(config: Config) -> tuple[Config, str]:
    """The config with a ``jobs`` handler active (added if the config names none); its name."""
    for name, handler in config.handlers.items():
        if handler.use == JOBS_HANDLER:
            return config, name
    handlers = {**config.handlers, JOBS_HANDLER: HandlerConfig(use=JOBS_HANDLER)}
    return config.model_copy(update={"handlers": handlers}), JOBS_HANDLER


def _ssh_key(yes: bool, err: Console) -> Path:
    """The private key jobs log in with: ~/.ssh/id_ed25519 or id_rsa, generated (with permission) if neither."""
    ssh_dir = Path.home() / ".ssh"
    for name in KEY_FILES:
        if (ssh_dir / name).exists() and (ssh_dir / f"{name}.pub").exists():
            return ssh_dir / name
    key = ssh_dir / KEY_FILES[0]
    if not yes and not typer.confirm(f"No SSH key found. Generate {key}?", default=True, err=True):
        fail("an SSH key is needed to reach the instance (or pass --yes to generate one)", 2)
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=60)
    err.print(f"generated {key}")
    return key


async def _register_key(runtime: Runtime, key: Path, err: Console) -> None:
    public = key.with_suffix(".pub").read_text().strip()
    blob = public.split()[1] if len(public.split()) > 1 else public
    known = await runtime.client.list_ssh_keys()
    if any(blob in str(row.get("public_key") or row.get("ssh_key") or "") for row in known):
        return
    add = getattr(runtime.client, "add_ssh_key", None)
    if add is None:
        raise VastEventsError("this client cannot register SSH keys; add the key on the account by hand")
    await add(public)
    err.print(f"registered {key}.pub with the account")


def _report(job: Job | None, runtime_s: float, console: Console) -> dict[str, Any]:
    """The report ``--json`` prints (unrounded), shown to a person as words and rounded numbers."""
    data = {
        "job_id": job.id if job else None,
        "instance_id": job.instance_id if job else None,
        "gpu_name": job.gpu_name if job else None,
        "dph_total": job.dph_total if job else None,
        "runtime_s": runtime_s,
        "cost_usd": (job.cost_usd or 0.0) if job else 0.0,
        "exit_code": job.exit_code if job else None,
        "results_dir": job.results_dir if job else None,
        "destroyed": bool(job.destroyed) if job else True,
        "errors": list(job.errors) if job else [],
    }
    if job is None:
        console.print("no job was recorded")
        return data
    title = f"job {job.id} {job.status}" + (f", exit code {job.exit_code}" if job.exit_code is not None else "")
    table = Table(title=title, title_justify="left", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    gpu = f" ({job.gpu_name or 'GPU unknown'}, {rate(job.dph_total)})" if job.instance_id is not None else ""
    table.add_row("instance", f"{job.instance_id or '-'}{gpu}")
    table.add_row("ran for", format_duration(runtime_s))
    table.add_row("cost", money(job.cost_usd or 0.0))
    table.add_row("results", job.results_dir or "-")
    table.add_row("destroyed", "yes" if job.destroyed else "NO: destroy it by hand (see `vastevents status`)")
    for error in job.errors:
        table.add_row("error", error)
    console.print(table)
    return data


@app.command()
def run(
    spec_file: Annotated[Path | None, typer.Argument(metavar="SPEC", help="Job spec (TOML).")] = None,
    image: Annotated[str | None, typer.Option(help="Docker image.")] = None,
    query: Annotated[
        str | None, typer.Option(help=f"Offer query, cheapest first. Default: {DEFAULT_QUERY!r}.", show_default=False)
    ] = None,
    disk: Annotated[float | None, typer.Option(help="Disk in GB (default 64).")] = None,
    bid: Annotated[float | None, typer.Option(help="Bid $/h (interruptible) instead of on-demand.")] = None,
    upload: Annotated[Path | None, typer.Option(metavar="LOCAL_DIR", help="Becomes the remote workdir.")] = None,
    cmd: Annotated[str | None, typer.Option(metavar="COMMAND", help="Runs in the workdir.")] = None,
    download: Annotated[list[str] | None, typer.Option(metavar="REMOTE_PATH", help="Relative to the workdir.")] = None,
    out: Annotated[Path | None, typer.Option(metavar="LOCAL_DIR", help="Where downloads land.")] = None,
    max_duration: Annotated[
        str | None,
        typer.Option(metavar="DURATION", help="Stop the job after this long, e.g. 2h, 90m, 3600 (seconds)."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Skip every confirmation.")] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show the best offers with $/h, expected cost and why; rent nothing."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout, last.")] = False,
    submit: Annotated[
        bool,
        typer.Option(
            "--submit",
            help="Queue the job for the team's watcher (the leader rents, runs and collects it; results land on its"
            " machine) and print its id, instead of running it here.",
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Rent a GPU, upload, run COMMAND, download the results, destroy the instance."""
    err = Console(stderr=True)
    overrides = {"image": image, "query": query, "disk": disk, "bid": bid, "upload": upload, "cmd": cmd,
                 "download": tuple(download or ()), "out": out, "max_duration": max_duration}  # fmt: skip
    try:
        base = load_config(config)
        settings, handler = _with_jobs_handler(base)
        spec = load_spec(spec_file, overrides)
        handlers = load_handlers(settings)
    except ConfigError as exc:
        fail(str(exc), 2)
    if spec.upload is not None and not spec.upload.is_dir():
        fail(f"--upload {spec.upload}: not a directory", 2)
    if submit:
        has_jobs = any(entry.use == JOBS_HANDLER for entry in base.handlers.values())
        queue_job(settings, spec, jobs_handler=has_jobs, yes=yes, dry_run=dry_run, as_json=as_json)
        return
    try:
        code, report = asyncio.run(
            _run(settings, handler, handlers, spec, yes=yes, dry_run=dry_run, as_json=as_json, err=err)
        )
    except VastEventsError as exc:
        fail(str(exc), 1)
    if as_json and report is not None:
        sys.stdout.write(json.dumps(report) + "\n")
    raise typer.Exit(code)


async def _run(
    config: Config,
    handler: str,
    handlers: list[Any],
    spec: JobSpec,
    *,
    yes: bool,
    dry_run: bool,
    as_json: bool,
    err: Console,
) -> tuple[int, dict[str, Any] | None]:
    key = None if dry_run else _ssh_key(yes, err)
    known_hosts = config.store.resolved_path().parent / "known_hosts"
    with contextlib.closing(ParamikoSsh(known_hosts, key_file=key)) as ssh:
        return await _run_with(config, handler, handlers, spec, ssh, key, yes=yes, dry_run=dry_run, as_json=as_json,
                               err=err)  # fmt: skip


async def _run_with(
    config: Config,
    handler: str,
    handlers: list[Any],
    spec: JobSpec,
    ssh: ParamikoSsh,
    key: Path | None,
    *,
    yes: bool,
    dry_run: bool,
    as_json: bool,
    err: Console,
) -> tuple[int, dict[str, Any] | None]:
    async with Runtime(config, handlers=handlers, ssh=ssh) as runtime:
        await account_preflight(runtime, yes=yes, dry_run=dry_run, err=err)
        if (refused := await spec.refusal(runtime.client)) is not None:
            raise VastEventsError(refused)
        ranking = await spec.choose(runtime.client, runtime.store, now=runtime.clock.now(), strategy=config.jobs.choose)
        best = ranking.chosen
        if best is None:
            cap = f" at most ${spec.max_dph:g}/h" if spec.max_dph is not None else ""
            raise VastEventsError(f"no offer matches {spec.query!r}{cap}")
        bound = best.bound(spec.hours * 3600.0)
        _show_ranking(ranking, spec, Console(highlight=False) if dry_run and not as_json else err)  # a dry run's answer
        if spec.max_cost is not None and bound > spec.max_cost:
            raise VastEventsError(f"the estimate {money(bound)} is over max_cost {money(spec.max_cost)}")
        _check_budgets(runtime, bound, spec)
        if dry_run:
            return 0, ranking.to_json(top=SHOWN)
        if not yes and not typer.confirm("Rent it and run the job?", default=True, err=True):
            return 0, None
        assert key is not None
        await _register_key(runtime, key, err)
        jobs = runtime.store.repository(Jobs)
        prefix = await job_label_prefix(config, runtime.client)
        terms = {e.offer.id: Terms(e.bid, e.dph) for e in ranking.estimates}
        spec = spec.model_copy(update={"out": spec.out.expanduser().absolute()})  # a watcher elsewhere finds it
        job = jobs.submit(spec.to_json(), list(terms), prefix, runtime.clock.now(), terms=terms)
        err.print(f"job {job.id} ({job.label})")
        started = runtime.clock.now()
        try:
            async with JobProgress(err, runtime, job.id, ssh.transfer).shown():
                await _drive(runtime, jobs, job, err)
        except KeyboardInterrupt:
            await _cancel(runtime, handler, jobs, job.id, err)
        except BaseException:
            await _cancel(runtime, handler, jobs, job.id, err)
            raise
        final = jobs.get(job.id)
        now = runtime.clock.now()
        elapsed = (final.runtime_s(now) if final else 0.0) or (now - started).total_seconds()
        report = _report(final, elapsed, err if as_json else Console())
        code = final.exit_code if final and final.exit_code is not None else 1
        return (130 if final is not None and final.status == "cancelled" else code), report


def _show_ranking(ranking: Ranking, spec: JobSpec, console: Console) -> None:
    """The offers it would rent, best first: $/h, the expected cost of the finished job, and why."""
    table = narrow_table(f"offers by {ranking.strategy} for a {format_duration(spec.hours * 3600)} job")
    for column in ("offer", "gpu", "$/h", "expected $", "why"):
        table.add_column(column, overflow="fold" if column == "why" else "ellipsis", no_wrap=column != "why")
    for estimate in ranking.estimates[:SHOWN]:
        offer = estimate.offer
        table.add_row(str(offer.id), f"{offer.num_gpus or 1}x {offer.gpu_name}", rate(estimate.dph),
                      f"${estimate.expected_cost_usd:.4f}", estimate.why)  # fmt: skip
    console.print(table)
    best = ranking.chosen
    assert best is not None
    console.print(f"chosen: offer {best.offer.id}, {rate(best.dph)}, at most {money(best.bound(spec.hours * 3600))}"
                  f" for {format_duration(spec.hours * 3600)}, {money(best.expected_cost_usd)} expected")  # fmt: skip


def _check_budgets(runtime: Runtime, bound: float, spec: JobSpec) -> None:
    """Refuse a job that may cost more (its price times ``max_duration``) than what is left of a billing budget."""
    reason = runtime.context.over_budget(bound)
    if reason is not None:
        raise VastEventsError(
            f"{reason} ({rate(bound / spec.hours)} for {format_duration(spec.hours * 3600)}): shorten max_duration,"
            " or raise the budget"
        )


async def _drive(runtime: Runtime, jobs: Jobs, job: Job, err: Console) -> Job:
    """Run the watcher's cycles until the job is done; print its output as it comes (the rest, a short job's
    whole output too, from the downloaded log once it is done); SIGTERM/SIGINT cancel it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    interval = min(runtime.config.watch.interval, 5.0)
    shown = 0
    """Bytes of the job's log printed so far (whole lines only, until it is done)."""
    try:
        first = True
        while True:
            await runtime.poll_once(all_periodic=first)
            first = False
            current = jobs.get(job.id)
            assert current is not None
            if current.done:
                _print_output(err, _downloaded_rest(current, shown))
                return current
            if current.status == "running" and current.instance_id is not None:
                text = await _read_log(runtime, current, JobSpec.model_validate(current.spec), shown)
                lines = text[: text.rfind("\n") + 1]
                _print_output(err, lines)
                shown += len(lines.encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if stop.is_set():
                raise KeyboardInterrupt
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _print_output(console: Console, text: str) -> None:
    """The job's own output, as it wrote it (never read as markup)."""
    if text:
        console.print(text, end="" if text.endswith("\n") else "\n", markup=False, highlight=False, soft_wrap=True)


def _downloaded_rest(job: Job, offset: int) -> str:
    """What the downloaded log holds after byte `offset` ("" when there is none)."""
    log = Path(job.results_dir) / "job.log" if job.results_dir else None
    if log is None or not log.is_file():
        return ""
    return log.read_bytes()[offset:].decode(errors="replace")


async def _read_log(runtime: Runtime, job: Job, spec: JobSpec, offset: int) -> str:
    """The job's log on its host after byte `offset` ("" while the host cannot be reached)."""
    instance = await runtime.client.get_instance(job.instance_id or 0)
    if instance is None or not instance.ssh_host:
        return ""
    target = SshTarget.of(instance, spec.ssh_user)
    log = shlex.quote(spec.log_path)
    try:
        result = await runtime.ssh.run(target, f"tail -c +{offset + 1} {log} 2>/dev/null", timeout=30)
    except Exception:
        return ""
    return result.stdout


async def _cancel(runtime: Runtime, handler: str, jobs: Jobs, job_id: int, err: Console) -> None:
    """Destroy whatever the job rented (found by its label too), mark it cancelled and journal ``job_failed``
    with cause ``cancelled``, so notifiers hear that it ended."""
    job = jobs.get(job_id)
    if job is None or job.done:
        return
    context = runtime.context.bound(handler, ("job_failed",))
    destroyed = True
    for instance in await runtime.client.list_instances():
        if instance.label == job.label or instance.id == job.instance_id:
            await context.destroy(instance)
            destroyed = destroyed and await runtime.client.get_instance(instance.id) is None
    try:
        await JobSpec.model_validate(job.spec).release_volumes(context, job.label)
    except Exception as exc:  # the job is cancelled all the same; the volume is listed by `vastevents volumes`
        err.print(f"job {job_id}: could not delete its volume: {exc}")
    jobs.update(job_id, status=JobStatus.CANCELLED, finished_at=runtime.clock.now(), destroyed=destroyed,
                cause=Cause.CANCELLED)  # fmt: skip
    jobs.add_error(job_id, "interrupted: everything the job rented was destroyed")
    detail = f"job {job_id} interrupted ({job.status} then)"
    await context.emit("job_failed", detail=detail, cause=Cause.CANCELLED, key=f"job-{job_id}-end")
    err.print(f"job {job_id} cancelled; destroyed what it rented")


@app.command()
def jobs(
    as_json: Annotated[bool, typer.Option("--json", help="JSON (with --follow: one object per change).")] = False,
    follow: Annotated[
        int | None,
        typer.Option("--follow", metavar="ID", help="Print job ID at each change until it ends; exit with its code."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """List the jobs in the store (a team's shared one from any machine), or follow one."""
    try:
        settings = load_config(config)
    except ConfigError as exc:
        fail(str(exc), 2)
    if follow is not None:
        raise typer.Exit(follow_job(settings, follow, as_json=as_json))
    rows: list[Job] = []
    if (store := existing_store(settings)) is not None:
        with store:
            rows = store.repository(Jobs).list()
    if as_json:
        sys.stdout.write(json.dumps([job.to_json() for job in rows]) + "\n")
        return
    console = table_console()
    if not rows:
        console.print("No jobs in the store yet: `vastevents run SPEC` runs one.")
        return
    console.print(_jobs_table(rows))


def _jobs_table(rows: list[Job]) -> Table:
    """One line per job that fits 80 columns: why it failed in a word (its cause, else its last error), who submitted
    it (``by``) only when someone did (a team); each job's results dir is in ``jobs --json``, ``logs N`` its log."""
    submitted = any(job.submitted_by for job in rows)
    table = narrow_table()
    table.caption = "results: each job's own directory (`vastevents jobs --json`); a job's log: `vastevents logs N`"
    table.caption_justify = "left"
    squeezable = {"gpu": 10, "error": 14 if submitted else 26, "by": 14}
    for column in ("job", "status", "instance", "gpu", "cost", "exit", "error", *(("by",) if submitted else ())):
        table.add_column(column, justify="right" if column in ("job", "cost", "exit") else "left", no_wrap=True,
                         overflow="ellipsis", max_width=squeezable.get(column))  # fmt: skip
    for job in rows:
        error = job.cause.value if job.cause is not None else (job.errors[-1] if job.errors else "")
        cells = [str(job.id), job.status, str(job.instance_id or "-"), job.gpu_name or "-", money(job.cost_usd),
                 "-" if job.exit_code is None else str(job.exit_code), error or "-",
                 *((job.submitted_by or "-",) if submitted else ())]  # fmt: skip
        table.add_row(*cells, style="red" if job.status in ("failed", "cancelled") else None)
    return table


@app.command()
def logs(
    job_id: Annotated[int, typer.Argument(metavar="JOB")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing while the job runs.")] = False,
    config: ConfigOption = None,
) -> None:
    """A job's log: from the host while it runs, the copy downloaded into its results dir after."""
    try:
        settings = load_config(config)
    except ConfigError as exc:
        fail(str(exc), 2)
    job = None
    if (store := existing_store(settings)) is not None:
        with store:
            job = store.repository(Jobs).get(job_id)
    if job is None:
        fail(f"no job {job_id} in the store", 2)
    if job.done or job.instance_id is None:
        sys.stdout.write(_downloaded_log(job))
        return
    try:
        asyncio.run(_follow(settings, job, JobSpec.model_validate(job.spec), follow))
    except VastEventsError as exc:
        fail(str(exc), 1)


def _downloaded_log(job: Job) -> str:
    """The log the job's own results dir holds (an absolute path in the store), or exit 1 saying why none."""
    if job.results_dir is None:
        fail(f"job {job.id} is {job.status} and has no results dir: nothing was downloaded", 1)
    log = Path(job.results_dir) / "job.log"
    if not log.exists():
        where = " (it ran on the team's watcher; its results are on that machine)" if job.submitted_by else ""
        fail(f"job {job.id} has no downloaded log at {log}{where}", 1)
    return log.read_text(errors="replace")


async def _follow(config: Config, job: Job, spec: JobSpec, follow: bool) -> None:
    """Print the log from the host (and keep printing while the job runs, with `follow`); only looks."""
    async with Runtime(config, read_only=True, handlers=[]) as runtime:
        offset = 0
        while True:
            text = await _read_log(runtime, job, spec, offset)
            sys.stdout.write(text)
            sys.stdout.flush()
            offset += len(text.encode())
            current = runtime.store.repository(Jobs).get(job.id)
            if not follow or current is None or current.done:
                return
            await asyncio.sleep(2.0)
