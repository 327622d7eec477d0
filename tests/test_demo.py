"""`vastevents demo` end to end: the real simulator, real sshd hosts, every handler; every check must hold."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sshkit import needs_openssh
from terminal import run_on_terminal
from typer.testing import CliRunner

from vastevents.cli import app
from vastevents.sim import sshhost

ROOT = Path(__file__).resolve().parents[1]


def checks(document: dict[str, object]) -> dict[str, bool]:
    return {str(item["check"]): bool(item["ok"]) for item in document["checks"]}  # type: ignore[attr-defined,index]


@pytest.mark.ssh
@needs_openssh
def test_the_demo_tells_the_whole_story_and_leaves_nothing_rented(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("VAST_API_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "vastevents", "demo", "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(done.stdout)
    assert all(checks(document).values()), checks(document)
    assert "the job resumed from its checkpoint" in checks(document)
    assert [job["status"] for job in document["jobs"]] == ["finished", "finished"]
    assert any("preempted" in text for text in document["slack"])


def test_without_sshd_the_demo_says_so_and_plays_the_rest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sshhost, "find_sshd", lambda: None)
    result = CliRunner().invoke(app, ["demo", "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    assert "runs SSH-free" in result.stderr
    found = checks(json.loads(result.stdout))
    assert all(found.values()) and "recovery rented a replacement" in found
    assert "both jobs finished with exit 0" not in found  # no job can run without SSH


@pytest.mark.ssh
@needs_openssh
def test_an_interrupted_demo_says_so_and_cuts_long_details_with_an_ellipsis(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("VAST_API_KEY", None)
    seen = run_on_terminal([sys.executable, "-m", "vastevents", "demo"], env=env, cwd=str(tmp_path), columns=120,
                           interrupt_at="preempting instance")  # fmt: skip
    assert seen.code == 130, seen.text
    assert re.search(r"interrupted after \d+ steps: the story stopped early", seen.text), seen.text
    assert "nothing is left rented" in seen.text  # everything it rented was destroyed, checked
    details = [line for line in seen.lines if re.match(r"\s*\d+\s+\w+\s+\d+\s+\S", line)]
    assert details and all(len(line) <= 120 for line in details)
    assert any(line.endswith("…") for line in seen.lines), seen.text  # a detail longer than its column is cut so
    assert not [line for line in seen.lines if "starting" in line and "INFO" in line]  # logs above the status
