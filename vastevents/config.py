"""Configuration: one TOML file read with tomllib and validated with pydantic.

Where the file lives: ``--config FILE``, else ``$VASTEVENTS_CONFIG``, else ``./vastevents.toml``, else
``~/.config/vastevents/config.toml``, else built-in defaults. Every error names the file, the key, its line
and what was expected. Unknown keys are errors. The API key is never read from this file.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError

from vastevents._logging import register_secret, without_password
from vastevents.choosing import Strategy
from vastevents.errors import ConfigError
from vastevents.vast import DEFAULT_URL
from vastevents.vast_webhooks import parse_listen

DEFAULT_STORE = "~/.local/state/vastevents/state.db"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string like ``"90s"``, ``"15m"``, ``"24h"``, ``"2d"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, '90s', '15m', '24h'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    else:
        raise ValueError("expected a duration such as 30, '90s', '15m', '24h'")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """A duration as a person reads it, two units at most: ``45 s``, ``2 min 5 s``, ``12 min``, ``1 h 15 min``,
    ``7 d``, ``2 d 3 h`` (the smaller unit rounded down; below zero counts as zero)."""
    total = max(0, round(seconds))
    for unit, size, smaller, small_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1)):
        if total >= size:
            whole, rest = divmod(total, size)
            part = rest // small_size
            if unit == "min" and whole >= 10:
                part = 0  # "12 min", not "12 min 5 s"
            return f"{whole} {unit}" + (f" {part} {smaller}" if part else "")
    return f"{total} s"


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VastConfig(_Section):
    url: str = DEFAULT_URL
    label_prefix: str = "vastevents"


class WatchConfig(_Section):
    interval: Duration = Field(default=15.0, gt=0)
    stuck_after: Duration = 900.0
    offline_grace: Duration = 600.0
    preempt_grace: Duration = 120.0
    flap_window: Duration = 3600.0
    flap_count: int = Field(default=3, ge=2)
    handler_timeout: Duration = Field(default=300.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    max_concurrency: int = Field(default=8, ge=1)


class StoreConfig(_Section):
    path: Path = Path(DEFAULT_STORE)
    url: str | None = None
    """``postgresql://...`` shares one store between watchers (team mode); env ``VASTEVENTS_STORE_URL`` wins (when
    the config is loaded)."""

    def resolved_path(self) -> Path:
        return self.path.expanduser()

    def resolved_url(self) -> str | None:
        return self.url or None

    def describe(self) -> str:
        """Where the store is, for people: the file, or the database without its password."""
        url = self.resolved_url()
        return without_password(url) if url else str(self.resolved_path())


class TeamConfig(_Section):
    failover: Duration = Field(default=15.0, gt=0)
    """Seconds within which a follower takes over from a leader whose session died."""


class WebhooksConfig(_Section):
    """``[webhooks]``: the receiver of Vast's signed notifications (off unless ``listen`` or ``--webhook-listen``)."""

    listen: str | None = None
    secret_env: str = "VAST_WEBHOOK_SECRET"  # noqa: S105 - the name of the variable, not a secret
    path: str = Field(default="/vast-webhook", pattern=r"^/")
    max_body: int = Field(default=1 << 20, gt=0)
    max_skew: Duration = Field(default=300.0, gt=0)


def _listen(value: object, what: str, example: int) -> object:
    """`value` if it is a ``HOST:PORT`` string (pydantic says what else is wrong)."""
    if isinstance(value, str):
        try:
            parse_listen(value, what, example)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    return value


class DashboardConfig(_Section):
    """``[dashboard]``: ``vastevents dashboard``, a read-only web view of the store."""

    listen: Annotated[str, BeforeValidator(lambda value: _listen(value, "listen address", 8780))] = "127.0.0.1:8780"
    """``HOST:PORT``; any host but a loopback one requires ``token_env``."""
    token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The name of the environment variable holding the token every request must carry (never the token)."""


class AgentsConfig(_Section):
    """``[agents]``: what an agent may spend through ``vastevents mcp`` (a limit left out is not applied)."""

    max_dph: float | None = Field(default=None, gt=0)
    """The most an agent's job may cost per hour."""
    max_job_usd: float | None = Field(default=None, gt=0)
    """The most one agent's job may cost (its price per hour times its ``max_duration``)."""
    session_budget_usd: float | None = Field(default=None, gt=0)
    """The most the jobs of one ``vastevents mcp`` process may cost together."""
    quote_ttl: Duration = Field(default=300.0, gt=0)
    """How long an estimate's quote may be submitted."""


class JobsConfig(_Section):
    """``[jobs]``: how ``run``, submitted jobs and recovery pick among the offers that match."""

    choose: Strategy = Strategy.EXPECTED_COST
    """``expected_cost`` (the lowest expected cost per finished job), ``cheapest`` or ``second_cheapest``."""


class HandlerConfig(BaseModel):
    """``[handlers.NAME]``: ``use`` picks the handler; every other key belongs to that handler."""

    model_config = ConfigDict(extra="allow", frozen=True)

    use: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Config(_Section):
    vast: VastConfig = VastConfig()
    watch: WatchConfig = WatchConfig()
    store: StoreConfig = StoreConfig()
    team: TeamConfig = TeamConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    dashboard: DashboardConfig = DashboardConfig()
    agents: AgentsConfig = AgentsConfig()
    jobs: JobsConfig = JobsConfig()
    handlers: dict[str, HandlerConfig] = {}

    _source: Path | None = PrivateAttr(default=None)
    _text: str = PrivateAttr(default="")

    @property
    def source(self) -> Path | None:
        """The file this config came from, or None for built-in defaults."""
        return self._source


def resolve_config_path(path: Path | None = None) -> Path | None:
    """The config file to read: the explicit one (which must exist), else the first that exists."""
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (give an existing file to --config)")
        return path
    if env := os.environ.get("VASTEVENTS_CONFIG"):
        env_path = Path(env)
        if not env_path.is_file():
            raise ConfigError(f"config file {env_path} (from $VASTEVENTS_CONFIG) does not exist")
        return env_path
    defaults = [Path("vastevents.toml"), Path("~/.config/vastevents/config.toml").expanduser()]
    return next((p for p in defaults if p.is_file()), None)


def find_key_line(text: str, loc: Sequence[str | int]) -> int | None:
    """Best-effort 1-based line of the key at `loc` (e.g. ``("handlers", "slack", "use")``) in TOML `text`."""
    keys = [str(part) for part in loc]
    if not keys:
        return None
    header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    assignment = re.compile(r"^\s*([A-Za-z0-9_.\"'-]+?)\s*=")
    current: list[str] = []
    best: int | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if match := header.match(line):
            current = [part.strip().strip("\"'") for part in match.group(1).split(".")]
            if current == keys:
                best = number
            elif best is None and keys[: len(current)] == current:
                best = number
            continue
        if match := assignment.match(line):
            dotted = [part.strip().strip("\"'") for part in match.group(1).split(".")]
            full = current + dotted
            if full == keys[: len(full)]:
                if len(full) == len(keys):
                    return number
                best = number
    return best


def _describe(file: Path | None, text: str, loc: Sequence[str | int], message: str) -> str:
    return f"{_where(file, text, loc)}: {message}"


def _where(file: Path | None, text: str, loc: Sequence[str | int]) -> str:
    key = ".".join(str(part) for part in loc) or "(top level)"
    where = str(file) if file else "config"
    line = find_key_line(text, loc) if text else None
    at = f"{where}:{line}" if line else where
    return f"{at}: {key}"


def config_location(config: Config, loc: Sequence[str | int]) -> str:
    """Where the key at `loc` is written: ``vastevents.toml:4: handlers.log.events``."""
    return _where(config.source, config._text, loc)


def config_error(config: Config, loc: Sequence[str | int], message: str) -> ConfigError:
    """A ConfigError that names the config file, the key at `loc` and its line."""
    return ConfigError(_describe(config.source, config._text, loc, message))


_UNKNOWN_KEY = "unknown key (check the spelling; see config.example.toml for every key)"


def _validation_error(
    source: Path | None, text: str, prefix: Sequence[str | int], error: ValidationError, unknown: str
) -> ConfigError:
    """One line per problem pydantic found, each naming the file, the key under `prefix` and its line."""
    problems = []
    for item in error.errors():
        if item["type"] == "extra_forbidden":
            message = unknown
        elif item["type"] == "missing":
            message = "required key is missing"
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(_describe(source, text, (*prefix, *item["loc"]), message))
    return ConfigError("\n".join(problems))


def options_error(config: Config, prefix: Sequence[str | int], error: ValidationError) -> ConfigError:
    """The ConfigError for options validated after loading (a handler's ``[handlers.NAME]`` keys)."""
    return _validation_error(config.source, config._text, prefix, error, "unknown key for this handler")


def parse_config(text: str, source: Path | None = None) -> Config:
    """Validate TOML `text`; errors name `source`, the key and its line."""
    where = str(source) if source else "config"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(source, text, (), exc, _UNKNOWN_KEY) from None
    config._source = source
    config._text = text
    if url := _GIVEN_URL.get() or os.environ.get("VAST_URL"):
        config = with_sections(config, vast=config.vast.model_copy(update={"url": url}))
    if url := os.environ.get("VASTEVENTS_STORE_URL"):
        config = with_sections(config, store=config.store.model_copy(update={"url": url}))
    return config


def with_sections(config: Config, **sections: BaseModel) -> Config:
    """`config` with whole sections replaced (``vast=VastConfig(...)``); errors still name its file and lines."""
    updated = config.model_copy(update=sections)
    updated._source = config._source
    updated._text = config._text
    return updated


def load_config(path: Path | None = None) -> Config:
    """Load the config (see module docstring for where from); env ``VAST_URL`` overrides ``[vast] url``, and
    ``VASTEVENTS_STORE_URL`` ``[store] url``."""
    source = resolve_config_path(path)
    if source is None:
        return parse_config("", None)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {source}: {exc}") from None
    return parse_config(text, source)


_GIVEN_URL: ContextVar[str | None] = ContextVar("vastevents_given_url", default=None)
_GIVEN_KEY: ContextVar[str | None] = ContextVar("vastevents_given_api_key", default=None)


@contextmanager
def given(*, url: str | None = None, api_key: str | None = None) -> Iterator[None]:
    """While inside: the API URL and key a command was given (``--url``, ``--api-key``, as the ``vastai`` CLI
    takes them), winning over ``$VAST_URL``/``[vast] url`` and ``$VAST_API_KEY``/the key files."""
    register_secret(api_key)
    url_token, key_token = _GIVEN_URL.set(url), _GIVEN_KEY.set(api_key)
    try:
        yield
    finally:
        _GIVEN_URL.reset(url_token)
        _GIVEN_KEY.reset(key_token)


def api_key_paths() -> list[Path]:
    """Where the API key is looked for after ``$VAST_API_KEY``, in order: where ``vastai set api-key`` writes it
    (``$XDG_CONFIG_HOME/vastai``, else ``~/.config/vastai``), then the legacy ``~/.vast_api_key``."""
    home = Path.home()
    default = home / ".config"
    xdg = os.environ.get("XDG_CONFIG_HOME", "").strip()
    configs = [Path(xdg), default] if xdg and Path(xdg) != default else [default]
    return [*(config / "vastai" / "vast_api_key" for config in configs), home / ".vast_api_key"]


NO_API_KEY = (
    "no Vast API key: set VAST_API_KEY or run `vastai set api-key YOUR_KEY`"
    " (`vastevents watch --sim` and `vastevents demo` need none)"
)
"""What every command says when it needs the API key and there is none."""


def find_api_key() -> tuple[str, str] | None:
    """The API key and where it came from (``--api-key``, ``$VAST_API_KEY`` or a key file), registered as a
    secret to redact."""
    found: tuple[str, str] | None = None
    if key := (_GIVEN_KEY.get() or "").strip():
        found = (key, "--api-key")
    elif key := os.environ.get("VAST_API_KEY", "").strip():
        found = (key, "$VAST_API_KEY")
    else:
        for path in api_key_paths():
            try:
                key = path.read_text(encoding="utf-8").strip()
            except OSError:
                continue
            if key:
                found = (key, str(path))
                break
    if found is not None:
        register_secret(found[0])
    return found
