"""The recovery handler end to end: the real runtime and store (on both backends) against the simulator over HTTP."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from stores import Opener
from typer.testing import CliRunner

from vastevents import Event, Hosts, Recoveries, RecoveryStatus
from vastevents.cli import app
from vastevents.config import Config, load_config
from vastevents.runtime import Runtime
from vastevents.sim import Simulator
from vastevents.testing import RecordingNotifier
from vastevents.vast import VastClient
from vastevents_handlers.recovery import RecoveryHandler

LABEL = "vastevents:job-7"


def _config(tmp_path: Path, opener: Opener, **options: Any) -> tuple[Config, Path]:
    """A config file with the recovery handler (min_reliability lowered to the simulated market's); a command
    finds the test's store with it (on PostgreSQL also with ``opener.env``)."""
    keys = {"min_reliability": 0.9, **options}
    lines = [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    path = tmp_path / "vastevents.toml"
    head = f'[store]\npath = "{opener.path}"\n\n[handlers.recovery]\nuse = "recovery"\n'
    path.write_text(head + "\n".join(lines) + "\n")
    return load_config(path), path


def _rentable_machines(sim: Simulator) -> list[dict[str, Any]]:
    """The simulated machines with a free GPU and the reliability the tests' recovery asks for."""
    return [m for m in sim.state()["machines"] if m["free_gpus"] >= 1 and m["reliability"] >= 0.9]


def _common_gpu(sim: Simulator) -> str:
    """The GPU most simulated machines have, so a replacement on another host exists."""
    return Counter(m["gpu_name"] for m in _rentable_machines(sim)).most_common(1)[0][0]


@asynccontextmanager
async def _runtime(sim: Simulator, api_key: str, config: Config, opener: Opener) -> AsyncIterator[Runtime]:
    with opener() as store:
        async with VastClient(api_key, sim.url) as client:
            async with Runtime(config, client=client, store=store, clock=sim.clock, notifier=RecordingNotifier()) as rt:
                yield rt


async def _polls(runtime: Runtime, sim: Simulator, count: int, step: float = 60) -> list[Event]:
    seen: list[Event] = []
    for _ in range(count):
        sim.advance(step)
        seen += await runtime.poll_once()
    return seen


def _named(events: list[Event], name: str) -> list[Event]:
    return [event for event in events if event.name == name]


async def _replacement_after_preemption(
    sim: Simulator, api_key: str, config: Config, opener: Opener, old_id: int
) -> dict[str, Any]:
    """Preempt `old_id` under a watcher with recovery; the one instance ``recovered`` names."""
    async with _runtime(sim, api_key, config, opener) as runtime:
        await runtime.poll_once()
        sim.preempt(old_id)
        (recovered,) = _named(await _polls(runtime, sim, 4), "recovered")
        new = sim.instance(recovered.instance_id or 0)
        assert new is not None
    return new


def _destroy_all(sim: Simulator) -> None:
    for row in sim.state()["instances"]:
        sim.apply("destroy", instance=row["id"])


@pytest.fixture
def sim(sim: Simulator) -> Iterator[Simulator]:
    """The simulator, every instance destroyed after the test (passed or failed) and the simulator then empty:
    what a test rents is never left behind."""
    yield sim
    _destroy_all(sim)
    assert sim.instance_count() == 0


def _running(sim: Simulator, **create: Any) -> int:
    instance_id = sim.create_instance(**create)
    sim.advance(120)
    assert sim.instance(instance_id)["actual_status"] == "running"  # type: ignore[index]
    return instance_id


async def test_a_preempted_on_demand_instance_is_replaced_elsewhere_with_the_same_label(
    sim: Simulator, api_key: str, tmp_path: Path, opener: Opener
) -> None:
    config, path = _config(tmp_path, opener)
    gpu = _common_gpu(sim)
    old_id = _running(sim, label=LABEL, gpu_name=gpu, disk=40, env={"JOB": "7"}, onstart="python train.py")
    old = sim.instance(old_id)
    assert old is not None
    async with _runtime(sim, api_key, config, opener) as runtime:
        await runtime.poll_once()
        sim.preempt(old_id)
        events = await _polls(runtime, sim, 4)
        (recovered,) = _named(events, "recovered")
        new = sim.instance(recovered.instance_id or 0)
        assert new is not None and sim.instance(old_id) is None, "the dead instance is destroyed"
        assert (new["label"], new["gpu_name"], new["num_gpus"], new["disk_space"]) == (LABEL, gpu, 1, 40)
        assert (new["image_uuid"], new["onstart"], new["extra_env"]) == (old["image_uuid"], "python train.py",
                                                                          [["JOB", "7"]])  # fmt: skip
        assert new["machine_id"] != old["machine_id"] and new["host_id"] != old["host_id"]
        assert recovered.detail.startswith(
            f"{old_id} (machine {old['machine_id']}) → {new['id']} (machine {new['machine_id']})"
        )
        events += await _polls(runtime, sim, 3)
        assert len(_named(events, "recovered")) == 1 and sim.instance_count() == 1
    result = CliRunner().invoke(app, ["hosts", "--json", "--config", str(path)], env=opener.env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [], "a host taking its machine back is not unfit: no strike"


async def test_a_stuck_load_blocks_its_host_and_the_replacement_avoids_it(
    sim: Simulator, api_key: str, tmp_path: Path, opener: Opener
) -> None:
    # `hosts` judges blocks by the wall clock, the runtime by the simulated one: a block long enough for both
    config, path = _config(tmp_path, opener, strikes_to_block=1, exclude_ttl="36500d")
    old_id = sim.create_instance(label=LABEL, gpu_name=_common_gpu(sim), pull=600)
    sim.advance(30)
    machine = sim.instance(old_id)["machine_id"]  # type: ignore[index]
    async with _runtime(sim, api_key, config, opener) as runtime:
        await runtime.poll_once()
        sim.stick_loading(old_id)
        events = await _polls(runtime, sim, 2)
        assert [e.name for e in events if e.name in ("stuck_loading", "host_blocked", "recovered")] == [
            "stuck_loading",
            "host_blocked",
            "recovered",
        ]
        assert sim.instance(old_id) is None
        assert runtime.store.repository(Hosts).blocked(sim.clock.now())[0] == [machine]
    (host,) = json.loads(CliRunner().invoke(app, ["hosts", "--json", "--config", str(path)], env=opener.env).stdout)
    assert host["blocked"] is True and host["blocked_until"] is not None
    assert set(host) == {"machine_id", "host_id", "strikes", "reasons", "blocked", "blocked_until"}


@pytest.mark.parametrize("resumes", [True, False], ids=["resumes-in-time", "never-resumes"])
async def test_wait_gives_an_outbid_instance_time_to_resume_then_replaces_it(
    sim: Simulator, api_key: str, tmp_path: Path, opener: Opener, resumes: bool
) -> None:
    config, _ = _config(tmp_path, opener, wait_timeout="10m")
    old_id = _running(sim, label=LABEL, gpu_name=_common_gpu(sim), bid=True)
    async with _runtime(sim, api_key, config, opener) as runtime:
        await runtime.poll_once()
        sim.apply("outbid", instance=old_id)
        events = await _polls(runtime, sim, 3)
        assert _named(events, "preempted") and not _named(events, "recovered")
        if resumes:
            sim.apply("start", instance=old_id)  # the bid wins again after 3 minutes
        events += await _polls(runtime, sim, 10)
        recoveries = runtime.store.repository(Recoveries)
        if resumes:
            assert not _named(events, "recovered") and sim.instance_count() == 1
            assert recoveries.get(old_id).status is RecoveryStatus.RESUMED  # type: ignore[union-attr]
        else:
            (recovered,) = _named(events, "recovered")
            assert sim.instance(old_id) is None and sim.instance_count() == 1
            new = sim.instance(recovered.instance_id or 0)
            assert new is not None and new["label"] == LABEL and new["is_bid"] is True
            assert runtime.store.repository(Hosts).records(sim.clock.now()) == [], "being outbid is no strike"


async def test_rebid_raises_the_bid_and_the_instance_resumes(
    sim: Simulator, api_key: str, tmp_path: Path, opener: Opener
) -> None:
    config, _ = _config(tmp_path, opener, on_preempt="rebid", rebid_factor=1.5)
    old_id = _running(sim, label=LABEL, gpu_name=_common_gpu(sim), bid=True)
    async with _runtime(sim, api_key, config, opener) as runtime:
        await runtime.poll_once()
        sim.apply("outbid", instance=old_id)
        events = await _polls(runtime, sim, 12)
        row = sim.instance(old_id)
        assert row is not None and row["actual_status"] == "running"
        assert row["dph_base"] == pytest.approx(row["min_bid"] * 1.5)
        assert not _named(events, "recovered") and sim.instance_count() == 1


async def test_an_instance_that_resumed_and_died_again_is_recovered_again(
    sim: Simulator, api_key: str, tmp_path: Path, opener: Opener
) -> None:
    """C1: an outbid instance got a higher bid and resumed, then its host dropped off for good; its recovery row,
    ``resumed``, made the second death look handled already, and the job it ran hung."""
    config, _ = _config(tmp_path, opener, on_preempt="rebid", wait_timeout="60s")
    old_id = _running(sim, label=LABEL, gpu_name=_common_gpu(sim), bid=True)
    async with _runtime(sim, api_key, config, opener) as runtime:
        await runtime.poll_once()
        sim.apply("outbid", instance=old_id)
        events = await _polls(runtime, sim, 3)
        assert sim.instance(old_id)["actual_status"] == "running"  # type: ignore[index]
        assert runtime.store.repository(Recoveries).get(old_id).status is RecoveryStatus.RESUMED  # type: ignore[union-attr]
        sim.apply("offline", instance=old_id)
        events += await _polls(runtime, sim, 8)
        (recovered,) = _named(events, "recovered")
        new = sim.instance(recovered.instance_id or 0)
        assert new is not None and new["label"] == LABEL and new["actual_status"] == "running"
        assert sim.instance(old_id) is None and sim.instance_count() == 1
        record = runtime.store.repository(Recoveries).get(old_id)
        assert record is not None and record.status is RecoveryStatus.RECOVERED and "offline" in record.reason


async def test_max_restarts_ends_the_lineage_with_recovery_failed(
    sim: Simulator, api_key: str, tmp_path: Path, opener: Opener
) -> None:
    config, _ = _config(tmp_path, opener, max_restarts=1)
    old_id = _running(sim, label=LABEL, gpu_name=_common_gpu(sim))
    async with _runtime(sim, api_key, config, opener) as runtime:
        await runtime.poll_once()
        sim.preempt(old_id)
        (recovered,) = _named(await _polls(runtime, sim, 4), "recovered")
        await _polls(runtime, sim, 2)  # the replacement comes up
        sim.preempt(recovered.instance_id or 0)
        events = await _polls(runtime, sim, 4)
        (failed,) = _named(events, "recovery_failed")
        assert "max_restarts (1) reached" in failed.detail and not _named(events, "recovered")
        assert sim.instance_count() == 0, "the last instance of the lineage is destroyed too"


async def test_a_foreign_instance_is_never_touched(
    sim: Simulator, api_key: str, tmp_path: Path, opener: Opener
) -> None:
    config, _ = _config(tmp_path, opener, on_preempt="replace")
    foreign = _running(sim, label="someone-else:job", gpu_name=_common_gpu(sim))
    async with _runtime(sim, api_key, config, opener) as runtime:
        await runtime.poll_once()
        sim.preempt(foreign)
        events = await _polls(runtime, sim, 5)
        assert _named(events, "preempted") and not _named(events, "recovered")
        assert sim.instance_count() == 1 and sim.instance(foreign) is not None
        assert runtime.store.effects.intents(foreign) == []
        assert runtime.store.repository(Hosts).records(sim.clock.now()) == []


class Crash(BaseException):
    """The watcher dies here (as with SIGKILL: nothing after this point runs)."""


@pytest.mark.parametrize("step", ["_rent", "_recovered"], ids=["before-the-create", "after-the-create"])
async def test_a_redelivered_event_after_a_crash_rents_exactly_once(
    sim: Simulator, api_key: str, tmp_path: Path, opener: Opener, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    config, _ = _config(tmp_path, opener)
    old_id = _running(sim, label=LABEL, gpu_name=_common_gpu(sim))
    real = getattr(RecoveryHandler, step)

    async def crash(self: RecoveryHandler, *args: Any) -> Any:
        raise Crash

    async with _runtime(sim, api_key, config, opener) as runtime:
        await runtime.poll_once()
        sim.preempt(old_id)
        monkeypatch.setattr(RecoveryHandler, step, crash)
        with pytest.raises(Crash):
            await _polls(runtime, sim, 4)
    monkeypatch.setattr(RecoveryHandler, step, real)
    assert sim.instance_count() == (1 if step == "_recovered" else 0)
    async with _runtime(sim, api_key, config, opener) as runtime:
        events = await _polls(runtime, sim, 3)
        (recovered,) = _named(events, "recovered")
        assert sim.instance_count() == 1 and sim.instance(recovered.instance_id or 0) is not None
        creates = runtime.store.db.query("SELECT COUNT(*) FROM intents WHERE action = 'create'")
        assert creates == [(1,)]


async def test_an_instance_already_under_the_label_becomes_the_replacement_and_the_dead_one_is_destroyed(
    sim: Simulator, api_key: str, tmp_path: Path, opener: Opener
) -> None:
    """C1: a dead instance whose label another live instance already ran under (rented by the jobs handler) was
    recovered to that one and left billing."""
    config, _ = _config(tmp_path, opener)
    gpu = _common_gpu(sim)
    old_id = _running(sim, label=LABEL, gpu_name=gpu)
    other_id = _running(sim, label=LABEL, gpu_name=gpu)
    async with _runtime(sim, api_key, config, opener) as runtime:
        await runtime.poll_once()
        sim.preempt(old_id)
        (recovered,) = _named(await _polls(runtime, sim, 4), "recovered")
        assert recovered.instance_id == other_id, "nothing else rented"
        assert sim.instance(old_id) is None and sim.instance_count() == 1, "the dead one destroyed"


async def _offline_until_recovered(runtime: Runtime, sim: Simulator, old_id: int) -> tuple[list[Event], int]:
    """Take `old_id`'s host offline and poll every 10 s until recovery rents its replacement; its id."""
    sim.apply("offline", instance=old_id)
    events: list[Event] = []
    for _ in range(30):
        events += await _polls(runtime, sim, 1, step=10)
        if recovered := _named(events, "recovered"):
            return events, recovered[0].instance_id or 0
    raise AssertionError(f"no replacement rented in 300 s: {[e.name for e in events]}")


@pytest.mark.parametrize("first", ["host-back", "replacement"])
async def test_an_offline_instance_races_its_replacement_and_the_first_running_keeps_the_label(
    sim: Simulator, api_key: str, tmp_path: Path, opener: Opener, first: str
) -> None:
    """C1: a host offline past preempt_grace was destroyed at once, so a host back seconds later (a flap) still
    cost a new rental's minute-long boot. Now the dead instance stays until one of the two runs."""
    config, _ = _config(tmp_path, opener)
    old_id = _running(sim, label=LABEL, gpu_name=_common_gpu(sim))
    async with _runtime(sim, api_key, config, opener) as runtime:
        await runtime.poll_once()
        events, new_id = await _offline_until_recovered(runtime, sim, old_id)
        assert sim.instance(old_id)["actual_status"] == "offline", "kept while its host is away"  # type: ignore[index]
        record = runtime.store.repository(Recoveries).get(old_id)
        assert record is not None and record.status is RecoveryStatus.RECOVERED and record.new_id == new_id
        if first == "host-back":
            sim.apply("online", instance=old_id)
            events += await _polls(runtime, sim, 2, step=5)
            assert sim.instance(new_id) is None, "the replacement destroyed before it ran"
            assert sim.instance(old_id)["actual_status"] == "running"  # type: ignore[index]
            assert runtime.store.repository(Recoveries).get(old_id).status is RecoveryStatus.RESUMED  # type: ignore[union-attr]
        else:
            events += await _polls(runtime, sim, 12, step=10)
            assert sim.instance(new_id)["actual_status"] == "running"  # type: ignore[index]
            assert sim.instance(old_id) is None, "the dead one destroyed once its replacement runs"
        assert sim.instance_count() == 1 and len(_named(events, "recovered")) == 1


async def test_with_no_offer_reliable_enough_the_reason_names_the_reliability_asked_for(
    sim: Simulator, api_key: str, tmp_path: Path, opener: Opener
) -> None:
    """Recovery's min_reliability filters every search, the job's own query too: a market with no host that reliable
    leaves nothing, and the reason (kept on the recovery, then in ``recovery_failed``) must say so."""
    config, _ = _config(tmp_path, opener, min_reliability=1.0, give_up_after="90s", backoff="30s")
    old_id = _running(sim, label=LABEL, gpu_name=_common_gpu(sim))
    async with _runtime(sim, api_key, config, opener) as runtime:
        await runtime.poll_once()
        sim.preempt(old_id)
        (failed,) = _named(await _polls(runtime, sim, 6), "recovery_failed")
        assert "with reliability >= 1 outside machines" in failed.detail, failed.detail
        assert sim.instance_count() == 0, "nothing rented, the dead one destroyed"


async def test_a_machine_blocked_by_hand_is_listed_never_offered_to_a_job_and_can_be_forgiven(
    tmp_path: Path, opener: Opener
) -> None:
    from vastevents import JobSpec, Offer
    from vastevents.testing import FakeCloud

    _, path = _config(tmp_path, opener)
    opener().close()  # the store exists, as after a first watch

    def hosts(*args: str) -> Any:
        result = CliRunner().invoke(app, ["hosts", *args, "--config", str(path)], env=opener.env)
        return result.exit_code, result.stdout + result.stderr

    code, said = hosts("--block", "41", "--reason", "corrupts checkpoints", "--for", "2d")
    assert code == 0 and "machine 41 blocked" in said
    code, said = hosts("--json")
    (host,) = json.loads(said)
    assert (host["machine_id"], host["blocked"], host["reasons"]) == (41, True, ["corrupts checkpoints"])

    cloud = FakeCloud()
    cloud.offers = [Offer.model_validate({"id": ask, "machine_id": machine, "dph_total": price})
                    for ask, machine, price in ((1, 41, 0.10), (2, 42, 0.20))]  # fmt: skip
    spec = JobSpec.model_validate({"image": "img", "cmd": "true"})
    with opener() as store:
        blocked = store.repository(Hosts).blocked(datetime.now(UTC))
    assert [offer.id for offer in await spec.offers(cloud, blocked=blocked)] == [2]  # the cheaper one is blocked

    assert hosts("--unblock", "41")[0] == 0
    assert json.loads(hosts("--json")[1]) == []
    code, said = hosts("--unblock", "41")
    assert code == 1 and "no strike" in said
    assert hosts("--block", "41", "--for", "soon")[0] == 2


async def test_a_replacement_is_chosen_as_jobs_choose_says(
    sim: Simulator, api_key: str, tmp_path: Path, opener: Opener
) -> None:
    """Recovery ranks the offers as jobs are ranked: with ``choose = "second_cheapest"`` the replacement goes to the
    second cheapest matching machine, not the cheapest."""
    _, path = _config(tmp_path, opener)
    path.write_text(path.read_text() + '\n[jobs]\nchoose = "second_cheapest"\n')
    config = load_config(path)
    gpu = _common_gpu(sim)
    old_id = _running(sim, label=LABEL, gpu_name=gpu, disk=40)
    old = sim.instance(old_id)
    assert old is not None
    query = {"gpu_name": {"eq": gpu}, "num_gpus": {"eq": 1}, "reliability": {"gte": 0.9}, "disk_space": {"gte": 40}}
    with sim.world() as world:
        rows = [
            r for r in world.search(query) if r["machine_id"] != old["machine_id"] and r["host_id"] != old["host_id"]
        ]
    by_price = sorted(rows, key=lambda r: (r["dph_total"], r["id"]))
    assert len(by_price) >= 2 and by_price[0]["dph_total"] < by_price[1]["dph_total"]
    new = await _replacement_after_preemption(sim, api_key, config, opener, old_id)
    assert new["machine_id"] == by_price[1]["machine_id"]


async def test_a_jobs_instance_with_no_like_gpu_left_is_replaced_on_any_host_its_query_accepts(
    sim: Simulator, api_key: str, tmp_path: Path, opener: Opener
) -> None:
    """Like for like first (the same GPU, then ``fallback_gpus``); for an instance a job runs, then any host the
    job's own query accepts, rather than waiting for that GPU until recovery gives up (a bid outbid from the last
    machine of its kind)."""
    from vastevents import Jobs, JobSpec

    config, _ = _config(tmp_path, opener)
    machines = _rentable_machines(sim)
    gpu = Counter(m["gpu_name"] for m in machines).most_common()[-1][0]  # the rarest kind
    with opener() as store:  # a job's spec: any single GPU will do
        spec = JobSpec.model_validate({"image": "pytorch/pytorch", "cmd": "true", "query": "num_gpus=1"})
        job = store.repository(Jobs).submit(spec.to_json(), [], "vastevents", sim.clock.now())
    old_id = _running(sim, label=job.label, gpu_name=gpu, disk=16)
    old = sim.instance(old_id)
    assert old is not None
    with opener() as store:  # every other machine of that kind is out (blocked by hand)
        for machine in machines:
            if machine["gpu_name"] == gpu and machine["machine_id"] != old["machine_id"]:
                store.repository(Hosts).block(machine["machine_id"], "test", sim.clock.now(), 86400)
    new = await _replacement_after_preemption(sim, api_key, config, opener, old_id)
    assert new["label"] == job.label and new["gpu_name"] != gpu and new["machine_id"] != old["machine_id"], new
