"""The jobs repository and queue on both backends: every column round trips, claims (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL), stale claims, upload archives, and following a job (LISTEN/NOTIFY on PostgreSQL, re-reading on
SQLite)."""

from __future__ import annotations

import io
import tarfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from stores import Opener

from vastevents import Cause, JobStatus
from vastevents.jobspec import pack_dir, unpack_dir
from vastevents.store import Job, Jobs, PostgresStore, SqlStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = {"image": "pytorch/pytorch", "cmd": "true"}


def queue(store: SqlStore, count: int) -> list[Job]:
    jobs = store.repository(Jobs)
    return [jobs.submit(SPEC, [], "vastevents", T0, submitted_by="ana@laptop") for _ in range(count)]


def test_a_job_round_trips_every_column_and_only_unfinished_ones_are_listed_as_such(store: SqlStore) -> None:
    jobs = store.repository(Jobs)
    spec = {"image": "python:3.11", "cmd": "python train.py", "env": {"SEED": "1"}}
    first = jobs.submit(spec, [11, 12], "vastevents", T0)
    second = jobs.submit({"image": "x"}, [], "team", T0 + timedelta(seconds=1))
    assert first.label == f"vastevents:job-{first.id}" and first.status == "pending" and first.spec == spec
    assert (first.offers, first.created_at, first.errors) == ([11, 12], T0, [])
    assert first.destroyed is False and first.submitted_by is None and first.claimed_at is None
    assert second.id > first.id and second.label == f"team:job-{second.id}"
    assert jobs.by_label(first.label) == first and jobs.by_label(None) is None and jobs.get(second.id + 1) is None

    started = T0 + timedelta(minutes=1)
    done = jobs.update(
        first.id, status=JobStatus.FAILED, instance_id=4242, tried=[11], attempts=1, exit_code=0, results_dir="out",
        gpu_name="RTX 4090", dph_total=0.305, cost_usd=0.0123456789, destroyed=True, started_at=started,
        finished_at=started + timedelta(hours=1), cause=Cause.JOB_ERROR, drops=2,
        avoid=[5, 6],
    )  # fmt: skip
    assert jobs.get(first.id) == done and done.done
    assert (done.status, done.cause, done.drops, done.avoid) == (JobStatus.FAILED, Cause.JOB_ERROR, 2, [5, 6])
    assert done.to_json()["cause"] == "job_error" and done.to_json()["status"] == "failed"
    assert (done.instance_id, done.tried, done.exit_code, done.results_dir) == (4242, [11], 0, "out")
    assert (done.dph_total, done.cost_usd, done.runtime_s(T0)) == (0.305, 0.0123456789, 3600.0)
    assert done.destroyed is True
    assert jobs.add_error(first.id, "one").errors == ["one"]
    assert jobs.add_error(first.id, "two").errors == ["one", "two"]
    assert [job.id for job in jobs.list()] == [first.id, second.id]
    assert [job.id for job in jobs.list(unfinished=True)] == [second.id]
    with pytest.raises(ValueError, match="no column 'colour'"):
        jobs.update(second.id, colour="red")
    with pytest.raises(ValueError, match="nothing to update"):
        jobs.update(second.id)


def test_claims_take_the_oldest_pending_job_once(opener: Opener) -> None:
    store = opener()
    first, second = queue(store, 2)
    jobs = store.repository(Jobs)
    claimed = jobs.claim(T0)
    assert claimed is not None and (claimed.id, claimed.status, claimed.claimed_at) == (first.id, "creating", T0)
    assert jobs.claim(T0, first.id) is None  # no longer pending
    again = jobs.claim(T0)
    assert again is not None and again.id == second.id
    assert jobs.claim(T0) is None
    assert [job.submitted_by for job in jobs.list()] == ["ana@laptop", "ana@laptop"]


def test_a_claim_held_in_another_transaction_is_skipped_not_waited_for(pg_url: str) -> None:
    holder, other = PostgresStore(pg_url), PostgresStore(pg_url)
    try:
        first, second = queue(holder, 2)
        with holder.db.transaction():  # the leader is mid-claim: its row lock is held until it commits
            held = holder.repository(Jobs).claim(T0)
            assert held is not None and held.id == first.id
            taken = other.repository(Jobs).claim(T0)  # SKIP LOCKED: the next job, at once
            assert taken is not None and taken.id == second.id
            assert other.repository(Jobs).claim(T0) is None
        assert [job.status for job in other.repository(Jobs).list()] == ["creating", "creating"]
    finally:
        holder.close()
        other.close()


def test_concurrent_claimers_take_every_job_exactly_once(pg_url: str) -> None:
    stores = [PostgresStore(pg_url) for _ in range(4)]
    try:
        submitted = {job.id for job in queue(stores[0], 40)}
        taken: list[list[int]] = [[] for _ in stores]

        def claim_all(index: int) -> None:
            jobs = stores[index].repository(Jobs)
            while (job := jobs.claim(T0)) is not None:
                taken[index].append(job.id)

        threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(len(stores))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        every = [job_id for ids in taken for job_id in ids]
        assert sorted(every) == sorted(submitted)  # all claimed, none twice
    finally:
        for store in stores:
            store.close()


def test_a_released_claim_is_claimed_again_only_once_its_backoff_is_over(opener: Opener) -> None:
    store = opener()
    jobs = store.repository(Jobs)
    (job,) = queue(store, 1)
    assert jobs.claim(T0) is not None
    released = jobs.release(job.id, T0 + timedelta(seconds=10), failed=True)
    assert (released.status, released.failures, released.retry_at) == ("pending", 1, T0 + timedelta(seconds=10))
    assert jobs.claim(T0 + timedelta(seconds=9)) is None and jobs.claim(T0 + timedelta(seconds=9), job.id) is None
    claimed = jobs.claim(T0 + timedelta(seconds=10))
    assert claimed is not None and claimed.status == JobStatus.CREATING
    assert jobs.release(job.id).failures == 1  # given back without a failure: the count stays


def test_a_cancel_request_is_recorded_once_and_never_on_a_job_that_ended(opener: Opener) -> None:
    store = opener()
    jobs = store.repository(Jobs)
    running, done = queue(store, 2)
    jobs.update(done.id, status=JobStatus.FINISHED)
    requested = jobs.request_cancel(running.id, T0)
    assert requested is not None and requested.cancel_requested_at == T0
    again = jobs.request_cancel(running.id, T0 + timedelta(seconds=5))
    assert again is not None and again.cancel_requested_at == T0
    ended = jobs.request_cancel(done.id, T0)
    assert ended is not None and ended.cancel_requested_at is None
    assert jobs.request_cancel(done.id + 1, T0) is None


def test_an_upload_archive_travels_through_the_store_and_unpacks_safely(opener: Opener, tmp_path: Path) -> None:
    source = tmp_path / "in"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "data.bin").write_bytes(bytes(range(256)) * 100)
    (source / "run.sh").write_text("echo hi\n")
    store = opener()
    jobs = store.repository(Jobs)
    job = jobs.submit(SPEC, [], "vastevents", T0, inputs=pack_dir(source))
    archive = jobs.inputs(job.id)
    assert archive is not None and jobs.inputs(job.id + 1) is None
    unpack_dir(archive, tmp_path / "out")
    assert (tmp_path / "out" / "sub" / "data.bin").read_bytes() == bytes(range(256)) * 100
    assert (tmp_path / "out" / "run.sh").read_text() == "echo hi\n"
    with pytest.raises(ValueError, match="MiB"):
        jobs.submit(SPEC, [], "vastevents", T0, inputs=b"x" * (256 * 1024 * 1024 + 1))


def test_an_archive_escaping_its_directory_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"no"))
    with pytest.raises(tarfile.OutsideDestinationError):
        unpack_dir(buffer.getvalue(), tmp_path / "jobs" / "input")
    assert not (tmp_path / "jobs" / "escaped.txt").exists()
    assert list((tmp_path / "jobs").iterdir()) == []


def test_following_a_job_yields_each_change_until_it_ends(opener: Opener) -> None:
    writer, reader = opener(), opener()
    (job,) = queue(writer, 1)
    seen: list[str] = []
    first = threading.Event()

    def follow() -> None:
        for update in reader.repository(Jobs).follow(job.id, poll=0.05):
            seen.append(update.status)
            first.set()

    thread = threading.Thread(target=follow)
    thread.start()
    assert first.wait(30)
    jobs = writer.repository(Jobs)
    for status in ("creating", "loading", "running"):
        jobs.update(job.id, status=status)
        _wait_for(lambda: seen[-1] == status, f"the follower to see {status}")  # noqa: B023
    jobs.update(job.id, status="finished", exit_code=0)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert seen == ["pending", "creating", "loading", "running", "finished"]


def test_on_postgresql_a_follower_is_woken_by_notify_not_by_its_re_read(pg_url: str) -> None:
    """The safety re-read is at least 30 s apart; the change arrives long before: it came by NOTIFY."""
    writer, reader = PostgresStore(pg_url), PostgresStore(pg_url)
    try:
        (job,) = queue(writer, 1)
        seen: list[str] = []
        started = threading.Event()

        def follow() -> None:
            for update in reader.repository(Jobs).follow(job.id):
                seen.append(update.status)
                started.set()

        thread = threading.Thread(target=follow)
        thread.start()
        assert started.wait(30)
        writer.repository(Jobs).update(job.id, status="cancelled")
        thread.join(timeout=20)
        assert not thread.is_alive(), "a NOTIFY wakes the follower before its 30 s re-read"
        assert seen == ["pending", "cancelled"]
    finally:
        writer.close()
        reader.close()


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    event = threading.Event()
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        event.wait(0.02)
    raise AssertionError(f"timed out waiting for {what}")
