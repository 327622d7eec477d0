"""`events` over a real SQLite journal: names, --limit, --follow, and the JSON objects with their `detail`."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vastevents.cli import app
from vastevents.events import Event
from vastevents.store import SqliteStore

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("VASTEVENTS_CONFIG", raising=False)
    path = tmp_path / "c.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "state.db"}"\n')
    return path


def journal(config: Path, *events: Event) -> None:
    with SqliteStore(config.parent / "state.db") as store:
        store.append(list(events))


def event(name: str, instance_id: int | None = 1, detail: str = "") -> Event:
    return Event(name=name, instance_id=instance_id, at=AT, detail=detail)


def events_cli(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["events", *args, "--config", str(config)])
    return result.exit_code, result.stdout, result.stderr


def test_json_objects_carry_the_detail_or_null(config: Path) -> None:
    journal(config, event("appeared"), event("poll_failed", None, "The Vast API failed with HTTP 503"))
    code, out, _ = events_cli(config, "--json")
    assert code == 0
    appeared, failed = json.loads(out)
    assert list(appeared) == "id name instance_id old new at catch_up instance detail cause".split()
    assert appeared["detail"] is None
    assert failed["detail"] == "The Vast API failed with HTTP 503"


def test_an_unknown_name_is_a_usage_error(config: Path) -> None:
    journal(config, event("appeared"))
    code, _, err = events_cli(config, "--name", "apeared")
    assert code == 2
    assert err == "error: unknown event name 'apeared': vastevents never emits it and the journal has none (a typo?)\n"


def test_known_names_and_names_in_the_journal_are_accepted(config: Path) -> None:
    journal(config, event("appeared"), event("vast_notification", None, "maintenance tonight"))
    assert events_cli(config, "--name", "preempted")[:2] == (0, "no events\n")  # known, none yet
    assert events_cli(config, "--name", "loading_to_running")[0] == 0
    code, out, _ = events_cli(config, "--name", "vast_notification", "--json")  # a handler-made name
    assert code == 0 and [line["name"] for line in json.loads(out)] == ["vast_notification"]


def test_limit_shows_the_last_n_matching(config: Path) -> None:
    journal(config, *(event("appeared", n) for n in range(1, 6)), event("vanished", 1))
    code, out, _ = events_cli(config, "--name", "appeared", "--limit", "2", "--json")
    assert code == 0 and [line["instance_id"] for line in json.loads(out)] == [4, 5]
    code, out, _ = events_cli(config, "-n", "1")
    assert code == 0 and "vanished" in out and "appeared" not in out
    assert events_cli(config, "--limit", "0")[0] == 2


def test_follow_takes_no_json(config: Path) -> None:
    code, _, err = events_cli(config, "--follow", "--json")
    assert code == 2 and "--follow" in err


class Follower:
    """`vastevents events --follow` as a real process; its stdout lines arrive on a queue."""

    def __init__(self, config: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # it must flush by itself
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vastevents", "events", "--follow", *args, "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def next_line(self) -> str:
        try:
            return self.lines.get(timeout=30)  # bounded: the journal is read every second
        except queue.Empty:
            self.process.kill()
            raise AssertionError(f"no line within 30 s: {self.process.communicate()}") from None

    def stop(self, signum: int) -> tuple[int, str]:
        self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout=15)
        finally:
            self.process.kill()
        self._reader.join(timeout=5)
        assert self.process.stderr is not None
        return code, self.process.stderr.read()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_follow_prints_new_events_until_interrupted(config: Path, signum: int) -> None:
    journal(config, event("appeared", 1))
    follower = Follower(config, "--instance", "2")
    try:
        journal(config, event("appeared", 2), event("appeared", 3), event("vanished", 2, "gone from the list"))
        first, second = follower.next_line(), follower.next_line()
    finally:
        code, err = follower.stop(signum)
    assert "appeared" in first and " 2" in first
    assert "vanished" in second and "gone from the list" in second
    assert code == 130
    assert "Traceback" not in err


def test_follow_starts_after_the_last_n(config: Path) -> None:
    journal(config, *(event("appeared", n) for n in range(1, 4)))
    follower = Follower(config, "--limit", "1")
    try:
        shown = follower.next_line()
        journal(config, event("vanished", 1))
        following = follower.next_line()
    finally:
        code, _ = follower.stop(signal.SIGINT)
    assert "#3" in shown and "vanished" in following and code == 130
