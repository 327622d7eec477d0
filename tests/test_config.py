"""Config loading: defaults, search order, env overrides, and errors that name file, key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from vastevents._logging import redact
from vastevents.config import (
    DEFAULT_URL,
    config_error,
    find_api_key,
    find_key_line,
    given,
    load_config,
    parse_config,
    parse_duration,
)
from vastevents.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("VAST_URL", "VAST_API_KEY", "VASTEVENTS_CONFIG", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return home


def test_no_file_gives_defaults() -> None:
    config = load_config()
    assert config.source is None
    assert config.vast.url == DEFAULT_URL
    assert config.vast.label_prefix == "vastevents"
    assert config.watch.interval == 15.0
    assert (config.agents.max_job_usd, config.agents.session_budget_usd, config.agents.quote_ttl) == (None, None, 300.0)
    assert config.store.resolved_path() == Path.home() / ".local/state/vastevents/state.db"
    assert config.handlers == {}


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert config.source == EXAMPLE
    assert set(config.handlers) >= {"log"}
    assert (config.agents.max_dph, config.agents.quote_ttl) == (2.0, 300.0)


def test_search_order_env_then_cwd_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home_cfg = Path.home() / ".config/vastevents/config.toml"
    home_cfg.parent.mkdir(parents=True)
    home_cfg.write_text("[watch]\ninterval = 1\n")
    assert load_config().watch.interval == 1.0
    Path("vastevents.toml").write_text("[watch]\ninterval = 2\n")
    assert load_config().watch.interval == 2.0
    env_cfg = tmp_path / "env.toml"
    env_cfg.write_text("[watch]\ninterval = 3\n")
    monkeypatch.setenv("VASTEVENTS_CONFIG", str(env_cfg))
    assert load_config().watch.interval == 3.0
    explicit = tmp_path / "explicit.toml"
    explicit.write_text("[watch]\ninterval = 4\n")
    assert load_config(explicit).watch.interval == 4.0


def test_vast_url_env_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAST_URL", "http://127.0.0.1:9")
    config = parse_config('[vast]\nurl = "http://example.invalid"\n')
    assert config.vast.url == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[watch]\ninterval = 15\nintervall = 3\n", "cfg.toml:3: watch.intervall: unknown key"),
        ("[watch]\n\ninterval = 'soon'\n", "cfg.toml:3: watch.interval: expected a duration"),
        ("[vast]\nurl = 'x'\n[handlers.slack]\nwebhook_url_env = 'X'\n", "cfg.toml:3: handlers.slack.use: required"),
        ("[store]\npath = 3\n", "cfg.toml:2: store.path:"),
        ("[colour]\nx = 1\n", "cfg.toml:1: colour: unknown key"),
        ("[agents]\nmax_dph = 1\nbudget = 3\n", "cfg.toml:3: agents.budget: unknown key"),
        ("[agents]\nquote_ttl = 'later'\n", "cfg.toml:2: agents.quote_ttl: expected a duration"),
        ("[agents]\n\nmax_job_usd = -1\n", "cfg.toml:3: agents.max_job_usd: Input should be greater than 0"),
    ],
)
def test_errors_name_file_key_and_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("cfg.toml"))
    assert str(info.value).startswith(expected)


def test_toml_syntax_error_names_file_and_line() -> None:
    with pytest.raises(ConfigError, match=r"cfg.toml: not valid TOML: .*line 2"):
        parse_config("[watch]\ninterval = = 3\n", Path("cfg.toml"))


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_handler_options_and_config_error_line() -> None:
    config = parse_config('[handlers.mine]\nuse = "pkg.mod:Handler"\nthreshold = 3\n', Path("c.toml"))
    assert config.handlers["mine"].use == "pkg.mod:Handler"
    assert config.handlers["mine"].options() == {"threshold": 3}
    assert str(config_error(config, ("handlers", "mine", "threshold"), "must be < 2")) == (
        "c.toml:3: handlers.mine.threshold: must be < 2"
    )


@pytest.mark.parametrize(
    ("value", "seconds"), [(30, 30.0), (1.5, 1.5), ("90s", 90.0), ("15m", 900.0), ("24h", 86400.0), ("2d", 172800.0)]
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "5 minutes", "-3", True, None, "1w"])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


def test_find_key_line_dotted_keys_and_tables() -> None:
    text = "[vast]\nurl = 'u'\n\n[handlers.a]\nuse = 'x'\nsub.key = 1\n"
    assert find_key_line(text, ("vast", "url")) == 2
    assert find_key_line(text, ("handlers", "a")) == 4
    assert find_key_line(text, ("handlers", "a", "sub", "key")) == 6


def test_api_key_env_then_files(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_api_key() is None
    legacy = isolated_env / ".vast_api_key"
    legacy.write_text("legacy-key-123\n")
    assert find_api_key() == ("legacy-key-123", str(legacy))
    current = isolated_env / ".config/vastai/vast_api_key"
    current.parent.mkdir(parents=True)
    current.write_text("current-key-456")
    assert find_api_key() == ("current-key-456", str(current))
    current.write_text("  \n")
    assert find_api_key() == ("legacy-key-123", str(legacy))
    monkeypatch.setenv("VAST_API_KEY", "env-key-789")
    assert find_api_key() == ("env-key-789", "$VAST_API_KEY")
    assert redact("Authorization failed for env-key-789") == "Authorization failed for ***"


def test_api_key_under_xdg_config_home_comes_first_and_a_given_one_wins(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = isolated_env / ".config/vastai/vast_api_key"
    default.parent.mkdir(parents=True)
    default.write_text("default-key-1")
    xdg = isolated_env / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    assert find_api_key() == ("default-key-1", str(default))  # none under $XDG_CONFIG_HOME: the default dir
    (xdg / "vastai").mkdir(parents=True)
    (xdg / "vastai" / "vast_api_key").write_text("xdg-key-2\n")
    assert find_api_key() == ("xdg-key-2", str(xdg / "vastai" / "vast_api_key"))
    monkeypatch.setenv("VAST_API_KEY", "env-key-3")
    with given(api_key="given-key-4", url="http://127.0.0.1:1"):
        assert find_api_key() == ("given-key-4", "--api-key")
        assert load_config().vast.url == "http://127.0.0.1:1"
    assert find_api_key() == ("env-key-3", "$VAST_API_KEY")


def test_api_key_is_never_read_from_config() -> None:
    with pytest.raises(ConfigError, match=r"vast\.api_key: unknown key"):
        parse_config("[vast]\napi_key = 'secret'\n")
