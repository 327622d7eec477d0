"""``vastevents mcp`` through the official MCP client, against a real ``watch`` on the simulator.

The watcher runs on the simulator's time (``simtime_watch.py``), which a ticker thread moves forward quickly, so
instances boot in a second or two while the jobs' commands run over real SSH on the wall clock. Every tool call
goes over stdio (``stdio_client`` + ``ClientSession``) to a ``vastevents mcp`` process of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from simtime_watch import write_moment
from sshkit import USER, keypair, needs_openssh, register
from test_team import wait_until
from typer.testing import CliRunner

from vastevents.cli import app
from vastevents.clock import ManualClock
from vastevents.costs import tolerance
from vastevents.sim import Simulator
from vastevents.store import Jobs, SqliteStore
from vastevents.team import leading_watcher

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = Path(__file__).with_name("simtime_watch.py")
SKILL = ROOT / "examples" / "agent" / "SKILL.md"
INTERVAL = 5.0
"""The watcher's poll interval, in simulated seconds."""
TICK = 2.0
"""Simulated seconds the ticker adds every 50 ms of wall time (40 times faster than the wall clock)."""
SECRET = "hunter2-not-for-agents-7f3a"
TOOLS = {"offers", "estimate", "submit", "job", "wait", "logs", "cancel", "jobs", "events", "cost", "instances",
         "destroy"}  # fmt: skip
FINAL = ("finished", "failed", "cancelled")

JOBS = """
[handlers.jobs]
use = "jobs"
ssh_retry = "5s"
poll_first = "10s"
poll_every = "10s"
[handlers.billing]
use = "billing"
"""


def config_text(tmp_path: Path, handlers: str = "", agents: str = "") -> str:
    return (f'[watch]\ninterval = {INTERVAL}\n[store]\npath = "{tmp_path / "state" / "state.db"}"\n'
            f"{handlers}\n[agents]\n{agents}\n")  # fmt: skip


@dataclass
class Agent:
    """One MCP client session; every result text it saw is kept for the secrets check."""

    session: ClientSession
    texts: list[str] = field(default_factory=list)
    called: list[str] = field(default_factory=list)

    async def call(self, tool: str, **arguments: Any) -> Any:
        """The tool's JSON result; the test fails if the tool answered with an error."""
        result = await self.session.call_tool(tool, arguments)
        text = result.content[0].text  # type: ignore[union-attr]
        self.texts.append(text)
        self.called.append(tool)
        assert not result.is_error, f"{tool} failed: {text}"
        return json.loads(text)

    async def refused(self, tool: str, **arguments: Any) -> str:
        """The one line of a refusal; the test fails if the tool did not refuse."""
        result = await self.session.call_tool(tool, arguments)
        text = result.content[0].text  # type: ignore[union-attr]
        self.texts.append(text)
        assert result.is_error, f"{tool} was not refused: {text}"
        assert "\n" not in text and "Traceback" not in text
        return text


@asynccontextmanager
async def agent(tmp_path: Path, config: Path, env: dict[str, str]) -> AsyncIterator[Agent]:
    """A `vastevents mcp --config CONFIG` process on stdio, its stderr in ``mcp.log`` (checked for secrets)."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "vastevents", "mcp", "--config", str(config)],
                                   env=env, cwd=str(tmp_path))  # fmt: skip
    with (tmp_path / "mcp.log").open("a") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield Agent(session)


def server_pids(config: Path) -> list[int]:
    """The `vastevents mcp` processes serving `config` (found in /proc: the client does not tell)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if b"mcp" in words and str(config).encode() in words:
            found.append(int(entry.name))
    return found


class Ticker:
    """Moves the simulator's clock, and the watcher's with it, TICK simulated seconds every 50 ms."""

    def __init__(self, sim: Simulator, moment: Path) -> None:
        self.sim, self.moment = sim, moment
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ticker", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.05):
            write_moment(self.moment, self.sim.advance(TICK))

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)


@dataclass
class World:
    sim: Simulator
    config: Path
    env: dict[str, str]
    watch: subprocess.Popen[bytes]
    store: SqliteStore

    def stop_watching(self) -> None:
        if self.watch.poll() is None:
            self.watch.send_signal(signal.SIGTERM)
            self.watch.wait(timeout=30)


@contextmanager
def world(tmp_path: Path, api_key: str, *, ssh: bool, handlers: str = JOBS) -> Iterator[World]:
    """The simulator (ssh hosts or not), a watcher on its time with `handlers`, beating; all stopped after."""
    (tmp_path / ".ssh").mkdir()
    key = keypair(tmp_path / ".ssh")
    config = tmp_path / "vastevents.toml"
    config.write_text(config_text(tmp_path, handlers))
    clock = ManualClock()
    with Simulator(api_key=api_key, clock=clock, ssh=ssh) as sim:
        if ssh:
            register(sim, key)
        moment = tmp_path / "simtime"
        write_moment(moment, clock.now())
        env = {key: value for key, value in os.environ.items() if not key.startswith("VASTEVENTS_")}
        env |= {"VAST_URL": sim.url, "VAST_API_KEY": api_key, "HOME": str(tmp_path), "SIMTIME_FILE": str(moment),
                "PYTHONPATH": str(ROOT)}  # fmt: skip
        with (tmp_path / "watch.log").open("w") as log:
            watch = subprocess.Popen([sys.executable, str(LAUNCHER), "watch", "--config", str(config)],
                                     env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
        ticker = Ticker(sim, moment)
        (tmp_path / "state").mkdir(exist_ok=True)
        store = SqliteStore(tmp_path / "state" / "state.db")
        here = World(sim, config, env, watch, store)
        try:
            wait_until(lambda: leading_watcher(store, INTERVAL) is not None, "the watcher's first heartbeat")
            yield here
        finally:
            here.stop_watching()
            ticker.stop()
            store.close()


def the_spec(tmp_path: Path) -> dict[str, Any]:
    """A job that copies an uploaded binary file and hashes it once the test releases it (the simulated hosts
    share this machine's filesystem), so the test sees it running whatever the machine's load; the secret in its
    env only travels."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "data.bin").write_bytes(os.urandom(64 * 1024) + bytes(range(256)))
    release = shlex.quote(str(tmp_path / "release"))
    return {
        "image": "pytorch/pytorch",
        "ssh_user": USER,
        "upload": str(work),
        "cmd": f"until [ -e {release} ]; do sleep 0.1; done; sha256sum data.bin > sum.txt; cp data.bin copy.bin;"
        " echo copied",
        "download": ["copy.bin", "sum.txt"],
        "max_duration": "1h",
        "env": {"HF_TOKEN": SECRET},
    }


def status(jobs: Jobs, job_id: int) -> str | None:
    job = jobs.get(job_id)
    return job.status if job is not None else None


async def until(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    """Bounded wait for `condition()` that lets the event loop run."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        await asyncio.sleep(0.05)


def skill_steps() -> list[str]:
    """The tools SKILL.md's numbered steps call, in order (each step names its tools as `name(...)`)."""
    steps = SKILL.read_text().split("## Steps", 1)[1].split("\n## ", 1)[0]
    calls = [re.findall(r"`(\w+)\(", step) for step in re.split(r"^\d+\. ", steps, flags=re.M)[1:]]
    return list(dict.fromkeys(name for step in calls for name in step))


def assert_nothing_secret(tmp_path: Path, texts: list[str], api_key: str) -> None:
    seen = "\n".join(texts) + (tmp_path / "mcp.log").read_text()
    assert api_key not in seen and SECRET not in seen


# --- without a watcher ------------------------------------------------------------------------------------------


async def test_the_tools_have_their_schemas_the_skill_names_only_them_and_without_a_watcher_they_say_so_at_once(
    tmp_path: Path, api_key: str
) -> None:
    config = tmp_path / "vastevents.toml"
    config.write_text(config_text(tmp_path))
    env = {**os.environ, "HOME": str(tmp_path), "VAST_API_KEY": api_key, "VAST_URL": "http://127.0.0.1:9"}
    async with agent(tmp_path, config, env) as it:
        listed = {tool.name: tool for tool in (await it.session.list_tools()).tools}
        assert set(listed) == TOOLS
        schema = {name: tool.input_schema for name, tool in listed.items()}
        assert schema["offers"]["required"] == ["query"] and schema["offers"]["properties"]["limit"]["default"] == 10
        assert schema["submit"]["required"] == ["spec", "quote_id"]
        spec = schema["estimate"]["$defs"]["JobSpec"]
        assert spec["required"] == ["cmd"] and {"image", "query", "upload", "download", "max_duration"} <= set(
            spec["properties"]
        )
        assert schema["wait"]["properties"]["timeout_s"]["default"] == 60
        assert schema["events"]["properties"]["names"]["type"] == "array" and schema["jobs"]["properties"] == {}
        templates = (await it.session.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["vastevents://jobs/{job_id}/log"]
        assert [str(r.uri) for r in (await it.session.list_resources()).resources] == ["vastevents://journal"]

        mentioned = set(re.findall(r"`(\w+)\(", SKILL.read_text()))
        assert mentioned <= TOOLS and set(skill_steps()) <= TOOLS

        for tool, arguments in [("estimate", {"spec": {"image": "x", "cmd": "true"}}), ("wait", {"job_id": 1}),
                                ("submit", {"spec": {"image": "x", "cmd": "true"}, "quote_id": "q-1"})]:  # fmt: skip
            started = time.monotonic()
            said = await it.refused(tool, **arguments)
            assert time.monotonic() - started < 1.0
            assert "start `vastevents watch`" in said, said
        assert await it.call("jobs") == []  # reading the store needs no watcher
        said = await it.refused("offers", query="gpu_ram>=24 nonsense_key=3")
        assert "nonsense_key" in said
        said = await it.refused("wait", job_id="seven")
        assert said.startswith("wait: job_id:") and "input schema" in said
    assert_nothing_secret(tmp_path, it.texts, api_key)


# --- with a watcher ---------------------------------------------------------------------------------------------


@needs_openssh
@pytest.mark.ssh
async def test_an_agent_runs_a_job_by_the_skills_steps_to_byte_exact_results_and_its_cost_with_nothing_left(
    tmp_path: Path, api_key: str
) -> None:
    spec = the_spec(tmp_path)
    with world(tmp_path, api_key, ssh=True) as here:
        async with agent(tmp_path, here.config, here.env) as it:
            quote = await it.call("estimate", spec=spec)
            offer = quote["offer"]
            assert quote["max_cost_usd"] == pytest.approx(offer["dph_total"] * 1.0)  # $/h times max_duration 1 h
            assert datetime.fromisoformat(quote["expires_at"]) > datetime.now(UTC)
            # (here the agent shows the user offer["gpu_name"], offer["dph_total"] and max_cost_usd, and asks)
            job_id = (await it.call("submit", spec=spec, quote_id=quote["quote_id"]))["job_id"]
            seen = [await it.call("wait", job_id=job_id, timeout_s=60)]
            while seen[-1]["status"] not in FINAL:
                assert len(seen) < 60, seen
                if seen[-1]["status"] == "running":
                    (tmp_path / "release").touch()  # the command may end now
                seen.append(await it.call("wait", job_id=job_id, timeout_s=60))
            done = seen[-1]
            assert done["status"] == "finished", (done, (tmp_path / "watch.log").read_text()[-3000:])
            steps = [(view["status"], view["phase"]) for view in seen]
            assert all(a != b for a, b in itertools.pairwise(steps)), steps  # each wait came back at a change
            results = Path(done["results_dir"])
            data = (tmp_path / "work" / "data.bin").read_bytes()
            assert (results / "copy.bin").read_bytes() == data
            assert (results / "sum.txt").read_text().split()[0] == hashlib.sha256(data).hexdigest()
            log = await it.call("logs", job_id=job_id, tail=5)
            assert log["text"].strip() == "copied"
            job = await it.call("job", job_id=job_id)
            assert job["status"] == "finished" and job["cost_usd"] > 0
            report = await it.call("cost")
            (row,) = [row for row in report["instances"] if row["job_id"] == str(job_id)]
            assert row["instance_id"] == job["instance_id"] and not row["ghost"] and not row["flagged"]
            assert abs(row["cost_usd"] - job["cost_usd"]) <= tolerance(job["cost_usd"])
            assert await it.call("instances") == []
            whole_log = (await it.session.read_resource(f"vastevents://jobs/{job_id}/log")).contents[0]
            assert whole_log.text == "copied\n"  # type: ignore[union-attr]
            journal = (await it.session.read_resource("vastevents://journal")).contents[0]
            assert "agent_call" in {event["name"] for event in json.loads(journal.text)}  # type: ignore[union-attr]
        assert list(dict.fromkeys(it.called)) == skill_steps()  # the skill's steps are what this test did
        assert here.sim.instance_count() == 0
        calls = [e.detail or "" for e in here.store.events() if e.name == "agent_call"]
        assert [detail.split()[0] for detail in calls] == it.called  # every call journaled, in order
        assert '"HF_TOKEN": "***"' in calls[0]
    assert_nothing_secret(tmp_path, it.texts + calls, api_key)


@needs_openssh
@pytest.mark.ssh
async def test_a_job_goes_on_to_its_end_when_the_server_is_killed_mid_wait(tmp_path: Path, api_key: str) -> None:
    spec = the_spec(tmp_path)
    with world(tmp_path, api_key, ssh=True) as here:
        jobs = here.store.repository(Jobs)

        def monitored() -> bool:  # the command runs and the watcher checks on it: it ends once released
            return any(row.state.get("phase") == "monitor" for row in here.store.effects.daemons())

        def waiting_now() -> bool:  # the server journaled the wait call, so it is waiting
            return [e.detail or "" for e in here.store.events() if e.name == "agent_call"][-1].startswith("wait")

        async with agent(tmp_path, here.config, here.env) as it:
            quote = await it.call("estimate", spec=spec)
            job_id = (await it.call("submit", spec=spec, quote_id=quote["quote_id"]))["job_id"]
            await until(monitored, "the job runs")
            waiting = asyncio.create_task(it.call("wait", job_id=job_id, timeout_s=300))
            await until(waiting_now, "the server waits")
            (pid,) = server_pids(here.config)
            assert status(jobs, job_id) == "running"  # the wait has nothing to return yet
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(MCPError):
                await waiting
        (tmp_path / "release").touch()
        await until(lambda: status(jobs, job_id) in FINAL, "the watcher ends the job")
        job = jobs.get(job_id)
        assert job is not None and job.status == "finished" and job.destroyed
        assert (Path(job.results_dir or "") / "copy.bin").read_bytes() == (tmp_path / "work" / "data.bin").read_bytes()
        assert here.sim.instance_count() == 0


async def test_without_a_fresh_matching_quote_or_above_a_limit_nothing_is_submitted_and_nothing_rented(
    tmp_path: Path, api_key: str
) -> None:
    spec = {"image": "pytorch/pytorch", "cmd": "true", "max_duration": "30m"}
    with world(tmp_path, api_key, ssh=False, handlers="") as here:  # a watcher that runs no jobs: nothing rents
        foreign = here.sim.create_instance(label="someone-else")
        leak = here.sim.create_instance(label="vastevents:left-over")

        def limited(name: str, agents: str) -> Path:
            path = tmp_path / f"{name}.toml"
            path.write_text(config_text(tmp_path, agents=agents))
            return path

        async with agent(tmp_path, here.config, here.env) as it:
            assert "call `estimate`" in await it.refused("submit", spec=spec, quote_id="q-made-up")
            other = await it.call("estimate", spec={**spec, "cmd": "false"})
            assert "different spec" in await it.refused("submit", spec=spec, quote_id=other["quote_id"])
            bound = (await it.call("estimate", spec=spec))["max_cost_usd"]
            said = await it.refused("destroy", instance_id=foreign)
            assert "refusing to destroy" in said and here.sim.instance(foreign) is not None
            assert await it.call("destroy", instance_id=leak) == {"instance_id": leak, "destroyed": True}
            owned = {row["id"]: row["owned"] for row in await it.call("instances")}
            assert owned == {foreign: False}
        async with agent(tmp_path, limited("short", 'quote_ttl = "1s"'), here.env) as it:
            stale = await it.call("estimate", spec=spec)
            expires = datetime.fromisoformat(stale["expires_at"])
            while datetime.now(UTC) <= expires:  # the quote's own expiry, on the server's (wall) clock
                await asyncio.sleep(0.05)
            assert "expired" in await it.refused("submit", spec=spec, quote_id=stale["quote_id"])
        async with agent(tmp_path, limited("budget", f"session_budget_usd = {1.5 * bound}"), here.env) as it:
            first, second = await it.call("estimate", spec=spec), await it.call("estimate", spec=spec)
            queued = (await it.call("submit", spec=spec, quote_id=first["quote_id"]))["job_id"]
            assert "used already" in await it.refused("submit", spec=spec, quote_id=first["quote_id"])  # a retry
            said = await it.refused("submit", spec=spec, quote_id=second["quote_id"])
            assert "session_budget_usd" in said  # the first job's bound is committed: no room for a second
            assert (await it.call("cancel", job_id=queued))["status"] == "pending"  # the watcher carries it out
        budget = '[handlers.billing]\nuse = "billing"\nper_job_usd = 0.0001\n'
        (tmp_path / "billing.toml").write_text(config_text(tmp_path, handlers=budget))
        async with agent(tmp_path, tmp_path / "billing.toml", here.env) as it:
            said = await it.refused("estimate", spec=spec)
            assert "left of [handlers.billing] per_job_usd $0.0001" in said, said
        async with agent(tmp_path, limited("capped", "max_dph = 0.001"), here.env) as it:
            assert "max_dph" in await it.refused("estimate", spec=spec)
            here.stop_watching()  # a watcher that stops leaves the roster at once
            started = time.monotonic()
            said = await it.refused("submit", spec=spec, quote_id="q-any")
            assert time.monotonic() - started < 1.0 and "start `vastevents watch`" in said
        (job,) = here.store.repository(Jobs).list()  # the one within the session's budget, asked to cancel
        assert job.id == queued and job.cancel_requested_at is not None
        assert here.sim.instance_count() == 1  # the foreign one: nothing was rented
        here.sim.vanish(foreign)
        calls = [e.detail or "" for e in here.store.events() if e.name == "agent_call"]
        assert f'destroy {{"instance_id": {foreign}}}' in calls


async def test_streamable_http_serves_the_same_tools_on_loopback_only(tmp_path: Path, api_key: str) -> None:
    config = tmp_path / "vastevents.toml"
    config.write_text(config_text(tmp_path))
    env = {**os.environ, "HOME": str(tmp_path), "VAST_API_KEY": api_key}
    result = CliRunner().invoke(app, ["mcp", "--listen", "0.0.0.0:8791", "--config", str(config)])
    assert result.exit_code == 2 and "loopback only" in result.stderr
    server = subprocess.Popen([sys.executable, "-m", "vastevents", "mcp", "--listen", "127.0.0.1:0", "--config",
                               str(config)], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert server.stderr is not None
        said = ""
        while (url := re.search(r"listening on (http://\S+)", said)) is None and server.poll() is None:
            said += server.stderr.readline()  # the line that says where it listens, once it does
        assert url is not None, said
        async with streamable_http_client(url.group(1)) as (read, write, *_), ClientSession(read, write) as session:
            await session.initialize()
            assert {tool.name for tool in (await session.list_tools()).tools} == TOOLS
            result = await session.call_tool("jobs", {})
            assert not result.is_error and json.loads(result.content[0].text) == []  # type: ignore[union-attr]
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=15) == 130
        server.communicate()
