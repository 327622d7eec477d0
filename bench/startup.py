"""P12: how soon a (re)started watcher asks the Vast API again: from spawning ``vastevents watch`` to its first request.

Run: ``python bench/startup.py [--runs 15] [--quick] [--json PATH]``.

A watcher restarted by systemd or after a crash is blind until its first poll. Each run spawns ``python -m
vastevents watch`` (the built-in jobs, recovery, billing and reaper handlers configured, the same store every
run: a restart) against a local HTTP endpoint standing in for the Vast API, which notes when the first request
arrives (and answers an empty account); the watcher is then stopped with SIGTERM. The import share is the time
another process takes to import what the watcher imports before its first poll (the CLI and those handlers),
timed inside it, over the median; ``python -c pass`` gives the interpreter's own start for comparison.

Every process runs with its bytecode cached, as an installed package has it (an unmeasured run writes it under a
temporary ``PYTHONPYCACHEPREFIX`` first): what a user's watcher pays at start, not the cost of compiling.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_json

HANDLERS = ("jobs", "recovery", "billing", "reaper")
"""The built-in handlers the watcher runs (each is imported before the first poll)."""
IMPORTS = "import vastevents.cli, " + ", ".join(f"vastevents_handlers.{name}" for name in HANDLERS)
"""What ``watch`` imports before its first poll: the CLI (and through it the package) and its handlers."""
TIMED_IMPORTS = f"import time; start = time.perf_counter(); {IMPORTS}; print(time.perf_counter() - start)"
KEY = "startup-bench-key"


class _FirstRequest(ThreadingHTTPServer):
    """Answers every request with an empty instance list and notes when the first one since :meth:`expect` came."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.arrived = threading.Event()
        self.at = 0.0
        self.path = ""

    def expect(self) -> None:
        self.arrived.clear()

    def note(self, path: str) -> None:
        if not self.arrived.is_set():
            self.at, self.path = time.perf_counter(), path.split("?")[0]
            self.arrived.set()


class _Handler(BaseHTTPRequestHandler):
    server: _FirstRequest

    def do_GET(self) -> None:
        self.server.note(self.path)
        body = json.dumps({"instances": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _endpoint() -> Iterator[_FirstRequest]:
    server = _FirstRequest()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _env(tmp: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "VAST_URL": url, "VAST_API_KEY": KEY, "HOME": str(tmp), "PYTHONPYCACHEPREFIX": str(tmp / "pyc")}


def _first_request(command: list[str], env: dict[str, str], server: _FirstRequest) -> float:
    """Wall seconds from spawning `command` to the endpoint's first request; the watcher is stopped after."""
    server.expect()
    start = time.perf_counter()
    watcher = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = start + 60
    try:  # the server notes the arrival itself: how often this looks does not change the time measured
        while not server.arrived.wait(0.01) and watcher.poll() is None and time.perf_counter() < deadline:
            pass
    finally:
        stderr = _stop(watcher)
    if not server.arrived.is_set():
        raise RuntimeError(f"the watcher made no request: {stderr.strip()[-500:]}")
    return server.at - start


def _stop(process: subprocess.Popen[str]) -> str:
    """Stop `process` as systemd would (SIGTERM), and what it wrote to stderr."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()[1]


def _spawn(command: list[str], env: dict[str, str]) -> float:
    """Wall seconds from spawning `command` to its exit."""
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _imports(env: dict[str, str]) -> float:
    """Seconds a new interpreter spends importing what the watcher imports before its first poll."""
    done = subprocess.run([sys.executable, "-c", TIMED_IMPORTS], env=env, check=True, capture_output=True, text=True)
    return float(done.stdout.split()[-1])


def _run(runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as name, _endpoint() as server:
        tmp = Path(name)
        config = tmp / "vastevents.toml"
        sections = "".join(f'[handlers.{h}]\nuse = "{h}"\n' for h in HANDLERS)
        config.write_text(f'[watch]\ninterval = 60\n[store]\npath = "{tmp / "state.db"}"\n{sections}')
        env = _env(tmp, f"http://127.0.0.1:{server.server_address[1]}")
        watch = [sys.executable, "-m", "vastevents", "watch", "--config", str(config)]
        _first_request(watch, env, server)  # unmeasured: writes the bytecode and the store
        first, interpreter, imported = [], [], []
        for _ in range(runs):
            first.append(_first_request(watch, env, server))
            interpreter.append(_spawn([sys.executable, "-c", "pass"], env))
            imported.append(_imports(env))
        path = server.path
    median, importing = statistics.median(first), statistics.median(imported)
    return {"runs": runs, "handlers": list(HANDLERS), "request": path, "first_request": first,
            "median": median, "interpreter": statistics.median(interpreter), "imports": importing,
            "import_share": importing / median}  # fmt: skip


def _table(r: dict[str, Any]) -> None:
    header = ["runs", "interpreter alone", "imports", "spawn -> first request (median)", "min", "max", "import share"]
    first = r["first_request"]
    rows = [[str(r["runs"]), f"{r['interpreter']:.3f} s", f"{r['imports']:.3f} s", f"{r['median']:.3f} s",
             f"{min(first):.3f} s", f"{max(first):.3f} s", f"{r['import_share']:.0%}"]]  # fmt: skip
    handlers = ", ".join(r["handlers"])
    print_table(f"P12 watch: spawn -> first API request ({r['request']}; handlers {handlers})", header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="measured starts (the median is reported)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 starts")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    result = _run(3 if args.quick else args.runs)
    _table(result)
    write_json(args.json, "startup", result)


if __name__ == "__main__":
    main()
