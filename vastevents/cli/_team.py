"""``vastevents team status``: who leads the store (since when), who stands by, or that nobody watches it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vastevents.cli._app import ConfigOption, app, existing_store, fail
from vastevents.config import load_config
from vastevents.errors import ConfigError
from vastevents.store import StoreError
from vastevents.store.team import Member, TeamMembers
from vastevents.team import alive, leading_watcher, no_watcher

team_app = typer.Typer(
    help="Several watchers on one shared store: one leads, the others stand by.", no_args_is_help=True
)
app.add_typer(team_app, name="team")


@team_app.command()
def status(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show the leader (since when) and the followers of the store, or that no watcher runs on it."""
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        fail(str(exc), 2)
    now = datetime.now(UTC)
    members: list[Member] = []
    leader = None
    store = existing_store(cfg)
    if store is not None:
        try:
            with store:
                members = store.repository(TeamMembers).members()
                leader = leading_watcher(store, cfg.watch.interval, now)
        except StoreError as exc:
            fail(str(exc))

    def is_alive(member: Member) -> bool:
        return alive(member, leader, now, cfg.team.failover)

    if as_json:
        document = {
            "leader": leader.member if leader else None,
            "since": leader.since.isoformat() if leader else None,
            "members": [
                {
                    "member": m.member,
                    "role": m.role,
                    "since": m.since.isoformat(),
                    "seen": m.seen.isoformat(),
                    "alive": is_alive(m),
                }
                for m in members
            ],
        }
        typer.echo(json.dumps(document, indent=2))
        return
    console = Console(highlight=False)
    if leader is None:
        console.print(no_watcher(cfg.watch.interval), style="bold red")
    else:
        console.print(f"leader: {leader.member} since {leader.since:%Y-%m-%d %H:%M:%S} UTC")
    if not members:
        return
    table = Table(box=None)
    for column in ("member", "role", "since", "last seen"):
        table.add_column(column, header_style="bold")
    for m in members:
        seen = f"{(now - m.seen).total_seconds():.0f}s ago" + ("" if is_alive(m) else " (gone)")
        table.add_row(m.member, m.role, f"{m.since:%H:%M:%S}", seen)
    console.print(table)
