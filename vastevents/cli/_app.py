"""The typer application and the options every command shares. Commands live in sibling modules."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from typer._click.core import Command, Context  # typer vendors click: its commands are these classes
from typer._click.exceptions import UsageError
from typer._click.formatting import HelpFormatter
from typer.core import TyperGroup

from vastevents import __version__
from vastevents._logging import RedactingFormatter, configure_logging, redact
from vastevents.config import Config, given
from vastevents.connect import configured_store
from vastevents.store import SqlStore, StoreError

EXIT_OK = 0
"""The command did what it was asked."""
EXIT_FAILED = 1
"""A runtime or API failure: the API refused or failed, a job failed, a check found the account not ready."""
EXIT_USAGE = 2
"""Bad usage or a bad config: an unknown option, a bad query, an invalid config file, no API key."""
EXIT_INTERRUPTED = 130
"""Stopped by Ctrl-C or SIGTERM."""

COMMAND_ORDER = (
    "check", "offers", "run", "watch", "status", "volumes", "jobs", "logs", "events", "cost", "hosts", "reap",
    "handlers", "webhooks", "team", "dashboard", "mcp", "demo", "sim",
)  # fmt: skip
"""Commands in the order a user meets them; a command not named here is listed after these."""

_CONFIG_KEY = "vastevents.config"
_DEBUG_KEY = "vastevents.debug"
_DEBUG_HELP = "Log every API request to stderr (keys, tokens and URLs redacted)."
_URL_HELP = "The Vast API's base URL, as `vastai --url` (wins over $VAST_URL and [vast] url)."
_API_KEY_HELP = "The Vast API key, as `vastai --api-key` (wins over $VAST_API_KEY and the key files)."
_VALUED = {"--url": "vastevents.url", "--api-key": "vastevents.api_key"}
"""The global options with a value that also work after a command's name: where each is kept in ctx.meta."""


class WorkflowGroup(TyperGroup):
    """Lists commands in workflow order, and takes the global options after any command's name too: ``--debug``,
    ``--url``/``--api-key`` (unless the command has its own, as ``sim --api-key``), and ``--raw`` for ``--json``
    (as the ``vastai`` CLI spells it)."""

    def list_commands(self, ctx: Context) -> list[str]:
        rank = {name: position for position, name in enumerate(COMMAND_ORDER)}
        return sorted(super().list_commands(ctx), key=lambda name: rank.get(name, len(rank)))

    def resolve_command(self, ctx: Context, args: list[str]) -> tuple[str | None, Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        own = _options_of(ctx, command, rest)
        end = rest.index("--") if "--" in rest else len(rest)
        kept: list[str] = []
        position = 0
        while position < end:
            arg = rest[position]
            flag, equals, value = arg.partition("=")
            if arg == "--debug":
                ctx.meta[_DEBUG_KEY] = True
            elif flag in _VALUED and flag not in own:
                if not equals:
                    position += 1
                    if position >= end:
                        raise UsageError(f"Option '{flag}' requires an argument.", ctx)
                    value = rest[position]
                ctx.meta[_VALUED[flag]] = value
            elif arg == "--raw" and "--json" in own:
                kept.append("--json")
            else:
                kept.append(arg)
            position += 1
        if ctx.params.get("raw") and "--json" in own and "--json" not in kept:  # `vastevents --raw status`
            kept.append("--json")
        return name, command, [*kept, *rest[end:]]

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        """Each command's whole first sentence, wrapped, rather than cut with "..." to fit one line."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=200)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _options_of(ctx: Context, command: Command | None, args: list[str]) -> set[str]:
    """The option names of the command `args` run (following subcommands: ``team status``, ``webhooks list``)."""
    for arg in args:
        if not isinstance(command, TyperGroup) or arg.startswith("-"):
            break
        command = command.get_command(ctx, arg)
    return {name for param in (command.params if command else []) for name in getattr(param, "opts", ())}


app = typer.Typer(
    name="vastevents",
    cls=WorkflowGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help: square brackets such as [watch] and [handlers.log] are text here, never markup.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_CONFIG_HELP = "Config file (TOML). Default: $VASTEVENTS_CONFIG, ./vastevents.toml, ~/.config/vastevents/config.toml."


def _inherit_config(ctx: typer.Context, value: Path | None) -> Path | None:
    """A command's ``--config``, else the one given before the subcommand's name."""
    if value is not None:
        return value
    inherited = ctx.meta.get(_CONFIG_KEY)
    return inherited if isinstance(inherited, Path) else None


ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help=_CONFIG_HELP, show_default=False, callback=_inherit_config),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vastevents {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help=_DEBUG_HELP)] = False,
    config: Annotated[Path | None, typer.Option("--config", "-c", help=_CONFIG_HELP, show_default=False)] = None,
    url: Annotated[str | None, typer.Option("--url", metavar="URL", help=_URL_HELP, show_default=False)] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", metavar="KEY", help=_API_KEY_HELP, show_default=False)
    ] = None,
    raw: Annotated[bool, typer.Option("--raw", help="The command's --json output, as `vastai --raw`.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Watch a Vast.ai account and turn instance changes into events that handlers act on.

    --debug, --config, --url and --api-key work before or after the command's name (after it, they win);
    --raw is --json, as in vastai. Exit status: 0 success, 1 runtime or API failure, 2 usage or config error,
    130 interrupted.
    """
    configure_logging(debug=debug or bool(ctx.meta.get(_DEBUG_KEY)))
    ctx.meta[_CONFIG_KEY] = config
    ctx.with_resource(
        given(url=ctx.meta.get(_VALUED["--url"]) or url, api_key=ctx.meta.get(_VALUED["--api-key"]) or api_key)
    )


def table_console() -> Console:
    """A console for tables: the terminal's width, or wide enough that piped output never cuts an id."""
    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 200))


@contextmanager
def logs_through(console: Console) -> Iterator[None]:
    """While inside: the log lines vastevents (and httpx, with --debug) writes go through `console` when it is a
    terminal, so a live status line on it is redrawn below each of them instead of being cut by them. Redacted as
    ever. Elsewhere (a pipe, a file: no live line) they stay on stderr."""
    if not console.is_terminal:
        yield
        return
    route = RichHandler(
        console=console, show_path=False, markup=False, log_time_format="%H:%M:%S", omit_repeated_times=False
    )
    route.setFormatter(RedactingFormatter("%(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("vastevents", "httpx")]
    saved = [logger.handlers[:] for logger in loggers]
    for logger in loggers:
        if logger.handlers:
            logger.handlers[:] = [route]
    try:
        yield
    finally:
        for logger, handlers in zip(loggers, saved, strict=True):
            logger.handlers[:] = handlers


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """One line on stderr, secrets redacted, then exit `code` (EXIT_FAILED, or EXIT_USAGE for usage or config)."""
    typer.echo(f"error: {redact(message)}", err=True)
    raise typer.Exit(code)


def existing_store(config: Config) -> SqlStore | None:
    """The configured store to read (a team's shared one, or the SQLite file), None if no watch made it yet.

    Opened read-only: a command that only looks never writes, migrates or creates a store, so it cannot disturb
    a running watcher. A store that cannot be opened exits 2 with one line.
    """
    if config.store.resolved_url() is None and not config.store.resolved_path().exists():
        return None
    try:
        return configured_store(config, read_only=True)
    except StoreError as exc:
        fail(str(exc), 2)
