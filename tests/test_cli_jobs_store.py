"""`jobs` and `logs` over a store that holds finished jobs, from any directory: each job's own results."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vastevents.cli import app
from vastevents.store import Jobs, SqliteStore

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
            jobs.update(job.id, status="finished", exit_code=0, results_dir=str(results), finished_at=T0)
        cancelled = jobs.submit(spec, [], "vastevents", T0)
        jobs.update(cancelled.id, status="cancelled", finished_at=T0)
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
