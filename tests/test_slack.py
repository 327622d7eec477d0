"""The slack handler end to end: the simulator over HTTP, the real Runtime and store (its outbox on both
backends), a real local Slack endpoint."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from slack_sink import SlackSink, destroy_all, failures, running
from stores import Opener

from vastevents import BotTransport, Cause, ChatMessage, Event, Outbox, PermanentSendError, TransientSendError
from vastevents.config import parse_config
from vastevents.errors import ConfigError
from vastevents.plugins import load_handlers
from vastevents.sim import Simulator
from vastevents.store import SqliteStore, SqlStore


@pytest.fixture
def webhook(sink: SlackSink, monkeypatch: pytest.MonkeyPatch) -> SlackSink:
    monkeypatch.setenv("SLACK_WEBHOOK_URL", sink.webhook_url)
    return sink


def slack_config(extra: str = "", *, retries: int = 0) -> str:
    return f'[handlers.slack]\nuse = "slack"\npace = 0\nretries = {retries}\n{extra}\n'


async def test_a_ready_instance_and_its_preemption_are_one_message_each(
    sim: Simulator, api_key: str, webhook: SlackSink, store: SqlStore
) -> None:
    instance_id = sim.create_instance(label="vastevents:train", bid=True, gpu_name="RTX 4090", pull=30)
    async with running(sim, api_key, store, slack_config()) as runtime:
        await runtime.poll_once()
        sim.advance(120)
        await runtime.poll_once()
        (ready,) = webhook.texts()
        assert f"Instance {instance_id} (vastevents:train, 1x RTX 4090): running" in ready
        assert "/h" in ready and "ssh -p " in ready
        sim.preempt(instance_id)
        for _ in range(3):
            sim.advance(30)
            await runtime.poll_once()
        assert len(webhook.posts) == 2
        preempted = webhook.texts()[1]
        assert preempted.startswith("<!here> ")
        assert f"Instance {instance_id} (vastevents:train, 1x RTX 4090): preempted" in preempted
        assert webhook.posts[1].body["blocks"][0]["type"] == "section"
        assert failures(runtime) == []
    await destroy_all(sim, api_key)


async def test_a_flap_within_grace_says_nothing_by_default(
    sim: Simulator, api_key: str, webhook: SlackSink, tmp_path: Path
) -> None:
    instance_id = sim.create_instance(label="vastevents:flappy")
    sim.advance(600)
    async with running(sim, api_key, SqliteStore(tmp_path / "s.db"), slack_config()) as runtime:
        await runtime.poll_once()
        sim.set_offline(instance_id)
        sim.advance(30)
        await runtime.poll_once()
        sim.set_online(instance_id)
        sim.advance(30)
        names = [event.name for event in await runtime.poll_once()]
        assert "offline_to_running" in names
    assert webhook.posts == []
    await destroy_all(sim, api_key)


async def test_a_subscribed_offline_folds_with_its_return_into_one_message(
    sim: Simulator, api_key: str, webhook: SlackSink, store: SqlStore
) -> None:
    instance_id = sim.create_instance(label="vastevents:flappy")
    sim.advance(600)
    toml = slack_config('events = ["running_to_offline", "preempted"]\nflap_grace = "5m"')
    async with running(sim, api_key, store, toml) as runtime:
        await runtime.poll_once()
        sim.set_offline(instance_id)
        sim.advance(15)
        await runtime.poll_once(all_periodic=True)  # held for the grace even by watch --once
        assert webhook.posts == []
        sim.set_online(instance_id)
        sim.advance(45)
        await runtime.poll_once()
        for _ in range(3):
            sim.advance(300)
            await runtime.poll_once()
        (message,) = webhook.texts()
        assert f"Instance {instance_id} (vastevents:flappy" in message
        assert "offline (was running)" in message and "running again after" in message
        states = [row.state for row in runtime.store.repository(Outbox).messages()]
        assert states == ["folded", "sent"]
    await destroy_all(sim, api_key)


async def test_a_burst_becomes_one_digest(sim: Simulator, api_key: str, webhook: SlackSink, store: SqlStore) -> None:
    ids = [sim.create_instance(label=f"vastevents:bulk-{n}", bid=True) for n in range(8)]
    sim.advance(600)
    async with running(sim, api_key, store, slack_config("burst_count = 5")) as runtime:
        await runtime.poll_once()
        for instance_id in ids:
            sim.preempt(instance_id)
        sim.advance(15)
        await runtime.poll_once()
        sim.advance(15)
        await runtime.poll_once()
    (digest,) = webhook.texts()
    assert digest.startswith("<!here> 8 vastevents notifications at once:")
    for instance_id in ids:
        assert f"Instance {instance_id} " in digest
    assert "<!here>" not in digest.removeprefix("<!here>")
    await destroy_all(sim, api_key)


async def test_an_outage_keeps_every_message_and_sends_them_in_order_once_it_ends(
    sim: Simulator, api_key: str, webhook: SlackSink, store: SqlStore
) -> None:
    first, second = (sim.create_instance(label=f"vastevents:o-{n}", bid=True) for n in range(2))
    sim.advance(600)
    async with running(sim, api_key, store, slack_config("burst_count = 50")) as runtime:
        await runtime.poll_once()
        webhook.failing = 503
        sim.preempt(first)
        sim.advance(15)
        await runtime.poll_once()
        webhook.stop()  # connection refused from here on
        sim.preempt(second)
        for _ in range(4):
            sim.advance(15)
            await runtime.poll_once()
        assert webhook.posts == []
        pending = runtime.store.repository(Outbox).pending("slack")
        assert [row.instance_id for row in pending] == [first, second]
        assert all(row.last_error for row in pending[:1])
        webhook.failing = None
        webhook.start()
        sim.advance(600)
        await runtime.poll_once()
        sim.advance(600)
        await runtime.poll_once()
        texts = webhook.texts()
        assert len(texts) == 2
        assert f"Instance {first} " in texts[0] and f"Instance {second} " in texts[1]
        assert failures(runtime) == []
    await destroy_all(sim, api_key)


async def test_a_pending_message_survives_a_restart_and_watch_once_tries_it_regardless_of_backoff(
    sim: Simulator, api_key: str, webhook: SlackSink, opener: Opener
) -> None:
    instance_id = sim.create_instance(label="vastevents:r", bid=True)
    sim.advance(600)
    async with running(sim, api_key, opener(), slack_config()) as runtime:
        await runtime.poll_once()
        webhook.failing = 500
        sim.preempt(instance_id)
        sim.advance(15)
        await runtime.poll_once()
        (row,) = runtime.store.repository(Outbox).pending("slack")
        assert row.next_attempt > sim.clock.now()
    webhook.failing = None
    async with running(sim, api_key, opener(), slack_config()) as runtime:
        await runtime.poll_once(all_periodic=True)  # what `watch --once` runs
        await runtime.poll_once(all_periodic=True)
    assert len(webhook.posts) == 1 and "preempted" in webhook.texts()[0]
    await destroy_all(sim, api_key)


async def test_a_permanent_refusal_is_reported_once_and_dropped(
    sim: Simulator, api_key: str, webhook: SlackSink, store: SqlStore
) -> None:
    instance_id = sim.create_instance(label="vastevents:p", bid=True)
    sim.advance(600)
    async with running(sim, api_key, store, slack_config('events = ["preempted", "notification_failed"]')) as runtime:
        await runtime.poll_once()
        webhook.failing = 404
        sim.preempt(instance_id)
        sim.advance(15)
        await runtime.poll_once()
        attempts = len(webhook.attempts)
        for _ in range(3):
            sim.advance(600)
            await runtime.poll_once(all_periodic=True)
        (failed,) = failures(runtime)
        assert failed.detail.startswith("slack: message about instance")
        assert "HTTP 404" in failed.detail
        assert len(webhook.attempts) == attempts  # never retried, and the failure itself is not posted
        assert "failed" in [row.state for row in runtime.store.repository(Outbox).messages()]
    await destroy_all(sim, api_key)


async def test_a_long_retry_after_is_respected_and_a_short_one_retried_by_slack_sdk(
    sim: Simulator, api_key: str, webhook: SlackSink, store: SqlStore
) -> None:
    first, second = (sim.create_instance(label=f"vastevents:rl-{n}", bid=True) for n in range(2))
    sim.advance(600)
    async with running(sim, api_key, store, slack_config("burst_count = 50", retries=1)) as runtime:
        await runtime.poll_once()
        webhook.answer(429, retry_after=120)
        sim.preempt(first)
        sim.advance(15)
        await runtime.poll_once()
        assert webhook.posts == [] and len(webhook.attempts) == 1  # too long to wait inside the call
        sim.advance(60)
        await runtime.poll_once()
        assert len(webhook.attempts) == 1
        sim.advance(61)
        await runtime.poll_once()
        assert len(webhook.posts) == 1
        webhook.answer(429, retry_after=0)
        sim.preempt(second)
        sim.advance(15)
        await runtime.poll_once()
        assert len(webhook.posts) == 2 and len(webhook.attempts) == 4  # slack-sdk's retry handler
    await destroy_all(sim, api_key)


async def test_bot_mode_threads_an_instances_updates_under_its_first_message(
    sim: Simulator, api_key: str, sink: SlackSink, store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-0000-test-token")
    toml = slack_config(f'mode = "bot"\nchannel = "#gpu"\napi_url = "{sink.api_url}"\n'
                        'channels = {"vastevents:team-b" = "#team-b"}')  # fmt: skip
    one = sim.create_instance(label="vastevents:team-a", bid=True, pull=30)
    two = sim.create_instance(label="vastevents:team-b", bid=True, pull=30)
    async with running(sim, api_key, store, toml) as runtime:
        await runtime.poll_once()
        sim.advance(120)
        await runtime.poll_once()
        sim.preempt(one)
        sim.preempt(two)
        sim.advance(15)
        await runtime.poll_once()
    assert all(post.path == "/api/chat.postMessage" for post in sink.posts)
    assert {post.authorization for post in sink.posts} == {"Bearer xoxb-0000-test-token"}
    by_instance = {
        instance: [post.body for post in sink.posts if f"Instance {instance} " in str(post.body["text"])]
        for instance in (one, two)
    }
    for instance, channel in ((one, "#gpu"), (two, "#team-b")):
        parent, update = by_instance[instance]
        assert parent["channel"] == update["channel"] == channel
        assert "thread_ts" not in parent
        assert "preempted" in update["text"]
        parent_ts = f"1700000000.{[p.body for p in sink.posts].index(parent) + 1:06d}"
        assert update["thread_ts"] == parent_ts
    await destroy_all(sim, api_key)


async def test_the_webhook_url_and_token_never_reach_logs_events_or_the_store(
    sim: Simulator, api_key: str, sink: SlackSink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("SLACK_WEBHOOK_URL", sink.webhook_url)
    monkeypatch.setenv("TEAM_HOOK", "http://127.0.0.1:1/services/T1/B1/OTHERSECRETPATH")
    toml = slack_config('channels = {"vastevents:team" = "TEAM_HOOK"}')
    one = sim.create_instance(label="vastevents:solo", bid=True)
    two = sim.create_instance(label="vastevents:team", bid=True)
    sim.advance(600)
    store = tmp_path / "s.db"
    async with running(sim, api_key, SqliteStore(store), toml) as runtime:
        await runtime.poll_once()
        sink.failing = 404
        sim.preempt(one)
        sim.preempt(two)  # its hook's port refuses connections
        sim.advance(15)
        await runtime.poll_once()
        details = " ".join(event.detail for event in runtime.store.events())
        errors = " ".join(row.last_error or "" for row in runtime.store.repository(Outbox).messages())
    assert "HTTP 404" in details and errors
    for secret in ("SECRETWEBHOOKPATH", "OTHERSECRETPATH"):
        assert secret not in caplog.text
        assert secret not in details and secret not in errors
        assert secret.encode() not in store.read_bytes()
    await destroy_all(sim, api_key)


def test_a_missing_webhook_url_is_a_config_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    with pytest.raises(ConfigError, match=r"handlers\.slack.*SLACK_WEBHOOK_URL"):
        load_handlers(parse_config(slack_config()))
    with pytest.raises(ConfigError, match="channel"):
        load_handlers(parse_config(slack_config('mode = "bot"')))


def test_the_bot_transport_tells_permanent_from_transient_refusals(sink: SlackSink) -> None:
    bot = BotTransport("xoxb-0000-classify", sink.api_url, retries=0)
    message = ChatMessage(text="hello", channel="#gpu")
    sink.answer(404)
    with pytest.raises(PermanentSendError, match="channel_not_found"):
        bot.post(message)
    sink.answer(500)
    with pytest.raises(TransientSendError, match="HTTP 500"):
        bot.post(message)
    sink.answer(429, retry_after=30)
    with pytest.raises(TransientSendError) as limited:
        bot.post(message)
    assert limited.value.retry_after == 30
    assert bot.post(message).ts == "1700000000.000001"


def test_a_failure_says_its_cause_in_the_shared_vocabulary_and_other_events_say_none() -> None:
    """The words of a ``job_failed`` or ``recovery_failed`` message name its typed cause, not a guess from detail."""
    from vastevents_handlers.slack_messages import describe

    at = datetime(2026, 1, 1, tzinfo=UTC)
    failed = Event(name="job_failed", instance_id=7, at=at, detail="preflight: no GPU visible", cause=Cause.HOST_UNFIT)
    assert describe(failed) == "Instance 7 (no label, unknown GPU): job failed (host unfit) — preflight: no GPU visible"
    gave_up = Event(name="recovery_failed", instance_id=7, at=at, detail="no offer", cause=Cause.CAPACITY)
    assert describe(gave_up).endswith(": recovery failed (capacity) — no offer")
    assert describe(Event(name="preempted", instance_id=7, at=at)).endswith(": preempted")
