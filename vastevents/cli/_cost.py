"""``cost``: the ledger's running totals beside Vast's own charges, and ghost billing reported loudly."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Annotated, cast

import typer
from rich.table import Table

from vastevents.cli._app import ConfigOption, app, existing_store, fail, table_console
from vastevents.cli._format import money, money_change, narrow_table
from vastevents.config import Config, load_config
from vastevents.connect import vast_client
from vastevents.costs import CostReport, GroupBy, cost_report, parse_since
from vastevents.errors import ConfigError
from vastevents.store.jobs import Jobs
from vastevents.store.ledger import Ledger
from vastevents.vast import VastClient


def _since(text: str | None) -> datetime | None:
    try:
        return parse_since(text) if text is not None else None
    except ValueError as exc:
        fail(f"--since {exc}", 2)


BILLING = "billing"
LEDGER_HINT = (
    'no ledger is kept: add a table [handlers.billing] with use = "billing" to the config, and the watcher keeps one'
    " for every instance in every state (and holds budgets)"
)


async def _report(config: Config, by: GroupBy, since: datetime | None) -> CostReport:
    """The report over the configured store (empty before any watch made one): its ledger, or each job's own cost
    when no billing handler keeps a ledger."""
    try:
        client: VastClient | None = vast_client(config, max_attempts=3, max_wait=2.0)
    except ConfigError:
        client = None  # the report says why Vast's side is missing
    store = existing_store(config)  # the team's shared store in team mode
    kept = any(handler.use == BILLING for handler in config.handlers.values())
    try:
        ledger = store.repository(Ledger) if store is not None else None
        jobs = None if kept else (store.repository(Jobs).list() if store is not None else [])
        return await cost_report(ledger, client, now=datetime.now(UTC), by=by, since=since, jobs=jobs)
    finally:
        if store is not None:
            store.close()
        if client is not None:
            await client.aclose()


def _print(report: CostReport) -> None:
    console = table_console()
    by_jobs = report.source == "jobs"
    if not report.instances:
        console.print("Nothing spent: no ledger entries, no jobs and no charges from Vast.")
    else:
        if report.by != "instance":
            groups = narrow_table(f"{'Jobs' if by_jobs else 'Ledger'} by {report.by}")
            groups.add_column(report.by)
            groups.add_column("cost", justify="right")
            for key, cost in report.groups:
                groups.add_row(key, money(cost))
            console.print(groups)
        console.print(_instances(report))
        ours = "jobs" if by_jobs else "ledger"
        console.print(f"total ({ours}): {money(report.total_usd)}   Vast charged: {money(report.charged_total_usd)}")
    if by_jobs:
        console.print(LEDGER_HINT, style="dim", markup=False)


def _instances(report: CostReport) -> Table:
    by_jobs = report.source == "jobs"
    title = "Each job's own cost beside Vast's charges" if by_jobs else "Ledger beside Vast's charges, per instance"
    table = narrow_table(title)
    ours = "job cost" if by_jobs else "ledger"
    columns = ("instance", "label", "job", "since", ours, "charged", *(() if by_jobs else ("diff", "")))
    for column in columns:
        table.add_column(column, justify="right" if column in (ours, "charged", "diff") else "left",
                         overflow="fold" if column == "label" else "ellipsis", no_wrap=column != "label")  # fmt: skip
    observed = False
    for row in report.instances:
        since = row.observed_since.strftime("%m-%d %H:%M") if row.observed_since else "-"
        if row.observed_only:
            since, observed = f"{since}*", True
        cells = [str(row.instance_id), row.label or "-", row.job_id or "-", since,
                 money(row.cost_usd) if row.counted else "-", money(row.charged_usd)]  # fmt: skip
        if not by_jobs:
            cells += [money_change(row.difference_usd), "GHOST" if row.ghost else ("differs" if row.flagged else "")]
        table.add_row(*cells, style="bold red" if row.ghost else ("yellow" if row.flagged else None))
    if observed:
        table.caption, table.caption_justify = "* already running when first seen: counted from then", "left"
    return table


@app.command()
def cost(
    by: Annotated[str, typer.Option("--by", help="Group the ledger by instance, job, label or day.")] = "instance",
    since: Annotated[
        str | None, typer.Option("--since", help="Only spend from this date (UTC), e.g. 2026-01-31.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (unrounded floats).")] = False,
    config: ConfigOption = None,
) -> None:
    """Spend per instance from the ledger, beside Vast's own charges; ghost billing is reported loudly."""
    if by not in ("instance", "job", "label", "day"):
        fail(f"--by {by!r}: expected instance, job, label or day", 2)
    start = _since(since)
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        fail(str(exc), 2)
    report = asyncio.run(_report(cfg, cast(GroupBy, by), start))
    if report.charges_error is not None:
        typer.echo(f"warning: cannot read Vast's charges ({report.charges_error}); showing the ledger only", err=True)
    for ghost in report.ghosts:
        typer.secho(f"GHOST BILLING: instance {ghost.instance_id}: {ghost.ghost}", err=True, fg="red", bold=True)
    if as_json:
        typer.echo(json.dumps(report.to_json()))
    else:
        _print(report)
