"""One scripted story told twice: by one watcher on SQLite, and by two watchers on one PostgreSQL schema whose
leader is SIGKILLed in the middle. Both tellings must end with the same journal, ledger and actions, and with
nothing left on the account.

The story: two owned instances are rented and run, and the budget warns. train-a's host fails, and so does every
other host a replacement could go to: train-a is preempted (kept, its host offline, to race a replacement), and
the first replacement attempt finds no offer, so the recovery waits out its backoff. Here the team's leader is
killed. The hosts come back, the follower (now leading) replaces train-a on another host, the budget cap is
crossed and ``on_exceed = "stop"`` stops both instances, and the reaper destroys them once they have been stopped
long enough.

Determinism. The watchers run the real ``vastevents watch`` on the simulator's time (``simtime_watch.py``): on
the wall clock, every event time, ledger interval and the moment the cap is crossed would depend on how fast
the machine runs the test. Simulated time moves only when the story moves it, in ticks of one poll interval,
and each tick is two steps: the periodic handlers' pass one second before the poll, then the poll. Each step
wakes only one of the watcher's two loops (at a poll, nothing but a no-op marker is due; checked), and the story
takes the next step only once the store shows that the leader has absorbed this one. So what a handler does in
a pass (a stop, a destroy, a rent) is seen by the next poll, never raced by the same one, and both tellings see
the same instances in the same states at the same simulated moments. What still runs on the wall clock (the
leadership lock and its failover, handler timeouts, the team roster, ``cost``'s own "now", which matters only
for intervals still open, and none is at the end) never reaches what is compared.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from simtime_watch import write_moment
from test_metrics import samples
from test_team import HANG, wait_until
from typer.testing import CliRunner

from vastevents import Interval, Ledger, Recoveries, Recovery, RecoveryStatus
from vastevents.cli import app
from vastevents.clock import ManualClock
from vastevents.config import parse_config
from vastevents.plugins import load_handlers
from vastevents.sim import Simulator
from vastevents.store import SqlStore, open_store
from vastevents.store.team import TeamMembers

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = Path(__file__).with_name("simtime_watch.py")
POLL = 25.0
"""The watchers' poll interval in simulated seconds: no periodic handler's period (5 s, 15 s, 1 min) divides it.
``preempt_grace`` is a multiple of it: a watcher also polls when a grace ends, and that poll must fall on a tick."""
FAILOVER = 3.0
STEP_SECONDS = HANG
"""Wall seconds after which a step of the story is taken for a hang (it takes tens of milliseconds on an idle
machine, seconds on a loaded one; no outcome depends on how long)."""
MARKER = ("marker", "pass_marker")
LABEL_A, LABEL_B = "vastevents:train-a", "vastevents:train-b"

HANDLERS = """
[watch]
preempt_grace = "50s"
[handlers.recovery]
use = "recovery"
[handlers.billing]
use = "billing"
budget_usd = 0.04
warn_at = 0.25
projection = "0s"
on_exceed = "stop"
[handlers.reaper]
use = "reaper"
idle_ttl = "none"
exited_ttl = "1m"
grace = "30s"
[handlers.marker]
use = "simtime_watch:pass_marker"
"""


class WatchProcess:
    """``vastevents watch`` on the simulator's time, serving its metrics on a port it picks."""

    def __init__(self, tmp_path: Path, name: str, config: Path, env: dict[str, str]) -> None:
        self.out = tmp_path / f"{name}.out"
        self.err = tmp_path / f"{name}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(LAUNCHER), "watch", "--interval", f"{POLL:g}", "--metrics-listen",
                 "127.0.0.1:0", "--config", str(config)],
                env=env, cwd=tmp_path, stdout=out, stderr=err,
            )  # fmt: skip
        self.member = f"{socket.gethostname()}:{self.process.pid}"
        """How it names itself in the team roster."""

    def metrics(self) -> dict[str, float] | None:
        """Its unlabelled metrics, None until it serves them; fails if the process died."""
        assert self.process.poll() is None, f"watch exited with {self.process.returncode}: {self.err.read_text()}"
        found = re.search(r"metrics at (http://\S+/metrics)", self.out.read_text())
        if found is None:
            return None
        try:
            text = httpx.get(found.group(1), timeout=5).text
        except httpx.TransportError:
            return None
        return {name: value for (name, labels), value in samples(text).items() if not labels}

    def leads_and_polled(self) -> bool:
        found = self.metrics() or {}
        return found.get("vastevents_leader") == 1 and found.get("vastevents_polls_total", 0) >= 1

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM, then its exit status (130: interrupted, like every command)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


@dataclass
class Story:
    """The simulator, the store the watchers share, and the steps that move simulated time."""

    sim: Simulator
    store: SqlStore
    moment_file: Path
    periods: dict[tuple[str, str], float]
    """Every periodic handler's period but the marker's, by (handler, name)."""
    ticks: int = 0

    def now(self) -> datetime:
        return self.sim.clock.now()

    def move(self, seconds: float) -> None:
        """Advance the simulator, then the watchers: a loop that wakes always lists the new state."""
        self.sim.advance(seconds)
        write_moment(self.moment_file, self.now())

    def pass_done(self) -> bool:
        """The periodic pass at now is over and every action it took is settled."""
        run = self.store.effects.periodic_run(*MARKER)
        return run is not None and run.last_run == self.now() and not self.store.effects.open_intents()

    def poll_done(self) -> bool:
        """The poll at now is committed and every event (handler-made ones too) delivered, every action settled."""
        return (
            self.store.load_snapshot().taken_at == self.now()
            and self.pass_done()
            and not self.store.pending(self.now())
        )

    def due_at_next_poll(self) -> list[tuple[str, str]]:
        poll = self.now() + timedelta(seconds=1)
        return [
            key
            for key, period in self.periods.items()
            if (run := self.store.effects.periodic_run(*key)) is None
            or run.last_run + timedelta(seconds=period) <= poll
        ]

    def tick(self) -> None:
        """One poll interval: the periodic pass a second before the poll, then the poll."""
        self.move(POLL - 1)
        wait_until(self.pass_done, f"the periodic pass at {self.now():%H:%M:%S}", STEP_SECONDS)
        assert self.due_at_next_poll() == [], "a periodic handler due at the poll would race it"
        self.move(1)
        wait_until(self.poll_done, f"the poll at {self.now():%H:%M:%S}", STEP_SECONDS)
        self.ticks += 1

    def tick_until(self, condition: Callable[[], bool], what: str, most: int) -> None:
        for _ in range(most):
            if condition():
                return
            self.tick()
        assert condition(), f"{what} within {most} ticks (at {self.now():%H:%M:%S})"

    def journaled(self, name: str, instance_id: int | None = None) -> bool:
        return bool(self.store.events(name=name, instance_id=instance_id))

    def running(self) -> set[int]:
        return {view.instance.id for view in self.store.load_snapshot().views.values() if view.state.value == "running"}


@dataclass(frozen=True)
class Telling:
    """What one telling ended with, normalized for comparison (see `_journal`), and its tick count."""

    journal: dict[int | None, list[tuple[Any, ...]]]
    ledger: list[Interval]
    cost: dict[str, Any]
    actions: dict[int, list[tuple[str, str | None]]]
    recoveries: list[Recovery]
    left_on_account: int
    ticks: int


def spare_machines(sim: Simulator, instance_id: int) -> list[int]:
    """The machines a replacement of `instance_id` could go to: the same GPU, reliable enough, another machine."""
    row = sim.instance(instance_id)
    assert row is not None
    minimum = 0.98  # [handlers.recovery] min_reliability's default
    return [
        m["machine_id"]
        for m in sim.state()["machines"]
        if m["gpu_name"] == row["gpu_name"] and m["reliability"] >= minimum and m["machine_id"] != row["machine_id"]
    ]


class Team:
    """The second watcher of a team telling and the leader's death; a solo telling has none of it."""

    def __init__(self, story: Story, leader: WatchProcess, follower: WatchProcess) -> None:
        self.story, self.leader, self.follower = story, leader, follower
        wait_until(self._standing_by, "the second watcher stands by", STEP_SECONDS)

    def _standing_by(self) -> bool:
        roles = {m.member: m.role for m in self.story.store.repository(TeamMembers).members()}
        found = self.follower.metrics()
        return roles.get(self.follower.member) == "follower" and found is not None and found["vastevents_leader"] == 0

    def kill_the_leader(self) -> None:
        """SIGKILL the leader; the follower must lead and poll within the failover, and journal nothing new."""
        store = self.story.store
        assert (self.follower.metrics() or {}).get("vastevents_polls_total") == 0  # only the leader polled
        last_event = store.journal.last_id()
        self.leader.kill()
        wait_until(self.follower.leads_and_polled, "the follower takes over", FAILOVER + STEP_SECONDS)
        wait_until(self.story.poll_done, "the follower's first poll", STEP_SECONDS)
        assert store.journal.last_id() == last_event, store.events(since=last_event)  # nothing twice
        roles = {m.member: m.role for m in store.repository(TeamMembers).members()}
        assert roles[self.follower.member] == "leader"


def _attempted(store: SqlStore) -> bool:
    """train-a's recovery made its first attempt (and found no offer)."""
    lineage = store.repository(Recoveries).lineage(LABEL_A)
    return bool(lineage) and lineage[0].failures > 0


def play(story: Story, team: Team | None, train_a: int, train_b: int) -> None:
    """The script: each condition is a step of the story, reached in the same ticks by both tellings."""
    sim, store = story.sim, story.store
    story.tick_until(lambda: story.running() == {train_a, train_b}, "both instances running", 6)
    story.tick_until(lambda: story.journaled("budget_warning"), "the budget warning", 6)

    row = sim.instance(train_a)
    spares = spare_machines(sim, train_a)
    assert row is not None and spares, "the story needs another machine a replacement can go to"
    for machine in (row["machine_id"], *spares):  # one outage takes train-a's host and the spares
        sim.set_offline(machine_id=machine)
    story.tick_until(lambda: story.journaled("preempted", train_a), "train-a preempted", 4)
    story.tick_until(lambda: _attempted(store), "the first replacement attempt", 2)
    (recovery,) = store.repository(Recoveries).lineage(LABEL_A)
    assert (recovery.status, recovery.failures) == (RecoveryStatus.PENDING, 1)  # no offer: it waits out a backoff
    assert sim.instance(train_a) is not None, "kept while its host is offline: it races the replacement"

    if team is not None:
        # The hardest moment to lose the leader: a recovery half done (no replacement yet, the dead instance
        # kept while its host is offline, the backoff only in the store), the budget warned but not yet
        # exceeded, and a follower that never polled. Everything the leader did was seen by its last poll: the
        # follower's first sees nothing.
        team.kill_the_leader()

    for machine in spares:
        sim.set_online(machine_id=machine)
    story.tick_until(lambda: story.journaled("recovered"), "train-a replaced", 4)
    story.tick_until(lambda: story.journaled("budget_exceeded"), "the budget exceeded", 20)
    story.tick_until(lambda: sim.instance_count() == 0 and not store.load_snapshot().views, "everything reaped", 12)


def tell(tmp_path: Path, api_key: str, store_toml: str, *, team: bool) -> Telling:
    """Play the story; with `team`, two watchers share the store and the leader is SIGKILLed mid-story."""
    tmp_path.mkdir()
    config = tmp_path / "story.toml"
    text = store_toml + (f"[team]\nfailover = {FAILOVER:g}\n" if team else "") + HANDLERS
    config.write_text(text)
    cfg = parse_config(text)
    periods = {(h.name, e.name): e.period or 0.0 for h in load_handlers(cfg) for e in h.periodic}
    del periods[MARKER]
    moment = tmp_path / "moment"
    with Simulator(api_key=api_key, clock=ManualClock()) as sim:  # seed 0, like the sim fixture: each telling gets one
        env = {**os.environ, "VAST_URL": sim.url, "VAST_API_KEY": api_key, "HOME": str(tmp_path),
               "PYTHONPATH": str(ROOT), "SIMTIME_FILE": str(moment)}  # fmt: skip
        train_a = sim.create_instance(label=LABEL_A, gpu_name="RTX 3060")
        train_b = sim.create_instance(label=LABEL_B, gpu_name="RTX 4090")
        write_moment(moment, sim.clock.now())
        store = open_store(cfg.store.resolved_path(), cfg.store.resolved_url())
        story = Story(sim, store, moment, periods)
        watchers = [WatchProcess(tmp_path, "first", config, env)]
        try:
            wait_until(story.poll_done, "the first poll and pass", STEP_SECONDS)
            pair = None
            if team:
                wait_until(watchers[0].leads_and_polled, "the first watcher leads", STEP_SECONDS)
                watchers.append(WatchProcess(tmp_path, "second", config, env))
                pair = Team(story, *watchers)
            play(story, pair, train_a, train_b)
            telling = Telling(
                journal=_journal(config),
                ledger=store.repository(Ledger).intervals(),
                cost=_cost(config, sim.url, api_key),
                actions=_actions(store),
                recoveries=store.repository(Recoveries).lineage(LABEL_A),
                left_on_account=sim.instance_count(),
                ticks=story.ticks,
            )
        finally:
            statuses = [watcher.stop() for watcher in watchers]
            store.close()
    assert statuses == ([-signal.SIGKILL, 130] if team else [130]), [w.err.read_text()[-3000:] for w in watchers]
    return telling


def _journal(config: Path) -> dict[int | None, list[tuple[Any, ...]]]:
    """``events --json`` per instance, each instance's events in journal order.

    Every field but the id is kept: a poll's events are on simulated time in both tellings. Event ids and the
    order across instances are left out, because they are not the story's but the runtime's: handlers of
    different instances run concurrently, and a pass that acts on several instances takes them in the order
    its store returns them (SQLite's and PostgreSQL's may differ). Within one instance the order is the story's.
    """
    result = CliRunner().invoke(app, ["events", "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    per_instance: dict[int | None, list[tuple[Any, ...]]] = defaultdict(list)
    for event in json.loads(result.stdout):
        label = (event["instance"] or {}).get("label")
        per_instance[event["instance_id"]].append(
            (event["name"], label, event["old"], event["new"], event["at"], event["catch_up"], event["detail"])
        )
    return dict(per_instance)


def _cost(config: Path, url: str, api_key: str) -> dict[str, Any]:
    """``cost --json`` without its wall-clock ``generated_at``: every interval is closed, so no total depends on it."""
    result = CliRunner().invoke(
        app, ["cost", "--json", "--config", str(config)], env={"VAST_URL": url, "VAST_API_KEY": api_key}
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    return {key: report[key] for key in ("total_usd", "charged_total_usd", "instances", "ghost_billing")}


def _actions(store: SqlStore) -> dict[int, list[tuple[str, str | None]]]:
    """Every action the watchers took (intent, outcome), per instance: a deposed leader's would show here."""
    ids = {interval.instance_id for interval in store.repository(Ledger).intervals()}
    return {instance_id: store.effects.intents(instance_id) for instance_id in sorted(ids)}


def test_two_watchers_with_the_leader_killed_mid_story_end_like_one_watcher_on_sqlite(
    tmp_path: Path, api_key: str, pg_url: str
) -> None:
    solo = tell(tmp_path / "solo", api_key, f'[store]\npath = "{tmp_path / "solo" / "state.db"}"\n', team=False)
    team = tell(tmp_path / "team", api_key, f'[store]\nurl = "{pg_url}"\n', team=True)

    names = [entry[0] for entries in solo.journal.values() for entry in entries]
    assert names.count("budget_warning") == names.count("budget_exceeded") == 1
    assert names.count("preempted") == names.count("recovered") == 1
    creates = [intent for intents in solo.actions.values() for intent in intents if intent[0] == "create"]
    assert creates == [("create", "created")]  # one replacement for the one preemption
    assert solo.left_on_account == 0
    assert all(len(set(events)) == len(events) for events in team.journal.values())  # nothing journaled twice

    assert team.journal == solo.journal
    assert team.ledger == solo.ledger
    assert team.cost == solo.cost
    assert team.actions == solo.actions
    assert team.recoveries == solo.recoveries
    assert (team.left_on_account, team.ticks) == (solo.left_on_account, solo.ticks)
