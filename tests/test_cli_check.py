"""`check` against the simulator over HTTP: each mistake `watch` or ssh would fail on is a ✗ line with a fix."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from terminal import run_on_terminal
from typer.testing import CliRunner

from vastevents.cli import app
from vastevents.sim import Simulator

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBcheckedkeyforvastevents me@laptop"

TYPO_PLUGIN = """
from vastevents import on

@on("loading_to_runing")
async def typo(event, ctx):
    pass
"""


@pytest.fixture
def user(tmp_path: Path, sim: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """HOME with an SSH key the account knows, a valid config, the simulator as the account."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VASTEVENTS_CONFIG", raising=False)
    monkeypatch.setenv("VAST_URL", sim.url)
    monkeypatch.setenv("VAST_API_KEY", api_key)
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519.pub").write_text(PUBLIC_KEY + "\n")
    added = httpx.post(
        f"{sim.url}/api/v0/ssh/", json={"ssh_key": PUBLIC_KEY}, headers={"Authorization": f"Bearer {api_key}"}
    )
    assert added.status_code == 200
    write_config(tmp_path, "")
    yield tmp_path
    assert sim.instance_count() == 0


def write_config(home: Path, text: str) -> None:
    (home / "vastevents.toml").write_text(f'[store]\npath = "{home / "state.db"}"\n{text}')


def check() -> tuple[int, list[str]]:
    result = CliRunner().invoke(app, ["check"])
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout.splitlines()


def failures(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("✗")]


def test_a_good_setup_passes_every_check(user: Path) -> None:
    status, lines = check()
    assert status == 0, lines
    assert failures(lines) == []
    assert lines[-1] == f"✓ SSH public key {user / '.ssh' / 'id_ed25519.pub'} is registered with the account"


def test_a_plugin_that_cannot_be_imported_fails_with_what_to_do(user: Path) -> None:
    write_config(user, '[handlers.mine]\nuse = "nosuchpkg.mod:Missing"\n')
    status, lines = check()
    assert status == 2
    (line,) = failures(lines)
    assert ":4: handlers.mine.use: 'nosuchpkg.mod:Missing': cannot import nosuchpkg.mod" in line
    assert "fix `use`" in " ".join(lines)


def test_a_missing_attribute_of_an_importable_module_fails(user: Path) -> None:
    write_config(user, '[handlers.mine]\nuse = "json:Missing"\n')
    status, lines = check()
    assert status == 2
    (line,) = failures(lines)
    assert "json has no attribute 'Missing'" in line


def test_an_unknown_event_name_in_a_subscription_fails(user: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (user / "typo_plugin.py").write_text(TYPO_PLUGIN)
    monkeypatch.syspath_prepend(str(user))
    write_config(user, '[handlers.typo]\nuse = "typo_plugin:typo"\n')
    status, lines = check()
    assert status == 2
    (line,) = failures(lines)
    assert "handler typo (typo_plugin:typo) subscribes to 'loading_to_runing', which nothing emits" in line
    assert "fix the name in its @on(...); did you mean 'loading_to_running'?" in line


def test_a_name_like_no_event_lists_the_names(user: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (user / "vague_plugin.py").write_text(TYPO_PLUGIN.replace("loading_to_runing", "whenever"))
    monkeypatch.syspath_prepend(str(user))
    write_config(user, '[handlers.typo]\nuse = "vague_plugin:typo"\n')
    status, lines = check()
    assert status == 2
    assert "names are OLD_to_NEW (e.g. loading_to_running), appeared, vanished, preempted" in failures(lines)[0]


def test_a_store_that_cannot_be_written_fails(user: Path) -> None:
    (user / "not-a-dir").write_text("a file where the store's directory should be")
    (user / "vastevents.toml").write_text(f'[store]\npath = "{user / "not-a-dir" / "state.db"}"\n')
    status, lines = check()
    assert status == 2
    (line,) = failures(lines)
    assert f"store {user / 'not-a-dir' / 'state.db'} is not writable ({user / 'not-a-dir'} is not a directory)" in line
    assert "set [store] path to a file you can write" in line


def test_a_store_path_that_is_a_directory_fails(user: Path) -> None:
    (user / "a-dir").mkdir()
    (user / "vastevents.toml").write_text(f'[store]\npath = "{user / "a-dir"}"\n')
    status, lines = check()
    assert status == 2 and "is not writable (it is not a file)" in failures(lines)[0]


def test_a_local_key_the_account_does_not_know_fails(user: Path) -> None:
    other = user / ".ssh" / "id_ed25519.pub"
    other.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAInotregistered me@laptop\n")
    status, lines = check()
    assert status == 1  # a runtime problem of the account, not of the config
    (line,) = failures(lines)
    assert f"SSH public key {other} is not registered with the Vast account" in line
    assert f'vastai create ssh-key "$(cat {other})"' in line


def test_config_problems_outrank_runtime_ones(user: Path) -> None:
    (user / ".ssh" / "id_ed25519.pub").write_text("ssh-ed25519 AAAAunknown\n")
    write_config(user, '[handlers.mine]\nuse = "nosuchpkg:x"\n')
    status, lines = check()
    assert status == 2 and len(failures(lines)) == 2


def test_an_option_with_a_bad_value_is_a_hint_about_that_value_not_about_use(user: Path) -> None:
    write_config(user, '[handlers.log]\nuse = "log"\nlevel = "loud"\n')
    status, lines = check()
    assert status == 2
    (line,) = failures(lines)
    assert "handlers.log.level: Input should be 'debug', 'info' or 'warning'" in line
    assert "fix that key's value" in " ".join(lines) and "fix `use`" not in " ".join(lines)


def test_a_misspelt_event_in_a_handlers_events_list_points_at_that_list(user: Path) -> None:
    write_config(user, '[handlers.log]\nuse = "log"\nevents = ["apeared"]\n')
    status, lines = check()
    assert status == 2
    (line,) = failures(lines)
    assert "fix it in its events = [...] (vastevents.toml:5: handlers.log.events); did you mean 'appeared'?" in line
    assert "@on" not in line


def test_what_was_not_checked_gets_no_check_mark(user: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAST_URL", "http://127.0.0.1:9")  # the account cannot be reached
    status, lines = check()
    assert status == 1
    assert lines[-1].startswith(f"– SSH public key {user / '.ssh' / 'id_ed25519.pub'} found, not compared")


def test_on_a_terminal_the_marks_are_coloured(user: Path) -> None:
    (user / ".ssh" / "id_ed25519.pub").write_text("ssh-ed25519 AAAAunknown\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    seen = run_on_terminal([sys.executable, "-m", "vastevents", "check"], env=env, cwd=str(user))
    assert seen.code == 1, seen.text
    assert seen.colour_of("✓") == "green" and seen.colour_of("✗") == "red"
