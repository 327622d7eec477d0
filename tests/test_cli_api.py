"""`offers`, `status` and `check` end to end against a real HTTP server on loopback serving canned Vast JSON."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from vastevents.cli import app
from vastevents.config import NO_API_KEY
from vastevents.sim import Simulator

KEY = "vk-cli-test-9f8e7d6c5b4a-secret"

OFFERS = [
    {"id": 301, "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564, "dph_total": 0.52, "reliability2": 0.99},
    {"id": 302, "gpu_name": "RTX 3090", "num_gpus": 1, "gpu_ram": 24576, "dph_total": 0.21, "geolocation": "CA, US"},
    {"id": 303, "gpu_name": "A100 SXM4", "num_gpus": 1, "gpu_ram": 40960, "dph_total": 1.1, "cpu_ram": 128000},
]
INSTANCES = [
    {
        "id": 9002,
        "actual_status": "loading",
        "intended_status": "running",
        "label": "vastevents:job-2",
        "gpu_name": "RTX 3090",
        "num_gpus": 1,
        "dph_total": 0.21,
        "start_date": 1.0,
        "extra_env": [],
    },
    {
        "id": 9001,
        "actual_status": "running",
        "intended_status": "running",
        "label": "vastevents:job-1",
        "gpu_name": "RTX 4090",
        "num_gpus": 1,
        "dph_total": 0.52,
        "ssh_host": "127.0.0.1",
        "ssh_port": 41022,
        "start_date": 1.0,
        "extra_env": [],
    },
]


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None
    body: Any


@dataclass
class CannedVast:
    """Canned answers by (method, path); every request is recorded."""

    url: str = ""
    routes: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    retry_after: str | None = None


def _handler(canned: CannedVast) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            path = self.path.split("?", 1)[0]
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            canned.seen.append(
                Seen(self.command, path, self.headers.get("authorization"), json.loads(raw) if raw else None)
            )
            status, body = canned.routes.get((self.command, path), (404, {"error": "not_found", "msg": path}))
            payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html" if isinstance(body, str) else "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if canned.retry_after is not None:
                self.send_header("Retry-After", canned.retry_after)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def canned() -> Iterator[CannedVast]:
    state = CannedVast()
    state.routes = {
        ("GET", "/api/v0/users/current/"): (200, {"id": 7, "email": "dev@example.com", "credit": 12.5}),
        ("POST", "/api/v0/bundles/"): (200, {"offers": OFFERS}),
        ("GET", "/api/v1/instances/"): (200, {"success": True, "instances": INSTANCES, "next_token": None}),
        ("GET", "/api/v0/ssh/"): (200, [{"id": 1, "public_key": "ssh-ed25519 AAAA registered-elsewhere"}]),
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, canned: CannedVast) -> Path:
    """An isolated user: empty HOME and cwd, the key in the environment, VAST_URL at the canned server."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VASTEVENTS_CONFIG", raising=False)
    monkeypatch.setenv("VAST_URL", canned.url)
    monkeypatch.setenv("VAST_API_KEY", KEY)
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def run_subprocess(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vastevents", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=home,
        env=os.environ.copy(),
        check=False,
    )


# --- offers ----------------------------------------------------------------------------------------------------


def test_offers_json_from_a_real_process_and_server(home: Path, canned: CannedVast) -> None:
    result = run_subprocess("offers", "gpu_ram>=24 num_gpus=1", "--json", home=home)
    assert result.returncode == 0, result.stderr
    offers = json.loads(result.stdout)
    assert [offer["id"] for offer in offers] == [302, 301, 303]
    assert offers[0]["gpu_name"] == "RTX 3090" and offers[0]["geolocation"] == "CA, US"
    (search,) = canned.seen
    assert (search.method, search.path, search.authorization) == ("POST", "/api/v0/bundles/", f"Bearer {KEY}")
    assert search.body["gpu_ram"] == {"gte": 24000.0}
    assert search.body["num_gpus"] == {"eq": 1}
    assert search.body["verified"] == {"eq": True} and search.body["type"] == "on-demand"


def test_debug_logs_requests_without_the_key(home: Path, canned: CannedVast) -> None:
    result = run_subprocess("--debug", "offers", "gpu_ram>=24 num_gpus=1", home=home)
    assert result.returncode == 0, result.stderr
    assert "POST /api/v0/bundles/ -> 200" in result.stderr
    assert "vastevents.vast" in result.stderr
    assert "302" in result.stdout
    assert KEY not in result.stderr and KEY not in result.stdout
    assert canned.seen[0].authorization == f"Bearer {KEY}"


def test_debug_against_the_simulator_logs_requests_without_the_key(
    sim: Simulator, api_key: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAST_URL", sim.url)
    monkeypatch.setenv("VAST_API_KEY", api_key)
    instance_id = sim.create_instance(label="vastevents:debug")
    status = run_subprocess("--debug", "status", "--json", home=home)
    offers = run_subprocess("--debug", "offers", "num_gpus=1", "--limit", "2", home=home)
    sim.vanish(instance_id)
    assert status.returncode == 0 and offers.returncode == 0, status.stderr + offers.stderr
    assert [row["id"] for row in json.loads(status.stdout)] == [instance_id]
    assert "GET /api/v1/instances/?" in status.stderr and "-> 200" in status.stderr
    assert "POST /api/v0/bundles/ -> 200" in offers.stderr
    assert f"HTTP Request: GET {sim.url}/api/v1/instances/" in status.stderr, "httpx's own request line too"
    for result in (status, offers):
        assert api_key not in result.stdout + result.stderr
    assert sim.instance_count() == 0


def test_offers_table_is_sorted_by_price(home: Path, canned: CannedVast) -> None:
    result = run_cli("offers", "gpu_ram>=24")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "3 offers" in out
    assert out.index("302") < out.index("301") < out.index("303")
    assert "RTX 3090" in out and "0.210" in out
    assert " 24 " in out and "24.6" not in out and " 40 " in out  # 24576 MB is the 24 GB card users know (MB / 1024)


def test_piped_tables_never_cut_ids_or_prices(
    sim: Simulator, api_key: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAST_URL", sim.url)
    monkeypatch.setenv("VAST_API_KEY", api_key)
    monkeypatch.setenv("COLUMNS", "80")
    instance_id = sim.create_instance(label="vastevents:a-rather-long-label-for-a-narrow-terminal")
    offers = run_subprocess("offers", "num_gpus=1", "--limit", "3", home=home)
    listed = run_subprocess("offers", "num_gpus=1", "--limit", "3", "--json", home=home)
    status = run_subprocess("status", home=home)
    sim.vanish(instance_id)
    assert offers.returncode == 0 and listed.returncode == 0 and status.returncode == 0
    for offer in json.loads(listed.stdout):
        assert str(offer["id"]) in offers.stdout and f"{offer['dph_total']:.3f}" in offers.stdout
    assert str(instance_id) in status.stdout and "a-rather-long-label-for-a-narrow-terminal" in status.stdout
    assert sim.instance_count() == 0


def test_offers_limit_is_sent_and_applied(home: Path, canned: CannedVast) -> None:
    result = run_cli("offers", "num_gpus=1", "--limit", "1", "--json")
    assert result.exit_code == 0, result.output
    assert [offer["id"] for offer in json.loads(result.stdout)] == [302]
    assert canned.seen[0].body["limit"] == 1


def test_offers_keeps_the_server_order_when_the_query_sets_one(home: Path, canned: CannedVast) -> None:
    result = run_cli("offers", "num_gpus=1 -o 'gpu_ram-'", "--json")
    assert result.exit_code == 0, result.output
    assert [offer["id"] for offer in json.loads(result.stdout)] == [301, 302, 303]
    assert canned.seen[0].body["order"] == [["gpu_ram", "desc"]]


def test_bad_query_is_one_clear_line_and_nothing_is_sent(home: Path, canned: CannedVast) -> None:
    result = run_cli("offers", "gpu_rams>=24")
    assert result.exit_code == 2  # a usage error
    assert result.stderr.startswith("error: unknown field 'gpu_rams'; valid fields:")
    assert result.stderr.count("\n") == 1
    assert canned.seen == []


def test_non_json_answer_is_one_clear_line(home: Path, canned: CannedVast) -> None:
    canned.routes[("POST", "/api/v0/bundles/")] = (200, "<html><body>Log in</body></html>")
    result = run_cli("offers", "num_gpus=1")
    assert result.exit_code == 1
    assert "an HTML page instead of JSON" in result.stderr
    assert "Traceback" not in result.output


# --- status ----------------------------------------------------------------------------------------------------


def test_status_table_lists_every_instance(home: Path, canned: CannedVast) -> None:
    result = run_cli("status")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "2 instances" in out
    assert out.index("9001") < out.index("9002")
    assert "vastevents:job-1" in out and "ssh -p 41022 root@127.0.0.1" in out
    assert "loading (wants running)" in out
    (listing,) = canned.seen
    assert (listing.method, listing.path) == ("GET", "/api/v1/instances/")


def test_status_json(home: Path, canned: CannedVast) -> None:
    result = run_cli("status", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(row["id"], row["actual_status"]) for row in rows] == [(9001, "running"), (9002, "loading")]


def test_rejected_key_is_one_line_without_the_key_or_a_traceback(home: Path, canned: CannedVast) -> None:
    canned.routes[("GET", "/api/v1/instances/")] = (401, {"success": False, "error": "auth_error", "msg": "bad key"})
    result = run_cli("status")
    assert result.exit_code == 1
    assert result.stderr == (
        "error: The Vast API rejected the API key (HTTP 401: bad key). Set VAST_API_KEY or run `vastai set api-key`.\n"
    )
    assert KEY not in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[vast]\nurll = 'x'\n", ":2: vast.urll: unknown key"),
        ("[vast]\nurl = 'http://x'\n\n[watch]\ninterval = 'fast'\n", ":5: watch.interval: expected a duration"),
        ("[vast]\nurl = = 'http://x'\n", ": not valid TOML: Invalid value (at line 2, column 7)"),
    ],
    ids=["unknown-key", "bad-value", "bad-toml"],
)
def test_bad_config_names_the_file_key_and_line(home: Path, canned: CannedVast, text: str, expected: str) -> None:
    bad = home / "bad.toml"
    bad.write_text(text)
    result = run_cli("status", "--config", str(bad))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {bad}{expected}"), result.stderr
    assert result.stderr.count("\n") == 1
    assert canned.seen == []


def test_a_failing_api_is_given_up_on_after_few_attempts(home: Path, canned: CannedVast) -> None:
    """Someone is waiting at the terminal: three tries, not the watcher's five (Retry-After 0 keeps this instant)."""
    unavailable = (503, {"success": False, "error": "server_error", "msg": "Service temporarily unavailable"})
    canned.routes[("GET", "/api/v1/instances/")] = unavailable
    canned.retry_after = "0"
    result = run_cli("status")
    assert result.exit_code == 1
    assert result.stderr == (
        "error: The Vast API failed GET /api/v1/instances/ with HTTP 503: Service temporarily unavailable; "
        "try again later\n"
    )
    assert len(canned.seen) == 3


# --- check -----------------------------------------------------------------------------------------------------


def test_check_all_good(home: Path, canned: CannedVast) -> None:
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_ed25519.pub").write_text("ssh-ed25519 AAAA test\n")
    result = run_cli("check")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line[0] for line in lines] == ["✓"] * 6
    assert "built-in defaults" in lines[0]
    assert "handlers: none configured" in lines[1]
    assert "state.db writable" in lines[2]
    assert "$VAST_API_KEY" in lines[3]
    assert canned.url in lines[4] and "dev@example.com" in lines[4]
    assert "id_ed25519.pub is registered with the account" in lines[5]  # the comment does not matter
    assert [seen.path for seen in canned.seen] == ["/api/v0/users/current/", "/api/v0/ssh/"]


def test_check_reports_each_problem_with_what_to_do(home: Path, canned: CannedVast) -> None:
    canned.routes[("GET", "/api/v0/users/current/")] = (401, {"error": "auth_error"})
    result = run_cli("check")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert [line[0] for line in lines] == ["✓", "✓", "✓", "✓", "✗", "✗"]
    assert "rejected the API key" in lines[4] and "VAST_API_KEY" in lines[4]
    assert "ssh-keygen -t ed25519" in lines[5]
    assert KEY not in result.output


def test_check_without_a_key_finds_the_key_file_or_says_how_to_set_one(
    home: Path, canned: CannedVast, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VAST_API_KEY")
    result = run_cli("check")
    assert result.exit_code == 2  # no key is a setup (usage) error, as in every command
    assert f"✗ {NO_API_KEY}" in result.stdout
    assert canned.seen == []
    key_file = home / ".config" / "vastai" / "vast_api_key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text(KEY + "\n")
    result = run_cli("check")
    assert f"✓ API key found in {key_file}" in result.stdout
    assert canned.seen[0].authorization == f"Bearer {KEY}"
    key_file.write_text("\n")  # an empty first key file: the key comes from the legacy one, and check says so
    legacy = home / ".vast_api_key"
    legacy.write_text(KEY)
    result = run_cli("check")
    assert f"✓ API key found in {legacy}" in result.stdout


def test_offers_status_and_check_against_the_simulator(
    sim: Simulator, api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VASTEVENTS_CONFIG", raising=False)
    monkeypatch.setenv("VAST_URL", sim.url)
    monkeypatch.setenv("VAST_API_KEY", api_key)
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_rsa.pub").write_text("ssh-rsa AAAA test\n")
    instance_id = sim.create_instance(label="vastevents:cli")
    registered = httpx.post(f"{sim.url}/api/v0/ssh/", json={"ssh_key": "ssh-rsa AAAA other"}, headers=auth(api_key))
    assert registered.status_code == 200

    result = run_cli("offers", "num_gpus=1", "--limit", "3", "--json")
    assert result.exit_code == 0, result.output
    prices = [offer["dph_total"] for offer in json.loads(result.stdout)]
    assert 0 < len(prices) <= 3 and prices == sorted(prices)

    result = run_cli("status", "--json")
    assert result.exit_code == 0, result.output
    assert [(row["id"], row["label"]) for row in json.loads(result.stdout)] == [(instance_id, "vastevents:cli")]

    result = run_cli("check")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("✓") == 6 and sim.url in result.stdout
    assert api_key not in result.output

    sim.vanish(instance_id)
    assert sim.instance_count() == 0


@pytest.mark.parametrize(
    ("command", "explains", "options"),
    [
        ("offers", "Search rentable offers, cheapest first", ["--limit", "--json", "--config"]),
        ("status", "List every instance on the account", ["--json", "--config"]),
        ("check", "Check the setup", ["--config"]),
        ("sim", "Serve the Vast API on loopback",
         ["--host", "--port", "--api-key", "--speed", "--scenario", "--state", "--ssh", "--no-ssh", "--status"]),
    ],
)  # fmt: skip
def test_every_command_explains_itself(command: str, explains: str, options: list[str]) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert explains in result.stdout
    assert all(option in result.stdout for option in options), result.stdout


# --- what a person sees at 80 columns ---------------------------------------------------------------------------

TERMINAL_80 = {"COLUMNS": "80", "LINES": "40", "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}
"""A terminal 80 columns wide, as rich sees one (not the 200 columns piped output gets)."""


def screen(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(app, list(args), env=TERMINAL_80)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    return result.exit_code, [line.rstrip() for line in plain.splitlines()]


def test_offers_fit_80_columns_without_cutting_gpus_or_prices(home: Path, canned: CannedVast) -> None:
    code, lines = screen("offers", "num_gpus=1")
    assert code == 0, lines
    assert lines[0] == "3 offers"
    assert all(len(line) <= 80 for line in lines)
    for offer in OFFERS:
        (row,) = [line for line in lines if line.lstrip().startswith(str(offer["id"]))]
        assert f"1× {offer['gpu_name']}" in row and f"{offer['dph_total']:.3f}" in row  # one line each, whole
    assert "…" not in "".join(lines)


def test_no_offers_says_so(home: Path, canned: CannedVast) -> None:
    canned.routes[("POST", "/api/v0/bundles/")] = (200, {"offers": []})
    assert screen("offers", "num_gpus=8")[1] == ["No offers match the query."]


def test_status_counts_in_words_and_says_when_there_are_none(home: Path, canned: CannedVast) -> None:
    code, lines = screen("status")
    assert code == 0 and lines[0] == "2 instances" and all(len(line) <= 80 for line in lines)
    assert any("ssh -p 41022 root@127.0.0.1" in line for line in lines)
    one = {"success": True, "instances": INSTANCES[:1], "next_token": None}
    canned.routes[("GET", "/api/v1/instances/")] = (200, one)
    assert screen("status")[1][0] == "1 instance"
    canned.routes[("GET", "/api/v1/instances/")] = (200, {"success": True, "instances": [], "next_token": None})
    assert screen("status") == (0, ["No instances on the account."])
