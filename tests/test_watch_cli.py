"""`vastevents watch / events` end to end: real processes, the simulator over HTTP, a real SQLite file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from vastevents.cli import _watch, app
from vastevents.events import Event
from vastevents.models import Instance
from vastevents.sim import Simulator
from vastevents.store import SqliteStore

ROOT = Path(__file__).resolve().parents[1]

CRASH_PLUGIN = """
import os, signal
from pathlib import Path
from vastevents import on

HERE = Path(os.environ["CRASH_DIR"])

@on("*")
async def record(event, ctx):
    with (HERE / "delivered.txt").open("a") as f:
        f.write(f"{event.id} {event.name}\\n")

@on("*")
async def kill_once(event, ctx):
    marker = HERE / "killed"
    if not marker.exists():
        marker.write_text(str(event.id))
        os.kill(os.getpid(), signal.SIGKILL)  # between commit and delivery: nothing marked delivered yet
"""


class Cli:
    """Runs `vastevents ...` as separate processes against one simulator, config and store."""

    def __init__(self, tmp_path: Path, sim: Simulator, api_key: str, handlers: str = "") -> None:
        self.dir = tmp_path
        self.jsonl = tmp_path / "events.jsonl"
        self.config = tmp_path / "vastevents.toml"
        self.config.write_text(f'[store]\npath = "{tmp_path / "state.db"}"\n{handlers}')
        self.env = {
            **os.environ,
            "VAST_URL": sim.url,
            "VAST_API_KEY": api_key,
            "HOME": str(tmp_path),
            "CRASH_DIR": str(tmp_path),
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vastevents", *args, "--config", str(self.config)],
            capture_output=True, text=True, env=self.env, cwd=self.dir, timeout=60,
        )  # fmt: skip

    def once(self) -> list[dict[str, Any]]:
        """One `watch --once --jsonl` process; the lines it appended."""
        before = self.lines()
        done = self.run("watch", "--once", "--jsonl", str(self.jsonl))
        assert done.returncode == 0, done.stderr
        return self.lines()[len(before) :]

    def lines(self) -> list[dict[str, Any]]:
        if not self.jsonl.exists():
            return []
        return [json.loads(line) for line in self.jsonl.read_text().splitlines()]


def assert_consistent_chains(lines: list[dict[str, Any]]) -> dict[int, str | None]:
    """Ids strictly increase, and per instance each status event starts where the previous one ended."""
    assert [line["id"] for line in lines] == sorted({line["id"] for line in lines})
    state: dict[int, str | None] = {}
    for line in lines:
        assert list(line) == ["id", "name", "instance_id", "old", "new", "at", "catch_up", "instance"]
        name, instance_id = line["name"], line["instance_id"]
        if name == "appeared":
            assert instance_id not in state
        elif name == "vanished" or "_to_" in name:
            assert state[instance_id] == line["old"], line
        if name == "appeared" or name == "vanished" or "_to_" in name:
            state[instance_id] = line["new"]
    return state


def test_separate_once_processes_report_each_transition_exactly_once(
    tmp_path: Path, sim: Simulator, api_key: str
) -> None:
    cli = Cli(tmp_path, sim, api_key)
    quick = sim.create_instance(label="vastevents:quick", pull="30s")
    slow = sim.create_instance(label="vastevents:slow", pull="5m")

    first = cli.once()
    assert [(line["name"], line["instance_id"], line["catch_up"]) for line in first] == [
        ("appeared", quick, False),
        ("appeared", slow, False),
    ]
    assert cli.once() == []  # known and unchanged: nothing

    sim.advance(120)  # a gap: quick goes all the way to running while nobody watches
    caught_up = cli.once()
    assert caught_up and all(line["catch_up"] for line in caught_up)
    assert any(line["name"].endswith("_to_running") and line["instance_id"] == quick for line in caught_up)

    sim.vanish(quick)
    sim.advance(600)
    later = cli.once()
    assert ("vanished", quick) in [(line["name"], line["instance_id"]) for line in later]
    assert any(line["name"].endswith("_to_running") and line["instance_id"] == slow for line in later)
    assert cli.once() == []

    lines = cli.lines()
    final = assert_consistent_chains(lines)
    assert final == {quick: None, slow: "running"}
    assert [line["id"] for line in lines] == list(range(1, len(lines) + 1))

    journal = cli.run("events", "--json")
    assert journal.returncode == 0, journal.stderr
    assert json.loads(journal.stdout) == lines  # the journal and the JSONL carry the same objects
    only = json.loads(cli.run("events", "--json", "--instance", str(slow), "--name", "appeared").stdout)
    assert [(e["instance_id"], e["name"]) for e in only] == [(slow, "appeared")]
    since = json.loads(cli.run("events", "--json", "--since", "2").stdout)
    assert [e["id"] for e in since] == [line["id"] for line in lines[2:]]


def test_kill_9_between_commit_and_delivery_loses_nothing_and_journals_nothing_twice(
    tmp_path: Path, sim: Simulator, api_key: str
) -> None:
    (tmp_path / "crashplug.py").write_text(CRASH_PLUGIN)
    handlers = '[handlers.recorder]\nuse = "crashplug:record"\n[handlers.killer]\nuse = "crashplug:kill_once"\n'
    cli = Cli(tmp_path, sim, api_key, handlers)
    first_id = sim.create_instance(label="vastevents:a", pull="30s")
    sim.create_instance(label="vastevents:b", pull="30s")

    crashed = cli.run("watch", "--once", "--jsonl", str(cli.jsonl))
    assert crashed.returncode == -signal.SIGKILL
    assert (tmp_path / "killed").read_text() == "1"

    sim.advance(120)
    restarted = cli.run("watch", "--once", "--jsonl", str(cli.jsonl))
    assert restarted.returncode == 0, restarted.stderr

    journal = json.loads(cli.run("events", "--json").stdout)
    assert_consistent_chains(journal)
    appeared = [e["instance_id"] for e in journal if e["name"] == "appeared"]
    assert sorted(appeared) == sorted(set(appeared)) and first_id in appeared  # journaled once, not lost
    assert cli.lines() == journal  # JSONL: each journal event exactly once, in order
    delivered = (tmp_path / "delivered.txt").read_text().splitlines()
    assert {int(line.split()[0]) for line in delivered} == {e["id"] for e in journal}  # at least once
    ids = [int(line.split()[0]) for line in delivered]
    first_new = next(i for i, event_id in enumerate(ids) if event_id > 2)
    assert set(ids[:first_new]) == {1, 2}  # after the restart, the undelivered events went first
    assert all(event_id > 2 for event_id in ids[first_new:])


def test_jsonl_resumes_after_its_last_id_and_cuts_a_torn_line(tmp_path: Path) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with SqliteStore(tmp_path / "s.db") as store:
        journaled = store.append(
            [Event(name="appeared", instance_id=i, new="running", at=at, instance=Instance(id=i)) for i in (1, 2, 3)]
        )
        path = tmp_path / "out.jsonl"
        path.write_text(json.dumps(journaled[0].to_json()) + "\n" + '{"id": 2, "name": "appe')
        sink = _watch.JsonlSink(str(path), store)
        sink(journaled[2])  # already written during the catch-up: not again
        sink.close()
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert ids == [1, 2, 3]


def test_watch_sim_plays_the_demo_and_exits_cleanly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_watch, "SIM_TARGET_SECONDS", 2.0)
    monkeypatch.setattr(_watch, "SIM_POLL_SECONDS", 0.1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    monkeypatch.setenv("VAST_URL", "http://192.0.2.1:9")  # never contacted: --sim ignores it
    jsonl = tmp_path / "demo.jsonl"
    result = CliRunner().invoke(app, ["watch", "--sim", "--jsonl", str(jsonl)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "vastevents watch --sim" in out and "summary" in out and "no sshd left" in out
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    names = [line["name"] for line in lines]
    for expected in ("appeared", "loading_to_running", "preempted", "stuck_loading", "host_flap", "vanished"):
        assert expected in names
        assert expected in out
    assert "running_to_stopped" in names  # the notebook owner's own stop: a transition, no preemption
    by_instance: dict[int, list[str]] = defaultdict(list)
    for line in lines:
        by_instance[line["instance_id"]].append(line["name"])
    assert sum("preempted" in seen for seen in by_instance.values()) == 1
    assert_consistent_chains(lines)


def test_watch_without_a_key_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    monkeypatch.delenv("VASTEVENTS_CONFIG", raising=False)
    result = CliRunner().invoke(app, ["watch", "--once"])
    assert result.exit_code == 2
    assert "VAST_API_KEY" in result.output and "--sim" in result.output


def test_events_with_no_journal_yet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\npath = "{tmp_path / "none.db"}"\n')
    result = CliRunner().invoke(app, ["events", "--json", "--config", str(config)])
    assert result.exit_code == 0 and json.loads(result.output) == []
    assert not (tmp_path / "none.db").exists()


def test_sigterm_stops_the_loop_cleanly(tmp_path: Path, sim: Simulator, api_key: str) -> None:
    cli = Cli(tmp_path, sim, api_key)
    sim.create_instance(label="vastevents:a")
    args = ["watch", "--interval", "0.2", "--jsonl", str(cli.jsonl), "--config", str(cli.config)]
    process = subprocess.Popen(
        [sys.executable, "-m", "vastevents", *args], env=cli.env, cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while not cli.lines() and time.monotonic() < deadline:  # bounded wait for the first poll's event
            time.sleep(0.05)
        assert [line["name"] for line in cli.lines()] == ["appeared"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
        process.wait()
    assert "appeared" in (process.stdout.read() if process.stdout else "")
