"""`vastevents watch / events` end to end: real processes, the simulator over HTTP, a real SQLite file."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from terminal import run_on_terminal
from typer.testing import CliRunner

from vastevents import connect
from vastevents.cli import _watch, app
from vastevents.clock import ManualClock
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

EMIT_PLUGIN = """
import os, signal
from pathlib import Path
from vastevents import Handler, on

HERE = Path(os.environ["CRASH_DIR"])

class Starter(Handler):
    emits = ("job_started",)

    @on("appeared")
    async def start(self, event, ctx):
        await ctx.emit("job_started", detail="train.py")
        marker = HERE / "killed"
        if not marker.exists():
            marker.write_text(str(event.id))
            os.kill(os.getpid(), signal.SIGKILL)  # right after the emit, before the delivery is marked
"""


class Cli:
    """Runs `vastevents ...` as separate processes against one simulator, config and store."""

    def __init__(self, tmp_path: Path, sim: Simulator, api_key: str, config: str = "") -> None:
        self.dir = tmp_path
        self.jsonl = tmp_path / "events.jsonl"
        self.config = tmp_path / "vastevents.toml"
        self.config.write_text(f'[store]\npath = "{tmp_path / "state.db"}"\n{config}')
        self.env = {
            **os.environ,
            "VAST_URL": sim.url,
            "VAST_API_KEY": api_key,
            "HOME": str(tmp_path),
            "CRASH_DIR": str(tmp_path),
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        }

    def args(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "vastevents", *args, "--config", str(self.config)]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.args(*args), capture_output=True, text=True, env=self.env, cwd=self.dir, timeout=60)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.args(*args), env=self.env, cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def wait_for_line(self, process: subprocess.Popen[str], name: str) -> None:
        """Bounded wait until the JSONL file has an event called `name` (the process must stay alive)."""
        deadline = time.monotonic() + 30
        while name not in [line["name"] for line in self.lines()]:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, f"no {name} within 30 s"
            time.sleep(0.05)

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
        assert list(line) == "id name instance_id old new at catch_up instance detail cause".split()
        name, instance_id = line["name"], line["instance_id"]
        if name == "appeared":
            assert instance_id not in state
        elif name == "vanished" or "_to_" in name:
            assert state[instance_id] == line["old"], line
        if name == "appeared" or name == "vanished" or "_to_" in name:
            state[instance_id] = line["new"]
    return state


STORY = """
description = "Two owned jobs: one loads quickly and is preempted, the other loads slowly and vanishes."
[world]
seed = 3
hosts = 4

[[step]]
at = "0s"
action = "create"
label = "vastevents:quick"
pull = "30s"

[[step]]
at = "0s"
action = "create"
label = "vastevents:slow"
pull = "10m"

[[step]]
at = "2m"
action = "preempt"
instance = "quick"

[[step]]
at = "4m"
action = "vanish"
instance = "slow"
"""


@pytest.fixture
def story(tmp_path: Path, api_key: str) -> Iterator[Simulator]:
    """A simulator playing STORY on a manual clock (lifecycle: 5 s scheduling, 5 s created, then the pull)."""
    scenario = tmp_path / "story.toml"
    scenario.write_text(STORY)
    with Simulator(api_key=api_key, clock=ManualClock(), scenario=scenario) as simulator:
        yield simulator


def test_separate_once_processes_report_a_scripted_story_exactly_once_in_order(
    tmp_path: Path, story: Simulator, api_key: str
) -> None:
    cli = Cli(tmp_path, story, api_key, "[watch]\npreempt_grace = 0\n")  # `watch` runs on the wall clock
    quick, slow = "vastevents:quick", "vastevents:slow"
    observed, elapsed = [], 0
    for seconds in (0, 7, 100, 130, 260, 260):  # 100: a gap in which quick loads and runs unwatched
        story.advance(seconds - elapsed)
        elapsed = seconds
        observed.append([(e["name"], e["instance"]["label"], e["old"], e["new"], e["catch_up"]) for e in cli.once()])
    assert observed == [
        [("appeared", quick, None, "scheduling", False), ("appeared", slow, None, "scheduling", False)],
        [("scheduling_to_created", quick, "scheduling", "created", True),
         ("scheduling_to_created", slow, "scheduling", "created", True)],
        [("created_to_running", quick, "created", "running", True),
         ("created_to_loading", slow, "created", "loading", True)],
        [("running_to_exited", quick, "running", "exited", True), ("preempted", quick, "running", "exited", True)],
        [("vanished", slow, "loading", None, True)],
        [],
    ]  # fmt: skip

    lines = cli.lines()
    assert_consistent_chains(lines)
    assert [line["id"] for line in lines] == list(range(1, len(lines) + 1))
    assert all(line["at"].endswith("Z") for line in lines)
    journal = cli.run("events", "--json")
    assert journal.returncode == 0, journal.stderr
    assert json.loads(journal.stdout) == lines  # the journal and the JSONL carry the same objects
    slow_id = next(line["instance_id"] for line in lines if line["instance"]["label"] == slow)
    only = json.loads(cli.run("events", "--json", "--instance", str(slow_id), "--name", "appeared").stdout)
    assert [(e["instance_id"], e["name"]) for e in only] == [(slow_id, "appeared")]
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


def test_an_emitted_event_is_in_jsonl_and_the_journal_exactly_once_across_a_kill_9(
    tmp_path: Path, sim: Simulator, api_key: str
) -> None:
    (tmp_path / "emitplug.py").write_text(EMIT_PLUGIN)
    cli = Cli(tmp_path, sim, api_key, '[handlers.starter]\nuse = "emitplug:Starter"\n')
    instance_id = sim.create_instance(label="vastevents:job-1")

    crashed = cli.run("watch", "--once", "--jsonl", str(cli.jsonl))
    assert crashed.returncode == -signal.SIGKILL
    restarted = cli.run("watch", "--once", "--jsonl", str(cli.jsonl))  # redelivers `appeared`: emits again
    assert restarted.returncode == 0, restarted.stderr

    journal = json.loads(cli.run("events", "--json").stdout)
    assert [(e["name"], e["instance_id"]) for e in journal] == [("appeared", instance_id), ("job_started", instance_id)]
    assert [line["id"] for line in cli.lines()] == [e["id"] for e in journal]  # each exactly once, in order
    sim.vanish(instance_id)


def test_jsonl_resumes_after_its_last_id_and_cuts_a_torn_line(tmp_path: Path) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with SqliteStore(tmp_path / "s.db") as store:
        journaled = store.append(
            [Event(name="appeared", instance_id=i, new="running", at=at, instance=Instance(id=i)) for i in (1, 2, 3)]
        )
        path = tmp_path / "out.jsonl"
        path.write_text(json.dumps(journaled[0].to_json()) + "\n" + '{"id": 2, "name": "appe')
        sink = _watch.JsonlSink(str(path))
        sink.catch_up(store)
        sink(journaled[2])  # already written during the catch-up: not again
        sink.close()
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert ids == [1, 2, 3]


def test_watch_sim_plays_the_demo_and_exits_cleanly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    monkeypatch.setenv("VAST_URL", "http://192.0.2.1:9")  # never contacted: --sim ignores it
    jsonl = tmp_path / "demo.jsonl"
    result = CliRunner().invoke(app, ["watch", "--sim", "--pace", "0", "--jsonl", str(jsonl)])
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


def test_watch_sim_reads_the_config_like_every_command_and_a_log_handler_prints_each_event_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("VASTEVENTS_CONFIG", raising=False)
    (tmp_path / "vastevents.toml").write_text('[handlers.log]\nuse = "log"\nevents = ["stuck_loading"]\n')
    jsonl = tmp_path / "demo.jsonl"
    result = CliRunner().invoke(app, ["watch", "--sim", "--pace", "0", "--jsonl", str(jsonl)])
    assert result.exit_code == 0, result.output
    assert "handlers (from vastevents.toml): log" in result.output
    journaled = [json.loads(line)["name"] for line in jsonl.read_text().splitlines()]
    lines = result.output.splitlines()
    logged = [line for line in lines if "vastevents.handlers.log" in line]
    screen = [line for line in lines if line not in logged]
    assert len(logged) == journaled.count("stuck_loading") >= 1  # the log handler's line for each
    assert not [line for line in screen if re.search(r"#\d+\s+stuck_loading", line)]  # not the screen's as well
    assert len([line for line in screen if re.search(r"#\d+\s+appeared", line)]) == journaled.count("appeared")


def test_on_a_terminal_log_lines_print_above_the_status_line_never_into_it(tmp_path: Path) -> None:
    (tmp_path / "vastevents.toml").write_text('[handlers.log]\nuse = "log"\n')
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("VASTEVENTS_CONFIG", None)
    seen = run_on_terminal([sys.executable, "-m", "vastevents", "watch", "--sim", "--pace", "0.05"], env=env,
                           cwd=str(tmp_path))  # fmt: skip
    assert seen.code == 0, seen.text
    logged = [line for line in seen.lines if "vastevents.handlers.log:" in line]
    assert len(logged) > 10, seen.text
    for line in logged:
        assert re.match(r"\[?\d\d:\d\d:\d\d\]? +INFO +vastevents\.handlers\.log: ", line), line
    assert not [line for line in seen.lines if "polls " in line and "INFO" in line], seen.text


def test_with_no_config_file_watch_runs_on_defaults_plus_env(tmp_path: Path, sim: Simulator, api_key: str) -> None:
    env = {**Cli(tmp_path, sim, api_key).env}
    env.pop("VASTEVENTS_CONFIG", None)
    (tmp_path / "vastevents.toml").unlink()  # no ./vastevents.toml, no ~/.config/vastevents/config.toml
    instance_id = sim.create_instance(label="vastevents:a")
    done = subprocess.run(
        [sys.executable, "-m", "vastevents", "watch", "--once", "--jsonl", "-"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [(e["name"], e["instance_id"]) for e in map(json.loads, done.stdout.splitlines())] == [
        ("appeared", instance_id)
    ]
    assert (tmp_path / ".local" / "state" / "vastevents" / "state.db").is_file()  # the default store, under HOME


@pytest.mark.parametrize("once", [["--once"], []])
def test_watch_without_a_key_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, once: list[str]) -> None:
    """No key at all, default URL: refused at once, before any store is made or anything is contacted."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("VAST_API_KEY", "VASTEVENTS_CONFIG", "VAST_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(connect, "VastClient", None)  # any attempt to make a client would fail loudly
    result = CliRunner().invoke(app, ["watch", *once])
    assert result.exit_code == 2
    (line,) = error_lines(result.output)
    assert "VAST_API_KEY" in line and "--sim" in line
    assert not (tmp_path / ".local").exists()


def test_an_unwritable_jsonl_path_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\npath = "{tmp_path / "state.db"}"\n')
    monkeypatch.setenv("VAST_API_KEY", "some-key-1234")
    monkeypatch.setenv("VAST_URL", "http://127.0.0.1:9")  # never contacted: the error comes first
    result = CliRunner().invoke(app, ["watch", "--once", "--jsonl", str(tmp_path), "--config", str(config)])
    assert result.exit_code == 2 and f"cannot write --jsonl {tmp_path}" in result.output


def test_events_with_no_journal_yet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\npath = "{tmp_path / "none.db"}"\n')
    result = CliRunner().invoke(app, ["events", "--json", "--config", str(config)])
    assert result.exit_code == 0 and json.loads(result.output) == []
    assert not (tmp_path / "none.db").exists()


def test_sigterm_stops_the_loop_cleanly(tmp_path: Path, sim: Simulator, api_key: str) -> None:
    cli = Cli(tmp_path, sim, api_key)
    sim.create_instance(label="vastevents:a")
    process = cli.start("watch", "--interval", "0.2", "--jsonl", str(cli.jsonl))
    try:
        cli.wait_for_line(process, "appeared")
        assert [line["name"] for line in cli.lines()] == ["appeared"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 130  # interrupted, by the exit-code convention
    finally:
        process.kill()
        out, _ = process.communicate()
    assert "appeared" in out and re.search(r"stopped after \d+ polls?", out)


# --- failures: one clear line and a non-zero exit for --once; the loop rides them out


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_once_exits_1_with_one_clear_line_when_the_key_is_rejected(tmp_path: Path, sim: Simulator) -> None:
    wrong = "wrong-key-that-must-never-be-printed"
    cli = Cli(tmp_path, sim, wrong)
    done = cli.run("watch", "--once", "--jsonl", str(cli.jsonl))
    assert done.returncode == 1
    (line,) = error_lines(done.stderr)
    assert "rejected the API key" in line and "VAST_API_KEY" in line
    assert wrong not in done.stdout + done.stderr + cli.jsonl.read_text()
    assert [entry["name"] for entry in cli.lines()] == ["poll_failed"]  # journaled, with an int id


def test_once_exits_1_when_the_api_fails_and_0_once_it_answers(tmp_path: Path, sim: Simulator, api_key: str) -> None:
    cli = Cli(tmp_path, sim, api_key)
    sim.create_instance(label="vastevents:a")
    sim.apply("server_error", status=500, duration="1h")
    failed = cli.run("watch", "--once", "--jsonl", str(cli.jsonl))
    assert failed.returncode == 1
    (line,) = error_lines(failed.stderr)
    assert "the poll failed, nothing was diffed" in line and "500" in line
    sim.advance(3600)
    assert [entry["name"] for entry in cli.once()] == ["appeared"]


def test_the_loop_keeps_watching_through_server_errors(tmp_path: Path, sim: Simulator, api_key: str) -> None:
    cli = Cli(tmp_path, sim, api_key)
    sim.create_instance(label="vastevents:a")
    sim.apply("server_error", status=500, duration="1h")
    process = cli.start("watch", "--interval", "0.1", "--jsonl", str(cli.jsonl))
    try:
        cli.wait_for_line(process, "poll_failed")
        sim.advance(3600)  # the outage ends; the same process must notice
        cli.wait_for_line(process, "appeared")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 130
    finally:
        process.kill()
        process.communicate()
    assert [line["name"] for line in cli.lines()] == ["poll_failed", "appeared"]  # one report per streak


def test_the_loop_exits_1_when_the_key_is_rejected_at_startup(tmp_path: Path, sim: Simulator) -> None:
    """The key is read once at start, so retrying a rejected one cannot help: say so and exit (documented)."""
    cli = Cli(tmp_path, sim, "wrong-key-0000")
    done = cli.run("watch", "--interval", "0.1")
    assert done.returncode == 1
    (line,) = error_lines(done.stderr)
    assert "rejected the API key" in line and "VAST_API_KEY" in line


def test_unknown_raw_statuses_never_crash_and_keep_the_raw_value(tmp_path: Path, sim: Simulator, api_key: str) -> None:
    cli = Cli(tmp_path, sim, api_key)
    known = sim.create_instance(label="vastevents:known", pull="10s")
    strange = sim.create_instance(label="vastevents:strange", pull="10s")
    sim.advance(60)
    set_raw_status(sim, strange, "hibernating")  # first seen with a status vastevents does not know
    assert [(e["name"], e["new"]) for e in cli.once()] == [("appeared", "running"), ("appeared", "unknown")]

    set_raw_status(sim, known, "Migrating-To-Mars")
    done = cli.run("watch", "--once", "--jsonl", "-")
    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(text) for text in done.stdout.splitlines()]
    assert (line["name"], line["old"], line["new"]) == ("running_to_unknown", "running", "unknown")
    assert line["instance"]["actual_status"] == "Migrating-To-Mars"  # the raw value stays on the event
    assert "raw status 'Migrating-To-Mars'" in done.stderr  # the human line (stderr, since stdout is the JSONL)


def set_raw_status(sim: Simulator, instance_id: int, status: str) -> None:
    """Give a running simulated instance a status string Vast might invent one day (admin action)."""
    sim.apply("raw_status", instance=instance_id, status=status)


def test_sim_takes_no_once_or_interval() -> None:
    result = CliRunner().invoke(app, ["watch", "--sim", "--once"])
    assert result.exit_code == 2 and "no --once or --interval" in result.output


def test_a_rejected_key_is_printed_once_on_a_terminal(tmp_path: Path, sim: Simulator) -> None:
    """stdout and stderr on one terminal: the poll_failed line says why, the exit line does not repeat it."""
    cli = Cli(tmp_path, sim, "wrong-key-on-a-terminal")
    primary, secondary = pty.openpty()
    try:
        process = subprocess.Popen(
            cli.args("watch", "--once"), stdout=secondary, stderr=secondary, env=cli.env, cwd=cli.dir
        )
        os.close(secondary)
        output = b""
        while chunk := _read_pty(primary):
            output += chunk
        assert process.wait(timeout=30) == 1
    finally:
        os.close(primary)
    text = output.decode(errors="replace")
    assert text.count("rejected the API key") == 1, text
    assert "poll_failed" in text and "VAST_API_KEY" in text and "Traceback" not in text


def _read_pty(fd: int) -> bytes:
    """What the terminal got next; empty at its end (EIO once the process closed it). Bounded by select."""
    ready, _, _ = select.select([fd], [], [], 30)
    if not ready:
        return b""
    try:
        return os.read(fd, 4096)
    except OSError:
        return b""
