"""The level-triggered passes of the jobs and recovery handlers: each test reproduces a missed edge or a fault
(the watcher stopped while the world changed, a storm, a flap, a kill at the worst moment) and checks the outcome.

The real runtime and SQLite store, the simulator over HTTP with real sshd hosts; "stopping the watcher" closes
its runtime, as a killed process leaves its store, and a new runtime on the same store is the restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jobworld import JobWorld, job_world, submit
from sshkit import needs_openssh
from typer.testing import CliRunner

from vastevents import Cause, Job, Jobs, JobStatus, SshError
from vastevents.cli import app
from vastevents.jobspec import JobSpec
from vastevents.runtime import Runtime
from vastevents.store import SqliteStore
from vastevents.vast import VastClient

pytestmark = [pytest.mark.ssh, needs_openssh]

RECOVERY = """
[handlers.recovery]
use = "recovery"
on_preempt = "replace"
min_reliability = 0.9
"""
CHECKPOINTED = (
    "mkdir -p ckpt; if [ -f ckpt/state ]; then echo resumed > result.txt;"
    " else echo 1 > ckpt/state; echo run >> ckpt/runs; sleep 600; fi"
)
"""A job that waits until it is started again from its checkpoint, then finishes."""


def checkpointed_spec(world: JobWorld, **more: object) -> dict[str, object]:
    """A job of :data:`CHECKPOINTED`, its checkpoint synced every second, its result downloaded."""
    return world.spec(cmd=CHECKPOINTED, download=["result.txt"], checkpoint_dir="ckpt", checkpoint_every=1, **more)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[JobWorld]:
    with job_world(tmp_path, JobWorld) as w:
        yield w


@pytest.fixture
async def client(world: JobWorld) -> AsyncIterator[VastClient]:
    async with VastClient(world.sim.api_key, world.sim.url, max_attempts=1) as vast:
        yield vast


async def until(
    rt: Runtime,
    world: JobWorld,
    job_id: int,
    done: Callable[[Job], bool] | None = None,
    *,
    step: float = 15,
    cycles: int = 200,
) -> Job:
    """Poll, `step` simulated seconds a cycle, until the job ends (or `done(job)` holds); bounded in cycles and in
    real time (the job runs for real on the sshd host)."""
    jobs = rt.store.repository(Jobs)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    for cycle in range(cycles):
        await rt.poll_once(all_periodic=cycle == 0)
        job = jobs.get(job_id)
        assert job is not None
        if (done is None and job.done) or (done is not None and done(job)):
            return job
        assert loop.time() < deadline, f"job {job_id} still {job.status} after 60 s"
        world.sim.advance(step)
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} still {jobs.get(job_id)} after {cycles} cycles")


async def checkpointed(rt: Runtime, world: JobWorld, job_id: int) -> Job:
    """Until the job runs and its checkpoint was synced back (so a restart has something to resume from)."""
    await until(rt, world, job_id, lambda j: j.status == JobStatus.RUNNING)
    return await until(rt, world, job_id, lambda j: (world.results / "ckpt" / "state").exists(), step=1)


async def test_a_replacement_outbid_while_the_watcher_is_stopped_is_recovered_and_the_job_finishes(
    world: JobWorld, client: VastClient
) -> None:
    spec = checkpointed_spec(world, bid=1.0)
    async with world.runtime(client, RECOVERY) as rt:
        first = await checkpointed(rt, world, submit(rt, spec, world.offers()).id)
        assert first.instance_id is not None
        world.sim.preempt(first.instance_id)  # outbid: the recovery handler rents a replacement at once
        await until(rt, world, first.id, lambda j: any(e.name == "recovered" for e in rt.store.events()), step=1)
    (recovered,) = [e for e in SqliteStore(world.store_path).events() if e.name == "recovered"]
    replacement = recovered.instance_id
    assert replacement is not None and world.sim.instance(replacement) is not None
    world.sim.advance(300)  # while no watcher runs, the replacement loads, runs ...
    assert world.sim.instance(replacement)["actual_status"] == "running"  # type: ignore[index]
    world.sim.preempt(replacement)  # ... and is outbid: nobody saw it running, nobody sees `preempted`
    async with world.runtime(client, RECOVERY) as rt:
        job = await until(rt, world, first.id)
    assert (job.status, job.exit_code, job.destroyed) == (JobStatus.FINISHED, 0, True), job.errors
    assert job.instance_id not in (first.instance_id, replacement)
    assert (world.results / "result.txt").read_text() == "resumed\n", "resumed from the checkpoint"
    assert (world.results / "ckpt" / "runs").read_text() == "run\n", "the first run was never started again"


async def test_a_503_storm_at_submit_delays_the_rental_by_at_most_the_backoff_cap(
    world: JobWorld, client: VastClient
) -> None:
    async with world.runtime(client) as rt:
        job = submit(rt, world.spec(cmd="echo ok > ok.txt", download=["ok.txt"]), [])  # searched by the watcher
        storm_ends = world.sim.clock.now().timestamp() + 30
        world.sim.apply("server_error", duration="30s")
        rented = await until(rt, world, job.id, lambda j: j.instance_id is not None, step=1, cycles=120)
        delay = world.sim.clock.now().timestamp() - storm_ends
        assert rented.status != JobStatus.FAILED and rented.failures == 0, "rented: the backoff starts anew"
        assert any("the offer search failed" in error for error in rented.errors), rented.errors
        assert 0 <= delay <= 30, f"rented {delay:.0f} s after the storm ended"
        job = await until(rt, world, job.id)
    assert job.status == JobStatus.FINISHED and (world.results / "ok.txt").read_text() == "ok\n"


async def test_a_claim_left_by_a_killed_watcher_is_released_at_start(world: JobWorld, client: VastClient) -> None:
    async with world.runtime(client) as rt:
        job = submit(rt, world.spec(cmd="echo ok"), world.offers())
        claimed = rt.store.repository(Jobs).claim(rt.clock.now())  # then killed before renting
        assert claimed is not None and claimed.status == JobStatus.CREATING
    async with world.runtime(client) as rt:
        await rt.poll_once()
        assert rt.store.repository(Jobs).get(job.id).status == JobStatus.LOADING  # type: ignore[union-attr]
        job = await until(rt, world, job.id)
    assert job.status == JobStatus.FINISHED


async def test_a_flap_that_kills_the_process_resumes_it_from_its_checkpoint_on_the_same_host(
    world: JobWorld, client: VastClient
) -> None:
    spec = checkpointed_spec(world)
    async with world.runtime(client) as rt:
        first = await checkpointed(rt, world, submit(rt, spec, world.offers()).id)
        world.sim.apply("offline", instance=first.instance_id)  # the host drops off: its processes die
        await until(rt, world, first.id, lambda j: True, step=30)
        world.sim.apply("online", instance=first.instance_id)
        job = await until(rt, world, first.id, step=1)
    assert (job.status, job.exit_code, job.instance_id) == (JobStatus.FINISHED, 0, first.instance_id), job.errors
    assert (world.results / "result.txt").read_text() == "resumed\n"
    assert any("started again" in error for error in job.errors)


async def test_a_job_resumed_on_the_same_host_keeps_the_checkpoint_written_there_since_the_last_sync(
    world: JobWorld, client: VastClient
) -> None:
    """C1: each resume on a flapping host restored the local copy of the checkpoint over the host's own, newer one,
    so a job its host dropped every minute lost the progress it made between syncs, again and again."""
    command = (
        "mkdir -p ckpt; if [ -f ckpt/state ]; then cat ckpt/state > result.txt; else echo 1 > ckpt/state; sleep 600; fi"
    )
    spec = world.spec(cmd=command, download=["result.txt"], checkpoint_dir="ckpt", checkpoint_every=1)
    async with world.runtime(client) as rt:
        first = await checkpointed(rt, world, submit(rt, spec, world.offers()).id)
        workdir = JobSpec.model_validate(spec).workdir
        progress = await world.on_host(first.instance_id or 0, f"echo 2 > {workdir}/ckpt/state")  # since the sync
        assert progress.exit_code == 0
        world.sim.apply("offline", instance=first.instance_id)  # the host drops off: the command dies
        lost = f"instance {first.instance_id} offline under the job"
        await until(rt, world, first.id, lambda j: any(lost in error for error in j.errors), step=5)
        world.sim.apply("online", instance=first.instance_id)  # the job's daemon ended: the reconcile pass resumes it
        job = await until(rt, world, first.id, step=1)
    assert (job.status, job.exit_code, job.instance_id) == (JobStatus.FINISHED, 0, first.instance_id), job.errors
    assert (world.results / "result.txt").read_text() == "2\n", "resumed from the host's own checkpoint"


async def test_without_recovery_a_host_offline_beyond_grace_loses_the_job_to_the_next_offer(
    world: JobWorld, client: VastClient
) -> None:
    spec = checkpointed_spec(world)
    async with world.runtime(client, '[watch]\noffline_grace = "2m"\n') as rt:
        first = await checkpointed(rt, world, submit(rt, spec, world.offers()).id)
        world.sim.apply("offline", instance=first.instance_id)  # and it never comes back
        job = await until(rt, world, first.id, step=5)
    assert (job.status, job.exit_code, job.destroyed) == (JobStatus.FINISHED, 0, True), job.errors
    assert job.instance_id != first.instance_id and world.sim.instance(first.instance_id or 0) is None
    assert (world.results / "result.txt").read_text() == "resumed\n", "on the next offer, from the checkpoint"
    lost = f"instance {first.instance_id} offline under the job"
    assert any(lost in error for error in job.errors), "its daemon ended at once, not checking an offline host on"


async def test_a_pid_another_process_holds_after_the_command_died_is_not_taken_for_the_job(
    world: JobWorld, client: VastClient
) -> None:
    """A host restarted under a job may give the command's PID to another process: checked by PID alone, that
    process passed for the job, whose status read "alive" for ever. The command is started again instead."""
    spec = checkpointed_spec(world)
    async with world.runtime(client) as rt:
        first = await checkpointed(rt, world, submit(rt, spec, world.offers()).id)
        workdir = JobSpec.model_validate(spec).workdir
        impostor = (  # the command dies, and its PID file names another live process
            f'cd {workdir} && kill -KILL -"$(cat .vastevents/pid)" &&'
            " (setsid sleep 600 < /dev/null > /dev/null 2>&1 & echo $! > .vastevents/pid)"
        )
        assert (await world.on_host(first.instance_id or 0, impostor)).exit_code == 0
        job = await until(rt, world, first.id, step=1)
    assert (job.status, job.exit_code, job.instance_id) == (JobStatus.FINISHED, 0, first.instance_id), job.errors
    assert (world.results / "result.txt").read_text() == "resumed\n", "started again, from its checkpoint"
    assert any("started again" in error for error in job.errors), job.errors


async def test_a_running_instance_whose_ssh_stays_down_loses_the_job_to_the_next_offer_after_ssh_wait(
    world: JobWorld, client: VastClient
) -> None:
    spec = checkpointed_spec(world)
    async with world.runtime(client) as rt:
        first = await checkpointed(rt, world, submit(rt, spec, world.offers()).id)
        down_at = world.sim.clock.now()
        world.sim.apply("ssh_down", instance=first.instance_id)  # the instance runs on, its SSH answers no more
        await until(rt, world, first.id, lambda j: j.instance_id != first.instance_id, step=30)
        waited = (world.sim.clock.now() - down_at).total_seconds()
        job = await until(rt, world, first.id, step=5)
        failed = [e for e in rt.store.events() if e.name == "job_failed"]
    assert (job.status, job.exit_code, job.destroyed) == (JobStatus.FINISHED, 0, True), job.errors
    assert waited > 600, f"moved {waited:.0f} s after SSH went down, before ssh_wait (600 s) was over"
    assert job.instance_id != first.instance_id and world.sim.instance(first.instance_id or 0) is None
    assert [(e.cause, e.instance_id) for e in failed] == [(Cause.HOST_UNFIT, first.instance_id)]
    assert any("SSH lost for over 600s while the command ran" in error for error in job.errors), job.errors
    assert (world.results / "result.txt").read_text() == "resumed\n", "on the next offer, from the checkpoint"


async def test_a_watcher_killed_between_starting_the_command_and_checkpointing_does_not_start_it_twice(
    world: JobWorld, client: VastClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vastevents_handlers import jobs_remote

    real_start = jobs_remote.start
    started = asyncio.Event()

    async def start_then_die(ctx: Any, target: Any, spec: Any) -> tuple[int, bool]:
        await real_start(ctx, target, spec)
        started.set()
        await asyncio.Event().wait()  # the watcher is killed here, before the monitor phase is checkpointed
        raise AssertionError("unreachable")

    monkeypatch.setattr(jobs_remote, "start", start_then_die)
    spec = world.spec(cmd="echo run >> runs.txt; sleep 2", download=["runs.txt"])
    async with world.runtime(client) as rt:
        job = submit(rt, spec, world.offers())
        await until(rt, world, job.id, lambda j: started.is_set(), step=5)
    monkeypatch.setattr(jobs_remote, "start", real_start)
    async with world.runtime(client) as rt:
        job = await until(rt, world, job.id, step=1)
    assert job.status == JobStatus.FINISHED and job.attempts == 1, job
    assert (world.results / "runs.txt").read_text() == "run\n", "the command ran once"


@pytest.mark.parametrize("when", [JobStatus.PENDING, JobStatus.RUNNING])
async def test_a_cancel_request_destroys_what_the_job_rented_and_journals_cancelled(
    world: JobWorld, client: VastClient, when: JobStatus
) -> None:
    async with world.runtime(client) as rt:
        job = submit(rt, world.spec(cmd="sleep 600"), world.offers())
        if when == JobStatus.RUNNING:
            await until(rt, world, job.id, lambda j: j.status == JobStatus.RUNNING)
        rt.store.repository(Jobs).request_cancel(job.id, rt.clock.now())
        job = await until(rt, world, job.id, step=5)
        failed = [e for e in rt.store.events() if e.name == "job_failed"]
    assert (job.status, job.cause) == (JobStatus.CANCELLED, Cause.CANCELLED)
    assert [e.cause for e in failed] == [Cause.CANCELLED]
    assert world.sim.instance_count() == 0, "nothing left rented"


async def test_each_job_has_its_own_results_dir_and_logs_prints_its_own_log_from_anywhere(
    world: JobWorld, client: VastClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two jobs with one ``out``: each lands in ``<out>/job-<id>/`` (absolute in the row), so neither overwrites
    the other's log, and ``vastevents logs N`` run from another directory prints job N's."""
    async with world.runtime(client) as rt:
        first = submit(rt, world.spec(cmd="echo first job"), world.offers())
        second = submit(rt, world.spec(cmd="echo second job"), world.offers())
        first = await until(rt, world, first.id)
        second = await until(rt, world, second.id)
    assert first.results_dir == str(world.tmp / "out" / f"job-{first.id}")
    assert second.results_dir == str(world.tmp / "out" / f"job-{second.id}")
    config = world.tmp / "vastevents.toml"
    config.write_text(f'[store]\npath = "{world.store_path}"\n')
    elsewhere = world.tmp / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for job, said in ((first, "first job\n"), (second, "second job\n")):
        shown = CliRunner().invoke(app, ["logs", str(job.id), "--config", str(config)])
        assert (shown.exit_code, shown.stdout) == (0, said), shown.output


async def test_a_session_dropped_as_the_instance_is_taken_back_is_the_instance_loss_not_a_job_error(
    world: JobWorld, client: VastClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C1's seed 1: an SSH session dropped because the instance was preempted under it failed the job with cause
    ``job_error``; it is the instance's loss: the job moves on (here to its next offer) and finishes."""
    from vastevents_handlers import jobs_remote

    real_upload = jobs_remote.upload_inputs
    uploads: list[int | None] = []

    async def taken_back_during_upload(ctx: Any, target: Any, spec: Any, job: Job, *, resume: bool) -> None:
        uploads.append(job.instance_id)
        if len(uploads) == 1:  # taken back as the upload begins: the session drops before any poll sees it
            world.sim.preempt(job.instance_id or 0)
            raise SshError(f"{target.host}:{target.port} dropped the connection: ")
        await real_upload(ctx, target, spec, job, resume=resume)

    monkeypatch.setattr(jobs_remote, "upload_inputs", taken_back_during_upload)
    async with world.runtime(client, RECOVERY) as rt:
        job = submit(rt, world.spec(cmd="echo ok > ok.txt", download=["ok.txt"]), world.offers())
        job = await until(rt, world, job.id, step=5)
        failed = [e for e in rt.store.events() if e.name == "job_failed"]
    assert (job.status, job.cause, job.destroyed) == (JobStatus.FINISHED, None, True), job.errors
    assert failed == [], [(e.cause, e.detail) for e in failed]
    assert len(uploads) >= 2 and uploads[-1] != uploads[0], uploads
    assert (world.results / "ok.txt").read_text() == "ok\n"


async def test_a_command_its_host_stopped_with_sigterm_is_started_again_from_its_checkpoint(
    world: JobWorld, client: VastClient
) -> None:
    """C1's seed 1: a host flap SIGTERMs every process of the instance at once; a wrapper that outlived its command
    by an instant wrote exit code 143 and the job failed (``job_error``, nothing to download). A command ended by
    SIGTERM or SIGHUP is its host's doing: it is started again from its checkpoint. (The command TERMs itself the
    first time: the race, made deterministic.)"""
    once = (
        "mkdir -p ckpt; if [ -f ckpt/state ]; then echo resumed > result.txt;"
        " else echo 1 > ckpt/state; echo run >> ckpt/runs; kill -TERM $$; fi"
    )
    spec = world.spec(cmd=once, download=["result.txt"], checkpoint_dir="ckpt", checkpoint_every=1)
    async with world.runtime(client) as rt:
        job = submit(rt, spec, world.offers())
        job = await until(rt, world, job.id, step=1)
    assert (job.status, job.exit_code, job.cause) == (JobStatus.FINISHED, 0, None), job.errors
    assert (world.results / "result.txt").read_text() == "resumed\n"
    assert any("started again" in error for error in job.errors), job.errors


async def test_offers_rented_away_under_the_job_are_no_failed_attempt_and_it_searches_again(
    world: JobWorld, client: VastClient
) -> None:
    """C1's seed 1: offers rented away before our create used up ``max_offers`` and the job failed with cause
    ``capacity``. An offer gone is no attempt of ours: the job searches again (after the backoff) and rents."""
    async with world.runtime(client) as rt:
        job = submit(rt, world.spec(cmd="echo ok > ok.txt", download=["ok.txt"], max_offers=2), world.offers(2))
        world.sim.apply("no_such_ask", count=2)  # both offers of its list go to someone else first
        job = await until(rt, world, job.id, step=5)
    assert (job.status, job.cause) == (JobStatus.FINISHED, None), job.errors
    assert sum("rented away" in error for error in job.errors) == 1, job.errors
    assert (world.results / "ok.txt").read_text() == "ok\n"


async def test_a_watcher_killed_between_the_create_and_recording_it_adopts_that_instance_and_rents_no_other(
    world: JobWorld, client: VastClient
) -> None:
    """The job's claim is in the store, its create went through, and the watcher died before it recorded the
    instance: the next watcher finds the instance by the job's label and runs the job there; no second rental."""
    async with world.runtime(client) as rt:
        job = submit(rt, world.spec(cmd="echo ok > ok.txt", download=["ok.txt"]), world.offers())
        claimed = rt.store.repository(Jobs).claim(rt.clock.now())
        assert claimed is not None and claimed.status == JobStatus.CREATING
        rental = JobSpec.model_validate(claimed.spec).rental(claimed.offers[0], label=claimed.label, price=None)
        first = await client.create_instance(rental)  # then killed: the answer never reached the store
    async with world.runtime(client) as rt:
        job = await until(rt, world, job.id, step=5)
        rented = {e.instance_id for e in rt.store.events() if e.name == "appeared"}
    assert (job.status, job.instance_id, job.destroyed) == (JobStatus.FINISHED, first, True), job.errors
    assert rented == {first}, "nothing else rented"
    assert (world.results / "ok.txt").read_text() == "ok\n"


async def test_a_host_that_drops_off_while_the_results_are_collected_is_waited_for_not_destroyed(
    world: JobWorld, client: VastClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C1's seed 2: the command ended, then its host went offline as the results were downloaded; the download
    failed, the instance was destroyed anyway and the job ``finished`` without its results. The collect now stops
    there; the host back, it collects them."""
    from vastevents_handlers import jobs_remote

    real_collect = jobs_remote.collect
    offline: list[int] = []
    first_over = asyncio.Event()

    async def host_drops_off(ctx: Any, target: Any, spec: Any, job: Job, instance: Any, exit_code: Any) -> None:
        if offline:
            return await real_collect(ctx, target, spec, job, instance, exit_code)
        offline.append(instance.id)
        world.sim.apply("offline", instance=instance.id)  # as the download begins
        try:
            await real_collect(ctx, target, spec, job, instance, exit_code)
        finally:
            first_over.set()

    monkeypatch.setattr(jobs_remote, "collect", host_drops_off)
    async with world.runtime(client) as rt:
        job = submit(rt, world.spec(cmd="echo ok > ok.txt", download=["ok.txt"]), world.offers())
        await until(rt, world, job.id, lambda j: first_over.is_set(), step=5)  # that collect gave up, or went on
        assert world.sim.instance(offline[0]) is not None, "not destroyed while its results are out of reach"
        world.sim.apply("online", instance=offline[0])
        job = await until(rt, world, job.id, step=5)
    assert (job.status, job.exit_code, job.destroyed) == (JobStatus.FINISHED, 0, True), job.errors
    assert (world.results / "ok.txt").read_text() == "ok\n"


@pytest.mark.parametrize("back", ["within-grace", "before-the-next-runs", "never"])
async def test_an_instance_offline_before_running_is_waited_for_then_races_the_next_offer(
    world: JobWorld, client: VastClient, back: str
) -> None:
    """C1: a host flap while the job's instance loaded dropped it at once, and the next offer booted from scratch
    (60-100 s) where the host came back in 20-60 s. It is waited for (preempt_grace plus a poll, 75 s here); then
    the next offer is rented beside it, and whichever runs first keeps the job, the other destroyed."""
    async with world.runtime(client) as rt:
        job = submit(rt, world.spec(cmd="echo ok > ok.txt", download=["ok.txt"]), world.offers())
        job = await until(rt, world, job.id, lambda j: j.instance_id is not None, step=1)
        first = job.instance_id
        assert first is not None and job.status == JobStatus.LOADING
        while world.sim.instance(first)["actual_status"] != "loading":  # type: ignore[index]
            world.sim.advance(1)
        await until(rt, world, job.id, lambda j: True, step=40)
        world.sim.apply("offline", instance=first)  # 40 s into its load: back, it runs long before a new rental
        for _ in range(6):  # offline 60 s
            world.sim.advance(10)
            await rt.poll_once()
        assert world.sim.instance(first) is not None, "not dropped within preempt_grace"
        if back == "within-grace":
            world.sim.apply("online", instance=first)
        elif back == "before-the-next-runs":
            job = await until(rt, world, job.id, lambda j: j.instance_id not in (None, first), step=5)
            assert world.sim.instance(first)["actual_status"] == "offline", "kept beside the next offer"  # type: ignore[index]
            world.sim.apply("online", instance=first)
        job = await until(rt, world, job.id, step=5)
    assert (job.status, job.exit_code, job.destroyed) == (JobStatus.FINISHED, 0, True), job.errors
    assert (job.instance_id == first) is (back != "never"), job.errors
    assert (world.results / "ok.txt").read_text() == "ok\n"
    assert world.sim.instance_count() == 0, "the instance that lost the race destroyed too"


async def test_an_instance_recovery_replaced_before_the_command_started_moves_the_job_and_rents_nothing_else(
    world: JobWorld, client: VastClient
) -> None:
    """C1: a host went offline while the job's daemon waited for its SSH, past preempt_grace; recovery destroyed it
    and rented a replacement, and the jobs handler, seeing the instance vanish before the command started, rented
    another offer too: two instances ran the job at once, and one was left billing."""
    async with world.runtime(client, RECOVERY) as rt:
        job = submit(rt, world.spec(cmd="echo ok > ok.txt", download=["ok.txt"]), world.offers())
        job = await until(rt, world, job.id, lambda j: j.instance_id is not None, step=1)
        first = job.instance_id
        assert first is not None
        while world.sim.instance(first)["actual_status"] != "running":  # type: ignore[index]
            world.sim.advance(1)
        world.sim.apply("ssh_down", instance=first)  # seen running, never reachable: the job stays loading
        await until(rt, world, job.id, lambda j: True, step=1)
        world.sim.apply("offline", instance=first)  # and never back: recovery replaces it after preempt_grace
        job = await until(rt, world, job.id, step=15)
        rented = sorted({e.instance_id for e in rt.store.events() if e.name == "appeared"})
        (recovered,) = [e for e in rt.store.events() if e.name == "recovered"]
    assert (job.status, job.exit_code, job.destroyed) == (JobStatus.FINISHED, 0, True), job.errors
    assert rented == [first, recovered.instance_id] and job.instance_id == recovered.instance_id, job.errors
    assert (world.results / "ok.txt").read_text() == "ok\n"


async def test_a_host_back_before_the_replacement_runs_keeps_the_job_and_the_replacement_is_destroyed(
    world: JobWorld, client: VastClient
) -> None:
    """C1: a host offline past preempt_grace was destroyed before its replacement was rented, so a flap of 40 s
    cost the job a new rental's boot. Now the two race: the host is back first, so the job resumes there from its
    checkpoint and the replacement is destroyed before it runs."""
    async with world.runtime(client, RECOVERY) as rt:
        first = await checkpointed(rt, world, submit(rt, checkpointed_spec(world), world.offers()).id)
        world.sim.apply("offline", instance=first.instance_id)
        await until(rt, world, first.id, lambda j: any(e.name == "recovered" for e in rt.store.events()), step=5)
        (recovered,) = [e for e in rt.store.events() if e.name == "recovered"]
        assert world.sim.instance(recovered.instance_id or 0)["actual_status"] != "running"  # type: ignore[index]
        world.sim.apply("online", instance=first.instance_id)
        job = await until(rt, world, first.id, step=1)
        started = {e.instance_id for e in rt.store.events() if e.name == "job_started"}
    assert (job.status, job.exit_code, job.instance_id) == (JobStatus.FINISHED, 0, first.instance_id), job.errors
    assert world.sim.instance(recovered.instance_id or 0) is None and started == {first.instance_id}
    assert world.sim.instance_count() == 0
    assert (world.results / "result.txt").read_text() == "resumed\n", "resumed from the checkpoint on its host"
