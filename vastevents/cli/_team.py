"""``vastevents team status``: who leads a shared (PostgreSQL) store, since when, and who stands by."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vastevents.cli._app import ConfigOption, app, fail
from vastevents.config import load_config
from vastevents.errors import ConfigError
from vastevents.store import StoreError, open_store
from vastevents.store.team import TeamMembers

team_app = typer.Typer(
    help="Several watchers on one shared store: one leads, the others stand by.", no_args_is_help=True
)
app.add_typer(team_app, name="team")


@team_app.command()
def status(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show the leader (since when) and the followers of the team store."""
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        fail(str(exc), 2)
    url = cfg.store.resolved_url()
    if url is None:
        fail('team status needs a shared store: set [store] url = "postgresql://..." or VASTEVENTS_STORE_URL', 2)
    try:
        with open_store(cfg.store.resolved_path(), url, read_only=True) as store:
            members = store.repository(TeamMembers).members()
    except StoreError as exc:
        fail(str(exc))
    now = datetime.now(UTC)
    stale = 3 * cfg.team.failover
    alive = [m for m in members if (now - m.seen).total_seconds() <= stale]
    leader = next((m for m in alive if m.role == "leader"), None)
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
                    "alive": m in alive,
                }
                for m in members
            ],
        }
        typer.echo(json.dumps(document, indent=2))
        return
    console = Console(highlight=False)
    if leader is None:
        console.print("no watcher leads right now", style="bold red")
    else:
        console.print(f"leader: {leader.member} since {leader.since:%Y-%m-%d %H:%M:%S} UTC")
    table = Table(box=None)
    for column in ("member", "role", "since", "last seen"):
        table.add_column(column, header_style="bold")
    for m in members:
        seen = f"{(now - m.seen).total_seconds():.0f}s ago" + ("" if m in alive else " (gone)")
        table.add_row(m.member, m.role, f"{m.since:%H:%M:%S}", seen)
    console.print(table)
