"""The official ``vastai`` CLI (1.9.1) driven line by line in one process, against a simulator.

    with VastaiSession(sim.url, api_key, home) as cli:
        cli("show", "instances", "--raw")        # -> Line(stdout, stderr)

The CLI takes about 1.5 s to start, so a process per command would make a tour of every command slow. The CLI
ships a REPL whose line runner feeds each line to the same parser and command functions ``vastai ...`` uses;
this runs that line runner in one subprocess (``python tests/vastai_session.py``: JSON argv lines in, JSON
output lines out). What differs from a one-shot ``vastai`` is only that a failing command ends its line, not
the process: an HTTP error is printed as ``Failed with error <status>``, a crash as ``<Exception>: <text>``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class Line:
    argv: tuple[str, ...]
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


class VastaiSession:
    def __init__(self, url: str, api_key: str, home: Path) -> None:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_STATE_HOME": str(home / ".state"),
            "XDG_DATA_HOME": str(home / ".data"),
            "VAST_URL": url,  # 1.9.1 fetches the GPU names from $VAST_URL when it starts, whatever --url says
            "VASTAI_NO_UPDATE_CHECK": "1",
            "CI": "1",
            "COLUMNS": "200",
        }
        self._proc = subprocess.Popen(
            [sys.executable, __file__, url, api_key],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def __call__(self, *argv: str) -> Line:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(argv) + "\n")
        self._proc.stdin.flush()
        answer = self._proc.stdout.readline()
        if not answer:
            _, err = self._proc.communicate(timeout=10)
            raise AssertionError(f"the vastai session ended: {err}")
        out = json.loads(answer)
        return Line(tuple(argv), out["stdout"], out["stderr"])

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.communicate(input="", timeout=30)

    def __enter__(self) -> VastaiSession:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None and self._proc.poll() is None:
            self._proc.kill()
        self.close()


_REQUEST_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3})')


@contextlib.contextmanager
def requests_served() -> Iterator[list[tuple[str, str, int]]]:
    """(method, path, status) of every request an in-process simulator answers meanwhile (from its debug log)."""
    seen: list[tuple[str, str, int]] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            match = _REQUEST_LINE.search(record.getMessage())
            if match:
                seen.append((match["method"], match["path"].split("?")[0], int(match["status"])))

    logger = logging.getLogger("vastevents.sim")
    recorder, level = Recorder(), logger.level
    logger.addHandler(recorder)
    logger.setLevel(logging.DEBUG)
    try:
        yield seen
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(level)


def _serve(url: str, api_key: str) -> None:
    """The subprocess: build the CLI's parser as ``vastai`` does, then run each line read from stdin."""
    import vastai.cli.main as cli
    from vastai.cli.repl.bridge import run_line

    replies = sys.stdout
    session: list[Any] = []
    cli.run_command = session.append  # main() parses the global flags and hands over here instead of running
    sys.argv = ["vastai", "--url", url, "--api-key", api_key, "show", "user"]
    cli.main()
    for request in sys.stdin:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run_line(cli.parser, shlex.join(json.loads(request)), session[0])
        replies.write(json.dumps({"stdout": out.getvalue(), "stderr": err.getvalue()}) + "\n")
        replies.flush()


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2])
