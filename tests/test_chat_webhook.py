"""The generic webhook notifier end to end: the simulator over HTTP, the real Runtime and store, a real endpoint."""

from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path

import pytest
from slack_sink import SlackSink, destroy_all, failures, running

from vastevents import Outbox
from vastevents.config import parse_config
from vastevents.errors import ConfigError
from vastevents.notify.chat_webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature
from vastevents.plugins import load_handlers
from vastevents.sim import Simulator
from vastevents.store import SqliteStore, SqlStore
from vastevents.vast_webhooks import verify

SECRET = "whsec-local-test-0123456789"


@pytest.fixture
def hook(sink: SlackSink, monkeypatch: pytest.MonkeyPatch) -> SlackSink:
    monkeypatch.setenv("VASTEVENTS_WEBHOOK_URL", f"http://127.0.0.1:{sink.port}/hooks/SECRETHOOKPATH")
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    return sink


def webhook_config(extra: str = "", *, retries: int = 0) -> str:
    return f'[handlers.webhook]\nuse = "webhook"\npace = 0\nretries = {retries}\n{extra}\n'


async def test_a_preemption_is_posted_once_as_the_events_json_object_signed(
    sim: Simulator, api_key: str, hook: SlackSink, tmp_path: Path
) -> None:
    instance_id = sim.create_instance(label="vastevents:train", bid=True, gpu_name="RTX 4090")
    sim.advance(600)
    async with running(
        sim, api_key, SqliteStore(tmp_path / "s.db"), webhook_config('secret_env = "HOOK_SECRET"')
    ) as runtime:
        await runtime.poll_once()
        sim.preempt(instance_id)
        for _ in range(3):
            sim.advance(30)
            await runtime.poll_once()
        (preempted,) = runtime.store.events(name="preempted")
        assert failures(runtime) == []
    (post,) = hook.posts
    assert post.path == "/hooks/SECRETHOOKPATH"
    assert post.headers["Content-Type"] == "application/json"
    assert post.body == {
        **json.loads(json.dumps(preempted.to_json())),
        "text": post.body["text"],
        "severity": "critical",
    }
    assert f"Instance {instance_id} (vastevents:train, 1x RTX 4090): preempted" in post.body["text"]
    stamp = post.headers[TIMESTAMP_HEADER]
    assert stamp.isdigit()
    expected = "sha256=" + hmac.new(SECRET.encode(), f"{stamp}.".encode() + post.raw, "sha256").hexdigest()
    assert hmac.compare_digest(post.headers[SIGNATURE_HEADER], expected)
    assert signature(SECRET, stamp, post.raw) == expected
    vast_headers = {"content-type": "application/json", "x-vast-timestamp": stamp, "x-vast-event-id": "1",
                    "x-vast-signature-256": post.headers[SIGNATURE_HEADER]}  # fmt: skip
    verify(vast_headers, post.raw, secret=SECRET, now=int(stamp), max_skew=300)  # Vast's scheme, exactly
    await destroy_all(sim, api_key)


async def test_unsigned_by_default_and_a_short_outage_is_retried_within_the_send(
    sim: Simulator, api_key: str, hook: SlackSink, tmp_path: Path
) -> None:
    instance_id = sim.create_instance(label="vastevents:t", bid=True)
    sim.advance(600)
    async with running(sim, api_key, SqliteStore(tmp_path / "s.db"), webhook_config(retries=2)) as runtime:
        await runtime.poll_once()
        hook.answer(503)
        hook.answer(429, retry_after=0)
        sim.preempt(instance_id)
        sim.advance(15)
        await runtime.poll_once()
    assert len(hook.attempts) == 3 and len(hook.posts) == 1
    assert SIGNATURE_HEADER not in hook.posts[0].headers
    await destroy_all(sim, api_key)


async def test_transient_failures_keep_the_message_until_the_endpoint_answers_then_it_goes_once(
    sim: Simulator, api_key: str, hook: SlackSink, store: SqlStore
) -> None:
    instance_id = sim.create_instance(label="vastevents:t", bid=True)
    sim.advance(600)
    async with running(sim, api_key, store, webhook_config()) as runtime:
        await runtime.poll_once()
        hook.answer(429, retry_after=120)  # too long to wait inside the call: left to the outbox
        sim.preempt(instance_id)
        sim.advance(15)
        await runtime.poll_once()
        sim.advance(60)
        await runtime.poll_once()
        assert hook.posts == [] and len(hook.attempts) == 1
        hook.stop()  # connection refused
        sim.advance(61)
        await runtime.poll_once()
        (row,) = runtime.store.repository(Outbox).pending("webhook")
        assert "ConnectError" in (row.last_error or "")
        hook.failing = 502
        hook.start()
        sim.advance(600)
        await runtime.poll_once()
        hook.failing = None
        for _ in range(2):
            sim.advance(600)
            await runtime.poll_once()
        assert failures(runtime) == []
    assert len(hook.posts) == 1 and "preempted" in hook.texts()[0]
    await destroy_all(sim, api_key)


async def test_a_4xx_is_reported_once_and_dropped_and_secrets_stay_out_of_logs_and_store(
    sim: Simulator, api_key: str, hook: SlackSink, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    instance_id = sim.create_instance(label="vastevents:p", bid=True)
    sim.advance(600)
    store = tmp_path / "s.db"
    toml = webhook_config('secret_env = "HOOK_SECRET"\nevents = ["preempted", "notification_failed"]')
    async with running(sim, api_key, SqliteStore(store), toml) as runtime:
        await runtime.poll_once()
        hook.failing = 410
        sim.preempt(instance_id)
        sim.advance(15)
        await runtime.poll_once()
        attempts = len(hook.attempts)
        for _ in range(3):
            sim.advance(600)
            await runtime.poll_once(all_periodic=True)
        (failed,) = failures(runtime)
        details = " ".join(event.detail for event in runtime.store.events())
        assert [row.state for row in runtime.store.repository(Outbox).messages()] == ["failed"]
    assert failed.detail.startswith(f"webhook: message about instance {instance_id} not sent: refused")
    assert "HTTP 410" in failed.detail
    assert len(hook.attempts) == attempts == 1
    for secret in ("SECRETHOOKPATH", SECRET):
        assert secret not in caplog.text and secret not in details
        assert secret.encode() not in store.read_bytes()
    await destroy_all(sim, api_key)


async def test_a_burst_is_one_digest_carrying_every_message(
    sim: Simulator, api_key: str, hook: SlackSink, tmp_path: Path
) -> None:
    ids = [sim.create_instance(label=f"vastevents:bulk-{n}", bid=True) for n in range(4)]
    sim.advance(600)
    async with running(sim, api_key, SqliteStore(tmp_path / "s.db"), webhook_config("burst_count = 3")) as runtime:
        await runtime.poll_once()
        for instance_id in ids:
            sim.preempt(instance_id)
        for _ in range(2):
            sim.advance(15)
            await runtime.poll_once()
    (digest,) = hook.posts
    assert digest.body["name"] == "digest" and digest.body["severity"] == "critical"
    assert [m["instance_id"] for m in digest.body["messages"]] == ids
    assert digest.body["text"].startswith("4 vastevents notifications at once:")
    await destroy_all(sim, api_key)


def test_missing_environment_variables_are_config_errors_naming_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VASTEVENTS_WEBHOOK_URL", raising=False)
    with pytest.raises(ConfigError, match=r"handlers\.webhook.*VASTEVENTS_WEBHOOK_URL"):
        load_handlers(parse_config(webhook_config()))
    monkeypatch.setenv("VASTEVENTS_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    monkeypatch.delenv("NO_SUCH_SECRET", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_SECRET"):
        load_handlers(parse_config(webhook_config('secret_env = "NO_SUCH_SECRET"')))
