"""``vastevents hosts``: the bad-host blocklist the recovery handler keeps (read-only over the store)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vastevents.cli._app import ConfigOption, app, existing_store, fail, table_console
from vastevents.config import load_config
from vastevents.errors import ConfigError
from vastevents.store.hosts import HostRecord, Hosts


@app.command()
def hosts(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON array of every struck host.")] = False,
) -> None:
    """List every host with at least one strike, blocked or not, with the reasons."""
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        fail(str(exc), 2)
    found: list[HostRecord] = []
    if (store := existing_store(cfg)) is not None:
        with store:
            found = store.repository(Hosts).records(datetime.now(UTC))
    if as_json:
        typer.echo(json.dumps([record.to_json() for record in found], indent=2))
        return
    if not found:
        Console(highlight=False).print("no host has a strike")
        return
    table = Table(box=None)
    for column in ("machine", "host", "strikes", "blocked until", "reasons"):
        table.add_column(column, header_style="bold")
    for record in found:
        until = record.blocked_until.isoformat(timespec="seconds") if record.blocked_until else "-"
        table.add_row(str(record.machine_id), str(record.host_id or "-"), str(record.strikes), until,
                      "; ".join(record.reasons))  # fmt: skip
    table_console().print(table)
