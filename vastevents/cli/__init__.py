"""Command-line interface: wiring only. Each group of commands registers itself on the shared app."""

from __future__ import annotations

from vastevents.cli import (
    _api,  # noqa: F401  (registers offers, status, volumes)
    _check,  # noqa: F401  (registers check)
    _cost,  # noqa: F401  (registers cost)
    _dashboard,  # noqa: F401  (registers dashboard)
    _demo,  # noqa: F401  (registers demo)
    _hosts,  # noqa: F401  (registers hosts)
    _mcp,  # noqa: F401  (registers mcp)
    _reap,  # noqa: F401  (registers reap)
    _run,  # noqa: F401  (registers run, jobs, logs)
    _sim,  # noqa: F401  (registers sim)
    _team,  # noqa: F401  (registers team status)
    _vast_webhooks,  # noqa: F401  (registers webhooks)
    _watch,  # noqa: F401  (registers watch, events, handlers)
)
from vastevents.cli._app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
