"""`run --submit` and `jobs --follow` through the CLI on a real SQLite store (the PostgreSQL path, with two
watchers and LISTEN/NOTIFY, is in test_team.py)."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vastevents.cli import app
from vastevents.store import Jobs, SqliteStore
from vastevents.team import Heartbeat

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("VASTEVENTS_CONFIG", raising=False)
    monkeypatch.delenv("VASTEVENTS_STORE_URL", raising=False)
    path = tmp_path / "c.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "state.db"}"\n[handlers.jobs]\nuse = "jobs"\n')
    return path


def cli(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [*args, "--config", str(config)])
    return result.exit_code, result.stdout, result.stderr


def test_submit_queues_the_job_with_its_upload_and_rents_nothing(config: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "train.py").write_text("print('hi')\n")
    code, out, err = cli(config, "run", "--image", "img", "--cmd", "python train.py", "--upload", str(work),
                         "--submit", "--yes", "--json")  # fmt: skip
    assert code == 0, err
    queued = json.loads(out)
    assert (queued["status"], queued["instance_id"], queued["offers_tried"]) == ("pending", None, [])
    assert "@" in queued["submitted_by"] and f"jobs --follow {queued['job_id']}" in err
    assert "no watcher has been heard from" in err and "start `vastevents watch`" in err
    with SqliteStore(tmp_path / "state.db") as store:
        jobs = store.repository(Jobs)
        job = jobs.get(queued["job_id"])
        archive = jobs.inputs(queued["job_id"])
    assert job is not None and job.spec["upload"] is None and job.spec["cmd"] == "python train.py"
    assert archive is not None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert tar.getnames() == ["train.py"]


def test_a_dry_run_submit_writes_nothing_and_a_config_without_jobs_handler_is_warned(
    config: Path, tmp_path: Path
) -> None:
    config.write_text(f'[store]\npath = "{tmp_path / "state.db"}"\n')
    code, out, err = cli(config, "run", "--image", "img", "--cmd", "true", "--submit", "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(out)["dry_run"] is True and json.loads(out)["spec"]["cmd"] == "true"
    assert "no jobs handler" in err
    assert not (tmp_path / "state.db").exists()


def test_follow_prints_the_job_and_exits_with_its_code(config: Path, tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "state.db") as store:
        jobs = store.repository(Jobs)
        ok = jobs.submit({"image": "i", "cmd": "true"}, [], "vastevents", AT)
        jobs.update(ok.id, status="finished", exit_code=0, results_dir="/srv/results", cost_usd=0.01)
        bad = jobs.submit({"image": "i", "cmd": "exit 7"}, [], "vastevents", AT)
        jobs.add_error(bad.id, "download out: nothing there")
        jobs.update(bad.id, status="failed", exit_code=7)
        gone = jobs.submit({"image": "i", "cmd": "true"}, [], "vastevents", AT)
        jobs.update(gone.id, status="cancelled")
    code, out, _ = cli(config, "jobs", "--follow", str(ok.id))
    assert code == 0 and "finished" in out and "results in /srv/results" in out
    code, out, _ = cli(config, "jobs", "--follow", str(bad.id))
    assert code == 7 and "exit code 7" in out and "download out: nothing there" in out
    code, out, _ = cli(config, "jobs", "--follow", str(gone.id), "--json")
    assert code == 130 and json.loads(out)["status"] == "cancelled"
    code, _, err = cli(config, "jobs", "--follow", "99")
    assert code == 2 and "no job 99" in err


def test_with_a_watcher_beating_submit_and_team_status_name_it_and_without_one_say_to_start_it(
    config: Path, tmp_path: Path
) -> None:
    code, out, _ = cli(config, "team", "status")
    assert code == 0 and "start `vastevents watch`" in out  # no store yet: nobody ever watched
    with SqliteStore(tmp_path / "state.db") as store:
        watcher = Heartbeat(store, "gpu-box:4242")  # what a running `watch` writes each cycle
        watcher.beat("leader")
        code, _, err = cli(config, "run", "--image", "img", "--cmd", "true", "--submit", "--yes")
        assert code == 0 and "no watcher" not in err
        code, out, _ = cli(config, "team", "status", "--json")
        assert code == 0 and json.loads(out)["leader"] == "gpu-box:4242"
        watcher.stop()  # a watcher that stops leaves the roster at once
    code, out, _ = cli(config, "team", "status")
    assert code == 0 and "no watcher has been heard from" in out
