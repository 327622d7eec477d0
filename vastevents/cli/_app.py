"""The typer application and the options every command shares. Commands live in sibling modules."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from vastevents import __version__
from vastevents._logging import configure_logging, redact

app = typer.Typer(
    name="vastevents",
    help="Watch a Vast.ai account and turn instance changes into events that handlers act on.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Config file (TOML). Default: $VASTEVENTS_CONFIG, ./vastevents.toml, ~/.config/vastevents/config.toml.",
        show_default=False,
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vastevents {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Log every API request to stderr (keys, tokens and URLs redacted).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Watch a Vast.ai account and turn instance changes into events that handlers act on."""
    configure_logging(debug=debug)


def table_console() -> Console:
    """A console for tables: the terminal's width, or wide enough that piped output never cuts an id."""
    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 200))


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr, secrets redacted, then exit `code` (1: it failed; 2: bad usage or config)."""
    typer.echo(f"error: {redact(message)}", err=True)
    raise typer.Exit(code)
