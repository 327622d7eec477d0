"""``reap``: one pass of the reaper handler through the Runtime, after a confirmation unless ``--yes``.

The first pass only looks: over the store opened read-only, the reaper judges the account as a poll now would
find it and writes nothing (``--dry-run`` stops there, so it cannot disturb a running watcher). The second pass,
after the confirmation, is one ``watch --once`` cycle with every configured handler (so none of them misses the
events this poll journals) that destroys. Both run the reaper without grace (a person asked).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import typer

from vastevents.cli._app import ConfigOption, app, fail, table_console
from vastevents.cli._format import narrow_table
from vastevents.config import Config, load_config
from vastevents.errors import ConfigError, VastEventsError
from vastevents.plugins import activate, load_handlers, resolve
from vastevents.runtime import Runtime

REAPER = "reaper"


def _reaper(cfg: Config) -> tuple[str, str, dict[str, Any]]:
    """(name, use, options) of the configured reaper, else the built-in one with its defaults."""
    for name, handler in cfg.handlers.items():
        if handler.use == REAPER:
            return name, handler.use, handler.options()
    return REAPER, REAPER, {}


async def _pass(cfg: Config, *, dry_run: bool) -> list[dict[str, Any]]:
    """One pass of the reaper without grace (only looking, over a read-only store, for `dry_run`); what it found."""
    name, use, options = _reaper(cfg)
    try:
        target, source = resolve(use, near=cfg.source.parent if cfg.source else None)
        active = activate(name, target, {**options, "dry_run": dry_run, "grace": 0}, use=use, source=source)
    except (LookupError, ValueError) as exc:
        raise ConfigError(f"[handlers.{name}]: {exc}") from None
    if dry_run:
        async with Runtime(cfg, read_only=True, handlers=[active]) as runtime:
            await runtime.look()
    else:
        others = [handler for handler in load_handlers(cfg) if handler.name != name]
        async with Runtime(cfg, handlers=[*others, active]) as runtime:
            await runtime.poll_once(all_periodic=True)  # as `watch --once`: every periodic handler runs once
    return [finding.to_json() for finding in getattr(active.target, "last_pass", [])]


def _print(found: list[dict[str, Any]], dry_run: bool) -> None:
    if not found:
        typer.echo("Nothing to reap: no owned instance matches a rule of the reaper.")
        return
    table = narrow_table("Reaper (dry run)" if dry_run else "Reaper")
    for column in ("instance", "label", "rule", "reason", "action"):
        folds = column in ("label", "reason")
        table.add_column(column, no_wrap=not folds, overflow="fold" if folds else "ellipsis")
    for item in found:
        table.add_row(str(item["instance_id"]), item["label"] or "-", item["rule"], item["reason"], item["action"])
    table_console().print(table)


@app.command()
def reap(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Destroy without asking.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would be destroyed.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    config: ConfigOption = None,
) -> None:
    """Destroy leaked owned instances once (rules of [handlers.reaper]; see `vastevents handlers`)."""
    try:
        cfg = load_config(config)
        found = asyncio.run(_pass(cfg, dry_run=True))
        doomed = [item for item in found if item["action"] == "would reap"]
        if not dry_run and doomed:
            if not yes:
                if as_json or not sys.stdin.isatty():
                    fail(f"{len(doomed)} instance(s) would be destroyed; pass --yes to destroy them", 2)
                _print(found, True)
                if not typer.confirm(f"Destroy {len(doomed)} instance(s)?"):
                    raise typer.Exit(1)
            found = asyncio.run(_pass(cfg, dry_run=False))
    except ConfigError as exc:
        fail(str(exc), 2)
    except VastEventsError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if as_json:
        typer.echo(json.dumps({"dry_run": dry_run or not doomed, "found": found}))
    else:
        _print(found, dry_run)
