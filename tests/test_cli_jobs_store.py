"""`jobs`, `logs` and `hosts` over a store that holds finished jobs, as people read them: each job's own results
from any directory, tables that fit an 80-column terminal with rounded numbers, a sentence for an empty one."""

from __future__ import annotations

import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from terminal import run_on_terminal
from typer.testing import CliRunner

from vastevents import Cause
from vastevents.cli import app
from vastevents.store import Jobs, SqliteStore

ROOT = Path(__file__).resolve().parents[1]

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config whose store holds two finished jobs of the same spec (each with its own results dir and log) and
    one cancelled before anything was downloaded."""
    spec = {"image": "python:3.11", "cmd": "python train.py", "out": "results"}
    with SqliteStore(tmp_path / "state.db") as store:
        jobs = store.repository(Jobs)
        for text in ("the first run\n", "the second run\n"):
            job = jobs.submit(spec, [], "vastevents", T0)
            results = tmp_path / "results" / f"job-{job.id}"
            results.mkdir(parents=True)
            (results / "job.log").write_text(text)
            jobs.update(job.id, status="finished", exit_code=0, results_dir=str(results), finished_at=T0,
                        instance_id=10000000 + job.id, gpu_name="RTX 4090", cost_usd=0.123456)  # fmt: skip
        cancelled = jobs.submit(spec, [], "vastevents", T0)
        jobs.update(cancelled.id, status="cancelled", finished_at=T0, cause=Cause.CANCELLED)
        jobs.add_error(cancelled.id, "interrupted: everything the job rented was destroyed")
    path = tmp_path / "vastevents.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "state.db"}"\n')
    return path


def test_logs_prints_each_jobs_own_log_from_any_directory(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    runner = CliRunner()
    first = runner.invoke(app, ["logs", "1", "--config", str(config)])
    second = runner.invoke(app, ["logs", "2", "--config", str(config)])
    assert (first.exit_code, first.stdout) == (0, "the first run\n")
    assert (second.exit_code, second.stdout) == (0, "the second run\n")
    cancelled = runner.invoke(app, ["logs", "3", "--config", str(config)])
    assert cancelled.exit_code == 1
    assert "job 3 is cancelled and has no results dir" in cancelled.stderr
    assert "the second run" not in cancelled.stdout  # never another job's log


def test_jobs_fit_an_80_column_terminal_with_rounded_numbers_and_why_each_failed(config: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    seen = run_on_terminal([sys.executable, "-m", "vastevents", "jobs", "--config", str(config)], env=env,
                           cwd=str(tmp_path))  # fmt: skip
    assert seen.code == 0, seen.text
    header = next(line for line in seen.lines if line.lstrip().startswith("job"))
    assert header.split() == ["job", "status", "instance", "gpu", "cost", "exit", "error"]
    assert "submitted by" not in seen.text  # nobody submitted one: no empty column
    rows = {line.split()[0]: line.split() for line in seen.lines if re.match(r"\s*\d+ ", line)}
    assert rows["1"][:7] == ["1", "finished", "10000001", "RTX", "4090", "$0.12", "0"]
    assert rows["3"][:3] == ["3", "cancelled", "-"] and "cancelled" in rows["3"][3:]  # its cause, in a word
    assert not re.search(r"\d\.\d{4,}|e-0\d", seen.text)  # no raw floats


def test_an_empty_jobs_table_is_a_sentence(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\npath = "{tmp_path / "state.db"}"\n')
    result = CliRunner().invoke(app, ["jobs", "--config", str(config)])
    assert (result.exit_code, result.stdout) == (0, "No jobs in the store yet: `vastevents run SPEC` runs one.\n")


def test_hosts_block_says_how_long_in_words(config: Path) -> None:
    result = CliRunner().invoke(app, ["hosts", "--block", "77", "--reason", "flaky disk", "--config", str(config)])
    assert (result.exit_code, result.stdout) == (0, "machine 77 blocked for 7 d: flaky disk\n")


def test_commands_that_only_look_write_nothing_to_the_store(config: Path, tmp_path: Path) -> None:
    """`events`, `jobs`, `logs`, `cost`, `hosts`: the store file and its WAL are the same bytes after them."""
    store = tmp_path / "state.db"

    def files() -> tuple[bytes, bytes]:
        wal = store.with_name("state.db-wal")
        return store.read_bytes(), wal.read_bytes() if wal.exists() else b""

    before = files()
    runner = CliRunner()
    env = {"VAST_URL": "http://127.0.0.1:9", "VAST_API_KEY": ""}  # nothing to reach: only the store is read
    for args in (["events", "--json"], ["jobs"], ["jobs", "--json"], ["logs", "1"], ["cost", "--json"],
                 ["hosts", "--json"], ["events", "--name", "appeared"]):  # fmt: skip
        result = runner.invoke(app, [*args, "--config", str(config)], env=env)
        assert result.exit_code == 0, (args, result.output)
    assert files() == before
