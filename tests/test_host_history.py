"""Host history folded from the journal, on both backends: each event counted once, whoever folds it and when."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from stores import Opener
from typer.testing import CliRunner

from vastevents import Cause, Event, HostHistory, Instance
from vastevents.cli import app
from vastevents.store import SqlStore

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def view(instance_id: int, status: str, *, machine: int = 7, bid: bool = False, **fields: object) -> Instance:
    return Instance.model_validate({
        "id": instance_id, "actual_status": status, "label": f"vastevents:job-{instance_id}", "machine_id": machine,
        "host_id": machine * 10, "is_bid": bid, "dph_total": 0.41, "dph_base": 0.4 if not bid else 0.3,
        "min_bid": 0.25, "start_date": (T0 - timedelta(seconds=5)).timestamp(), **fields,
    })  # fmt: skip


def event(name: str, seconds: float, instance: Instance, *, old: str | None = None, new: str | None = None,
          cause: Cause | None = None, catch_up: bool = False) -> Event:  # fmt: skip
    return Event(name=name, instance_id=instance.id, old=old, new=new, at=at(seconds), instance=instance,
                 cause=cause, catch_up=catch_up)  # fmt: skip


def finished_job(instance_id: int, machine: int = 7) -> list[Event]:
    """A rental that boots in 65 s (from its creation), runs a job for ten minutes and is destroyed."""
    loading, running = view(instance_id, "loading", machine=machine), view(instance_id, "running", machine=machine)
    return [
        event("appeared", 0, loading, new="loading"),
        event("loading_to_running", 60, running, old="loading", new="running"),
        event("job_started", 100, running),
        event("job_finished", 700, running),
        event("vanished", 710, running, old="running"),
    ]


def test_a_finished_job_records_boot_ssh_price_hours_and_outcome(store: SqlStore) -> None:
    history = store.repository(HostHistory)
    store.append(finished_job(1)[:2])
    history.ssh_ready(1, at(90))
    store.append(finished_job(1)[2:])
    stats = history.stats(store.journal, at(800))
    assert list(stats) == [7]
    record = stats[7]
    assert record.to_json() == {
        "machine_id": 7,
        "host_id": 70,
        "rentals": 1,
        "median_s_to_running": 65.0,
        "median_s_to_ssh": 30.0,
        "outbids_per_hour": 0.0,
        "preflight_failures": 0,
        "jobs_finished": 1,
        "jobs_failed": 0,
        "mean_dph": 0.41,
    }
    assert record.on_demand_hours == pytest.approx(650 / 3600) and record.job_rentals == 1
    assert record.failed_starts == 0


def test_every_event_counts_once_however_often_and_by_whom_the_history_is_folded(opener: Opener) -> None:
    with opener() as store:
        store.append(finished_job(1))
        first = store.repository(HostHistory).stats(store.journal, at(800))
        assert store.repository(HostHistory).stats(store.journal, at(800)) == first
    with opener() as again:  # a restart, or another process on the same store
        again.append(finished_job(2))
        stats = again.repository(HostHistory).stats(again.journal, at(800))
    assert stats[7].rentals == 2 and stats[7].jobs_finished == 2 and stats[7].s_to_running == (65.0, 65.0)


def test_a_read_only_store_shows_what_is_journaled_without_writing(opener: Opener) -> None:
    with opener() as store:
        store.append(finished_job(1))
        store.repository(HostHistory).catch_up(store.journal)
        store.append(finished_job(2, machine=8))  # journaled after the last fold
        cursor = store.db.query("SELECT event_id FROM host_history_cursor")[0][0]
    with opener(read_only=True) as looking:
        stats = looking.repository(HostHistory).stats(looking.journal, at(800))
        assert sorted(stats) == [7, 8] and stats[8].jobs_finished == 1
    with opener() as store:
        assert store.db.query("SELECT event_id FROM host_history_cursor")[0][0] == cursor


def test_outbids_per_hour_and_the_margins_we_were_outbid_at(store: SqlStore) -> None:
    running = view(3, "running", bid=True)
    store.append([
        event("appeared", 0, view(3, "loading", bid=True), new="loading"),
        event("loading_to_running", 60, running, old="loading", new="running"),
        event("preempted", 960, view(3, "exited", bid=True), old="running", new="exited"),
        event("running_to_exited", 960, view(3, "exited", bid=True), old="running", new="exited"),
        event("exited_to_running", 1000, running, old="exited", new="running"),
        event("preempted", 1900, view(3, "exited", bid=True, dph_base=0.35), old="running", new="exited"),
        event("running_to_exited", 1900, view(3, "exited", bid=True), old="running", new="exited"),
    ])  # fmt: skip
    record = store.repository(HostHistory).stats(store.journal, at(2000))[7]
    hours = (900 + 900) / 3600
    assert record.bid_hours == pytest.approx(hours) and record.outbids == 2
    assert record.outbids_per_hour == pytest.approx(2 / hours)
    assert record.outbid_margins == pytest.approx((0.3 / 0.25 - 1, 0.35 / 0.25 - 1))
    assert record.interruptions == 0


def test_an_unfit_host_counts_a_preflight_failure_and_the_time_the_failed_start_billed(store: SqlStore) -> None:
    running = view(4, "running")
    store.append([
        event("appeared", 0, view(4, "loading"), new="loading"),
        event("loading_to_running", 60, running, old="loading", new="running"),
        event("job_failed", 180, running, cause=Cause.HOST_UNFIT),
        event("vanished", 200, running, old="running"),
        *finished_job(5),
        event("job_failed", 900, view(5, "running"), cause=Cause.CANCELLED),
    ])  # fmt: skip
    record = store.repository(HostHistory).stats(store.journal, at(1000))[7]
    assert record.preflight_failures == 1 and record.failed_starts == 1
    assert record.failed_start_s == pytest.approx(140.0)
    assert record.jobs_failed == 0 and record.jobs_finished == 1 and record.job_rentals == 2


def test_an_instance_first_seen_running_gives_no_boot_time_but_its_hours_count(store: SqlStore) -> None:
    running = view(6, "running")
    store.append([
        event("appeared", 0, running, new="running", catch_up=True),
        event("running_to_exited", 3600, view(6, "exited"), old="running", new="exited"),
    ])  # fmt: skip
    record = store.repository(HostHistory).stats(store.journal, at(4000))[7]
    assert record.s_to_running == () and record.on_demand_hours == pytest.approx(1.0)
    assert record.median_s_to_running is None


def test_stats_of_some_machines_only(store: SqlStore) -> None:
    store.append([*finished_job(1, machine=7), *finished_job(2, machine=8), *finished_job(3, machine=9)])
    history = store.repository(HostHistory)
    assert sorted(history.stats(store.journal, at(800), machines=[8, 9, 11])) == [8, 9]
    assert history.stats(store.journal, at(800), machines=[]) == {}


def test_hosts_history_prints_each_machine_as_the_contract_says(opener: Opener, tmp_path: Path) -> None:
    with opener() as store:
        store.append([*finished_job(1, machine=7), *finished_job(2, machine=8)])
    path = tmp_path / "vastevents.toml"
    path.write_text(f'[store]\npath = "{opener.path}"\n')
    done = CliRunner().invoke(app, ["hosts", "--history", "--json", "--config", str(path)], env=opener.env)
    assert done.exit_code == 0, done.output
    machines = json.loads(done.stdout)
    assert [m["machine_id"] for m in machines] == [7, 8]
    assert set(machines[0]) == {
        "machine_id",
        "host_id",
        "rentals",
        "median_s_to_running",
        "median_s_to_ssh",
        "outbids_per_hour",
        "preflight_failures",
        "jobs_finished",
        "jobs_failed",
        "mean_dph",
    }
    assert machines[0]["jobs_finished"] == 1 and machines[0]["median_s_to_running"] == 65.0
    table = CliRunner().invoke(app, ["hosts", "--history", "--config", str(path)], env=opener.env)
    assert table.exit_code == 0 and "1 min 5 s" in table.stdout and "unfit: preflight failures" in table.stdout
    empty = tmp_path / "empty.toml"
    empty.write_text(f'[store]\npath = "{tmp_path / "none.db"}"\n')
    nothing = CliRunner().invoke(app, ["hosts", "--history", "--config", str(empty)])
    assert nothing.exit_code == 0 and "no host rented yet" in nothing.stdout
