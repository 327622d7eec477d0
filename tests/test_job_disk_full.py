"""A job whose disk fills up: what it made comes back, and with ``on_disk_full = "grow"`` it runs again from its
checkpoint with twice the disk, up to ``max_disk``; otherwise it fails with the cause ``disk_full``. The real
runtime and handlers, the simulator over HTTP, real sshd hosts, real SQLite."""

from __future__ import annotations

from typing import Any

import pytest
from sshkit import needs_openssh
from test_job_templates_volumes import World, client, remote, submit, until, world

from vastevents import JobSpec
from vastevents.vast import VastClient

pytestmark = [pytest.mark.ssh, needs_openssh]
__all__ = ["client", "world"]  # the fixtures, shared

# The first run leaves a checkpoint and a partial result, then its write fails as on a full disk; a run that
# finds the checkpoint completes.
FILLS_UP = (
    'mkdir -p ckpt; if [ -f ckpt/state ]; then echo "resumed at $(cat ckpt/state)" > result.txt; else'
    " echo 1 > ckpt/state; echo partial > partial.txt;"
    " echo \"OSError: [Errno 28] No space left on device: 'shard-7.bin'\" >&2; exit 1; fi"
)


def _spec(world: World, **more: Any) -> dict[str, Any]:
    return {"image": "pytorch/pytorch", "disk": 10, "cmd": FILLS_UP, "download": ["result.txt", "partial.txt"],
            "checkpoint_dir": "ckpt", "checkpoint_every": "1d", "out": str(world.tmp / "out"), **more}  # fmt: skip


async def test_a_full_disk_with_grow_brings_back_what_it_made_and_reruns_from_the_checkpoint_with_twice_the_disk(
    world: World, client: VastClient
) -> None:
    async with world.runtime(client) as rt:
        job = await until(rt, world, submit(rt, _spec(world, on_disk_full="grow")).id)
        events = rt.store.events()
    assert job.status == "finished" and job.exit_code == 0 and job.destroyed, job.errors
    failed = [e for e in events if e.name == "job_failed"]
    assert [e.cause for e in failed] == ["disk_full"]
    assert (failed[0].detail or "").startswith("disk full on 10 GB (the log says: OSError: [Errno 28] No space left")
    disks = [e.instance.disk_space for e in events if e.name == "appeared" and e.instance is not None]
    assert disks == [10, 20], "the rerun rents twice the disk"
    assert job.spec["disk"] == 20 and job.spec["max_disk"] == 40, "four times the disk bounds every rerun"
    out = world.tmp / "out" / f"job-{job.id}"
    assert (out / "result.txt").read_text() == "resumed at 1\n", "from the checkpoint the full disk left"
    assert (out / "partial.txt").read_text() == "partial\n", "what the failed run made came back"
    assert [e.instance_id for e in events if e.name == "job_started"] == [job.instance_id - 1, job.instance_id]


async def test_a_full_disk_without_grow_fails_with_its_cause_and_keeps_the_results_and_the_log(
    world: World, client: VastClient
) -> None:
    waits = "echo started; for i in $(seq 600); do [ -f go ] && exit 1; sleep 0.1; done; exit 2"
    async with world.runtime(client) as rt:
        job = submit(rt, _spec(world, cmd=waits, download=[]))
        running = await until(rt, world, job.id, done="running")
        assert running.instance_id is not None
        world.sim.apply("disk_full", instance=running.instance_id)  # what the host says
        await remote(world, client, running.instance_id, "touch job/go")
        job = await until(rt, world, job.id)
        failed = [e for e in rt.store.events() if e.name == "job_failed"]
    assert (job.status, job.cause, job.exit_code, job.destroyed) == ("failed", "disk_full", 1, True)
    assert len(failed) == 1 and failed[0].cause == "disk_full"
    detail = failed[0].detail or ""
    assert "disk full on 10 GB (the host says: No space left on device" in detail
    assert 'on_disk_full = "grow"' in detail, "says what to do"
    assert (world.tmp / "out" / f"job-{job.id}" / "job.log").read_text() == "started\n"


async def test_grow_stops_at_max_disk(world: World, client: VastClient) -> None:
    async with world.runtime(client) as rt:
        job = await until(rt, world, submit(rt, _spec(world, on_disk_full="grow", max_disk=15)).id)
        failed = [e.detail or "" for e in rt.store.events() if e.name == "job_failed"]
    assert (job.status, job.cause, job.attempts) == ("failed", "disk_full", 1)
    assert len(failed) == 1 and "twice that is over max_disk 15 GB" in failed[0]
    assert (world.tmp / "out" / f"job-{job.id}" / "partial.txt").read_text() == "partial\n"
    assert "No space left on device" in (world.tmp / "out" / f"job-{job.id}" / "job.log").read_text()


def test_grow_doubles_the_disk_that_filled_up_once_however_often_asked_up_to_max_disk() -> None:
    spec = JobSpec.model_validate({"image": "i", "cmd": "c", "disk": 10, "on_disk_full": "grow"})
    grown = spec.grown(10)
    assert grown is not None and (grown.disk, grown.max_disk) == (20, 40)
    again = grown.grown(10)
    assert again is not None and again.disk == 20, "a watcher restart asking again reruns the same way"
    bigger = grown.grown(20)
    assert bigger is not None and bigger.disk == 40 and bigger.grown(40) is None
    assert JobSpec.model_validate({"image": "i", "cmd": "c", "disk": 10}).grown(10) is None, "fail is the default"
