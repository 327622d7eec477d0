"""``cost``: the ledger's running totals beside Vast's own charges, and ghost billing reported loudly."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Annotated, cast

import typer
from rich.table import Table

from vastevents.cli._app import ConfigOption, app, existing_store, fail, table_console
from vastevents.config import Config, load_config
from vastevents.connect import vast_client
from vastevents.costs import CostReport, GroupBy, cost_report, parse_since
from vastevents.errors import ConfigError
from vastevents.store.ledger import Ledger
from vastevents.vast import VastClient


def _since(text: str | None) -> datetime | None:
    try:
        return parse_since(text) if text is not None else None
    except ValueError as exc:
        fail(f"--since {exc}", 2)


async def _report(config: Config, by: GroupBy, since: datetime | None) -> CostReport:
    """The report over the ledger of the configured store (empty before any watch made one)."""
    try:
        client: VastClient | None = vast_client(config, max_attempts=3, max_wait=2.0)
    except ConfigError:
        client = None  # the report says why Vast's side is missing
    store = existing_store(config)  # the team's shared store in team mode
    try:
        ledger = store.repository(Ledger) if store is not None else None
        return await cost_report(ledger, client, now=datetime.now(UTC), by=by, since=since)
    finally:
        if store is not None:
            store.close()
        if client is not None:
            await client.aclose()


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.2f}"


def _print(report: CostReport) -> None:
    console = table_console()
    if report.by != "instance":
        groups = Table(title=f"Ledger by {report.by}")
        groups.add_column(report.by)
        groups.add_column("cost", justify="right")
        for key, cost in report.groups:
            groups.add_row(key, _money(cost))
        console.print(groups)
    table = Table(title="Ledger and Vast's charges per instance")
    for column in ("instance", "label", "job", "observed since", "ledger", "Vast charged", "difference", ""):
        table.add_column(column, justify="right" if column in ("ledger", "Vast charged", "difference") else "left")
    for row in report.instances:
        since = row.observed_since.strftime("%Y-%m-%d %H:%M") if row.observed_since else "-"
        if row.observed_only:
            since = f"observed since {since}"
        flag = "GHOST" if row.ghost else ("differs" if row.flagged else "")
        style = "bold red" if row.ghost else ("yellow" if row.flagged else None)
        table.add_row(str(row.instance_id), row.label or "-", row.job_id or "-", since, _money(row.cost_usd),
                      _money(row.charged_usd), _money(row.difference_usd), flag, style=style)  # fmt: skip
    console.print(table)
    console.print(f"total (ledger): {_money(report.total_usd)}   Vast charged: {_money(report.charged_total_usd)}")


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
