"""``offers``, ``status`` and ``check``: look at the market and the account, and check the setup."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import httpx
import typer
from rich.table import Table

from vastevents._logging import redact
from vastevents.cli._app import ConfigOption, app, fail, table_console
from vastevents.config import Config, find_api_key, load_config, resolve_api_key
from vastevents.errors import VastEventsError
from vastevents.models import Instance, Offer
from vastevents.query import parse_query
from vastevents.vast import VastClient

_T = TypeVar("_T")
_OK = "✓"
_BAD = "✗"
_SSH_KEYS = ("id_ed25519.pub", "id_rsa.pub")

_INTERACTIVE_ATTEMPTS = 3
"""Someone is waiting at the terminal: a dead URL is reported after a few seconds, not the watcher's ~15."""
_INTERACTIVE_MAX_WAIT = 2.0
_INTERACTIVE_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Turn our own errors into one line on stderr and exit status 1, without a traceback."""
    try:
        yield
    except VastEventsError as exc:
        fail(str(exc))


def _call(config: Config, request: Callable[[VastClient], Awaitable[_T]]) -> _T:
    """Run one API request with a client tuned for a person waiting: few attempts, short waits."""

    async def run() -> _T:
        client = VastClient(
            resolve_api_key(),
            config.vast.url,
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
    return "-" if megabytes is None else f"{megabytes / 1000:.1f}"


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
        found = _call(settings, lambda client: client.search_offers(parsed, limit=limit))
    if "order" not in parsed:
        found.sort(key=_price_key)
    if limit is not None:
        found = found[:limit]
    if as_json:
        typer.echo(json.dumps([offer.model_dump(mode="json") for offer in found], indent=2))
        return
    table = Table(title=f"{len(found)} offers", title_justify="left")
    for column in ("ask id", "gpu", "vram GB", "vcpu", "ram GB", "disk GB", "$/h", "reliab.", "net ↓/↑", "where"):
        table.add_column(
            column, justify="left" if column in ("gpu", "where") else "right", no_wrap=column in ("ask id", "$/h")
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
            _text(offer.reliability2, "{:.3f}"),
            f"{_text(offer.inet_down, '{:.0f}')}/{_text(offer.inet_up, '{:.0f}')}",
            _text(offer.geolocation),
        )
    table_console().print(table)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of instances.")] = False,
    config: ConfigOption = None,
) -> None:
    """List every instance on the account: id, label, status, GPU, price and how to SSH in."""
    with _one_line_errors():
        settings = load_config(config)
        instances = sorted(_call(settings, VastClient.list_instances), key=lambda instance: instance.id)
    if as_json:
        typer.echo(redact(json.dumps([instance.model_dump(mode="json") for instance in instances], indent=2)))
        return
    table = Table(title=f"{len(instances)} instances", title_justify="left")
    for column in ("id", "label", "status", "gpu", "$/h", "ssh"):
        table.add_column(column, justify="right" if column in ("id", "$/h") else "left", no_wrap=column != "label")
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
def check(config: ConfigOption = None) -> None:
    """Check the setup: config, API key, that Vast accepts the key, and an SSH key to reach instances."""
    results: list[bool] = []

    def report(ok: bool, message: str) -> None:
        results.append(ok)
        typer.echo(f"{_OK if ok else _BAD} {redact(message)}")

    settings: Config | None = None
    try:
        settings = load_config(config)
        report(True, f"config valid: {settings.source or 'no config file, using built-in defaults'}")
    except VastEventsError as exc:
        report(False, f"config invalid: {exc}")

    found = find_api_key()
    key = found[0] if found is not None else None
    if found is not None:
        report(True, f"API key found in {found[1]}")
    else:
        report(False, "no API key: set VAST_API_KEY or run `vastai set api-key YOUR_KEY`")

    if settings is None:
        report(False, "API not checked: fix the config first")
    elif key:
        try:
            user = _call(settings, VastClient.current_user)
            who = user.get("email") or user.get("username") or f"user {user.get('id', '?')}"
            report(True, f"Vast API at {settings.vast.url} reachable and the key is accepted ({who})")
        except VastEventsError as exc:
            report(False, str(exc))
    else:
        report(False, f"Vast API at {settings.vast.url} not checked: no API key")

    ssh_dir = Path.home() / ".ssh"
    public_key = next((ssh_dir / name for name in _SSH_KEYS if (ssh_dir / name).is_file()), None)
    if public_key:
        report(True, f"SSH public key {public_key}")
    else:
        report(False, f"no SSH key in {ssh_dir} ({' or '.join(_SSH_KEYS)}): run `ssh-keygen -t ed25519`")

    if not all(results):
        raise typer.Exit(1)
