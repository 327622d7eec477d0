"""The job runner end to end: the real runtime, the simulator over HTTP, real sshd hosts, real SQLite."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from jobworld import JobWorld, job_world, submit
from sshkit import FAST, USER, needs_openssh, register

from vastevents import Cause, HostHistory, Hosts, Job, Jobs, SshTarget
from vastevents.clock import ManualClock
from vastevents.jobspec import JobSpec, pack_dir
from vastevents.runtime import Runtime
from vastevents.sim import Simulator
from vastevents.ssh import ParamikoSsh
from vastevents.vast import VastClient

pytestmark = [pytest.mark.ssh, needs_openssh]

RECOVERY = """
[handlers.recovery]
use = "recovery"
min_reliability = 0.9
strikes_to_block = 1
"""
"""Recovery too: it strikes hosts for a job_failed with cause host_unfit, and must rent nothing for a job's own."""


@pytest.fixture
def world(tmp_path: Path) -> Iterator[JobWorld]:
    with job_world(tmp_path, JobWorld) as w:
        yield w


@pytest.fixture
async def client(world: JobWorld) -> AsyncIterator[VastClient]:
    async with VastClient(world.sim.api_key, world.sim.url) as vast:
        yield vast


async def until(
    rt: Runtime,
    world: JobWorld,
    job_id: int,
    done: str | None = None,
    seconds: float = 60.0,
    moved_from: int | None = None,
) -> Job:
    """Poll (the simulator moves 15 s per cycle) until the job is final (or reaches `done`, on another instance
    than `moved_from` if given); bounded real wait."""
    jobs = rt.store.repository(Jobs)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    first = True
    while loop.time() < deadline:
        await rt.poll_once(all_periodic=first)
        first = False
        job = jobs.get(job_id)
        assert job is not None
        if (done is None and job.done and job.status != "collecting") or (
            job.status == done and (moved_from is None or job.instance_id not in (None, moved_from))
        ):
            return job
        world.sim.advance(15)
        await asyncio.sleep(0.05)  # the job runs for real on the sshd host
    raise AssertionError(f"job {job_id} still {jobs.get(job_id)} after {seconds}s")


async def test_a_job_uploads_runs_collects_and_destroys(world: JobWorld, client: VastClient) -> None:
    inputs = world.tmp / "in"
    inputs.mkdir()
    payload = os.urandom(200_000)
    (inputs / "data.bin").write_bytes(payload)
    cmd = "mkdir -p 'out dir' && cp data.bin 'out dir/copy.bin' && echo \"it's done: $JOB_NOTE\" | tee result.txt"
    spec = world.spec(upload=str(inputs), cmd=cmd, download=["out dir", "result.txt"], env={"JOB_NOTE": "a 'b' c"})
    async with world.runtime(client) as rt:
        job = submit(rt, spec, world.offers())
        job = await until(rt, world, job.id)
        names = [e.name for e in rt.store.events() if e.name.startswith("job_")]
    assert job.status == "finished" and job.exit_code == 0 and job.destroyed, job
    assert names == ["job_started", "job_finished"]
    out = world.tmp / "out" / f"job-{job.id}"
    assert (out / "out dir" / "copy.bin").read_bytes() == payload
    assert (out / "result.txt").read_text() == "it's done: a 'b' c\n"
    assert "it's done" in (out / "job.log").read_text()


async def test_the_time_a_host_takes_to_answer_ssh_is_learned_for_choosing_offers(
    world: JobWorld, client: VastClient
) -> None:
    """Its SSH answers 90 simulated seconds after it runs: the host history (what expected_cost ranks by) says so,
    plus the cycles the test's watcher takes to look again (15 s each), far less than its 600 s ``ssh_wait``."""
    ask = world.offers(1)[0]
    with world.sim.world() as sim:
        machine = next(int(row["machine_id"]) for row in sim.search({}) if row["id"] == ask)
        sim.machines[machine].ssh_delay_s = 90.0
    async with world.runtime(client) as rt:
        job = await until(rt, world, submit(rt, world.spec(cmd="true"), [ask]).id, seconds=90)
        learned = rt.store.repository(HostHistory).stats(rt.store.journal, rt.clock.now())[machine]
    assert job.status == "finished", job
    assert len(learned.s_to_ssh) == 1 and 90 <= learned.s_to_ssh[0] < 600, learned


async def test_a_submitted_job_is_claimed_searched_unpacked_and_run_with_results_under_the_state_dir(
    world: JobWorld, client: VastClient
) -> None:
    """What ``run --submit`` queues: no offers (the claimer searches), the upload as an archive, a relative out."""
    inputs = world.tmp / "in"
    inputs.mkdir()
    (inputs / "data.txt").write_text("from a teammate\n")
    spec = JobSpec.model_validate(
        {"image": "pytorch/pytorch", "ssh_user": USER, "cmd": "cp data.txt copy.txt", "download": ["copy.txt"]}
    )
    async with world.runtime(client) as rt:
        jobs = rt.store.repository(Jobs)
        job = jobs.submit(spec.to_json(), [], "vastevents", rt.clock.now(), submitted_by="ana@laptop",
                          inputs=pack_dir(inputs))  # fmt: skip
        job = await until(rt, world, job.id)
    home = world.store_path.parent / "jobs" / f"job-{job.id}"
    assert job.status == "finished" and job.destroyed and job.offers, job
    assert job.results_dir == str(home / "results")
    assert (home / "results" / "copy.txt").read_text() == "from a teammate\n"


async def test_a_submitted_job_over_its_max_cost_is_failed_before_renting(world: JobWorld, client: VastClient) -> None:
    spec = JobSpec.model_validate({"image": "pytorch/pytorch", "cmd": "true", "max_cost": 0.0001})
    async with world.runtime(client) as rt:
        jobs = rt.store.repository(Jobs)
        job = jobs.submit(spec.to_json(), [], "vastevents", rt.clock.now(), submitted_by="ana@laptop")
        job = await until(rt, world, job.id)
        failed = [e.detail for e in rt.store.events() if e.name == "job_failed"]
    assert job.status == "failed" and job.tried == [] and job.instance_id is None
    assert failed and "over max_cost" in (failed[0] or "")


async def test_a_job_failing_before_it_starts_is_not_rented_again_when_its_instance_vanishes(
    world: JobWorld, client: VastClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instance of a job that failed (here: its upload dir is gone) is destroyed. A watcher delivers that
    instance's ``vanished`` while the destroy is still being checked, so the job must already have left
    ``loading`` (which a vanished instance sends back to renting) when the destroy starts."""
    from vastevents_handlers import jobs_remote

    during_destroy: list[str] = []
    real_destroy = jobs_remote.destroy

    async def destroy(ctx: Any, instance: Any) -> bool:
        job = ctx.store.repository(Jobs).by_label(instance.label)
        during_destroy.append(job.status)
        return await real_destroy(ctx, instance)

    monkeypatch.setattr(jobs_remote, "destroy", destroy)
    spec = world.spec(cmd="true", upload=str(world.tmp / "deleted"))
    async with world.runtime(client) as rt:
        job = await until(rt, world, submit(rt, spec, world.offers()).id)
        for _ in range(3):  # a few more cycles: nothing is rented after the failure
            await rt.poll_once(all_periodic=True)
            world.sim.advance(15)
        rented = [e.instance_id for e in rt.store.events() if e.name == "appeared"]
    assert job.status == "failed" and job.destroyed and len(job.tried) == 1, job
    assert any("not a directory" in error for error in job.errors)
    assert during_destroy == ["collecting"] and len(rented) == 1


async def test_a_failing_job_reports_its_exit_code_keeps_the_log_and_is_destroyed(
    world: JobWorld, client: VastClient
) -> None:
    spec = world.spec(cmd="echo about to fail; exit 7", download=["missing.txt"])
    async with world.runtime(client) as rt:
        job = await until(rt, world, submit(rt, spec, world.offers()).id)
        failed = [e for e in rt.store.events() if e.name == "job_failed"]
    assert (job.status, job.exit_code, job.destroyed) == ("failed", 7, True)
    assert failed[0].detail.startswith("exit code 7")
    assert any("missing.txt" in error for error in job.errors)
    assert (world.tmp / "out" / f"job-{job.id}" / "job.log").read_text() == "about to fail\n"


async def test_a_stuck_offer_is_dropped_and_the_next_one_used(world: JobWorld, client: VastClient) -> None:
    offers = world.offers()
    async with world.runtime(client) as rt:
        job = submit(rt, world.spec(cmd="echo ok"), offers)
        first = await until(rt, world, job.id, done="loading")
        assert first.instance_id is not None
        world.sim.apply("stuck_loading", instance=first.instance_id)
        job = await until(rt, world, job.id)
    assert job.status == "finished" and job.tried[:2] == offers[:2]
    assert any("stuck loading" in error for error in job.errors)


async def test_a_host_without_gpu_fails_preflight_and_the_next_offer_runs_the_job(
    world: JobWorld, client: VastClient
) -> None:
    offers = world.offers()
    with world.sim.world() as w:
        machine = next(a.machine_id for a in w.asks.values() if a.id == offers[0])
    world.sim.break_gpus(machine)
    async with world.runtime(client) as rt:
        job = await until(rt, world, submit(rt, world.spec(cmd="nvidia-smi -L || true; echo ran"), offers).id)
        failed = [e.detail for e in rt.store.events() if e.name == "job_failed"]
    assert job.status == "finished" and len(job.tried) == 2, job.errors
    assert failed and failed[0].startswith("preflight: no GPU visible")


async def test_the_watcher_killed_mid_job_resumes_it_on_one_instance(world: JobWorld, client: VastClient) -> None:
    spec = world.spec(cmd="sleep 2; echo finished > done.txt", download=["done.txt"])
    async with world.runtime(client) as rt:
        job = submit(rt, spec, world.offers())
        running = await until(rt, world, job.id, done="running")
    async with world.runtime(client) as rt:
        job = await until(rt, world, job.id)
        started = [e for e in rt.store.events() if e.name == "job_started"]
    assert job.status == "finished" and job.instance_id == running.instance_id and len(started) == 1
    assert (world.tmp / "out" / f"job-{job.id}" / "done.txt").read_text() == "finished\n"


async def test_a_replacement_under_the_same_label_resumes_the_job_from_its_checkpoint(
    world: JobWorld, client: VastClient
) -> None:
    cmd = "mkdir -p ckpt; if [ -f ckpt/state ]; then echo resumed > result.txt; else echo 1 > ckpt/state; sleep 60; fi"
    spec = world.spec(cmd=cmd, download=["result.txt"], checkpoint_dir="ckpt", checkpoint_every=1)
    local = world.tmp / "out" / "job-1" / "ckpt" / "state"  # the first job of the store
    async with world.runtime(client) as rt:
        job = submit(rt, spec, world.offers())
        first = await until(rt, world, job.id, done="running")
        assert first.instance_id is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not local.exists() and loop.time() < deadline:
            await rt.poll_once()
            await asyncio.sleep(0.05)
        assert local.read_text() == "1\n", "the checkpoint dir was synced back"
        world.sim.preempt(first.instance_id)
        replacement = world.sim.create_instance(label=first.label, pull=10)  # what the recovery handler does
        world.sim.apply("destroy", instance=first.instance_id)
        job = await until(rt, world, job.id)
        started = [e.instance_id for e in rt.store.events() if e.name == "job_started"]
    assert job.status == "finished" and job.instance_id == replacement and job.destroyed
    assert started == [first.instance_id, replacement]
    assert (world.tmp / "out" / f"job-{job.id}" / "result.txt").read_text() == "resumed\n"


async def test_a_watcher_dying_between_the_destroy_and_the_outcome_leaves_no_job_hanging(
    world: JobWorld, client: VastClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first watcher destroys the finished job's instance and dies before recording the outcome; the next
    one finds the job winding down with its instance gone and records the end (with the exit code the monitor
    saw) instead of leaving it ``collecting`` forever."""
    from vastevents_handlers import jobs_remote

    real_destroy = jobs_remote.destroy
    destroyed = asyncio.Event()

    async def destroy_then_hang(ctx: Any, instance: Any) -> bool:
        await real_destroy(ctx, instance)
        destroyed.set()
        await asyncio.Event().wait()  # the watcher is killed here
        raise AssertionError("unreachable")

    monkeypatch.setattr(jobs_remote, "destroy", destroy_then_hang)
    async with world.runtime(client) as rt:
        job = submit(rt, world.spec(cmd="echo ok > out.txt", download=["out.txt"]), world.offers())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not destroyed.is_set():
            assert loop.time() < deadline, "the job reached its destroy"
            await rt.poll_once()
            world.sim.advance(15)
            await asyncio.sleep(0.05)
        assert rt.store.repository(Jobs).get(job.id).status == "collecting"  # type: ignore[union-attr]
    monkeypatch.setattr(jobs_remote, "destroy", real_destroy)
    async with world.runtime(client) as rt:
        job = await until(rt, world, job.id)  # 15 simulated seconds a cycle: past the 10 min grace in 41
    assert (job.status, job.exit_code, job.destroyed) == ("finished", 0, True), job
    assert (
        job.results_dir == str(world.tmp / "out" / f"job-{job.id}")
        and (world.tmp / "out" / f"job-{job.id}" / "out.txt").read_text() == "ok\n"
    )
    assert any("winding the job down" in error for error in job.errors)


async def test_a_submitted_job_is_ranked_as_run_ranks_it_and_rented_on_the_terms_it_was_chosen_at(
    world: JobWorld, client: VastClient
) -> None:
    """No offers given (``run --submit``): the watcher ranks them by ``[jobs] choose`` and rents the first on its
    terms, a bid for an interruptible job."""
    spec = world.spec(cmd="true", interruptible=True)
    async with world.runtime(client, '[jobs]\nchoose = "second_cheapest"\n') as rt:
        job = submit(rt, spec, [])
        await rt.poll_once(all_periodic=True)
        job = rt.store.repository(Jobs).get(job.id) or job
        by_price = sorted(job.offers, key=lambda ask: job.terms[ask].dph)
        assert len(by_price) > 2 and job.offers[0] == by_price[1] and job.offers[-1] == by_price[0]
        terms = job.terms[job.offers[0]]
        assert terms.bid is not None and job.instance_id is not None
        rented = world.sim.instance(job.instance_id)
        assert rented is not None and rented["is_bid"] and rented["dph_base"] == pytest.approx(terms.bid, rel=1e-3)
        assert (await until(rt, world, job.id)).status == "finished"


async def test_a_job_over_max_duration_is_terminated_and_fails_with_cause_timeout(
    world: JobWorld, client: VastClient
) -> None:
    """The command's process group gets SIGTERM first (then SIGKILL): a command that traps it can save its work."""
    cmd = "trap 'echo terminated > term.txt; exit 143' TERM; sleep 600 & wait"
    spec = world.spec(cmd=cmd, download=["term.txt"], max_duration=60)
    async with world.runtime(client) as rt:
        job = await until(rt, world, submit(rt, spec, world.offers()).id)
    assert (job.status, job.exit_code, job.cause) == ("failed", 124, Cause.TIMEOUT), job.errors
    assert (world.tmp / "out" / f"job-{job.id}" / "term.txt").read_text() == "terminated\n"


async def test_a_submitted_job_that_could_break_a_budget_fails_before_renting(
    world: JobWorld, client: VastClient
) -> None:
    spec = world.spec(cmd="true", max_duration=7200)
    async with world.runtime(client, '[handlers.billing]\nuse = "billing"\nbudget_usd = 0.001\n') as rt:
        job = submit(rt, spec, [])
        job = await until(rt, world, job.id)
        assert job.status == "failed" and job.cause == "capacity" and job.instance_id is None
        assert "budget_usd" in (rt.store.events(name="job_failed")[-1].detail or "")
        assert world.sim.state()["spend"]["instances"] == [], "nothing was rented"


async def test_a_preflight_import_failure_is_the_jobs_fault_no_strike_no_replacement_nothing_rented(
    world: JobWorld, client: VastClient
) -> None:
    """A module the image lacks is the job's own error (``job_error``): the job fails, its instance is destroyed,
    its host is not struck, the next offer is not tried and recovery rents no replacement."""
    spec = world.spec(cmd="echo never", preflight={"imports": ["no_such_module_here"]})
    async with world.runtime(client, RECOVERY) as rt:
        job = await until(rt, world, submit(rt, spec, world.offers()).id)
        for _ in range(4):  # a few more cycles: recovery had its chance to react
            await rt.poll_once(all_periodic=True)
            world.sim.advance(15)
        events = rt.store.events()
        strikes = rt.store.repository(Hosts).records(rt.clock.now())
    failed = [e for e in events if e.name == "job_failed"]
    assert (job.status, job.cause, job.destroyed, len(job.tried)) == ("failed", Cause.JOB_ERROR, True, 1), job
    assert [(e.cause, e.detail.startswith("preflight: cannot import no_such_module_here")) for e in failed] == [
        (Cause.JOB_ERROR, True)
    ]
    assert strikes == [] and not [e for e in events if e.name in ("recovered", "recovery_failed", "host_blocked")]
    assert len([e for e in events if e.name == "appeared"]) == 1 and world.sim.instance_count() == 0


class CountingSsh(ParamikoSsh):
    """The real SSH edge, counting its connection attempts per instance."""

    def __init__(self, known_hosts: Path, key: Path) -> None:
        super().__init__(known_hosts, key_file=key, settings=FAST)
        self.attempts: Counter[int | None] = Counter()

    def _connect_once(self, target: SshTarget) -> paramiko.SSHClient:
        self.attempts[target.instance_id] += 1
        return super()._connect_once(target)


def _ended(world: JobWorld, instance_id: int) -> bool:
    with world.sim.world() as w:
        return instance_id in w.ended


def _recorded(known_hosts: Path, instance_id: int) -> str:
    keys = paramiko.HostKeys(str(known_hosts))
    key = keys.lookup(f"vast-instance-{instance_id}")["ssh-ed25519"]
    return f"ssh-ed25519 {key.fingerprint}"


async def test_a_changed_host_key_drops_that_instance_at_once_strikes_its_host_and_the_next_offer_runs_the_job(
    world: JobWorld, client: VastClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Every simulator numbers its instances from the same id and each run has its own host key, so the
    watcher's known_hosts still holds the key an earlier run's instance presented under the id the job's first
    instance gets: that instance is not the host recorded. One SSH attempt, destroyed at once (not retried for
    ``ssh_wait``), a WARNING naming both keys, its host struck, and the next offer runs the job."""
    ssh = CountingSsh(world.tmp / "known_hosts", world.key)
    with Simulator(clock=ManualClock(), ssh=True) as earlier:
        register(earlier, world.key)
        reused = earlier.create_instance(label="earlier-run")
        earlier.advance(120)
        row = earlier.instance(reused)
        assert row is not None and row["actual_status"] == "running"
        await ssh.run(SshTarget(row["ssh_host"], int(row["ssh_port"]), USER, reused), "true")
        earlier.apply("destroy", instance=reused)
    recorded = _recorded(world.tmp / "known_hosts", reused)
    ssh.attempts.clear()
    world.ssh.close()
    world.ssh = ssh
    offers = world.offers()
    caplog.set_level("INFO")
    async with world.runtime(client, RECOVERY) as rt:
        job = submit(rt, world.spec(cmd="echo ran > ran.txt", download=["ran.txt"]), offers)
        assert (await until(rt, world, job.id, done="loading")).instance_id == reused
        while (world.sim.instance(reused) or {}).get("actual_status") != "running":
            world.sim.advance(5)
        await rt.poll_once()  # it is seen running: the job's daemon connects, once
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not _ended(world, reused):  # simulated time stands still until it is destroyed
            assert loop.time() < deadline, "the instance presenting another host key was destroyed"
            await asyncio.sleep(0.05)
        job = await until(rt, world, job.id)
        failed = [e for e in rt.store.events() if e.name == "job_failed"]
        struck = rt.store.repository(Hosts).records(rt.clock.now())
    with world.sim.world() as w:
        first = w.ended[reused]
        second = w.ended[job.instance_id or 0]
    assert job.status == "finished" and job.tried[:2] == offers[:2] and second.id != reused, job
    assert (world.tmp / "out" / f"job-{job.id}" / "ran.txt").read_text() == "ran\n"
    running = next(at for at, status in first.history if status == "running")
    assert first.ended_at is not None and first.ended_at - running <= 15, first.history  # at the poll that saw it
    assert ssh.attempts[reused] == 1, ssh.attempts
    presented = _recorded(world.tmp / "known_hosts", second.id)  # the world's host key, recorded on first use
    assert presented != recorded
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and str(reused) in r.getMessage()]
    assert any(presented in message and recorded in message for message in warned), warned
    assert [e.cause for e in failed] == [Cause.HOST_UNFIT] and failed[0].instance_id == reused
    assert [(h.machine_id, h.strikes) for h in struck] == [(first.machine_id, 1)]


async def test_a_host_key_changing_under_a_running_job_moves_the_job_to_the_next_offer(
    world: JobWorld, client: VastClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The host of a running job starts presenting another SSH host key (the simulator's ``host_key`` fault):
    the next checkpoint sync, a fresh connection, finds it; that instance is destroyed, its host struck, and the
    job runs on the next offer. The command waits for a file only the test puts on the second instance."""
    cmd = "while [ ! -e go ]; do sleep 0.1; done; echo ok > result.txt"
    spec = world.spec(cmd=cmd, download=["result.txt"], checkpoint_dir="ckpt", checkpoint_every=1)
    offers = world.offers()
    caplog.set_level("INFO")
    async with world.runtime(client, RECOVERY) as rt:
        job = submit(rt, spec, offers)
        first = await until(rt, world, job.id, done="running")
        assert first.instance_id is not None
        world.sim.apply("host_key", instance=first.instance_id)
        moved = await until(rt, world, job.id, done="running", moved_from=first.instance_id)
        assert moved.instance_id is not None and world.sim.instance(first.instance_id) is None
        go = f"touch {JobSpec.model_validate(spec).workdir}/go"
        assert (await world.on_host(moved.instance_id, go)).exit_code == 0
        job = await until(rt, world, job.id)
        failed = [e for e in rt.store.events() if e.name == "job_failed"]
        struck = rt.store.repository(Hosts).records(rt.clock.now())
    assert job.status == "finished" and job.tried[:2] == offers[:2], job
    assert (world.tmp / "out" / f"job-{job.id}" / "result.txt").read_text() == "ok\n"
    assert [(e.cause, e.instance_id) for e in failed] == [(Cause.HOST_UNFIT, first.instance_id)]
    assert [h.strikes for h in struck] == [1]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"vast-instance-{first.instance_id} presented the host key ssh-ed25519 SHA256:" in m for m in warned)


async def test_an_instance_whose_ssh_never_answers_is_host_unfit_after_ssh_wait_and_the_next_offer_runs_the_job(
    world: JobWorld, client: VastClient
) -> None:
    """SSH never up within ``ssh_wait`` (10 min) is the host's fault: ``job_failed`` with cause ``host_unfit``
    strikes it, its instance is destroyed and the next offer runs the job."""
    offers = world.offers()
    with world.sim.world() as w:
        machine = next(a.machine_id for a in w.asks.values() if a.id == offers[0])
        w.machines[machine].ssh_delay_s = None  # its sshd never starts
    async with world.runtime(client, RECOVERY) as rt:
        job = await until(rt, world, submit(rt, world.spec(cmd="echo ran"), offers).id, seconds=180)
        failed = [e for e in rt.store.events() if e.name == "job_failed"]
        struck = rt.store.repository(Hosts).records(rt.clock.now())
    assert job.status == "finished" and job.tried[:2] == offers[:2], job
    assert [(e.cause, "SSH not ready after 600s" in e.detail) for e in failed] == [(Cause.HOST_UNFIT, True)]
    assert [(h.machine_id, h.strikes) for h in struck] == [(machine, 1)]
