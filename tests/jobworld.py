"""Shared parts of the tests that run jobs through the real runtime: the simulator over HTTP with real sshd hosts
on a manual clock, a SQLite store, and the handlers a config names (the jobs handler at least)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sshkit import USER, edge, keypair, register

from vastevents import CommandResult, Job, Jobs, SshTarget
from vastevents.clock import ManualClock
from vastevents.config import parse_config
from vastevents.jobspec import JobSpec
from vastevents.plugins import load_handlers
from vastevents.runtime import Runtime
from vastevents.sim import Simulator
from vastevents.ssh import ParamikoSsh
from vastevents.store import SqliteStore
from vastevents.vast import VastClient

JOBS = """
[vast]
label_prefix = "vastevents"
[handlers.jobs]
use = "jobs"
ssh_retry = "1s"
poll_first = "1s"
poll_every = "1s"
"""
"""The jobs handler, retrying and polling every simulated second."""


@dataclass
class JobWorld:
    sim: Simulator
    tmp: Path
    key: Path
    ssh: ParamikoSsh
    config: str = JOBS
    """The watcher's config, less its store (each runtime may add more)."""

    @property
    def store_path(self) -> Path:
        return self.tmp / "state.db"

    def runtime(self, client: VastClient, more: str = "") -> Runtime:
        """A watcher on the world's store; a new one on the same store is a restart."""
        config = parse_config(self.config + more + f'[store]\npath = "{self.store_path}"\n')
        return Runtime(config, client=client, store=SqliteStore(self.store_path), clock=self.sim.clock,
                       handlers=load_handlers(config), ssh=self.ssh)  # fmt: skip

    def offers(self, count: int = 3) -> list[int]:
        """The `count` cheapest offers."""
        with self.sim.world() as world:
            rows = sorted(world.search({}), key=lambda r: r["dph_total"])
        return [int(row["id"]) for row in rows[:count]]

    def spec(self, **fields: object) -> dict[str, object]:
        base: dict[str, object] = {"image": "pytorch/pytorch", "ssh_user": USER, "out": str(self.tmp / "out")}
        return {**base, **fields}

    async def on_host(self, instance_id: int, command: str) -> CommandResult:
        """Run `command` on an instance's host over the test's own SSH edge (its own known_hosts: the watcher's is
        not touched)."""
        row = self.sim.instance(instance_id)
        assert row is not None, f"instance {instance_id} is not rented"
        own = edge(self.tmp / "own", self.key)
        try:
            return await own.run(SshTarget(row["ssh_host"], int(row["ssh_port"]), USER, instance_id), command)
        finally:
            own.close()

    @property
    def results(self) -> Path:
        """The results dir of the test's job (the store's first)."""
        return self.tmp / "out" / "job-1"


W = TypeVar("W", bound=JobWorld)


@contextmanager
def job_world(tmp: Path, world: type[W], config: str = JOBS) -> Iterator[W]:
    """A `world` of a started simulator with sshd hosts that know a fresh key; it must end with nothing rented."""
    key = keypair(tmp)
    with Simulator(clock=ManualClock(), ssh=True) as sim:
        register(sim, key)
        ssh = edge(tmp, key)
        try:
            yield world(sim, tmp, key, ssh, config)
        finally:
            ssh.close()
            assert sim.instance_count() == 0, "every test ends with nothing rented"


def submit(rt: Runtime, spec: dict[str, object], offers: list[int]) -> Job:
    """A job queued as ``run --submit`` queues it (with `offers` chosen already, or none: the watcher chooses)."""
    checked = JobSpec.model_validate(spec).to_json()
    return rt.store.repository(Jobs).submit(checked, offers, "vastevents", rt.clock.now())
