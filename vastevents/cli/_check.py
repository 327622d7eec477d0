"""``check``: everything ``watch`` and ``run`` will need, checked before they fail on it, each with what to do."""

from __future__ import annotations

import difflib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from vastevents._logging import redact
from vastevents.cli._api import call_api
from vastevents.cli._app import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ConfigOption, app
from vastevents.config import NO_API_KEY, Config, config_error, config_location, find_api_key, load_config
from vastevents.errors import ConfigError, VastEventsError
from vastevents.events import (
    ANY_CHANGE,
    APPEARED,
    EVERYTHING,
    RUNTIME_EVENTS,
    SEMANTIC_EVENTS,
    VANISHED,
    transition_name,
)
from vastevents.models import State
from vastevents.plugins import load_handlers, resolve, unknown_subscriptions
from vastevents.vast import VastClient

_OK = "✓"
_BAD = "✗"
_SKIPPED = "–"
_SSH_KEYS = ("id_ed25519.pub", "id_rsa.pub")
_NAMED_EVENTS = (APPEARED, VANISHED, *SEMANTIC_EVENTS, *RUNTIME_EVENTS, ANY_CHANGE, EVERYTHING)
_TRANSITIONS = tuple(transition_name(old, new) for old in State for new in State if old != new)


@dataclass
class _Report:
    """The check lines, and the exit status they add up to: 2 if any was a config problem, else 1 if any failed.

    Each line's mark says what was found: ✓ checked and fine (green), ✗ checked and wrong (red), a dash: not checked
    because of an earlier ✗ or a missing part (yellow; it adds nothing to the status, the ✗ it follows does).
    """

    status: int = EXIT_OK
    console: Console = field(default_factory=lambda: Console(highlight=False))

    def _line(self, mark: str, style: str, message: str) -> None:
        line = Text(f"{mark} ", style=style)
        line.append(redact(message))
        self.console.print(line, soft_wrap=True)

    def ok(self, message: str) -> None:
        self._line(_OK, "bold green", message)

    def bad(self, message: str, code: int = EXIT_FAILED) -> None:
        self._line(_BAD, "bold red", message)
        self.status = max(self.status, code)

    def skipped(self, message: str) -> None:
        self._line(_SKIPPED, "bold yellow", message)


@app.command()
def check(config: ConfigOption = None) -> None:
    """Check the setup: config, handlers, store, API key, that Vast accepts it, and an SSH key it knows."""
    report = _Report()
    settings: Config | None = None
    try:
        settings = load_config(config)
        report.ok(f"config valid: {settings.source or 'no config file, using built-in defaults'}")
    except VastEventsError as exc:
        report.bad(f"config invalid: {exc}", EXIT_USAGE)
    if settings is not None:
        _check_handlers(settings, report)
        _check_store(settings.store.resolved_path(), report)

    found = find_api_key()
    if found is not None:
        report.ok(f"API key found in {found[1]}")
    else:
        report.bad(NO_API_KEY, EXIT_USAGE)

    account_keys: list[dict[str, Any]] | None = None
    if settings is None:
        report.skipped("Vast API not checked: fix the config first")
    elif found is None:
        report.skipped(f"Vast API at {settings.vast.url} not checked: no API key")
    else:
        try:
            user, account_keys = call_api(settings, _account)
            who = user.get("email") or user.get("username") or f"user {user.get('id', '?')}"
            report.ok(f"Vast API at {settings.vast.url} reachable and the key is accepted ({who})")
        except VastEventsError as exc:
            report.bad(str(exc))

    _check_ssh_key(account_keys, report)
    if report.status != EXIT_OK:
        raise typer.Exit(report.status)


async def _account(client: VastClient) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return await client.current_user(), await client.list_ssh_keys()


def _check_handlers(settings: Config, report: _Report) -> None:
    """Every ``[handlers.NAME]`` resolves, imports, takes its options, and subscribes to real event names."""
    if not settings.handlers:
        report.ok("handlers: none configured (watch only prints events)")
        return
    for name, entry in settings.handlers.items():
        try:
            resolve(entry.use, near=settings.source.parent if settings.source else None)
        except LookupError as exc:
            report.bad(
                f"handlers: {config_error(settings, ('handlers', name, 'use'), f'{entry.use!r}: {exc}')}\n  fix"
                " `use`: an installed handler's name (`pip install` the package that offers it) or an importable"
                " 'package.module:attr'",
                EXIT_USAGE,
            )
            return
    plugins_log = logging.getLogger("vastevents.plugins")
    level = plugins_log.level
    plugins_log.setLevel(logging.ERROR)  # its warning about a typo would repeat the ✗ line below
    try:
        active = load_handlers(settings)
    except ConfigError as exc:
        report.bad(
            f"handlers: {exc}\n  fix that key's value (config.example.toml shows each built-in handler's keys)",
            EXIT_USAGE,
        )
        return
    finally:
        plugins_log.setLevel(level)
    uses = {handler.name: handler.use for handler in active}
    declared = sorted({name for handler in active for name in handler.emits})
    typos = unknown_subscriptions(active)
    for handler, name in typos:
        report.bad(
            f"handler {handler} ({uses[handler]}) subscribes to {name!r}, which nothing emits: "
            f"{_where_to_fix(settings, handler, name)}; {_suggestion(name, declared)}",
            EXIT_USAGE,
        )
    if not typos:
        report.ok(f"handlers load: {', '.join(handler.name for handler in active)}")


def _where_to_fix(settings: Config, handler: str, name: str) -> str:
    """Where the misspelt name is written: the handler's ``events = [...]`` in the config, else its code."""
    events = settings.handlers[handler].options().get("events")
    if isinstance(events, list | tuple) and name in events:
        return f"fix it in its events = [...] ({config_location(settings, ('handlers', handler, 'events'))})"
    return "fix the name in its @on(...)"


def _suggestion(name: str, declared: list[str]) -> str:
    """The closest real name, else the list: vastevents' own names and those the active handlers declare."""
    close = difflib.get_close_matches(name, (*_NAMED_EVENTS, *_TRANSITIONS, *declared), n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"names are OLD_to_NEW (e.g. loading_to_running), {', '.join((*_NAMED_EVENTS, *declared))}"


def _check_store(path: Path, report: _Report) -> None:
    problem = _store_problem(path)
    if problem is None:
        report.ok(f"store {path} writable")
    else:
        report.bad(f"store {path} is not writable ({problem}): set [store] path to a file you can write", EXIT_USAGE)


def _store_problem(path: Path) -> str | None:
    """Why the journal could not be written at `path`, or None: the file opens for writing, and its directory
    (or the nearest one that exists, where the store would create the rest) takes new files (SQLite's journal)."""
    if path.exists():
        if not path.is_file():
            return "it is not a file"
        try:
            path.open("r+b").close()
        except OSError as exc:
            return exc.strerror or str(exc)
    existing = next(parent for parent in path.parents if parent.exists())
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return f"cannot create files in {existing}: {exc.strerror or exc}"
    return None


def _key_body(line: str) -> tuple[str, ...]:
    """An OpenSSH public key without its comment: (type, base64)."""
    return tuple(line.split()[:2])


def _check_ssh_key(account_keys: list[dict[str, Any]] | None, report: _Report) -> None:
    """A local public key exists, and (when the account could be read) the account has it, or SSH will refuse it."""
    ssh_dir = Path.home() / ".ssh"
    public_key = next((ssh_dir / name for name in _SSH_KEYS if (ssh_dir / name).is_file()), None)
    if public_key is None:
        report.bad(f"no SSH key in {ssh_dir} ({' or '.join(_SSH_KEYS)}): run `ssh-keygen -t ed25519`")
        return
    if account_keys is None:
        report.skipped(f"SSH public key {public_key} found, not compared with the account's keys: no API reached")
        return
    try:
        local = _key_body(public_key.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        report.bad(f"cannot read SSH public key {public_key}: {exc}")
        return
    registered = {
        _key_body(value)
        for key in account_keys
        for value in (key.get("public_key"), key.get("ssh_key"), key.get("key"))
        if isinstance(value, str)
    }
    if local in registered:
        report.ok(f"SSH public key {public_key} is registered with the account")
    else:
        report.bad(
            f"SSH public key {public_key} is not registered with the Vast account, so instances will refuse it: "
            f'run `vastai create ssh-key "$(cat {public_key})"` (or add it under Account > SSH Keys)'
        )
