"""Team mode on a real PostgreSQL server: one leader by advisory lock, failover, a cut leader stops acting."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NamedTuple

import psycopg
import pytest
from sshkit import USER, keypair, needs_openssh, register
from typer.testing import CliRunner

from vastevents import Context, Event, Handler, Instance, daemon, every, on
from vastevents.cli import app
from vastevents.clock import ManualClock
from vastevents.config import parse_config
from vastevents.errors import NotLeader
from vastevents.plugins import activate
from vastevents.runtime import Runtime
from vastevents.sim import Simulator
from vastevents.store import Jobs, PostgresStore
from vastevents.store.effects import PeriodicRun
from vastevents.store.team import TeamMembers as TeamMembersRepo
from vastevents.team import Leadership
from vastevents.testing import FakeCloud

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def team_config(pg_url: str) -> Iterator[str]:
    yield f'[store]\nurl = "{pg_url}"\n[team]\nfailover = 3\n'


def terminate(leadership: Leadership, pg_url: str) -> None:
    """Kill the leader's database session from outside, as a cut connection or a server restart would."""
    pid = leadership._conn.info.backend_pid
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


class Team(NamedTuple):
    """Two runtimes of one team on a PostgreSQL store, over one fake cloud (instance 1 running, owned)."""

    cloud: FakeCloud
    clock: ManualClock
    one: Runtime
    two: Runtime
    one_store: PostgresStore
    two_store: PostgresStore


@asynccontextmanager
async def team(
    pg_url: str,
    team_config: str,
    handlers: Callable[[], list[Any]] = list,
    *,
    cloud: FakeCloud | None = None,
    lister: Any = None,
) -> AsyncIterator[Team]:
    """`handlers()` gives each runtime its own handlers; `lister` lists for the first one instead of `cloud`."""
    if cloud is None:
        cloud = FakeCloud()
        cloud.add(1, "running", label="vastevents:job-1")
    clock, config = ManualClock(), parse_config(team_config)
    stores = PostgresStore(pg_url), PostgresStore(pg_url)
    try:
        one, two = (
            Runtime(
                config,
                client=cloud,
                store=store,
                clock=clock,
                handlers=handlers(),
                leadership=Leadership(pg_url, store, failover=3, member=member),
                **({"lister": lister} if lister is not None and member == "one" else {}),
            )
            for store, member in zip(stores, ("one", "two"), strict=True)
        )
        async with one, two:
            yield Team(cloud, clock, one, two, *stores)
    finally:
        for store in stores:
            store.close()


async def test_one_leader_polls_a_cut_leader_stops_acting_and_the_follower_takes_over(
    pg_url: str, team_config: str
) -> None:
    async with team(pg_url, team_config) as (cloud, clock, one, two, _, two_store):
        assert [e.name for e in await one.poll_once()] == ["appeared"]
        with pytest.raises(NotLeader, match="another watcher leads"):
            await two.poll_once()

        assert one.leadership is not None
        terminate(one.leadership, pg_url)
        cloud.set_status(1, "exited")
        clock.advance(15)
        assert await one.poll_once() == []  # the lease check fails: no poll
        with pytest.raises(NotLeader):
            await one.context.bound("reaper", ()).destroy(1)
        assert cloud.calls == []  # nothing was sent by the leader that lost its lock

        assert [e.name for e in await two.poll_once()] == ["running_to_exited"]
        assert [e.name for e in two_store.events()] == ["appeared", "running_to_exited"]  # nothing twice
        roles = {m.member: m.role for m in two_store.repository(TeamMembersRepo).members()}
        assert roles == {"one": "follower", "two": "leader"}


class Watch:
    """A `vastevents watch` process on the shared store."""

    def __init__(self, tmp_path: Path, name: str, env: dict[str, str]) -> None:
        self.jsonl = tmp_path / f"{name}.jsonl"
        self.out = tmp_path / f"{name}.out"
        with self.out.open("w") as out, (tmp_path / f"{name}.err").open("w") as err:  # files: no pipe to fill up
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vastevents", "watch", "--interval", "0.2", "--jsonl", str(self.jsonl),
                 "--config", str(tmp_path / "team.toml")],
                env=env, cwd=tmp_path, stdout=out, stderr=err,
            )  # fmt: skip

    def printed(self) -> str:
        return self.out.read_text()

    def names(self) -> list[str]:
        if not self.jsonl.exists():
            return []
        return [json.loads(line)["name"] for line in self.jsonl.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


HANG = 120.0
"""How long a wait may take before the test calls it a hang. A bound, not a speed: how fast the machine is never
decides a test (how fast a follower takes over is bench/failover.py's measure)."""


def wait_until(condition: object, what: str, seconds: float = HANG) -> None:
    """Wait for `condition()`, failing after `seconds`."""
    start = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - start < seconds, f"{what} within {seconds} s"
        time.sleep(0.05)


def test_two_watch_processes_one_leader_and_failover_after_kill_9(
    tmp_path: Path, sim: Simulator, api_key: str, pg_url: str, team_config: str
) -> None:
    (tmp_path / "team.toml").write_text(team_config)
    env = {**os.environ, "VAST_URL": sim.url, "VAST_API_KEY": api_key, "HOME": str(tmp_path),
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    first_id = sim.create_instance(label="vastevents:a")
    sim.advance(600)
    watchers = [Watch(tmp_path, "a", env), Watch(tmp_path, "b", env)]
    try:
        wait_until(lambda: any(w.names() for w in watchers), "a leader polls")
        leader = next(w for w in watchers if w.names())
        follower = next(w for w in watchers if w is not leader)
        assert follower.names() == []  # only one polls
        wait_until(lambda: "standing by: " in follower.printed(), "the follower says it stands by")
        assert f"{socket.gethostname()}:{leader.process.pid} leads" in follower.printed()
        wait_until(lambda: "this watcher leads" in leader.printed(), "the leader says it leads")

        leader.process.kill()  # SIGKILL: its session dies with it
        leader.process.wait(timeout=10)
        second_id = sim.create_instance(label="vastevents:b")
        wait_until(lambda: "appeared" in follower.names(), "the follower takes over")
        wait_until(lambda: "this watcher leads" in follower.printed(), "the new leader says so")

        result = CliRunner().invoke(app, ["team", "status", "--json", "--config", str(tmp_path / "team.toml")])
        assert result.exit_code == 0, result.output
        status = json.loads(result.output)
        assert status["leader"] is not None
    finally:
        for watcher in watchers:
            watcher.stop()
    shared = CliRunner().invoke(
        app, ["events", "--json", "--name", "appeared", "--config", str(tmp_path / "team.toml")]
    )
    assert shared.exit_code == 0, shared.output  # any teammate reads the shared journal
    appeared = [event["instance_id"] for event in json.loads(shared.stdout)]
    assert sorted(appeared) == sorted({first_id, second_id})  # each journaled once across the failover
    for instance_id in (first_id, second_id):
        sim.vanish(instance_id)
    assert sim.instance_count() == 0


@needs_openssh
@pytest.mark.ssh
def test_a_job_submitted_from_a_third_process_runs_once_across_a_leader_kill_and_is_followed(
    tmp_path: Path, api_key: str, pg_url: str, team_config: str
) -> None:
    """Two `watch` processes lead and follow on PostgreSQL; `run --submit` queues a job with an upload from a
    third process and `jobs --follow` (LISTEN/NOTIFY) reports it from before it runs to its end. The leader is
    SIGKILLed while the job runs: the follower takes over and finishes the same job on the same instance.

    Nothing here depends on how fast a process starts: the simulator's clock stands still (so the instance
    cannot boot) until `jobs --follow` has printed the job, and the command waits for a file the test creates
    only after `jobs --follow` has printed it running and the leader is dead."""
    (tmp_path / ".ssh").mkdir()
    key = keypair(tmp_path / ".ssh")
    jobs_handler = '[handlers.jobs]\nuse = "jobs"\nssh_retry = "1s"\npoll_first = "1s"\npoll_every = "1s"\n'
    (tmp_path / "team.toml").write_text(team_config + jobs_handler)
    work = tmp_path / "work"
    work.mkdir()
    (work / "data.txt").write_text("from a teammate\n")
    release = tmp_path / "release"  # the simulated hosts run on this machine: the command sees this file
    (tmp_path / "job.toml").write_text(
        f'image = "pytorch/pytorch"\nssh_user = "{USER}"\nupload = "work"\ndownload = ["copy.txt"]\n'
        f'cmd = "while [ ! -e {release} ]; do sleep 0.1; done; cp data.txt copy.txt"\n'
    )
    with Simulator(api_key=api_key, clock=ManualClock(), ssh=True) as sim:
        register(sim, key)
        env = {**os.environ, "VAST_URL": sim.url, "VAST_API_KEY": api_key, "HOME": str(tmp_path),
               "PYTHONPATH": str(ROOT)}  # fmt: skip
        cli = [sys.executable, "-m", "vastevents"]
        config = ["--config", str(tmp_path / "team.toml")]
        watchers = [Watch(tmp_path, "a", env), Watch(tmp_path, "b", env)]
        follower_process = None
        try:
            submitted = subprocess.run(
                [*cli, "run", str(tmp_path / "job.toml"), "--submit", "--yes", "--json", *config],
                env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert submitted.returncode == 0, submitted.stderr
            job_id = json.loads(submitted.stdout)["job_id"]
            follower_process = subprocess.Popen(
                [*cli, "jobs", "--follow", str(job_id), "--json", *config],
                env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            followed = Lines(follower_process.stdout)

            def statuses() -> list[str]:
                return [json.loads(line)["status"] for line in followed.lines]

            wait_until(statuses, "jobs --follow prints the job", seconds=60)
            with PostgresStore(pg_url) as store:
                jobs = store.repository(Jobs)

                def status() -> str:
                    sim.advance(15)  # the simulator's clock moves only here: loading finishes, the host boots
                    time.sleep(0.05)
                    job = jobs.get(job_id)
                    return job.status if job else "missing"

                wait_until(lambda: status() == "running", "the leader runs the submitted job", seconds=90)
                wait_until(lambda: "running" in statuses(), "jobs --follow prints it running", seconds=60)
                leader = next(w for w in watchers if w.names())
                leader.process.kill()
                leader.process.wait(timeout=10)
                release.touch()
                wait_until(lambda: status() == "finished", "the new leader finishes the job", seconds=120)
                job = jobs.get(job_id)
                assert job is not None and job.destroyed and job.exit_code == 0
                started = [e for e in store.events() if e.name == "job_started"]
                rented = {e.instance_id for e in store.events() if e.name == "appeared"}
            assert len(started) == 1 and rented == {job.instance_id}  # run once, on one instance
            assert job.results_dir is not None
            assert (Path(job.results_dir) / "copy.txt").read_text() == "from a teammate\n"
            assert follower_process.wait(timeout=30) == 0, follower_process.communicate()[1]
            followed.join()
            assert statuses()[0] in ("pending", "creating", "loading") and statuses()[-1] == "finished"
        finally:
            if follower_process is not None and follower_process.poll() is None:
                follower_process.kill()
                follower_process.communicate()
            for watcher in watchers:
                watcher.stop()
        assert sim.instance_count() == 0


class Lines:
    """Every line a process writes to `stream`, collected as it comes (read by a thread of its own)."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)

    def join(self) -> None:
        self._thread.join(timeout=30)


class HeldList:
    """An instance list that can be held in flight: the rows it returns are those of the moment it was asked."""

    def __init__(self, cloud: FakeCloud) -> None:
        self.cloud = cloud
        self.asked = asyncio.Event()
        self.release: asyncio.Event | None = None

    async def list_instances(self) -> list[Instance]:
        rows = await self.cloud.list_instances()
        if self.release is not None:
            self.asked.set()
            await self.release.wait()
        return rows


async def test_a_leader_that_loses_the_lock_while_listing_never_commits_its_list_over_the_new_leaders(
    pg_url: str, team_config: str
) -> None:
    cloud = FakeCloud()
    cloud.add(1, "running", label="vastevents:job-1")
    held = HeldList(cloud)
    async with team(pg_url, team_config, cloud=cloud, lister=held) as (_, clock, one, two, _, two_store):
        assert [e.name for e in await one.poll_once()] == ["appeared"]
        held.release = asyncio.Event()
        clock.advance(15)
        polling = asyncio.create_task(one.poll_once())  # its lease holds as it asks for the list
        await asyncio.wait_for(held.asked.wait(), 10)
        assert one.leadership is not None
        terminate(one.leadership, pg_url)  # the lock's session dies while the list is in flight
        cloud.remove(1)
        clock.advance(15)
        assert [e.name for e in await two.poll_once()] == ["vanished"]  # the follower took over
        held.release.set()
        assert await asyncio.wait_for(polling, 10) == []  # the old list, answered late, is not committed
        assert [e.name for e in two_store.events()] == ["appeared", "vanished"]  # nothing twice
        clock.advance(15)
        assert await two.poll_once() == []


async def test_a_handler_refused_because_its_leader_was_deposed_leaves_the_event_to_the_next_leader(
    pg_url: str, team_config: str
) -> None:
    working = asyncio.Event()
    go_on = asyncio.Event()

    @on("appeared")
    async def reap(event: Event, ctx: Context) -> None:
        working.set()
        await go_on.wait()
        await ctx.destroy(event.instance_id or 0)

    async with team(pg_url, team_config, lambda: [activate("reap", reap)]) as (cloud, clock, one, two, _, two_store):
        polling = asyncio.create_task(one.poll_once())
        await asyncio.wait_for(working.wait(), 10)
        assert one.leadership is not None
        terminate(one.leadership, pg_url)  # deposed while its handler works on the event
        go_on.set()
        assert [e.name for e in await asyncio.wait_for(polling, 10)] == ["appeared"]  # no handler_failed
        assert cloud.calls == []

        clock.advance(15)
        assert [e.name for e in await two.poll_once()] == ["vanished"]  # it delivered the event, then polled
        assert cloud.calls == [("destroy", 1)]
        assert [e.name for e in two_store.events()] == ["appeared", "vanished"]


class DestroysWhenTold(Handler):
    """A daemon that destroys its instance once `go` is set (a job's monitor ending, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.destroyed: list[int] = []

    @on("appeared")
    async def begin(self, event: Event, ctx: Context) -> None:
        await ctx.spawn(self.finish, event.instance_id or 0, {})

    @daemon
    async def finish(self, instance_id: int, state: dict[str, Any], ctx: Context) -> None:
        await self.go.wait()
        await ctx.destroy(instance_id)
        self.destroyed.append(instance_id)


async def test_a_daemon_refused_because_its_leader_was_deposed_is_resumed_by_the_next_leader(
    pg_url: str, team_config: str
) -> None:
    first, second = DestroysWhenTold(), DestroysWhenTold()
    handlers = iter([[activate("closer", first)], [activate("closer", second)]]).__next__
    async with team(pg_url, team_config, handlers) as (cloud, clock, one, two, _, two_store):
        await one.poll_once()
        assert one.daemons.running() == [("closer", "finish", 1)]
        assert one.leadership is not None
        terminate(one.leadership, pg_url)
        clock.advance(15)
        first.go.set()
        for _ in range(1000):  # let the daemon run into the refusal (bounded: 10 s)
            if not one.daemons.running():
                break
            await asyncio.sleep(0.01)
        assert first.destroyed == [] and cloud.calls == []  # refused before any API call
        assert [row.instance_id for row in two_store.effects.daemons()] == [1]  # kept for the next leader

        second.go.set()
        await two.poll_once()  # takes charge: resumes the daemon
        for _ in range(1000):
            if second.destroyed:
                break
            await asyncio.sleep(0.01)
        assert second.destroyed == [1] and two_store.effects.daemons() == []
        assert not [e for e in two_store.events() if e.name == "handler_failed"]


async def test_a_periodic_run_refused_because_its_leader_was_deposed_is_left_to_the_next_leader(
    pg_url: str, team_config: str
) -> None:
    @every("1m")
    async def sweep(ctx: Context) -> None:
        await ctx.stop(1)

    async with team(pg_url, team_config, lambda: [activate("sweep", sweep)]) as (cloud, _, one, two, _, two_store):
        assert one.leadership is not None
        await one.poll_once()  # leads, and runs the sweep (never run: due)
        assert cloud.calls == [("stop", 1)]
        overdue = datetime(2000, 1, 1, tzinfo=UTC)
        two_store.effects.ran("sweep", "sweep", overdue)
        terminate(one.leadership, pg_url)
        await one.periodic.run_due(one.context)
        assert cloud.calls == [("stop", 1)]  # refused before the API call
        assert two_store.effects.periodic_run("sweep", "sweep") == PeriodicRun(overdue)  # not recorded as run
        assert not [e for e in two_store.events() if e.name == "handler_failed"]  # nor as failed

        await two.poll_once()  # the next leader finds it due and runs it
        assert cloud.calls == [("stop", 1), ("stop", 1)]
        assert two_store.effects.periodic_run("sweep", "sweep") != PeriodicRun(overdue)
