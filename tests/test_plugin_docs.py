"""docs/plugins.md as a plugin author follows it: a plugin written next to the config is found by the installed
`vastevents` script from any directory, and the docs' handler and its Harness test run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
SCRIPT = Path(sys.executable).parent / "vastevents"
"""The console script pip installs: unlike `python -m`, it does not put the current directory on the path."""

PLUGIN = """
from vastevents import Context, Event, on

@on("appeared")
async def greet(event: Event, ctx: Context) -> None:
    await ctx.notify("hello")
"""


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOCS, flags=re.DOTALL)


def test_a_plugin_next_to_its_config_is_found_from_any_directory(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_handlers.py").write_text(PLUGIN)
    (project / "vastevents.toml").write_text('[handlers.mine]\nuse = "my_handlers:greet"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(SCRIPT), "handlers", "--config", str(project / "vastevents.toml")],
                          capture_output=True, text=True, env=env, cwd=elsewhere, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert re.search(r"mine\s+my_handlers:greet\s+import my_handlers:greet\s+appeared", done.stdout), done.stdout
    assert "next to" in DOCS and "my_handlers.py" in DOCS  # and the docs say so


def test_the_docs_handler_and_its_harness_test_run_as_written(tmp_path: Path) -> None:
    """Outside this repository (no asyncio_mode = "auto" here), so the docs' marker is what makes it run."""
    handler = next(block for block in _blocks("python") if "async def greet" in block)
    harness = next(block for block in _blocks("python") if "Harness(greet)" in block)
    (tmp_path / "test_greet.py").write_text(f"{handler}\n\n{harness}")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_greet.py"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_each_command_is_described_once() -> None:
    bullets = re.findall(r"^- `(vastevents [a-z -]+?)\s*[\[`]", DOCS, flags=re.MULTILINE)
    assert len(bullets) == len(set(bullets)), bullets
