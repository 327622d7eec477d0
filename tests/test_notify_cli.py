"""Notifiers under real `vastevents watch` processes: a kill -9 around the send, and secrets under --debug."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from slack_sink import SlackSink, destroy_all

from vastevents.sim import Simulator
from vastevents.store import SqliteStore

ROOT = Path(__file__).resolve().parents[1]

KILLER_PLUGIN = """
import os, signal, sqlite3, time
from pathlib import Path
from vastevents import on

@on("preempted")
def kill_once_queued(event, ctx):
    # Runs in a worker thread while the slack handler takes the same event. The outbox is sent only after every
    # delivery of the cycle is done, so dying once the message is queued is dying between queueing and sending.
    marker = Path(os.environ["CRASH_DIR"]) / "killed"
    if marker.exists():
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with sqlite3.connect(os.environ["STORE_PATH"]) as db:
            if db.execute("SELECT 1 FROM outbox WHERE key = ?", (f"event:{event.id}",)).fetchone():
                break
        time.sleep(0.02)
    marker.write_text(str(event.id))
    os.kill(os.getpid(), signal.SIGKILL)
"""


class Watch:
    """`vastevents watch --once` processes against one simulator, config and store."""

    def __init__(self, tmp_path: Path, sim: Simulator, api_key: str, sink: SlackSink, handlers: str) -> None:
        self.store = tmp_path / "state.db"
        self.config = tmp_path / "vastevents.toml"
        self.config.write_text(f'[store]\npath = "{self.store}"\n{handlers}')
        self.env = {
            **os.environ,
            "VAST_URL": sim.url,
            "VAST_API_KEY": api_key,
            "HOME": str(tmp_path),
            "CRASH_DIR": str(tmp_path),
            "STORE_PATH": str(self.store),
            "SLACK_WEBHOOK_URL": sink.webhook_url,
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        }
        self.dir = tmp_path

    def args(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "vastevents", "watch", "--once", *extra, "--config", str(self.config)]

    def once(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.args(*extra), capture_output=True, text=True, env=self.env, cwd=self.dir,
                              timeout=120)  # fmt: skip

    def start(self) -> subprocess.Popen[str]:
        return subprocess.Popen(self.args(), env=self.env, cwd=self.dir, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip

    def outbox_states(self) -> list[str]:
        store = SqliteStore(self.store)
        try:
            return [str(state) for (state,) in store.db.query("SELECT state FROM outbox ORDER BY id", ())]
        finally:
            store.close()


SLACK = '[handlers.slack]\nuse = "slack"\npace = 0\nretries = 0\n'


def destroy_everything(sim: Simulator, api_key: str) -> None:
    asyncio.run(destroy_all(sim, api_key))


def preempted_instance(sim: Simulator, watch: Watch) -> int:
    instance_id = sim.create_instance(label="vastevents:train", bid=True)
    sim.advance(600)
    first = watch.once()
    assert first.returncode == 0, first.stderr
    sim.preempt(instance_id)
    sim.advance(15)
    return instance_id


def test_a_kill_9_between_queueing_and_sending_sends_the_message_exactly_once_after_the_restart(
    tmp_path: Path, sim: Simulator, api_key: str, sink: SlackSink
) -> None:
    (tmp_path / "killer.py").write_text(KILLER_PLUGIN)
    watch = Watch(tmp_path, sim, api_key, sink, SLACK + '[handlers.killer]\nuse = "killer:kill_once_queued"\n')
    try:
        instance_id = preempted_instance(sim, watch)
        crashed = watch.once()
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        assert sink.attempts == [] and watch.outbox_states() == ["pending"]

        for _ in range(2):
            restarted = watch.once()
            assert restarted.returncode == 0, restarted.stderr
        assert len(sink.posts) == 1 and len(sink.attempts) == 1
        assert f"Instance {instance_id} (vastevents:train" in sink.texts()[0] and "preempted" in sink.texts()[0]
        assert watch.outbox_states() == ["sent"]
    finally:
        destroy_everything(sim, api_key)


def test_a_kill_9_after_the_service_took_the_post_but_before_it_was_marked_sent_sends_it_again(
    tmp_path: Path, sim: Simulator, api_key: str, sink: SlackSink
) -> None:
    """The one at-least-once edge: the outbox cannot know a post was taken if the process died before hearing."""
    watch = Watch(tmp_path, sim, api_key, sink, SLACK)
    try:
        preempted_instance(sim, watch)
        sink.gate = threading.Event()
        process = watch.start()
        try:
            assert sink.received.wait(timeout=60), "the watcher never posted"
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=60)
        finally:
            sink.gate.set()
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == -signal.SIGKILL
        assert watch.outbox_states() == ["pending"]
        sink.gate = None
        restarted = watch.once()
        assert restarted.returncode == 0, restarted.stderr
        assert len(sink.attempts) == 2 and sink.attempts[0].body == sink.attempts[1].body
        assert watch.outbox_states() == ["sent"]
    finally:
        destroy_everything(sim, api_key)


def test_watch_once_debug_never_shows_a_webhook_url_token_or_secret(
    tmp_path: Path, sim: Simulator, api_key: str, sink: SlackSink
) -> None:
    token, secret = "xoxb-1234-debug-test-token", "hook-signing-secret-0123"
    hook_url = f"http://127.0.0.1:{sink.port}/hooks/GENERICSECRETPATH"
    handlers = (
        f'{SLACK}[handlers.bot]\nuse = "slack"\nmode = "bot"\nchannel = "#gpu"\napi_url = "{sink.api_url}"\n'
        'pace = 0\nretries = 0\n[handlers.hook]\nuse = "webhook"\nsecret_env = "HOOK_SECRET"\npace = 0\nretries = 0\n'
    )
    watch = Watch(tmp_path, sim, api_key, sink, handlers)
    watch.env.update({"SLACK_BOT_TOKEN": token, "VASTEVENTS_WEBHOOK_URL": hook_url, "HOOK_SECRET": secret})
    try:
        preempted_instance(sim, watch)
        sink.failing = 500  # the errors of the failed sends are logged too
        failed = watch.once("--debug")
        sink.failing = None
        sim.advance(15)
        sent = watch.once("--debug")
        assert failed.returncode == sent.returncode == 0, failed.stderr + sent.stderr
        assert "HTTP Request: POST ***" in failed.stderr + sent.stderr  # --debug logged the posts, redacted
        assert len(sink.posts) == 3
        secrets = ("SECRETWEBHOOKPATH", "GENERICSECRETPATH", token, secret, api_key)
        for output in (failed.stdout, failed.stderr, sent.stdout, sent.stderr):
            for value in secrets:
                assert value not in output
    finally:
        destroy_everything(sim, api_key)
