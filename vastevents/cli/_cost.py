"""``cost``: the ledger's running totals beside Vast's own charges, and ghost billing reported loudly."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, cast

import typer
from rich.table import Table

from vastevents.cli._app import ConfigOption, app, existing_store, fail, table_console
from vastevents.cli._cost_report import Charge, CostReport, GroupBy, build_report, charged_by_instance
from vastevents.config import Config, load_config, resolve_api_key
from vastevents.errors import ConfigError, VastEventsError
from vastevents.store.ledger import Interval, Ledger, LedgerInstance
from vastevents.vast import VastClient

_MAX_PAGES = 1000
_WEEK = timedelta(days=7)


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text) if "T" in text or " " in text else None
        if moment is None:
            moment = datetime.combine(date.fromisoformat(text), datetime.min.time())
    except ValueError:
        fail(f"--since {text!r}: expected a date like 2026-01-31 or 2026-01-31T12:00", 2)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


async def _vast_side(config: Config, start: datetime, end: datetime) -> tuple[dict[int, Charge] | str, set[int] | str]:
    """Vast's charges per instance and the listed ids, or the reason each could not be read."""
    key = resolve_api_key()
    if key is None:
        reason = "no Vast API key (set VAST_API_KEY)"
        return reason, reason
    async with VastClient(key, config.vast.url, max_attempts=3, max_wait=2.0) as client:
        charges: dict[int, Charge] | str
        listed: set[int] | str
        try:
            items: list[dict[str, Any]] = []
            token: str | None = None
            for _ in range(_MAX_PAGES):
                page = await client.charges(start=start.timestamp(), end=end.timestamp(), after_token=token)
                items += [item for item in page.get("results") or [] if isinstance(item, dict)]
                token = page.get("next_token") or None
                if token is None:
                    break
            charges = charged_by_instance(items)
        except VastEventsError as exc:
            charges = str(exc)
        try:
            listed = {instance.id for instance in await client.list_instances()}
        except VastEventsError as exc:
            listed = str(exc)
    return charges, listed


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
    intervals: list[Interval] = []
    known: dict[int, LedgerInstance] = {}
    if (store := existing_store(cfg)) is not None:  # the team's shared store in team mode
        with store:
            ledger = store.repository(Ledger)
            intervals, known = ledger.intervals(), ledger.instances()
    now = datetime.now(UTC)
    first = min((i.start for i in intervals), default=now - _WEEK) - timedelta(days=1)
    charges, listed = asyncio.run(_vast_side(cfg, start or first, now + timedelta(days=1)))
    report = build_report(
        intervals,
        known,
        now=now,
        by=cast(GroupBy, by),
        since=start,
        charged=charges if isinstance(charges, dict) else None,
        listed=listed if isinstance(listed, set) else None,
        charges_error=charges if isinstance(charges, str) else None,
        list_error=listed if isinstance(listed, str) else None,
    )
    if report.charges_error is not None:
        typer.echo(f"warning: cannot read Vast's charges ({report.charges_error}); showing the ledger only", err=True)
    for ghost in report.ghosts:
        typer.secho(f"GHOST BILLING: instance {ghost.instance_id}: {ghost.ghost}", err=True, fg="red", bold=True)
    if as_json:
        typer.echo(json.dumps(report.to_json()))
    else:
        _print(report)
