"""``vastevents hosts``: the bad-host blocklist the recovery handler keeps, blocking or unblocking by hand, and
each host's history with us (``--history``), which offers are chosen by."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console

from vastevents.choosing import HostStats
from vastevents.cli._app import ConfigOption, app, existing_store, fail, table_console
from vastevents.cli._format import format_duration, narrow_table, rate
from vastevents.config import Config, load_config, parse_duration
from vastevents.connect import configured_store
from vastevents.errors import ConfigError
from vastevents.store import StoreError
from vastevents.store.history import HostHistory
from vastevents.store.hosts import HostRecord, Hosts


@app.command()
def hosts(
    config: ConfigOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON array (of struck hosts, or --history).")
    ] = False,
    history: Annotated[
        bool,
        typer.Option(
            "--history",
            help="Every machine we rented: rentals, median seconds to running and to SSH, outbids per hour, preflight"
            " failures, jobs finished and failed, mean $/h paid.",
        ),
    ] = False,
    block: Annotated[
        int | None, typer.Option("--block", metavar="MACHINE_ID", help="Block a machine by hand (with --reason).")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why --block blocks it (listed with its strikes).")] = "blocked by hand",
    block_for: Annotated[str, typer.Option("--for", metavar="DURATION", help="How long --block lasts.")] = "7d",
    unblock: Annotated[
        int | None,
        typer.Option("--unblock", metavar="MACHINE_ID", help="Unblock a machine and forget its strikes."),
    ] = None,
) -> None:
    """List every host with at least one strike, blocked or not, with the reasons; or block/unblock one; or show
    how every host we rented did (--history).

    Recovery and the jobs runner never rent on a blocked machine, and choose among the others by that history.
    """
    try:
        cfg = load_config(config)
        ttl = parse_duration(block_for)
    except (ConfigError, ValueError) as exc:
        fail(f"--for {block_for!r}: {exc}" if isinstance(exc, ValueError) else str(exc), 2)
    if block is not None or unblock is not None:
        _change(cfg, block, unblock, reason, ttl)
        return
    if history:
        _history(cfg, as_json)
        return
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
    table = narrow_table()
    for column in ("machine", "host", "strikes", "blocked until", "reasons"):
        table.add_column(column, overflow="fold" if column == "reasons" else "ellipsis", no_wrap=column != "reasons")
    for record in found:
        until = record.blocked_until.strftime("%Y-%m-%d %H:%M") if record.blocked_until else "-"
        table.add_row(str(record.machine_id), str(record.host_id or "-"), str(record.strikes), until,
                      "; ".join(record.reasons))  # fmt: skip
    table_console().print(table)


def _history(cfg: Config, as_json: bool) -> None:
    found: list[HostStats] = []
    if (store := existing_store(cfg)) is not None:
        with store:
            found = list(store.repository(HostHistory).stats(store.journal, datetime.now(UTC)).values())
    if as_json:
        typer.echo(json.dumps([record.to_json() for record in found], indent=2))
        return
    if not found:
        Console(highlight=False).print("no host rented yet")
        return
    table = narrow_table()
    for column in ("machine", "host", "rentals", "to run", "to SSH", "outbids/h", "unfit", "done", "failed", "paid"):
        table.add_column(column, justify="right")
    for record in found:
        table.add_row(str(record.machine_id), str(record.host_id or "-"), str(record.rentals),
                      _took(record.median_s_to_running), _took(record.median_s_to_ssh),
                      "-" if record.outbids_per_hour is None else f"{record.outbids_per_hour:.2f}",
                      str(record.preflight_failures), str(record.jobs_finished), str(record.jobs_failed),
                      rate(record.mean_dph))  # fmt: skip
    table_console().print(table)
    Console(highlight=False).print(
        "to run, to SSH: median time from create to running and from running to SSH; unfit: preflight failures;"
        " done, failed: jobs; paid: mean $/h",
        style="dim",
    )


def _took(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(seconds)


def _change(cfg: Config, block: int | None, unblock: int | None, reason: str, ttl: float) -> None:
    if block is not None and unblock is not None:
        fail("give --block or --unblock, not both", 2)
    try:
        with configured_store(cfg) as store:
            repository = store.repository(Hosts)
            if block is not None:
                repository.block(block, reason, datetime.now(UTC), ttl)
                typer.echo(f"machine {block} blocked for {format_duration(ttl)}: {reason}")
            elif unblock is not None and repository.forgive(unblock):
                typer.echo(f"machine {unblock} unblocked; its strikes are forgotten")
            else:
                fail(f"machine {unblock} has no strike and no block", 1)
    except StoreError as exc:
        fail(str(exc), 2)
