"""Prometheus metrics: fed by real polls of the simulator, served over HTTP, parsed as Prometheus text."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from vastevents.cli import app
from vastevents.metrics import Metrics
from vastevents.runtime import Runtime
from vastevents.sim import Simulator
from vastevents.store import SqliteStore
from vastevents.vast import VastClient

ROOT = Path(__file__).resolve().parents[1]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_polls_and_events_are_counted_and_served(tmp_path: Path, sim: Simulator, api_key: str) -> None:
    for n in range(30):
        sim.create_instance(label=f"vastevents:m{n}")
    sim.advance(600)
    metrics = Metrics()
    async with VastClient(api_key, sim.url) as client, Runtime(
        client=client, store=SqliteStore(tmp_path / "s.db"), clock=sim.clock, handlers=[], metrics=metrics
    ) as runtime:  # fmt: skip
        await runtime.poll_once()
        sim.apply("server_error", status=500, duration="1h")
        await runtime.poll_once()
    server, thread = metrics.serve("127.0.0.1", 0)
    try:
        text = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).text
    finally:
        server.shutdown()
        thread.join(timeout=5)
    found = samples(text)
    assert found[("vastevents_polls_total", ())] == 1
    assert found[("vastevents_list_pages_total", ())] == 2  # 30 instances: two pages of 25
    assert found[("vastevents_instances", (("state", "running"),))] == 30
    assert found[("vastevents_events_total", (("name", "appeared"),))] == 30
    assert found[("vastevents_api_errors_total", (("kind", "ApiError"),))] == 1
    assert found[("vastevents_poll_duration_seconds_count", ())] == 1
    assert found[("vastevents_spend_rate_usd_per_hour", ())] > 0
    assert found[("vastevents_leader", ())] == 1
    for instance_id in [row["id"] for row in sim.state()["instances"]]:
        sim.vanish(instance_id)
    assert sim.instance_count() == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_watch_serves_metrics_while_it_runs(tmp_path: Path, sim: Simulator, api_key: str) -> None:
    port = free_port()
    (tmp_path / "c.toml").write_text(f'[store]\npath = "{tmp_path / "s.db"}"\n')
    env = {**os.environ, "VAST_URL": sim.url, "VAST_API_KEY": api_key, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    sim.create_instance(label="vastevents:a")
    process = subprocess.Popen(
        [sys.executable, "-m", "vastevents", "watch", "--interval", "0.2", "--metrics-listen", f"127.0.0.1:{port}",
         "--config", str(tmp_path / "c.toml")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline, found = time.monotonic() + 120, {}  # a bound against a hang, not a speed
        while found.get(("vastevents_polls_total", ()), 0) < 1:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no poll counted"
            try:
                found = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text)
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert found[("vastevents_events_total", (("name", "appeared"),))] == 1
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 130
        process.communicate()


def test_watch_sim_serves_metrics_too(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "vastevents", "watch", "--sim", "--metrics-listen", "127.0.0.1:0"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        url = None
        while url is None:
            line = process.stdout.readline()
            assert line, process.communicate()
            url = re.search(r"metrics at (http://\S+/metrics)", line)
        deadline, found = time.monotonic() + 120, {}
        while found.get(("vastevents_polls_total", ()), 0) < 1:
            assert time.monotonic() < deadline, "no poll counted"
            found = samples(httpx.get(url[1], timeout=5).text)
            time.sleep(0.1)
        assert found[("vastevents_events_total", (("name", "appeared"),))] >= 1
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) in (0, 130)
        process.communicate()


@pytest.mark.parametrize("sim", [["--sim"], []], ids=["sim", "account"])
def test_a_metrics_address_that_is_not_host_port_is_a_usage_error(sim: list[str]) -> None:
    result = CliRunner().invoke(app, ["watch", *sim, "--metrics-listen", "garbage"], env={"VAST_API_KEY": "k"})
    assert result.exit_code == 2
    assert result.stderr == "error: --metrics-listen 'garbage' is not HOST:PORT (e.g. 127.0.0.1:9108)\n"
