"""The dashboard as a user meets it: a real `vastevents dashboard` process over a store a real `watch` fills
from the simulator, read by Debian's chromium (Playwright) and, for the team, over PostgreSQL by a second
process. Screenshots are kept under the test's temporary directory, or under $VASTEVENTS_TEST_ARTIFACTS when set (the
test run removes its temporary directories when it ends); the path is printed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from vastevents.models import State
from vastevents.sim import Simulator
from vastevents.store import StoreError, open_store

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
BROWSER_HINT = "needs Debian's chromium and Playwright: apt-get install -y chromium && pip install -e '.[dev]'"
TOKEN = "team-dashboard-token-0123456789"
EVIL = "<script>alert('owned')</script>"
ROOT = Path(__file__).resolve().parents[1]


def wait_until(condition: Callable[[], object], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        time.sleep(0.05)


class Process:
    """A vastevents command in its own process, stopped (SIGTERM, then SIGKILL) when the test ends."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vastevents", *args], env=env, cwd=cwd, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip

    def first_line(self, seconds: float = 30) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + seconds
        line = self.process.stdout.readline()
        assert line and time.monotonic() < deadline, f"no output: {self.stop()}"
        return line.strip()

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _, err = self.process.communicate()
        return self.process.returncode, err


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    try:
        yield started
    finally:
        for process in started:
            process.stop()


def dashboard(processes: list[Process], config: Path, env: dict[str, str]) -> tuple[Process, str]:
    process = Process(["dashboard", "--listen", "127.0.0.1:0", "--config", str(config)], env, config.parent)
    processes.append(process)
    line = process.first_line()
    found = re.match(r"dashboard at (http://127\.0\.0\.1:\d+/) · store ", line)
    assert found, line
    return process, found.group(1)


def journaled(store: Path, name: str, instance_id: int, url: str | None = None) -> bool:
    """True once the store a watcher writes holds that event (False while it is not even created)."""
    try:
        with open_store(store, url, read_only=True) as reader:
            return any(e.instance_id == instance_id for e in reader.journal.page(name=name, limit=500))
    except StoreError:  # its tables are being created
        return False


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(BROWSER_HINT)
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("CI") == "true":
            raise AssertionError(f"no {CHROMIUM} in CI: {BROWSER_HINT}")
        pytest.skip(BROWSER_HINT)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def sim_counts(sim: Simulator) -> Counter[str]:
    return Counter(State.from_raw(row.get("actual_status")).value for row in sim.state()["instances"])


@pytest.mark.browser
def test_a_browser_sees_the_account_live_the_cost_chart_escaped_labels_and_a_locked_dashboard(
    tmp_path: Path, sim: Simulator, api_key: str, browser: Any, processes: list[Process]
) -> None:
    store = tmp_path / "state" / "state.db"
    config = tmp_path / "vastevents.toml"
    config.write_text(f'[store]\npath = "{store}"\n[handlers.billing]\nuse = "billing"\nbudget_usd = 20.0\n')
    env = {**os.environ, "VAST_URL": sim.url, "VAST_API_KEY": api_key, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("VASTEVENTS_STORE_URL", None)
    job = sim.create_instance(label="vastevents:job-1")
    evil = sim.create_instance(label=EVIL, env={"HF_TOKEN": "hf-secret-never-shown"})
    sim.advance(600)  # both running
    loading = sim.create_instance(label="vastevents:job-2", pull=3600)
    processes.append(Process(["watch", "--interval", "0.2", "--config", str(config)], env, tmp_path))
    for instance_id in (job, evil, loading):
        wait_until(lambda i=instance_id: journaled(store, "appeared", i), f"the watcher journals {instance_id}")
    no_key = {k: v for k, v in env.items() if k != "VAST_API_KEY"}
    _, url = dashboard(processes, config, no_key)  # a dashboard needs no API key
    shots = Path(os.environ.get("VASTEVENTS_TEST_ARTIFACTS") or tmp_path) / "dashboard-screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    print(f"\ndashboard screenshots: {shots}")

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(url)
    expected = sim_counts(sim)
    assert page.locator("#instance-count").inner_text() == "3"
    shown = {el.get_attribute("data-state"): int(el.inner_text()) for el in page.locator("[data-state]").all()}
    assert shown == dict(expected) and expected["running"] == 2  # the third is still being scheduled
    assert page.get_by_text(EVIL, exact=True).first.is_visible()  # the label is text, nothing ran
    assert page.locator("#no-watcher").count() == 0 and page.locator("li.alive").count() == 1  # the watch heartbeat
    page.wait_for_function("document.getElementById('live-status').textContent.startsWith('live')", timeout=15000)
    page.screenshot(path=str(shots / "overview.png"), full_page=True)

    late = sim.create_instance(label="vastevents:late")  # journaled by the watcher, pushed over /stream
    page.locator("#instance-count", has_text="4").wait_for(timeout=30000)
    assert page.locator(f'a[href="/events?instance={late}"]').first.is_visible()
    page.screenshot(path=str(shots / "overview-live.png"), full_page=True)

    page.goto(url + "events?name=appeared")
    assert page.locator("tr.event-appeared").count() == 4
    page.screenshot(path=str(shots / "events.png"), full_page=True)

    wait_until(lambda: page.goto(url + "cost?by=instance") and page.locator("rect.bar").count() >= 3, "the ledger")
    values = [
        float(v) for v in page.locator("#cost-chart rect.bar").evaluate_all("bars => bars.map(b => b.dataset.value)")
    ]
    assert len(values) >= 3 and all(v > 0 for v in values[:2])
    heights = page.locator("#cost-chart rect.bar").evaluate_all("bars => bars.map(b => b.getBBox().height)")
    assert max(heights) > 50  # drawn to scale: the largest bar fills most of the plot
    page.screenshot(path=str(shots / "cost.png"), full_page=True)
    page.goto(url + "cost")
    days = page.locator("#cost-chart rect.bar")  # a bar per UTC day since the first spend (today; two past midnight)
    today = datetime.now(UTC).date().isoformat()
    assert days.last.get_attribute("data-label") == today and float(days.last.get_attribute("data-value") or 0) > 0
    assert "no Vast API key on this machine" in page.content()
    assert dialogs == [] and "hf-secret-never-shown" not in page.content()

    locked_config = tmp_path / "locked.toml"
    locked_config.write_text(config.read_text() + '[dashboard]\ntoken_env = "DASH_TOKEN"\n')
    _, locked = dashboard(processes, locked_config, {**no_key, "DASH_TOKEN": TOKEN})
    refused = page.goto(locked + "jobs")
    assert refused is not None and refused.status == 401
    assert page.locator("input[name=token]").is_visible() and "Job" not in page.title()
    page.screenshot(path=str(shots / "login.png"))
    page.fill("input[name=token]", "not-the-token-at-all")
    page.click("button[type=submit]")
    assert page.get_by_text("not the one this dashboard was started with").is_visible()
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(locked + "jobs")
    assert page.title().startswith("Jobs")
    page.close()
    for name in ("overview", "overview-live", "events", "cost", "login"):
        assert (shots / f"{name}.png").stat().st_size > 10_000


def test_the_dashboard_process_stops_on_sigterm_with_a_stream_open(
    tmp_path: Path, sim: Simulator, api_key: str, processes: list[Process]
) -> None:
    store = tmp_path / "state.db"
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\npath = "{store}"\n')
    env = {**os.environ, "VAST_URL": sim.url, "VAST_API_KEY": api_key, "PYTHONPATH": str(ROOT)}
    env.pop("VASTEVENTS_STORE_URL", None)
    first = sim.create_instance(label="vastevents:one")
    watch = Process(["watch", "--interval", "0.2", "--config", str(config)], env, tmp_path)
    processes.append(watch)
    wait_until(lambda: journaled(store, "appeared", first), "the first poll")
    process, url = dashboard(processes, config, env)
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", url + "stream", headers={"Last-Event-ID": "0"}) as stream,
    ):
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        data = next(line for line in lines if line.startswith("data:"))
        assert json.loads(data.removeprefix("data:"))["id"] == 1  # resumed from Last-Event-ID: 0
        started = time.monotonic()
        code, err = process.stop()
    assert code == 130, err
    assert time.monotonic() - started < 10


def test_a_teammates_dashboard_on_the_team_store_streams_the_leaders_events_live(
    tmp_path: Path, sim: Simulator, api_key: str, pg_url: str, processes: list[Process]
) -> None:
    """The "done when" of the dashboard: a second machine's `vastevents dashboard` against the team's PostgreSQL
    sees what the leader journals, pushed by NOTIFY as it happens."""
    config = tmp_path / "team.toml"
    config.write_text(f'[store]\nurl = "{pg_url}"\n[team]\nfailover = 3\n')
    env = {**os.environ, "VAST_URL": sim.url, "VAST_API_KEY": api_key, "PYTHONPATH": str(ROOT)}
    first = sim.create_instance(label="vastevents:first")
    sim.advance(600)
    processes.append(Process(["watch", "--interval", "0.2", "--config", str(config)], env, tmp_path))
    wait_until(lambda: journaled(tmp_path, "appeared", first, pg_url), "the leader's first poll")
    teammate = {k: v for k, v in env.items() if k not in ("VAST_API_KEY", "VAST_URL")}
    _, url = dashboard(processes, config, teammate)
    overview = httpx.get(url, timeout=30).text
    assert re.search(r'id="instance-count">1<', overview) and "vastevents:first" in overview
    with httpx.Client(timeout=30) as client, client.stream("GET", url + "stream") as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith(":") or True  # the connection is open (sse-starlette may send a comment)
        created = time.monotonic()
        second = sim.create_instance(label="vastevents:second")
        for line in lines:
            if line.startswith("data:"):
                event = json.loads(line.removeprefix("data:"))
                if event["name"] == "appeared" and event["instance_id"] == second:
                    break
        took = time.monotonic() - created
    assert event["instance"]["label"] == "vastevents:second"
    assert took < 15
    assert "vastevents:second" in httpx.get(url + "events?name=appeared", timeout=30).text
    for instance_id in (first, second):
        sim.vanish(instance_id)
