"""``vastevents webhooks register URL | list | test | rotate | delete``: Vast's notification webhooks.

A webhook's secret comes only from ``register`` and ``rotate``, and is printed only with ``--show-secret`` (put it
in ``$VAST_WEBHOOK_SECRET`` for ``vastevents watch --webhook-listen``); it is never logged.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from vastevents.cli._app import ConfigOption, app, fail, table_console
from vastevents.config import load_config
from vastevents.connect import vast_client
from vastevents.errors import ConfigError, VastEventsError
from vastevents.vast import VastClient

_T = TypeVar("_T")

webhooks_app = typer.Typer(
    help="Register Vast's signed notification webhooks (they make `watch --webhook-listen` poll at once).",
    no_args_is_help=True,
)
app.add_typer(webhooks_app, name="webhooks")

ShowSecret = Annotated[
    bool, typer.Option("--show-secret", help="Print the webhook's secret (shown only now; never logged).")
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object (or array for list) on stdout.")]
WebhookId = Annotated[
    int | None, typer.Argument(help="The webhook's id (see `webhooks list`); optional when only one is registered.")
]


def _run(config_path: Path | None, request: Callable[[VastClient], Awaitable[_T]]) -> _T:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        fail(str(exc), 2)
    try:
        client = vast_client(config, max_attempts=3, max_wait=2.0)
    except ConfigError as exc:
        fail(str(exc), 2)

    async def run() -> _T:
        async with client:
            return await request(client)

    try:
        return asyncio.run(run())
    except VastEventsError as exc:
        fail(str(exc))


async def _pick(client: VastClient, webhook_id: int | None) -> int:
    if webhook_id is not None:
        return webhook_id
    ids = [hook["id"] for hook in await client.list_webhooks() if isinstance(hook.get("id"), int)]
    if len(ids) == 1:
        return int(ids[0])
    if not ids:
        fail("no webhook is registered: run `vastevents webhooks register URL` first", 2)
    fail(f"several webhooks are registered (ids {', '.join(map(str, ids))}): give the id", 2)


def _shown(answer: dict[str, Any], show_secret: bool) -> dict[str, Any]:
    return {key: value for key, value in answer.items() if key != "success" and (show_secret or key != "secret")}


@webhooks_app.command("register")
def register(
    url: Annotated[str, typer.Argument(help="The public HTTPS URL (a proxy or tunnel to `watch --webhook-listen`).")],
    types: Annotated[
        list[str] | None,
        typer.Option("--type", help="A notification type such as client:outbid (repeat it; default: every type)."),
    ] = None,
    show_secret: ShowSecret = False,
    as_json: JsonFlag = False,
    config: ConfigOption = None,
) -> None:
    """Register URL for Vast's notifications."""
    answer = _run(config, lambda client: client.create_webhook(url, list(types or [])))
    shown = _shown(answer, show_secret)
    if as_json:
        typer.echo(json.dumps(shown))
        return
    typer.echo(f"registered webhook {answer.get('id')} for {url}")
    if show_secret and "secret" in answer:
        typer.echo(f"secret (shown once; set it as VAST_WEBHOOK_SECRET): {answer['secret']}")
    else:
        typer.echo("its secret was not shown: `vastevents webhooks rotate --show-secret` makes and prints a new one")


@webhooks_app.command("list")
def list_(as_json: JsonFlag = False, config: ConfigOption = None) -> None:
    """List the registered webhooks (Vast never shows their secrets again)."""
    hooks = _run(config, lambda client: client.list_webhooks())
    hooks = [_shown(hook, False) for hook in hooks]
    if as_json:
        typer.echo(json.dumps(hooks))
        return
    if not hooks:
        typer.echo("no webhooks registered")
        return
    table = Table(box=None)
    for column in ("id", "url", "types"):
        table.add_column(column, header_style="bold")
    for hook in hooks:
        kinds = hook.get("notif_types") or ["every type"]
        table.add_row(str(hook.get("id")), str(hook.get("url")), ", ".join(map(str, kinds)))
    table_console().print(table)


@webhooks_app.command("test")
def test(webhook_id: WebhookId = None, config: ConfigOption = None) -> None:
    """Ask Vast to send the webhook a signed test delivery now."""

    async def request(client: VastClient) -> tuple[int, dict[str, Any]]:
        chosen = await _pick(client, webhook_id)
        return chosen, await client.test_webhook(chosen)

    chosen, answer = _run(config, request)
    status = answer.get("status")
    typer.echo(f"sent a test delivery to webhook {chosen}" + (f" (answered HTTP {status})" if status else ""))


@webhooks_app.command("rotate")
def rotate(
    webhook_id: WebhookId = None,
    show_secret: ShowSecret = False,
    as_json: JsonFlag = False,
    config: ConfigOption = None,
) -> None:
    """Give the webhook a new secret (the old one stops verifying at once)."""
    if not show_secret:
        fail("rotate replaces the secret the watcher verifies with: add --show-secret to get the new one", 2)

    async def request(client: VastClient) -> dict[str, Any]:
        return await client.rotate_webhook_secret(await _pick(client, webhook_id))

    answer = _run(config, request)
    if as_json:
        typer.echo(json.dumps(_shown(answer, show_secret)))
        return
    typer.echo(f"webhook {answer.get('id')} has a new secret (shown once; set it as VAST_WEBHOOK_SECRET):")
    typer.echo(str(answer.get("secret")))


@webhooks_app.command("delete")
def delete(webhook_id: Annotated[int, typer.Argument(help="The webhook's id.")], config: ConfigOption = None) -> None:
    """Stop Vast's deliveries to a webhook."""
    _run(config, lambda client: client.delete_webhook(webhook_id))
    typer.echo(f"deleted webhook {webhook_id}")
