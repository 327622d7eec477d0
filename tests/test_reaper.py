"""The reaper handler on a manual clock and both store backends: which owned instances leak, the grace, dry-run
vs real."""

from __future__ import annotations

from typing import Any

from stores import Opener

from vastevents import Event
from vastevents.plugins import ActiveHandler, activate
from vastevents.store import SqlStore
from vastevents.testing import FakeCloud, Harness
from vastevents_handlers.reaper import ReaperHandler


def reaper(**options: Any) -> ActiveHandler:
    return activate("reaper", ReaperHandler, options, use="reaper")


def findings(h: Harness) -> list[tuple[int, str, str]]:
    target = h.runtime.handlers[0].target
    assert isinstance(target, ReaperHandler)
    return [(f.instance_id, f.rule, f.action) for f in target.last_pass]


async def test_an_unclaimed_owned_instance_is_warned_then_reaped_after_the_grace_and_a_foreign_one_never(
    store: SqlStore,
) -> None:
    async with Harness(reaper(idle_ttl="30m", grace="10m"), store=store) as h:
        h.cloud.add(1, "running", label="vastevents:scratch")
        h.cloud.add(2, "running", label="by-hand")
        h.cloud.add(3, "running", label="vastevents:job-9")  # its job is still running: claimed
        await h.poll_once()
        h.clock.advance(1800)
        await h.poll_once()
        assert findings(h) == [(1, "unclaimed", "warned")]
        assert len(h.notifier.messages) == 1 and "reaped in 10 min" in h.notifier.messages[0]
        h.clock.advance(300)
        await h.poll_once()
        assert h.cloud.calls == [] and len(h.notifier.messages) == 1  # warned once
        h.clock.advance(300)
        events = await h.poll_once()
        assert [(e.name, e.instance_id) for e in events] == [("reaped", 1)]
        assert "no job claims it" in events[0].detail
        assert h.cloud.calls == [("destroy", 1)]
        assert sorted(h.cloud.instances) == [2, 3]


async def test_a_jobs_instance_is_unclaimed_from_the_end_of_its_job(store: SqlStore) -> None:
    async with Harness(reaper(idle_ttl="10m", grace=0), store=store) as h:
        h.cloud.add(5, "running", label="vastevents:job-4")
        await h.poll_once()
        h.clock.advance(7200)
        await h.poll_once()
        assert findings(h) == []
        finished = Event(name="job_finished", instance_id=5, at=h.clock.now(), detail="exit 0")
        h.store.append([finished])
        h.clock.advance(599)
        await h.poll_once()
        assert findings(h) == []
        h.clock.advance(61)
        await h.poll_once()
        assert findings(h) == [(5, "unclaimed", "reaped")]


async def test_dry_run_reports_what_a_real_pass_destroys_exited_and_too_old(store: SqlStore) -> None:
    dry_run = reaper(dry_run=True, idle_ttl="none", exited_ttl="1h", max_lifetime="1d", grace=0)
    async with Harness(dry_run, store=store) as h:
        h.cloud.add(7, "running", label="vastevents:job-1")
        h.cloud.add(8, "running", label="vastevents:job-2")
        await h.poll_once()
        h.cloud.set_status(8, "exited", intended_status="stopped")
        h.clock.advance(60)
        await h.poll_once()
        h.clock.advance(3600)
        await h.poll_once()
        assert findings(h) == [(8, "exited", "would reap")]
        h.clock.advance(86400)
        events = await h.poll_once()
        assert findings(h) == [(7, "too old", "would reap"), (8, "too old", "would reap")]
        assert events == [] and h.cloud.calls == []


async def test_an_exited_instance_is_reaped_once_exited_ttl_has_passed(store: SqlStore) -> None:
    async with Harness(reaper(idle_ttl="none", exited_ttl="1h", grace=0), store=store) as h:
        h.cloud.add(8, "running", label="vastevents:job-2")
        await h.poll_once()
        h.cloud.set_status(8, "exited")
        h.clock.advance(60)
        await h.poll_once()
        h.clock.advance(3540)
        assert [e.name for e in await h.poll_once()] == ["preempted"]  # not yet reaped: 59 min exited
        h.clock.advance(60)
        events = await h.poll_once()
        assert [(e.name, e.instance_id) for e in events] == [("reaped", 8)]
        assert "billing storage" in events[0].detail and h.cloud.calls == [("destroy", 8)]


async def test_a_running_instance_with_an_idle_gpu_is_reaped_after_its_ttl_and_a_busy_pass_starts_over(
    opener: Opener,
) -> None:
    options = {"idle_ttl": "none", "gpu_idle_ttl": "20m", "grace": 0}
    cloud = FakeCloud()
    cloud.add(9, "running", label="vastevents:job-3", gpu_util=0.0)
    first = Harness(reaper(**options), cloud=cloud, store=opener())
    await first.poll_once()
    first.clock.advance(600)
    cloud.update(9, gpu_util=85.0)  # busy for a pass: the idle time starts over
    await first.poll_once()
    first.clock.advance(60)
    cloud.update(9, gpu_util=0.2)
    await first.poll_once()
    first.clock.advance(600)
    await first.poll_once()
    assert findings(first) == []
    await first.aclose()
    async with Harness(reaper(**options), cloud=cloud, clock=first.clock, store=opener()) as h:
        h.clock.advance(600)  # 20 min idle in all, across a restart
        events = await h.poll_once()
        assert [(e.name, e.instance_id) for e in events] == [("reaped", 9)]
        assert "GPU idle" in events[0].detail


async def test_a_warning_is_sent_once_across_a_restart_and_again_for_a_new_match(opener: Opener) -> None:
    """What was warned is kept in the store: a restarted watcher (or a team's next leader) does not warn again,
    but an instance that stopped matching and matches again is warned anew."""
    options = {"idle_ttl": "none", "exited_ttl": "30m", "grace": "10m"}
    cloud = FakeCloud()
    cloud.add(4, "running", label="vastevents:job-2")
    first = Harness(reaper(**options), cloud=cloud, store=opener())
    await first.poll_once()
    cloud.set_status(4, "exited")
    await first.poll_once()
    first.clock.advance(1860)
    await first.poll_once()
    assert findings(first) == [(4, "exited", "warned")] and len(first.notifier.messages) == 1
    await first.aclose()
    async with Harness(reaper(**options), cloud=cloud, clock=first.clock, store=opener()) as h:
        h.clock.advance(60)
        await h.poll_once()
        assert findings(h) == [(4, "exited", "warned")] and h.notifier.messages == []  # not again
        cloud.set_status(4, "running")  # restarted by hand: no longer a match
        h.clock.advance(60)
        await h.poll_once()
        assert findings(h) == []
        cloud.set_status(4, "exited")
        await h.poll_once()
        h.clock.advance(1860)
        await h.poll_once()
        assert findings(h) == [(4, "exited", "warned")] and len(h.notifier.messages) == 1  # a new match
