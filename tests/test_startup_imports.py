"""A watcher starts without the edges it may never use: each is imported where it is first used.

A restarted watcher is blind until its first poll, so what it imports before then is kept to what it needs. This
checks a fresh interpreter after importing the CLI and every installed handler (what ``watch`` imports before it
polls): SSH, Slack, the simulator, the metrics exporter, the dashboard and the MCP server are not among them.
"""

from __future__ import annotations

import json
import subprocess
import sys

DEFERRED = ["paramiko", "slack_sdk", "vastevents.sim", "prometheus_client", "uvicorn", "starlette", "mcp"]

CODE = f"""
import json, sys
from importlib.metadata import entry_points

import vastevents.cli

for point in entry_points(group="vastevents.handlers"):
    point.load()
print(json.dumps([name for name in {DEFERRED!r} if name in sys.modules]))
"""


def test_the_cli_and_the_handlers_import_no_edge_a_watcher_may_never_use() -> None:
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []
