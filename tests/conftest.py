"""Shared fixtures: an in-process simulator on a free loopback port, driven by a ManualClock; `opener` and
`store`, which run a test once on each store backend (a SQLite file, a PostgreSQL schema of its own).

Every test is also checked for leaks: no simulator thread, and no sshd or job of a simulated ssh host (in this
process or any simulator subprocess a test started) may outlive the test; and the loggers a CLI run configures
are put back afterwards.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from slack_sink import SlackSink
from stores import Opener

from vastevents.clock import ManualClock
from vastevents.sim import Simulator
from vastevents.sim.sshhost import DIRECTORY_PREFIX, MARKER
from vastevents.store import SqlStore

SIM_API_KEY = "sim-test-key-0123"

# This run's own temporary root (inherited by the processes tests start), so the leak check below sees only
# the ssh hosts of this run, never those of another test run on the same machine.
SESSION_TMP = tempfile.mkdtemp(prefix="vastevents-tests-")
tempfile.tempdir = SESSION_TMP
os.environ["TMPDIR"] = SESSION_TMP
atexit.register(shutil.rmtree, SESSION_TMP, ignore_errors=True)

# A suite started in the background of a non-interactive shell (`cmd &`) inherits SIGINT ignored, and so would
# every command a test starts: its Ctrl-C would do nothing and the tests of Ctrl-C would fail for the harness's
# sake. Such a child gets SIGINT's default back only if this process handles it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _sim_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "vastevents-sim" in t.name or "process_request" in t.name}


def _ssh_host_processes() -> set[int]:
    """Live sshd servers running a simulator's config, and processes carrying the simulator's job marker."""
    found: set[int] = set()
    marker = f"{MARKER}={SESSION_TMP}/".encode()
    directory = f"{SESSION_TMP}/{DIRECTORY_PREFIX}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(entry, "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = Path(entry, "cmdline").read_bytes()
            environ = Path(entry, "environ").read_bytes()
        except (OSError, IndexError):
            continue
        if (b"sshd" in cmdline and directory in cmdline) or any(
            item.startswith(marker) for item in environ.split(b"\0")
        ):
            found.add(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def _no_ssh_host_outlives_its_test() -> Iterator[None]:
    if not Path("/proc").is_dir():
        yield
        return
    before = _ssh_host_processes()
    yield
    leaked = _ssh_host_processes() - before
    assert not leaked, f"simulated ssh hosts (sshd or jobs) still running after the test: pids {sorted(leaked)}"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI configures the vastevents/httpx loggers; put them back so other tests' caplog still works."""
    names = ("vastevents", "httpx", "httpcore")
    saved = {
        n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate) for n in names
    }
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


@pytest.fixture
def api_key() -> str:
    return SIM_API_KEY


@pytest.fixture
def sim(api_key: str) -> Iterator[Simulator]:
    """A started Simulator (ManualClock, seed 0, rate limits on); stopped at teardown, asserting no thread leaked."""
    before = _sim_threads()
    simulator = Simulator(api_key=api_key, clock=ManualClock())
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()
        leaked = {t for t in _sim_threads() - before if t.is_alive()}
        assert not leaked, f"simulator threads still alive after stop: {leaked}"


@pytest.fixture
def sink() -> Iterator[SlackSink]:
    """A real local HTTP endpoint recording the posts of a notifier (see slack_sink.py)."""
    server = SlackSink()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sim_url(sim: Simulator) -> str:
    return sim.url


@pytest.fixture
def sim_client(sim: Simulator, api_key: str) -> Iterator[httpx.Client]:
    """An httpx client for the `sim` fixture, sending its key."""
    with httpx.Client(base_url=sim.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10) as client:
        yield client


PG_HINT = "set VASTEVENTS_TEST_PG to a PostgreSQL server (default postgresql://postgres@127.0.0.1:5432/test)"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema of its own (dropped afterwards).

    Skipped with a hint where no server answers; under CI=true a missing server fails instead.
    """
    import secrets
    from urllib.parse import quote

    try:
        import psycopg
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("psycopg is not installed: pip install -e '.[dev]'")
    base = os.environ.get("VASTEVENTS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
    schema = f"t_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(base, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            raise AssertionError(f"no PostgreSQL server for the tests ({exc}); {PG_HINT}") from None
        pytest.skip(f"no PostgreSQL server: {PG_HINT}")
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            separator = "&" if "?" in base else "?"
            yield f"{base}{separator}options={quote(f'-csearch_path={schema}')}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """The test runs once on a SQLite file and once on PostgreSQL (a fresh schema, see `pg_url`)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    stores = Opener(tmp_path / "state" / "state.db", url)
    try:
        yield stores
    finally:
        stores.close()


@pytest.fixture
def store(opener: Opener) -> SqlStore:
    """A store on each backend (see `opener`)."""
    return opener()


def pytest_configure(config: pytest.Config) -> None:
    """Under CI=true the real parts must be there: a missing sshd, PostgreSQL or chromium fails the run, never skips."""
    if os.environ.get("CI") != "true":
        return
    import shutil

    from vastevents.sim import sshhost

    missing = []
    if sshhost.find_sshd() is None or shutil.which("ssh") is None:
        missing.append("OpenSSH sshd and ssh (apt-get install -y openssh-server openssh-client rsync)")
    try:
        import psycopg

        psycopg.connect(
            os.environ.get("VASTEVENTS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"), connect_timeout=5
        ).close()
    except Exception as exc:
        missing.append(f"a PostgreSQL server ({PG_HINT}): {exc}")
    if not os.access("/usr/bin/chromium", os.X_OK):
        missing.append("Debian's chromium for the dashboard's browser tests (apt-get install -y chromium)")
    if missing:
        pytest.exit("CI=true but these are missing: " + "; ".join(missing), returncode=1)
