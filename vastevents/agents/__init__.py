"""``vastevents mcp``: a front door for AI agents to the watcher, over the Model Context Protocol.

An agent estimates, submits, waits for and collects GPU jobs that the running ``vastevents watch`` rents, runs
and destroys; it never rents or destroys anything by itself except an owned instance it names to ``destroy``.
Needs the ``mcp`` extra (``pip install 'vastevents[mcp]'``): the official SDK.
"""

from __future__ import annotations

import contextlib
import sys

import anyio

from vastevents._logging import adopt_logger
from vastevents.agents.server import build_server, serve_http, serve_stdio
from vastevents.agents.session import AgentSession, Refused
from vastevents.config import Config
from vastevents.connect import configured_store, vast_client
from vastevents.errors import ConfigError
from vastevents.ssh import ParamikoSsh
from vastevents.vast import VastClient

__all__ = ["AgentSession", "Refused", "build_server", "serve"]

_ATTEMPTS, _MAX_WAIT = 3, 2.0
"""An agent is waiting on each call: a failing API is reported after a few seconds, not the watcher's ~15."""


def serve(config: Config, listen: tuple[str, int] | None) -> None:
    """Serve the tools on stdin/stdout, or over streamable HTTP at `listen`, until the client or a signal ends it."""
    for name in ("mcp", "uvicorn"):
        adopt_logger(name)
    anyio.run(_serve, config, listen)


async def _serve(config: Config, listen: tuple[str, int] | None) -> None:
    try:
        client: VastClient | None = vast_client(config, max_attempts=_ATTEMPTS, max_wait=_MAX_WAIT)
    except ConfigError:
        client = None  # no API key: the tools that need Vast say so
    with contextlib.ExitStack() as closing:
        store = closing.enter_context(configured_store(config))
        ssh = ParamikoSsh(config.store.resolved_path().parent / "known_hosts")
        closing.callback(ssh.close)
        try:
            server = build_server(AgentSession(config, store, client, ssh))
            if listen is None:
                await serve_stdio(server)
            else:
                await serve_http(server, *listen, on_ready=_announce)
        finally:
            if client is not None:
                await client.aclose()


def _announce(url: str) -> None:
    print(f"vastevents mcp listening on {url} (streamable HTTP)", file=sys.stderr, flush=True)
