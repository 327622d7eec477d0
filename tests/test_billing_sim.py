"""Billing, budgets, the cost report and the reaper end to end: the simulator over real HTTP, a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from simtime_watch import write_moment
from test_team import wait_until
from test_team_story import MARKER, ROOT, STEP_SECONDS, Story, WatchProcess, _cost
from test_team_story import POLL as POLL_STORY
from typer.testing import CliRunner, Result

from vastevents import Ledger
from vastevents.cli import app
from vastevents.clock import ManualClock
from vastevents.config import Config, parse_config
from vastevents.plugins import load_handlers
from vastevents.runtime import Runtime
from vastevents.sim import Simulator
from vastevents.store import SqliteStore, open_store
from vastevents.vast import VastClient

POLL = 15.0


def config_text(store: Path, handlers: str) -> str:
    return f'[vast]\nlabel_prefix = "vastevents"\n[store]\npath = "{store}"\n{handlers}'


def sim_spend(sim: Simulator, instance_id: int) -> float:
    return next(s["gpu_usd"] + s["storage_usd"] for s in sim.state()["spend"]["instances"] if s["id"] == instance_id)


async def cycles(sim: Simulator, runtime: Runtime, count: int) -> None:
    """`count` poll cycles, the simulator moving a poll interval before each."""
    for _ in range(count):
        sim.advance(POLL)
        await runtime.poll_once()


def billing_files(tmp_path: Path) -> tuple[Path, Path, Config]:
    """A store path, a config file naming it and the billing handler, and that config."""
    store_path = tmp_path / "s.db"
    config_file = tmp_path / "c.toml"
    config_file.write_text(config_text(store_path, '[handlers.billing]\nuse = "billing"\n'))
    return store_path, config_file, parse_config(config_file.read_text())


def watcher(sim: Simulator, client: VastClient, store: SqliteStore, config: Config) -> Runtime:
    """A watcher with the handlers `config` names on the simulator's clock; a new one on the same store is a
    restart."""
    return Runtime(config, client=client, store=store, clock=sim.clock, handlers=load_handlers(config))


async def destroy_all(sim: Simulator, client: VastClient) -> None:
    for instance in await client.list_instances():
        await client.destroy_instance(instance.id)
    assert sim.instance_count() == 0


@pytest.mark.parametrize("action", ["destroy", "stop"])
async def test_a_total_budget_acts_on_the_owned_instance_within_one_cycle_and_never_on_a_foreign_one(
    sim: Simulator, api_key: str, tmp_path: Path, action: str
) -> None:
    text = config_text(
        tmp_path / "s.db", f'[handlers.billing]\nuse = "billing"\nbudget_usd = 0.05\non_exceed = "{action}"\n'
    )
    config = parse_config(text)
    ours = sim.create_instance(label="vastevents:job-1", pull="30s")
    foreign = sim.create_instance(label="mine-by-hand", pull="30s")
    store = SqliteStore(tmp_path / "s.db")
    async with VastClient(api_key, sim.url) as client:
        try:
            async with watcher(sim, client, store, config) as rt:
                names: list[str] = []
                cycles = 0
                while "budget_exceeded" not in names:
                    sim.advance(POLL)
                    names += [e.name for e in await rt.poll_once()]
                    cycles += 1
                    assert cycles < 1000, "the budget was never exceeded"
                now = sim.clock.now()
                before = now - timedelta(seconds=POLL)
                intervals = store.repository(Ledger).intervals(instance_id=ours)
                assert sum(i.cost_usd(now) for i in intervals) >= 0.05
                assert sum(i.cost_usd(before, until=before) for i in intervals) < 0.05  # it acted in the first cycle
                assert "budget_warning" in names
                spent = sim_spend(sim, ours)
                row = sim.instance(ours)
                if action == "destroy":
                    assert row is None
                else:
                    assert row is not None and row["intended_status"] == "stopped"
                sim.advance(3600)
                await rt.poll_once()
                after = sim_spend(sim, ours) - spent
                assert after == 0.0 if action == "destroy" else after < 0.01  # a stopped one bills storage only
                foreign_row = sim.instance(foreign)
                assert foreign_row is not None and foreign_row["actual_status"] == "running"
                assert store.effects.intents(foreign) == []
        finally:
            store.close()
            await destroy_all(sim, client)


async def run_story(sim: Simulator, client: VastClient, config_file: Path, store_path: Path) -> dict[str, int]:
    """Several instances: one runs and is destroyed, a bid one is preempted, one is stopped; a restart midway."""
    config = parse_config(config_file.read_text())
    ids = {
        "a": sim.create_instance(label="vastevents:job-1", pull="30s"),
        "b": sim.create_instance(label="vastevents:job-2", pull="30s", bid=True),
        "c": sim.create_instance(label="by-hand", pull="30s"),
    }

    with SqliteStore(store_path) as store:
        async with watcher(sim, client, store, config) as rt:
            await rt.poll_once()  # first sight at creation: the ledger covers their whole lives
            await cycles(sim, rt, 120)  # 30 min
            sim.preempt(ids["b"])
            await rt.poll_once()
            await cycles(sim, rt, 40)  # 10 min
        async with watcher(sim, client, store, config) as rt:
            await client.stop_instance(ids["c"])
            await rt.poll_once()
            await cycles(sim, rt, 80)  # 20 min
            await client.destroy_instance(ids["a"])
            await rt.poll_once()
            await cycles(sim, rt, 20)  # 5 min
            for instance in await client.list_instances():
                await client.destroy_instance(instance.id)
            await rt.poll_once()
    assert sim.instance_count() == 0
    return ids


async def invoke(args: list[str], env: dict[str, str]) -> Result:
    """Run a command of the CLI (its own event loop) in a thread, as a separate process would."""
    return await asyncio.to_thread(CliRunner().invoke, app, args, env=env)


async def cost_json(config_file: Path, sim: Simulator, api_key: str, *args: str) -> tuple[dict[str, Any], str]:
    env = {"VAST_URL": sim.url, "VAST_API_KEY": api_key}
    result = await invoke(["cost", "--json", "--config", str(config_file), *args], env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


async def test_the_cost_report_equals_the_simulators_charges_within_a_cent_per_instance(
    sim: Simulator, api_key: str, tmp_path: Path
) -> None:
    store_path, config_file, _ = billing_files(tmp_path)
    async with VastClient(api_key, sim.url) as client:
        try:
            ids = await run_story(sim, client, config_file, store_path)
        finally:
            await destroy_all(sim, client)

    report, stderr = await cost_json(config_file, sim, api_key)
    rows = {row["instance_id"]: row for row in report["instances"]}
    assert sorted(rows) == sorted(ids.values())
    for instance_id in ids.values():
        row = rows[instance_id]
        assert row["charged_usd"] == pytest.approx(sim_spend(sim, instance_id))
        assert abs(row["cost_usd"] - row["charged_usd"]) < 0.01, row
        assert row["cost_usd"] > 0.01 and not row["flagged"] and row["ghost"] is None
        assert row["observed_only"] is False and row["observed_since"].endswith("Z")
    assert rows[ids["a"]]["job_id"] == "1"
    assert report["total_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows.values()))
    assert report["ghost_billing"] == [] and report["charges_error"] is None and "GHOST" not in stderr

    by_job, _ = await cost_json(config_file, sim, api_key, "--by", "job")
    assert {g["key"] for g in by_job["groups"]} == {"1", "2", "-"}
    assert sum(g["cost_usd"] for g in by_job["groups"]) == pytest.approx(report["total_usd"])


async def test_charges_for_an_instance_the_list_never_showed_are_ghost_billing(
    sim: Simulator, api_key: str, tmp_path: Path
) -> None:
    store_path, config_file, config = billing_files(tmp_path)
    seen = sim.create_instance(label="vastevents:job-1", pull="30s")
    async with VastClient(api_key, sim.url) as client:
        try:
            with SqliteStore(store_path) as store:
                async with watcher(sim, client, store, config) as rt:
                    await rt.poll_once()
                    sim.advance(60)
                    await rt.poll_once()  # seen loading, then running: the ledger accounts for all of it
                    ghost = sim.create_instance(label="vastevents:job-2", pull="30s")  # billed, never listed to us
                    sim.advance(3600)
                    sim.vanish(ghost)
                    await client.destroy_instance(seen)
                    await rt.poll_once()
        finally:
            await destroy_all(sim, client)

    report, stderr = await cost_json(config_file, sim, api_key)
    assert [row["instance_id"] for row in report["ghost_billing"]] == [ghost]
    assert "never seen" in report["ghost_billing"][0]["ghost"]
    assert report["ghost_billing"][0]["charged_usd"] == pytest.approx(sim_spend(sim, ghost))
    assert f"GHOST BILLING: instance {ghost}" in stderr
    table = await invoke(["cost", "--config", str(config_file)], {"VAST_URL": sim.url, "VAST_API_KEY": api_key})
    assert table.exit_code == 0 and "GHOST" in table.stdout


async def test_the_ledger_covers_the_time_the_watcher_was_down_within_a_cent_or_two_percent(
    sim: Simulator, api_key: str, tmp_path: Path
) -> None:
    """The watcher stops for half an hour. Meanwhile an instance it saw loading came up and ran, and another was
    rented and ran; a third ran all along. After the restart the ledger reconstructs the gap from the rows (the
    start date, the status) instead of billing from the moment it noticed: each instance's cost is within
    max(1 cent, 2 %) of what the simulator charged."""
    store_path, config_file, config = billing_files(tmp_path)
    along = sim.create_instance(label="vastevents:job-1", pull="30s")

    async with VastClient(api_key, sim.url) as client:
        try:
            with SqliteStore(store_path) as store:
                async with watcher(sim, client, store, config) as rt:
                    await rt.poll_once()
                    await cycles(sim, rt, 8)
                    booting = sim.create_instance(label="vastevents:job-2", pull="45s")
                    await cycles(sim, rt, 2)
                    assert sim.instance(booting)["actual_status"] == "loading"  # type: ignore[index]
                sim.advance(300)  # the watcher is down
                rented = sim.create_instance(label="vastevents:job-3", pull="10s")
                sim.advance(1500)
                async with watcher(sim, client, store, config) as rt:
                    await cycles(sim, rt, 60)
                    for instance in await client.list_instances():
                        await client.destroy_instance(instance.id)
                    await rt.poll_once()
        finally:
            await destroy_all(sim, client)

    report, _ = await cost_json(config_file, sim, api_key)
    rows = {row["instance_id"]: row for row in report["instances"]}
    assert sorted(rows) == sorted([along, booting, rented])
    for row in rows.values():
        assert row["charged_usd"] == pytest.approx(sim_spend(sim, row["instance_id"]))
        assert abs(row["cost_usd"] - row["charged_usd"]) <= max(0.01, 0.02 * row["charged_usd"]), row
    assert rows[rented]["observed_only"] is False, "its whole life is in the ledger"


async def test_when_charges_cannot_be_read_the_ledger_is_still_printed_with_a_warning(
    sim: Simulator, api_key: str, tmp_path: Path
) -> None:
    store_path, config_file, config = billing_files(tmp_path)
    instance_id = sim.create_instance(label="vastevents:job-1", pull="30s")
    async with VastClient(api_key, sim.url) as client:
        try:
            with SqliteStore(store_path) as store:
                async with watcher(sim, client, store, config) as rt:
                    await rt.poll_once()
                    sim.advance(600)
                    await client.destroy_instance(instance_id)
                    await rt.poll_once()
        finally:
            await destroy_all(sim, client)
    env = {"VAST_URL": sim.url, "VAST_API_KEY": "not-the-key"}
    result = await invoke(["cost", "--json", "--config", str(config_file)], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "cannot read Vast's charges" in result.stderr
    assert report["charges_error"] and report["charged_total_usd"] is None
    assert [row["instance_id"] for row in report["instances"]] == [instance_id]
    assert report["instances"][0]["cost_usd"] > 0 and report["instances"][0]["charged_usd"] is None
    plain = await invoke(["cost", "--config", str(config_file)], env=env)
    assert plain.exit_code == 0 and str(instance_id) in plain.stdout


def _store_files(path: Path) -> tuple[bytes, bytes]:
    """The bytes of a SQLite store and of its WAL (none and empty are the same): what any write would change."""
    wal = path.with_name(f"{path.name}-wal")
    return path.read_bytes(), wal.read_bytes() if wal.exists() else b""


def test_reap_dry_run_reports_and_reap_yes_destroys_the_orphan_only(
    sim: Simulator, api_key: str, tmp_path: Path
) -> None:
    config_file = tmp_path / "c.toml"
    handlers = '[handlers.billing]\nuse = "billing"\n[handlers.reaper]\nuse = "reaper"\nidle_ttl = "30m"\n'
    config_file.write_text(config_text(tmp_path / "s.db", handlers))
    orphan = sim.create_instance(label="vastevents:scratch", pull="30s")
    job = sim.create_instance(label="vastevents:job-5", pull="30s")  # claimed by a job still running
    foreign = sim.create_instance(label="by-hand", pull="30s")
    sim.advance(3600)
    env = {"VAST_URL": sim.url, "VAST_API_KEY": api_key}
    try:
        dry = CliRunner().invoke(app, ["reap", "--dry-run", "--json", "--config", str(config_file)], env=env)
        assert dry.exit_code == 0, dry.output
        found = json.loads(dry.stdout)
        assert found["dry_run"] is True
        assert [(f["instance_id"], f["rule"], f["action"]) for f in found["found"]] == [
            (orphan, "unclaimed", "would reap")
        ]
        assert sim.instance_count() == 3
        assert not (tmp_path / "s.db").exists(), "a dry run only looks: it made no store"

        refused = CliRunner().invoke(app, ["reap", "--json", "--config", str(config_file)], env=env)
        assert refused.exit_code == 2 and "--yes" in refused.stderr and sim.instance_count() == 3

        real = CliRunner().invoke(app, ["reap", "--yes", "--json", "--config", str(config_file)], env=env)
        assert real.exit_code == 0, real.output
        assert [(f["instance_id"], f["action"]) for f in json.loads(real.stdout)["found"]] == [(orphan, "reaped")]
        assert sim.instance(orphan) is None
        assert sim.instance(job) is not None and sim.instance(foreign) is not None
        with SqliteStore(tmp_path / "s.db") as store:
            reaped = store.events(name="reaped")
            ledger = store.repository(Ledger).instances()
        assert [(e.instance_id, "no job claims it" in e.detail) for e in reaped] == [(orphan, True)]
        assert sorted(ledger) == [orphan, job, foreign]  # the other handlers saw the cycles too

        sim.vanish(foreign)  # a change a dry run sees but must not journal (no catch-up `vanished`)
        before = _store_files(tmp_path / "s.db")
        again = CliRunner().invoke(app, ["reap", "--dry-run", "--json", "--config", str(config_file)], env=env)
        assert again.exit_code == 0, again.output
        assert json.loads(again.stdout)["found"] == []
        assert _store_files(tmp_path / "s.db") == before, "a dry run writes nothing to the store"
    finally:
        for ref in (orphan, job, foreign):
            if sim.instance(ref) is not None:
                sim.vanish(ref)
    assert sim.instance_count() == 0


def test_a_watch_process_killed_and_started_again_half_an_hour_later_keeps_the_ledger_within_a_cent_or_two_percent(
    tmp_path: Path, api_key: str
) -> None:
    """The same gap with real ``vastevents watch`` processes on the simulator's time (``simtime_watch.py``): the
    first is SIGKILLed right after it saw an instance loading; half an hour later a second one starts on the same
    store. Meanwhile that instance came up, another was rented, a third ran on: each one's cost in ``cost --json``
    is within max(1 cent, 2 %) of the simulator's charges."""
    config = tmp_path / "c.toml"
    text = config_text(tmp_path / "s.db", '[handlers.billing]\nuse = "billing"\n') + (
        '[handlers.marker]\nuse = "simtime_watch:pass_marker"\n'
    )
    config.write_text(text)
    cfg = parse_config(text)
    periods = {(h.name, e.name): e.period or 0.0 for h in load_handlers(cfg) for e in h.periodic}
    del periods[MARKER]
    moment = tmp_path / "moment"
    with Simulator(api_key=api_key, clock=ManualClock()) as sim:
        env = {**os.environ, "VAST_URL": sim.url, "VAST_API_KEY": api_key, "HOME": str(tmp_path),
               "PYTHONPATH": str(ROOT), "SIMTIME_FILE": str(moment)}  # fmt: skip
        along = sim.create_instance(label="vastevents:job-1", pull="30s")
        write_moment(moment, sim.clock.now())
        store = open_store(cfg.store.resolved_path(), None)
        story = Story(sim, store, moment, periods)
        watcher = WatchProcess(tmp_path, "first", config, env)
        try:
            wait_until(story.poll_done, "the first poll and pass", STEP_SECONDS)
            for _ in range(4):
                story.tick()
            booting = sim.create_instance(label="vastevents:job-2", pull="45s")
            story.tick()
            assert store.load_snapshot().views[booting].state.value == "loading"
            watcher.kill()
            story.move(300)
            rented = sim.create_instance(label="vastevents:job-3", pull="10s")
            story.move(1500)
            watcher = WatchProcess(tmp_path, "second", config, env)
            wait_until(story.poll_done, "the restarted watcher's first poll and pass", STEP_SECONDS)
            for _ in range(36):
                story.tick()
            story.move(POLL_STORY - 1)  # the pass, then every instance destroyed a second before the poll
            wait_until(story.pass_done, "the last pass", STEP_SECONDS)
            for instance_id in (along, booting, rented):
                sim.apply("destroy", instance=instance_id)
            story.move(1)
            wait_until(story.poll_done, "the poll that sees them gone", STEP_SECONDS)
            report = _cost(config, sim.url, api_key)
            charged = {i: sim_spend(sim, i) for i in (along, booting, rented)}
        finally:
            status = watcher.stop()
            store.close()
    assert status == 130, watcher.err.read_text()[-3000:]
    rows = {row["instance_id"]: row for row in report["instances"]}
    assert sorted(rows) == sorted(charged)
    for instance_id, row in rows.items():
        assert row["charged_usd"] == pytest.approx(charged[instance_id])
        assert abs(row["cost_usd"] - row["charged_usd"]) <= max(0.01, 0.02 * row["charged_usd"]), row


async def test_after_the_watcher_was_down_the_ledger_settles_to_the_simulators_charges_within_a_tenth_of_a_percent(
    sim: Simulator, api_key: str, tmp_path: Path
) -> None:
    """The watcher goes down while an instance loads, and another is rented meanwhile; both come up running in the
    gap. Reconstructed on the side of cost, the ledger billed both as running from the gap's start (the rental from
    its start date): 10-20 % above the charges over their short lives. Settled with Vast's GPU charges once the
    watcher is back, each instance's ledger is within 0.1 % of what the simulator charged."""
    store_path, config_file, config = billing_files(tmp_path)
    booting = sim.create_instance(label="vastevents:job-1", pull="200s")

    async with VastClient(api_key, sim.url) as client:
        try:
            with SqliteStore(store_path) as store:
                async with watcher(sim, client, store, config) as rt:
                    await rt.poll_once()
                    await cycles(sim, rt, 2)
                    assert sim.instance(booting)["actual_status"] == "loading"  # type: ignore[index]
                sim.advance(60)  # the watcher is down
                rented = sim.create_instance(label="vastevents:job-2", pull="60s")
                sim.advance(240)
                assert {sim.instance(i)["actual_status"] for i in (booting, rented)} == {"running"}  # type: ignore[index]
                async with watcher(sim, client, store, config) as rt:
                    await cycles(sim, rt, 40)
                    assert store.repository(Ledger).unseen() == [], "settled"
                    for instance in await client.list_instances():
                        await client.destroy_instance(instance.id)
                    await rt.poll_once()
        finally:
            await destroy_all(sim, client)

    report, _ = await cost_json(config_file, sim, api_key)
    rows = {row["instance_id"]: row for row in report["instances"]}
    assert sorted(rows) == sorted([booting, rented])
    for row in rows.values():
        assert row["charged_usd"] == pytest.approx(sim_spend(sim, row["instance_id"]))
        assert abs(row["cost_usd"] - row["charged_usd"]) <= 0.001 * row["charged_usd"], row
