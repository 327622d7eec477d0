"""``offers``, ``status`` and ``volumes``: look at the market and the account."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, TypeVar

import httpx
import typer

from vastevents._logging import redact
from vastevents.cli._app import EXIT_FAILED, EXIT_USAGE, ConfigOption, app, fail, table_console
from vastevents.cli._format import narrow_table, plural
from vastevents.config import Config, load_config
from vastevents.connect import vast_client
from vastevents.errors import ConfigError, QueryError, VastEventsError
from vastevents.models import Instance, Offer
from vastevents.query import parse_query
from vastevents.vast import VastClient

_T = TypeVar("_T")

_INTERACTIVE_ATTEMPTS = 3
"""Someone is waiting at the terminal: a dead URL is reported after a few seconds, not the watcher's ~15."""
_INTERACTIVE_MAX_WAIT = 2.0
_INTERACTIVE_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Turn our own errors into one line on stderr without a traceback: exit 2 for bad usage or config, else 1."""
    try:
        yield
    except (ConfigError, QueryError) as exc:
        fail(str(exc), EXIT_USAGE)
    except VastEventsError as exc:
        fail(str(exc), EXIT_FAILED)


def call_api(config: Config, request: Callable[[VastClient], Awaitable[_T]], *, key_required: bool = True) -> _T:
    """Run one API request with a client tuned for a person waiting: few attempts, short waits.

    No key is a ConfigError before anything is sent, unless the request needs none (`key_required`).
    """

    async def run() -> _T:
        client = vast_client(
            config,
            key_required=key_required,
            max_attempts=_INTERACTIVE_ATTEMPTS,
            max_wait=_INTERACTIVE_MAX_WAIT,
            timeout=_INTERACTIVE_TIMEOUT,
        )
        async with client:
            return await request(client)

    return asyncio.run(run())


def _text(value: object, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def _gb(megabytes: float | None) -> str:
    """Vast's MB as the GB a card is sold with (24576 MB is a 24 GB card): MB / 1024, whole GB."""
    return "-" if megabytes is None else f"{megabytes / 1024:.0f}"


def _price_key(item: Offer | Instance) -> tuple[bool, float]:
    return item.dph_total is None, item.dph_total or 0.0


@app.command()
def offers(
    query: Annotated[
        str, typer.Argument(help="Offer query as in `vastai search offers`, e.g. 'gpu_ram>=24 num_gpus=1 -o dph'.")
    ] = "",
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, help="Show at most N offers.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of offers.")] = False,
    config: ConfigOption = None,
) -> None:
    """Search rentable offers, cheapest first (unless the query sets -o)."""
    with _one_line_errors():
        settings = load_config(config)
        parsed = parse_query(query)
        found = call_api(settings, lambda client: client.search_offers(parsed, limit=limit), key_required=False)
    if "order" not in parsed:
        found.sort(key=_price_key)
    if limit is not None:
        found = found[:limit]
    if as_json:
        typer.echo(json.dumps([offer.model_dump(mode="json") for offer in found], indent=2))
        return
    if not found:
        typer.echo("No offers match the query.")
        return
    table = narrow_table(plural(len(found), "offer"))
    # Narrow terminals: ids, GPUs and prices never wrap or get cut; only the location gives way.
    for column in ("ask id", "gpu", "vram", "cpu", "ram", "disk", "$/h", "rel", "net ↓/↑", "where"):
        table.add_column(
            column,
            justify="left" if column in ("gpu", "where") else "right",
            no_wrap=column != "where",
            overflow="fold" if column == "where" else "ellipsis",
            min_width=6 if column == "where" else None,
        )
    for offer in found:
        table.add_row(
            str(offer.id),
            f"{_text(offer.num_gpus)}× {_text(offer.gpu_name)}",
            _gb(offer.gpu_ram),
            _text(offer.cpu_cores, "{:.0f}"),
            _gb(offer.cpu_ram),
            _text(offer.disk_space, "{:.0f}"),
            _text(offer.dph_total, "{:.3f}"),
            _text(offer.reliability2, "{:.2f}"),
            f"{_text(offer.inet_down, '{:.0f}')}/{_text(offer.inet_up, '{:.0f}')}",
            _text(offer.geolocation),
        )
    table.caption = "vram, ram, disk in GB; net in Mbit/s"
    table.caption_justify = "left"
    table_console().print(table)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of instances.")] = False,
    config: ConfigOption = None,
) -> None:
    """List every instance on the account: id, label, status, GPU, price and how to SSH in."""
    with _one_line_errors():
        settings = load_config(config)
        instances = sorted(call_api(settings, VastClient.list_instances), key=lambda instance: instance.id)
    if as_json:
        typer.echo(redact(json.dumps([instance.model_dump(mode="json") for instance in instances], indent=2)))
        return
    if not instances:
        typer.echo("No instances on the account.")
        return
    table = narrow_table(plural(len(instances), "instance"))
    for column in ("id", "label", "status", "gpu", "$/h", "ssh"):
        wraps = column in ("label", "status")
        table.add_column(column, justify="right" if column in ("id", "$/h") else "left", no_wrap=not wraps,
                         overflow="fold" if wraps else "ellipsis", min_width=8 if wraps else None)  # fmt: skip
    for instance in instances:
        state = instance.actual_status or instance.state.value
        if instance.intended_status and instance.intended_status != state:
            state += f" (wants {instance.intended_status})"
        ssh = f"ssh -p {instance.ssh_port} root@{instance.ssh_host}" if instance.ssh_host and instance.ssh_port else "-"
        table.add_row(
            str(instance.id),
            _text(instance.label),
            state,
            f"{_text(instance.num_gpus)}× {_text(instance.gpu_name)}",
            _text(instance.dph_total, "{:.3f}"),
            ssh,
        )
    table_console().print(table)


@app.command()
def volumes(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of volumes.")] = False,
    config: ConfigOption = None,
) -> None:
    """List the account's volumes: id, name, machine, size, what each bills per hour and which instances use it."""
    with _one_line_errors():
        settings = load_config(config)
        found = sorted(call_api(settings, VastClient.list_volumes), key=lambda volume: volume.id)
    if as_json:
        typer.echo(json.dumps([volume.model_dump(mode="json") for volume in found], indent=2))
        return
    if not found:
        typer.echo("No volumes on the account.")
        return
    table = narrow_table(plural(len(found), "volume"))
    for column in ("id", "name", "machine", "GB", "$/h", "used by"):
        wraps = column in ("name", "used by")
        table.add_column(column, justify="left" if wraps else "right", no_wrap=not wraps,
                         overflow="fold" if wraps else "ellipsis", min_width=8 if wraps else None)  # fmt: skip
    for volume in found:
        table.add_row(
            str(volume.id),
            _text(volume.name),
            _text(volume.machine_id),
            _text(volume.disk_space, "{:g}"),
            _text(volume.dph_total, "{:.4f}"),
            ", ".join(map(str, volume.instances)) or "-",
        )
    table.caption = "a volume bills its size until it is deleted (`vastai delete volume ID`), used or not"
    table.caption_justify = "left"
    table_console().print(table)
