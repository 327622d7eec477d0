"""Jobs from templates, with their checkpoints on a volume, and private images: the real runtime with the jobs and
recovery handlers, the simulator over HTTP, real sshd hosts, real SQLite."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jobworld import JOBS, JobWorld, job_world
from jobworld import submit as queue
from sshkit import USER, needs_openssh

from vastevents import Cause, Hosts, Job, Jobs, JobSpec, Recoveries, Rental, SshTarget, VolumeMount
from vastevents.errors import ConfigError
from vastevents.jobspec import load_spec
from vastevents.runtime import Runtime
from vastevents.vast import VastClient

pytestmark = [pytest.mark.ssh, needs_openssh]

CONFIG = (
    JOBS
    + """
[handlers.recovery]
use = "recovery"
min_reliability = 0.0
on_preempt = "replace"
"""
)


class World(JobWorld):
    def live_volumes(self) -> list[int]:
        with self.sim.world() as world:
            return sorted(v.id for v in world.volumes.values() if v.ended_at is None)

    def template(self, **fields: Any) -> dict[str, Any]:
        """A template of the user's own, made through the API as `vastai create template` does."""
        answer = httpx.post(f"{self.sim.url}/api/v0/template/", json=fields,
                            headers={"Authorization": f"Bearer {self.sim.api_key}"})  # fmt: skip
        assert answer.status_code == 200, answer.text
        return dict(answer.json()["template"])


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with job_world(tmp_path, World, CONFIG) as w:
        yield w
        assert w.live_volumes() == [], "and no volume left"


@pytest.fixture
async def client(world: World) -> AsyncIterator[VastClient]:
    async with VastClient(world.sim.api_key, world.sim.url) as vast:
        yield vast


def submit(rt: Runtime, spec: dict[str, Any]) -> Job:
    return queue(rt, {"ssh_user": USER, **spec}, [])


async def until(rt: Runtime, world: World, job_id: int, done: str | None = None, seconds: float = 90.0) -> Job:
    """Poll (the simulator moves 15 s per cycle) until the job is final (or reaches `done`); bounded real wait."""
    jobs = rt.store.repository(Jobs)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    first = True
    while loop.time() < deadline:
        await rt.poll_once(all_periodic=first)
        first = False
        job = jobs.get(job_id)
        assert job is not None
        if (done is None and job.done and job.status != "collecting") or job.status == done:
            return job
        world.sim.advance(15)
        await asyncio.sleep(0.05)  # the job runs for real on the sshd host
    raise AssertionError(f"job {job_id} still {jobs.get(job_id)} after {seconds}s")


async def remote(world: World, client: VastClient, instance_id: int, command: str, seconds: float = 30.0) -> str:
    """What `command` prints on the instance once it succeeds (bounded)."""
    instance = await client.get_instance(instance_id)
    assert instance is not None
    target = SshTarget.of(instance, USER)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        result = await world.ssh.run(target, command, timeout=10)
        if result.exit_code == 0:
            return result.stdout
        assert loop.time() < deadline, f"{command!r} never succeeded: {result.stderr}"
        await asyncio.sleep(0.1)


# The job waits (bounded) for the template's onstart, keeps its state in ckpt/ and, when it finds it there,
# says so with what the template gave it.
TRAIN = (
    "for i in $(seq 100); do [ -f ~/onstart.txt ] && break; sleep 0.1; done; "
    'if [ -f ckpt/state ]; then echo "resumed at $(cat ckpt/state) with $GREETING, $(cat ~/onstart.txt)"'
    " > result.txt; else echo 1 > ckpt/state; sleep 600; fi"
)


@pytest.mark.parametrize("interruptible", [False, True], ids=["preempted", "outbid"])
async def test_a_job_runs_from_a_template_with_its_checkpoints_on_a_volume_that_its_replacement_reuses(
    world: World, client: VastClient, monkeypatch: pytest.MonkeyPatch, interruptible: bool
) -> None:
    """The issue's "done when": a job from a (private) template, its checkpoints on a volume; the host takes the
    machine back (or a higher bid the GPUs), the recovery handler rents on the volume's machine again with the
    volume linked (and the registry login), and the job resumes from the checkpoint it left there."""
    monkeypatch.setenv("REGISTRY_LOGIN", "-u ci -p t0ken registry.example.com")
    rentals: list[Rental] = []
    real_create = client.create_instance

    async def create(rental: Rental) -> int:
        rentals.append(rental)
        return await real_create(rental)

    monkeypatch.setattr(client, "create_instance", create)
    template = world.template(name="trainer", image="pytorch/pytorch", tag="2.3.1", env="-e GREETING=hello",
                              onstart="echo onstart ran > ~/onstart.txt")  # fmt: skip
    spec = {"template_hash": template["hash_id"], "login_env": "REGISTRY_LOGIN", "interruptible": interruptible,
            "cmd": TRAIN, "download": ["result.txt"], "checkpoint_dir": "ckpt", "checkpoint_every": "1d",
            "out": str(world.tmp / "out"), "volume": {"mount_path": "/root/ckpt", "size": 5}}  # fmt: skip
    async with world.runtime(client) as rt:
        job = submit(rt, spec)
        first = await until(rt, world, job.id, done="running")
        assert first.instance_id is not None
        row = world.sim.instance(first.instance_id)
        assert row is not None and row["template_hash_id"] == template["hash_id"]
        assert row["image_uuid"] == "pytorch/pytorch:2.3.1", "the template's image, with its tag"
        volume_id, machine = row["volume_info"][0]["id"], row["machine_id"]
        assert world.live_volumes() == [volume_id]
        assert await remote(world, client, first.instance_id, "cat job/ckpt/state") == "1\n"
        assert not (world.tmp / "out" / f"job-{job.id}" / "ckpt").exists(), (
            "nothing synced here: the checkpoint is on the volume"
        )

        world.sim.preempt(first.instance_id)  # the host takes the machine back, or a higher bid the GPUs
        job = await until(rt, world, job.id)
        events = rt.store.events()
        causes = [r.cause for r in rt.store.repository(Recoveries).lineage(job.label)]
    replacement = job.instance_id
    assert job.status == "finished" and job.destroyed and replacement != first.instance_id, job
    recovered = [e for e in events if e.name == "recovered"]
    assert len(recovered) == 1 and recovered[0].instance is not None
    assert recovered[0].instance.machine_id == machine, "back on the machine that holds the volume"
    assert (world.tmp / "out" / f"job-{job.id}" / "result.txt").read_text() == "resumed at 1 with hello, onstart ran\n"
    assert world.live_volumes() == [], "the volume the job made is deleted at its end"
    started = [e.instance_id for e in events if e.name == "job_started"]
    assert started == [first.instance_id, replacement]
    assert [r.image_login for r in rentals] == ["-u ci -p t0ken registry.example.com"] * 2
    assert rentals[0].volume is not None and rentals[0].volume.creates and rentals[0].template_hash
    assert rentals[1].volume == VolumeMount.existing(volume_id, "/root/ckpt"), "the replacement links it"
    assert [r.price is not None for r in rentals] == [interruptible] * 2, "on the terms the job was rented on"
    assert causes == [Cause.OUTBID if interruptible else Cause.PREEMPTED]


async def test_when_the_volumes_machine_cannot_be_rented_the_replacement_goes_elsewhere_and_resumes_from_the_local_copy(
    world: World, client: VastClient
) -> None:
    cmd = (
        'if [ -f ckpt/state ]; then echo "resumed at $(cat ckpt/state)" > result.txt;'
        " else echo 1 > ckpt/state; sleep 600; fi"
    )
    spec = {"image": "pytorch/pytorch", "interruptible": False, "cmd": cmd, "download": ["result.txt"],
            "checkpoint_dir": "ckpt", "checkpoint_every": 1, "out": str(world.tmp / "out"),
            "volume": {"mount_path": "/root/ckpt", "size": 5}}  # fmt: skip
    local = world.tmp / "out" / "job-1" / "ckpt" / "state"  # the first job of the store
    async with world.runtime(client) as rt:
        job = submit(rt, spec)
        first = await until(rt, world, job.id, done="running")
        assert first.instance_id is not None
        machine = (world.sim.instance(first.instance_id) or {})["machine_id"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not local.exists() and loop.time() < deadline:
            await rt.poll_once()
            await asyncio.sleep(0.05)
        assert local.read_text() == "1\n", "the checkpoint on the volume is synced back all the same"
        rt.store.repository(Hosts).block(machine, "blocked by hand", rt.clock.now(), 86400.0)
        world.sim.preempt(first.instance_id)
        job = await until(rt, world, job.id)
        recovered = [e.instance for e in rt.store.events() if e.name == "recovered" and e.instance is not None]
    assert job.status == "finished" and job.destroyed, job.errors
    assert len(recovered) == 1 and recovered[0].machine_id != machine and recovered[0].mounted_volume is None
    assert (world.tmp / "out" / f"job-{job.id}" / "result.txt").read_text() == "resumed at 1\n", "from the local copy"
    assert world.live_volumes() == [], "the volume left on the first machine is deleted at the job's end"


async def test_a_kept_volume_outlives_the_job_and_a_later_job_from_a_template_id_links_it(
    world: World, client: VastClient
) -> None:
    volume = {"mount_path": "/root/models", "size": 3, "keep": True}
    spec = {"image": "pytorch/pytorch", "cmd": "echo v1 > ckpt/model.txt", "checkpoint_dir": "ckpt",
            "out": str(world.tmp / "first"), "volume": volume}  # fmt: skip
    async with world.runtime(client) as rt:
        first = await until(rt, world, submit(rt, spec).id)
        assert first.status == "finished", first.errors
        kept = world.live_volumes()
        assert len(kept) == 1, "keep = true: the volume stays"
        with world.sim.world() as w:
            machine = w.volumes[kept[0]].machine_id
        template = world.template(name="reader", image="python", tag="3.12", env="-e MODE=read")
        linked = {"template_id": template["id"], "cmd": 'echo "$MODE $(cat ckpt/model.txt)" > seen.txt',
                  "checkpoint_dir": "ckpt",
                  "download": ["seen.txt"], "out": str(world.tmp / "second"),
                  "volume": {"mount_path": "/root/models", "id": kept[0]}}  # fmt: skip
        second = await until(rt, world, submit(rt, linked).id)
        appeared = [e.instance for e in rt.store.events() if e.name == "appeared" and e.instance is not None]
    assert second.status == "finished", second.errors
    assert (world.tmp / "second" / f"job-{second.id}" / "seen.txt").read_text() == "read v1\n", (
        "the template's env, the volume's file"
    )
    assert appeared[-1].machine_id == machine, "a linked volume is used where it lives"
    assert (appeared[-1].model_extra or {})["template_id"] == template["id"]
    assert appeared[-1].image_uuid == "python:3.12"
    assert world.live_volumes() == kept, "a linked volume is the user's: never deleted"
    assert (await client.delete_volume(kept[0])) is True


async def test_a_volume_an_ended_job_left_behind_is_deleted_by_the_watchers_next_pass(
    world: World, client: VastClient
) -> None:
    """A delete refused at the job's end (Vast still counting the volume as in use) is tried again; only the
    job's own volume, found by its name."""
    spec = {"image": "pytorch/pytorch", "cmd": "true", "out": str(world.tmp / "out"),
            "volume": {"mount_path": "/root/data", "size": 2}}  # fmt: skip
    machine = next(iter(world.sim.state()["machines"]))["machine_id"]

    def volume(name: str) -> int:
        made = httpx.put(f"{world.sim.url}/api/v0/volumes/", json={"id": 90_000_000 + machine, "size": 1, "name": name},
                         headers={"Authorization": f"Bearer {world.sim.api_key}"})  # fmt: skip
        assert made.status_code == 200, made.text
        return int(made.json()["volume_id"])

    async with world.runtime(client) as rt:
        job = await until(rt, world, submit(rt, spec).id)
        assert job.status == "finished" and world.live_volumes() == []
        left, foreign = volume(job.label), volume("datasets")
        await rt.poll_once(all_periodic=True)
    assert world.live_volumes() == [foreign], f"volume {left}, named {job.label}, was the job's"
    assert await client.delete_volume(foreign)


async def test_a_private_images_login_is_passed_on_and_never_stored_nor_shown(
    world: World, client: VastClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "-u robot -p s3cr3t-Registry-Token-4711 registry.example.com"
    monkeypatch.setenv("REGISTRY_LOGIN", secret)
    sent: list[str | None] = []
    real_create = client.create_instance

    async def create(rental: Any) -> int:
        sent.append(rental.image_login)
        return await real_create(rental)

    monkeypatch.setattr(client, "create_instance", create)
    spec = {"image": "registry.example.com/team/trainer:1", "login_env": "REGISTRY_LOGIN", "cmd": "echo ok",
            "out": str(world.tmp / "out")}  # fmt: skip
    async with world.runtime(client) as rt:
        job = await until(rt, world, submit(rt, spec).id)
        events = rt.store.events()
    assert job.status == "finished" and sent == [secret]
    assert "s3cr3t" not in json.dumps([e.to_json() for e in events])
    for path in world.tmp.glob("state.db*"):
        assert b"s3cr3t" not in path.read_bytes(), f"the login is not in {path.name}"

    monkeypatch.delenv("REGISTRY_LOGIN")
    async with world.runtime(client) as rt:
        unset = await until(rt, world, submit(rt, spec).id)
        failed = [e.detail for e in rt.store.events() if e.name == "job_failed"]
    assert (unset.status, unset.cause, unset.tried) == ("failed", "job_error", []), "nothing rented without it"
    assert failed == ["login_env names REGISTRY_LOGIN, which is not set: export the registry login there"]


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"template_id": 7}, None),
        ({}, "needs an image (or a template: template_hash, template_id)"),
        ({"image": "i", "login_env": "NOT A NAME"}, "is not an environment variable name"),
        ({"image": "i", "volume": {"mount_path": "/root/v"}}, "give either size (a new volume) or id"),
        ({"image": "i", "volume": {"mount_path": "/root/v", "size": 5, "id": 3}}, "give either size"),
        ({"image": "i", "volume": {"mount_path": "/root", "size": 5}}, "must be an absolute path (below /root"),
        ({"image": "i", "volume": {"mount_path": "data", "size": 5}}, "must be an absolute path"),
        ({"image": "i", "volume": {"mount_path": "/root/../etc", "size": 5}}, "without '..'"),
        ({"image": "i", "on_disk_full": "shrink"}, "'fail' or 'grow'"),
    ],
)
def test_the_spec_checks_templates_logins_and_volumes(fields: dict[str, Any], said: str | None) -> None:
    if said is None:
        assert load_spec(None, {"cmd": "c", **fields}).template_id == 7
        return
    with pytest.raises(ConfigError) as caught:
        load_spec(None, {"cmd": "c", **fields})
    assert said in str(caught.value)


def test_a_volume_the_job_makes_is_priced_as_disk_in_its_expected_cost() -> None:
    base = {"image": "i", "cmd": "c", "disk": 10}
    made = JobSpec.model_validate({**base, "volume": {"mount_path": "/root/v", "size": 5}})
    linked = JobSpec.model_validate({**base, "volume": {"mount_path": "/root/v", "id": 3}})
    assert made.workload().disk_gb == 15 and linked.workload().disk_gb == 10, "a linked volume bills anyway"
