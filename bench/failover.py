"""P11: team failover, from the leader's SIGKILL to the follower's first poll, against ``[team] failover``.

    python bench/failover.py [--quick] [--json PATH]

Two real ``vastevents watch`` processes share a PostgreSQL store (a schema of its own, dropped at the end) and
watch a simulator. Each round SIGKILLs the leader, creates an instance at once and times how long the follower
takes to journal it: the failover (its wait for the dead leader's lock), plus at most one poll interval.
A new follower joins before the next round. The goal is the contract's: within ``failover`` plus one poll.

It needs the PostgreSQL server the tests use (``$VASTEVENTS_TEST_PG``, default
``postgresql://postgres@127.0.0.1:5432/test``); without one it says so and measures nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from _common import percentiles, print_table, write_json

from vastevents.clock import ManualClock
from vastevents.sim import Simulator
from vastevents.store import PostgresStore
from vastevents.store.team import TeamMembers

FAILOVER = 3.0
INTERVAL = 0.5
PG = os.environ.get("VASTEVENTS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


class Watch:
    def __init__(self, tmp: Path, name: str, config: Path, env: dict[str, str]) -> None:
        self.jsonl = tmp / f"{name}.jsonl"
        command = [sys.executable, "-m", "vastevents", "watch", "--interval", f"{INTERVAL:g}", "--jsonl",
                   str(self.jsonl), "--config", str(config)]  # fmt: skip
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.member = f"{socket.gethostname()}:{self.process.pid}"

    def journaled(self, instance_id: int) -> bool:
        if not self.jsonl.exists():
            return False
        return any(json.loads(line)["instance_id"] == instance_id for line in self.jsonl.read_text().splitlines())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _wait(condition: Callable[[], bool], what: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {seconds:g} s")
        time.sleep(0.01)


def _rounds(url: str, rounds: int) -> list[float]:
    took = []
    with (
        tempfile.TemporaryDirectory(prefix="vastevents-bench-failover-") as name,
        Simulator(clock=ManualClock()) as sim,
    ):
        tmp = Path(name)
        config = tmp / "team.toml"
        config.write_text(f'[store]\nurl = "{url}"\n[team]\nfailover = {FAILOVER:g}\n')
        env = {**os.environ, "VAST_URL": sim.url, "VAST_API_KEY": sim.api_key, "HOME": str(tmp)}
        first = sim.create_instance(label="vastevents:first")
        watchers = [Watch(tmp, "w0", config, env), Watch(tmp, "w1", config, env)]
        try:
            _wait(lambda: any(w.journaled(first) for w in watchers), "a leader polls")
            with PostgresStore(url, read_only=True) as store:
                for n in range(rounds):
                    alive = [w for w in watchers if w.process.poll() is None]
                    _wait(lambda a=alive: sorted(_roles(store, a)) == ["follower", "leader"], "one leads, one waits")
                    leader, follower = sorted(alive, key=lambda w: _roles(store, [w]) != ["leader"])
                    leader.process.kill()
                    leader.process.wait()
                    killed = time.monotonic()
                    instance = sim.create_instance(label=f"vastevents:round-{n}")
                    _wait(lambda f=follower, i=instance: f.journaled(i), "the follower takes over")
                    took.append(time.monotonic() - killed)
                    watchers.append(Watch(tmp, f"w{len(watchers)}", config, env))
        finally:
            for watcher in watchers:
                watcher.stop()
            for row in sim.state()["instances"]:
                sim.vanish(row["id"])
    return took


def _roles(store: PostgresStore, watchers: list[Watch]) -> list[str]:
    """The roles the team roster gives `watchers`, in their order (a watcher not on it yet has none)."""
    roles = {m.member: m.role for m in store.repository(TeamMembers).members()}
    return [roles[w.member] for w in watchers if w.member in roles]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke mode: one round")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    try:
        import psycopg

        admin = psycopg.connect(PG, autocommit=True, connect_timeout=5)
    except Exception as exc:  # no server (or no driver): nothing to measure here
        print(f"skipped: no PostgreSQL at {PG} ({exc})")
        write_json(args.json, "failover", {"skipped": str(exc)})
        return
    schema = f"bench_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            separator = "&" if "?" in PG else "?"
            took = _rounds(f"{PG}{separator}options={quote(f'-csearch_path={schema}')}", 1 if args.quick else 5)
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
    results: dict[str, Any] = {"failover": FAILOVER, "interval": INTERVAL, "took": percentiles(took)}
    goal = FAILOVER + INTERVAL
    print_table(
        f"P11 leader SIGKILL -> the follower journals a new instance (failover {FAILOVER:g} s, poll every"
        f" {INTERVAL:g} s; goal {goal:g} s)",
        ["rounds", "p50", "max"],
        [[str(len(took)), f"{results['took']['p50']:.2f} s", f"{results['took']['max']:.2f} s"]],
    )
    write_json(args.json, "failover", results)


if __name__ == "__main__":
    main()
