"""``vastevents mcp``: serve the agent tools (Model Context Protocol) over stdio, or streamable HTTP on loopback."""

from __future__ import annotations

from typing import Annotated

import typer

from vastevents.cli._app import EXIT_INTERRUPTED, EXIT_USAGE, ConfigOption, app, fail
from vastevents.config import load_config
from vastevents.errors import ConfigError
from vastevents.vast_webhooks import is_loopback, parse_listen

_LISTEN_HELP = (
    "Serve streamable HTTP at http://HOST:PORT/mcp instead of stdio (loopback only: the tools spend money and the"
    " server has no login; reach it from elsewhere through SSH forwarding)."
)


@app.command()
def mcp(
    listen: Annotated[str | None, typer.Option("--listen", metavar="HOST:PORT", help=_LISTEN_HELP)] = None,
    config: ConfigOption = None,
) -> None:
    """Let an AI agent run GPU jobs through the watcher: an MCP server on stdio (or HTTP with --listen).

    Its tools estimate, submit, wait for and collect jobs within the config's [agents] limits; the jobs run in
    `vastevents watch`, which must be running on the same store. Add it to an MCP client as command "vastevents",
    args ["mcp"].
    """
    try:
        settings = load_config(config)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    address = _loopback(listen) if listen is not None else None
    try:
        from vastevents.agents import serve
    except ImportError as exc:
        fail(f"vastevents mcp needs the mcp extra ({exc.name} is missing): pip install 'vastevents[mcp]'", EXIT_USAGE)
    try:
        serve(settings, address)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _loopback(listen: str) -> tuple[str, int]:
    try:
        host, port = parse_listen(listen, "--listen", 8791)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    if not is_loopback(host):
        fail(
            f"--listen {listen!r}: vastevents mcp listens on loopback only (127.0.0.1 or ::1); its tools spend money"
            " and it has no login, so reach it from elsewhere through SSH port forwarding",
            EXIT_USAGE,
        )
    return host, port
