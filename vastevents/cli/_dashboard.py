"""``vastevents dashboard``: serve the read-only web dashboard of the store (extra ``vastevents[dashboard]``)."""

from __future__ import annotations

import os
import signal
import socket
from typing import Annotated

import typer

from vastevents._logging import register_secret
from vastevents.cli._app import EXIT_INTERRUPTED, EXIT_USAGE, ConfigOption, app, fail
from vastevents.config import Config, find_api_key, load_config
from vastevents.connect import configured_store
from vastevents.errors import ConfigError
from vastevents.store import StoreError
from vastevents.vast_webhooks import is_loopback, parse_listen

MIN_TOKEN = 16
"""The shortest token accepted: the login form is the one thing a stranger can try guesses on."""


@app.command()
def dashboard(
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen", metavar="HOST:PORT", help="Where to serve (default: [dashboard] listen, 127.0.0.1:8780)."
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Serve a read-only web dashboard of the store: instances, jobs, events, spend and hosts, updated live.

    Any teammate can run it against the team's PostgreSQL store; it needs no API key (with one, the cost page
    shows Vast's charges beside the ledger). It listens on 127.0.0.1 unless told otherwise; any other address
    needs a token ([dashboard] token_env names the environment variable holding it), and once a token is set
    every request needs it.
    """
    try:
        cfg = load_config(config)
        host, port = parse_listen(listen or cfg.dashboard.listen, "--listen", 8780)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    token = _token(cfg, host)
    try:
        import uvicorn

        from vastevents.dashboard import create_app
    except ImportError:
        fail("the dashboard needs its extra: pip install 'vastevents[dashboard]'", EXIT_USAGE)
    if token is None and not is_loopback(host):
        fail(
            f"serving on {host}, which is not a loopback address, needs a token: set [dashboard] token_env to the"
            " name of an environment variable that holds one",
            EXIT_USAGE,
        )
    url, path = cfg.store.resolved_url(), cfg.store.resolved_path()
    if url is None and not path.exists():
        fail(f"no state file at {path} yet: a watcher creates it (run `vastevents watch`)", EXIT_USAGE)
    try:
        store = configured_store(cfg, read_only=True)
    except StoreError as exc:
        fail(str(exc), EXIT_USAGE)
    db = store.db
    try:
        listener = _bind(host, port)
    except OSError as exc:
        store.close()
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_USAGE)
    bound = listener.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    lock = " · token required" if token is not None else ""
    typer.echo(f"dashboard at http://{shown}:{bound}/ · store {cfg.store.describe()} (read-only){lock}", color=False)
    found = find_api_key()  # optional: with a key, the cost page shows Vast's charges
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(cfg, db, token=token, api_key=found[0] if found is not None else None),
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
            server_header=False,
        )
    )
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # uvicorn re-raises it after a clean shutdown
    try:
        server.run(sockets=[listener])
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        listener.close()
        store.close()


def _token(cfg: Config, host: str) -> str | None:
    """The token from the environment variable ``[dashboard] token_env`` names; None when none is configured."""
    name = cfg.dashboard.token_env
    if name is None:
        return None
    token = os.environ.get(name, "").strip()
    if not token:
        fail(f"[dashboard] token_env names ${name}, which is not set: export it with the token", EXIT_USAGE)
    if len(token) < MIN_TOKEN:
        fail(f"the token in ${name} is shorter than {MIN_TOKEN} characters: use a longer one", EXIT_USAGE)
    register_secret(token)
    return token


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
        listener.listen(128)
    except OSError:
        listener.close()
        raise
    return listener
