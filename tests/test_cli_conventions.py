"""What every command shares: help that renders at 80 columns, one exit-code convention, global options."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from vastevents.cli import app
from vastevents.cli._app import COMMAND_ORDER, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from vastevents.config import NO_API_KEY
from vastevents.sim import Simulator

ROOT = Path(__file__).resolve().parents[1]
TOP = get_command(app)
COMMANDS = list(TOP.commands)  # type: ignore[attr-defined]


def _leaves(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every runnable command, a group's subcommands included (``team status``)."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _leaves(command, (*path, name))
        else:
            yield (*path, name), command


LEAVES = dict(_leaves(TOP))
GROUPS = [[name] for name in COMMANDS if (name,) not in LEAVES]
NARROW = {"COLUMNS": "80", "NO_COLOR": "1"}


@pytest.fixture
def user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated user: empty HOME and cwd, no config, no key, a URL nothing listens on."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for name in ("VASTEVENTS_CONFIG", "VAST_API_KEY", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VAST_URL", "http://127.0.0.1:9")
    return tmp_path


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vastevents", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


# --- help ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], *GROUPS, *map(list, LEAVES)], ids=lambda c: " ".join(c) or "top")
def test_help_renders_at_80_columns(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env=NARROW)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "<bool>" not in text
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert not re.search(r"[╭│╰]", text), "plain help, no panels that cut text"
    assert "(default:  " not in text and "e.g.  " not in text, "nothing swallowed as markup"


def test_square_brackets_in_help_and_hints_are_text_not_markup(user: Path) -> None:
    watch = CliRunner().invoke(app, ["watch", "--help"], env=NARROW)
    assert "(default: [watch] interval)" in " ".join(watch.stdout.split())
    (user / "c.toml").write_text(f'[store]\npath = "{user / "state.db"}"\n')
    handlers = CliRunner().invoke(app, ["handlers", "--config", str(user / "c.toml")], env=NARROW)
    assert handlers.exit_code == 0, handlers.output
    assert '[handlers.log] with the line use = "log"' in " ".join(handlers.stdout.split())


def test_commands_are_listed_in_workflow_order() -> None:
    result = CliRunner().invoke(app, ["--help"], env=NARROW)
    listed = re.findall(r"^  (\w+)  ", result.stdout.split("Commands:")[1], flags=re.MULTILINE)
    assert sorted(listed) == sorted(COMMANDS)
    known = [name for name in COMMAND_ORDER if name in listed]
    assert listed[: len(known)] == known, "the known ones in workflow order, any other after them"
    assert listed.index("check") < listed.index("offers") < listed.index("watch") < listed.index("status")


# --- exit codes -----------------------------------------------------------------------------------------------

BROKEN = "[watch]\nintervall = 5\n"


def _takes_config(path: tuple[str, ...]) -> bool:
    return any(param.name == "config" for param in LEAVES[path].params)


@pytest.mark.parametrize("command", [path for path in LEAVES if _takes_config(path)], ids=" ".join)
@pytest.mark.parametrize("where", ["after", "before"])
def test_a_broken_config_exits_2_from_every_command(user: Path, command: tuple[str, ...], where: str) -> None:
    broken = user / "broken.toml"
    broken.write_text(BROKEN)
    # Required arguments get a value that parses as any type (the config error must come first anyway).
    required = ["1" for param in LEAVES[command].params if param.param_type_name == "argument" and param.required]
    needs = {("webhooks", "rotate"): ["--show-secret"]}  # refused before the config is read otherwise
    command = (*command, *required, *needs.get(command, []))
    args = [*command, "--config", str(broken)] if where == "after" else ["--config", str(broken), *command]
    result = CliRunner().invoke(app, args, env={"VAST_API_KEY": "some-key-1234"})
    assert result.exit_code == EXIT_USAGE, (args, result.output)
    problem = f"{broken}:2: watch.intervall: unknown key (check the spelling; see config.example.toml for every key)"
    if command == ("check",):  # a list of ✓/✗ lines on stdout
        assert f"✗ config invalid: {problem}" in result.stdout.splitlines()
    else:
        assert result.stderr.splitlines() == [f"error: {problem}"]


def test_every_command_but_sim_and_demo_takes_a_config() -> None:
    """The simulator and the demo read no user config: the demo writes a temporary one of its own."""
    assert {" ".join(path) for path in LEAVES if not _takes_config(path)} == {"sim", "demo"}


def test_a_default_config_from_the_environment_is_honoured_too(user: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (user / "vastevents.toml").write_text(BROKEN)
    for command in ("status", "events", "check"):
        assert CliRunner().invoke(app, [command]).exit_code == EXIT_USAGE, command


def test_an_unknown_option_is_a_usage_error(user: Path) -> None:
    result = CliRunner().invoke(app, ["status", "--jsn"])
    assert result.exit_code == EXIT_USAGE and "No such option" in result.output


def test_status_without_a_key_fails_fast_like_check(user: Path) -> None:
    """Nothing listens at VAST_URL: a request would end in a connection error (exit 1), not this."""
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == EXIT_USAGE
    assert result.stderr == f"error: {NO_API_KEY}\n"


# --- global options -------------------------------------------------------------------------------------------


@pytest.fixture
def account(user: Path, sim: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    monkeypatch.setenv("VAST_URL", sim.url)
    monkeypatch.setenv("VAST_API_KEY", api_key)
    yield sim
    assert sim.instance_count() == 0


@pytest.mark.parametrize("args", [["--debug", "status"], ["status", "--debug"], ["status", "--json", "--debug"]])
def test_debug_before_or_after_the_command(account: Simulator, api_key: str, args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert "GET /api/v1/instances/" in result.stderr and "-> 200" in result.stderr
    assert api_key not in result.stdout + result.stderr


def test_no_debug_logs_nothing(account: Simulator) -> None:
    result = run("status")
    assert result.returncode == 0 and result.stderr == ""


def test_config_before_the_command_is_used_and_one_after_it_wins(user: Path) -> None:
    good = user / "good.toml"
    good.write_text(f'[store]\npath = "{user / "good.db"}"\n')
    broken = user / "broken.toml"
    broken.write_text(BROKEN)
    assert CliRunner().invoke(app, ["--config", str(good), "events"]).exit_code == 0
    assert CliRunner().invoke(app, ["--config", str(good), "events", "--config", str(broken)]).exit_code == 2
    assert CliRunner().invoke(app, ["--config", str(broken), "events", "--config", str(good)]).exit_code == 0


# --- the vastai CLI's conventions ---------------------------------------------------------------------------


def test_the_key_vastai_set_api_key_writes_under_xdg_config_home_is_found(user: Path) -> None:
    xdg = user / "xdg"
    (xdg / "vastai").mkdir(parents=True)
    (xdg / "vastai" / "vast_api_key").write_text("xdg-key-1234\n")
    result = run("check", env={"XDG_CONFIG_HOME": str(xdg), "HOME": str(user), "VAST_API_KEY": ""})
    assert f"✓ API key found in {xdg / 'vastai' / 'vast_api_key'}" in result.stdout
    assert "xdg-key-1234" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--url", "{url}", "--api-key", "{key}", "--raw", "status"],
        ["status", "--raw", "--url", "{url}", "--api-key", "{key}"],
        ["status", "--url={url}", "--api-key={key}", "--raw"],
    ],
)
def test_url_api_key_and_raw_as_vastai_takes_them(user: Path, sim: Simulator, api_key: str, args: list[str]) -> None:
    """Nothing listens at $VAST_URL and there is no key: the options alone reach the simulator."""
    sim.create_instance(label="mine")
    result = run(*(arg.format(url=sim.url, key=api_key) for arg in args), env={"HOME": str(user)})
    assert result.returncode == 0, result.stderr
    assert [row["label"] for row in json.loads(result.stdout)] == ["mine"]
    assert api_key not in result.stderr
    for instance in sim.state()["instances"]:
        sim.vanish(instance["id"])


def test_the_simulators_own_api_key_option_is_left_to_it() -> None:
    help_text = CliRunner().invoke(app, ["sim", "--help"], env=NARROW).stdout
    assert "The key clients must send" in help_text


def test_run_takes_a_duration_shows_its_default_query_and_answers_a_dry_run_on_stdout(
    account: Simulator, tmp_path: Path
) -> None:
    help_text = CliRunner().invoke(app, ["run", "--help"], env=NARROW).stdout
    assert "gpu_ram>=24 num_gpus=1" in re.sub(r"\s+", " ", help_text)
    result = run("run", "--image", "python:3.11", "--cmd", "true", "--max-duration", "2h", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^chosen: offer \d+, \$\d+\.\d{3}/h, at most \$\d+\.\d\d for 2 h, \$\d+\.\d\d expected$",
                     result.stdout, flags=re.MULTILINE), result.stdout  # fmt: skip
    assert result.stdout.startswith("offers by expected_cost for a 2 h job") and result.stderr == ""


def test_readme_documents_the_exit_codes_every_command_uses() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| (\d+) \| ([^|]+?) \|", readme, flags=re.MULTILINE))
    assert table == {
        str(EXIT_OK): "success",
        str(EXIT_FAILED): "runtime or API failure",
        str(EXIT_USAGE): "usage or config error",
        str(EXIT_INTERRUPTED): "interrupted",
    }
