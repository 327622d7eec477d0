"""Vast's signed webhooks as poll-now hints, over real HTTP: the simulator (or httpx) posts to the watcher's listener.

The watcher runs with a 3600 s interval on a manual clock nobody advances past it, so every poll after the first
is one a delivery caused. Polls are counted at the lister: a wrong wake would show up as an extra list call.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from stores import Opener
from typer.testing import CliRunner

from vastevents.cli import app
from vastevents.clock import ManualClock
from vastevents.config import parse_config
from vastevents.models import Instance
from vastevents.runtime import Runtime
from vastevents.sim import Simulator
from vastevents.store import SqliteStore
from vastevents.store.vast_webhooks import WebhookDeliveries
from vastevents.vast import VastClient

SECRET = "whsec_test_0123456789abcdef"
PATH = "/vast-webhook"


class CountingLister:
    """The client's list, counted; `gate` (when given) holds the first list until the test sets it."""

    def __init__(self, client: VastClient, gate: asyncio.Event | None = None) -> None:
        self.client = client
        self.gate = gate
        self.calls = 0

    async def list_instances(self) -> list[Instance]:
        self.calls += 1
        if self.gate is not None and self.calls == 1:
            await self.gate.wait()
        return await self.client.list_instances()


@pytest.fixture
def quiet_sim(api_key: str) -> Iterator[Simulator]:
    """A simulator on a manual clock that moves only when the test says (the watcher's sleep never ends by itself)."""
    simulator = Simulator(api_key=api_key, clock=ManualClock(auto_advance=False), rate_limits=False)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


async def until(condition: Callable[[], bool], what: str) -> None:
    """A bounded wait for something the event loop is doing (the listener and the watcher share it)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def idle() -> None:
    """Let every ready task (a wrongly woken watcher included) run and reach its next real wait."""
    for _ in range(20):
        await asyncio.sleep(0.01)


@asynccontextmanager
async def watching(
    sim: Simulator,
    api_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    listen: str = "127.0.0.1:0",
    secret: str = SECRET,
    extra: str = "",
    gate: asyncio.Event | None = None,
) -> AsyncIterator[tuple[Runtime, CountingLister]]:
    monkeypatch.setenv("VAST_WEBHOOK_SECRET", secret)
    config = parse_config(f"[watch]\ninterval = 3600\n[webhooks]\n{extra}")
    store = SqliteStore(tmp_path / "state.db")
    try:
        async with VastClient(api_key, sim.url) as client:
            lister = CountingLister(client, gate)
            async with Runtime(
                config, client=client, lister=lister, store=store, clock=sim.clock, handlers=[], webhook_listen=listen
            ) as runtime:
                stop = asyncio.Event()
                task = asyncio.create_task(runtime.run(stop))
                try:
                    assert runtime.webhooks is not None
                    await until(runtime.webhooks.listening.is_set, "the listener")
                    if gate is None:
                        await until(lambda: runtime.watcher.status.polls == 1, "the first poll")
                    yield runtime, lister
                finally:
                    stop.set()
                    await task
    finally:
        store.close()


def signed(
    body: bytes, *, timestamp: int, secret: str = SECRET, event_id: str | None = None, kind: str = "application/json"
) -> dict[str, str]:
    """Headers as Vast sends them, signed independently of the code under test."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": kind,
        "X-Vast-Event-Id": event_id or uuid.uuid4().hex,
        "X-Vast-Delivery-Attempt": "1",
        "X-Vast-Timestamp": str(timestamp),
        "X-Vast-Signature-256": f"sha256={digest}",
    }


def notification(kind: str = "outbid", data: dict[str, Any] | None = None) -> bytes:
    body = {"event_id": "x", "user_id": 1, "notif_type": kind, "subject": f"Instance {kind}", "message": "",
            "data": data, "data_truncated": False, "timestamp": 0.0}  # fmt: skip
    return json.dumps(body).encode()


def now_of(sim: Simulator) -> int:
    return int(sim.clock.now().timestamp())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def journal(runtime: Runtime, name: str) -> list[Any]:
    return runtime.store.events(name=name)


async def test_an_outbid_delivery_from_the_simulator_makes_the_watcher_poll_at_once(
    quiet_sim: Simulator,
    api_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = quiet_sim
    instance_id = sim.create_instance(label="vastevents:bid-1", bid=True)
    sim.advance(600)
    port = free_port()
    async with VastClient(api_key, sim.url) as client:
        hook = await client.create_webhook(f"http://127.0.0.1:{port}{PATH}", ["client:outbid"])
    async with watching(sim, api_key, tmp_path, monkeypatch, listen=f"127.0.0.1:{port}", secret=hook["secret"]) as (
        runtime,
        lister,
    ):
        assert [e.name for e in runtime.store.events()] == ["appeared"]
        sim.preempt(instance_id)
        statuses = await asyncio.to_thread(sim.notify, "outbid", "Instance outbid", {"instance_id": instance_id})
        assert statuses == [204]
        await until(lambda: runtime.watcher.status.polls == 2, "the poll the delivery asked for")
        await idle()
        assert lister.calls == 2  # exactly one poll for the delivery; the interval (3600 s) never passed
        preempted = journal(runtime, "preempted")
        assert [e.instance_id for e in preempted] == [instance_id]
        (note,) = journal(runtime, "vast_notification")
        assert note.instance_id == instance_id
        assert note.detail.startswith("outbid: Instance outbid (event ")
        async with VastClient(api_key, sim.url) as client:
            await client.destroy_instance(instance_id)
    assert sim.instance_count() == 0
    assert hook["secret"] not in caplog.text


async def test_forged_stale_wrong_and_replayed_deliveries_never_poll(
    quiet_sim: Simulator,
    api_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        watching(quiet_sim, api_key, tmp_path, monkeypatch, extra="max_body = 1024\n") as (runtime, lister),
        httpx.AsyncClient() as http,
    ):
        assert runtime.webhooks is not None
        url, now, body = runtime.webhooks.url, now_of(quiet_sim), notification()

        forged = signed(body, timestamp=now, secret="not-the-secret")
        assert (await http.post(url, content=body, headers=forged)).status_code == 401
        changed = signed(body, timestamp=now)
        assert (await http.post(url, content=body + b" ", headers=changed)).status_code == 401
        stale = signed(body, timestamp=now - 301)
        assert (await http.post(url, content=body, headers=stale)).status_code == 401
        future = signed(body, timestamp=now + 301)
        assert (await http.post(url, content=body, headers=future)).status_code == 401
        big = notification(data={"pad": "x" * 2000})
        assert (await http.post(url, content=big, headers=signed(big, timestamp=now))).status_code == 413
        text = signed(body, timestamp=now, kind="text/plain")
        assert (await http.post(url, content=body, headers=text)).status_code == 415
        assert (await http.post(url + "x", content=body, headers=signed(body, timestamp=now))).status_code == 404
        assert (await http.get(url)).status_code == 405
        no_id = {k: v for k, v in signed(body, timestamp=now).items() if k != "X-Vast-Event-Id"}
        assert (await http.post(url, content=body, headers=no_id)).status_code == 400
        await _truncated(runtime.webhooks.port, body, signed(body, timestamp=now))
        await idle()
        assert lister.calls == 1 and journal(runtime, "vast_notification") == []

        first = signed(body, timestamp=now, event_id="evt-1")
        assert (await http.post(url, content=body, headers=first)).status_code == 204
        await until(lambda: runtime.watcher.status.polls == 2, "the poll of the first delivery")
        again = signed(body, timestamp=now + 5, event_id="evt-1")  # Vast's retry: same id, new timestamp
        replay = await http.post(url, content=body, headers=again)
        assert 200 <= replay.status_code < 300
        await idle()
        assert lister.calls == 2
        assert len(journal(runtime, "vast_notification")) == 1
    for headers in (forged, changed, first, again):
        assert headers["X-Vast-Signature-256"].removeprefix("sha256=") not in caplog.text
    assert SECRET not in caplog.text
    assert "refused (401)" in caplog.text


async def _truncated(port: int, body: bytes, headers: dict[str, str]) -> None:
    """A request whose body stops short: the client closes after half of it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode())
    writer.write(body[: len(body) // 2])
    writer.write_eof()
    await reader.read()  # the listener closes (answering 400 at most), never accepting
    writer.close()


async def test_a_burst_of_deliveries_before_a_poll_shares_one_poll(
    quiet_sim: Simulator, api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = asyncio.Event()
    async with (
        watching(quiet_sim, api_key, tmp_path, monkeypatch, gate=gate) as (runtime, lister),
        httpx.AsyncClient(limits=httpx.Limits(max_connections=50)) as http,
    ):
        assert runtime.webhooks is not None
        url, now, body = runtime.webhooks.url, now_of(quiet_sim), notification("instance_offline")
        answers = await asyncio.gather(
            *(http.post(url, content=body, headers=signed(body, timestamp=now)) for _ in range(50))
        )
        assert [a.status_code for a in answers] == [204] * 50
        assert lister.calls == 1  # the first poll is still held at the gate
        gate.set()
        await until(lambda: runtime.watcher.status.polls == 2, "the poll the burst asked for")
        await idle()
        assert lister.calls == 2
        assert len(journal(runtime, "vast_notification")) == 50


async def test_a_slow_client_is_dropped_and_blocks_nothing(
    quiet_sim: Simulator, api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        watching(quiet_sim, api_key, tmp_path, monkeypatch) as (runtime, _),
        httpx.AsyncClient() as http,
    ):
        receiver = runtime.webhooks
        assert receiver is not None
        receiver.read_timeout = 0.2
        reader, writer = await asyncio.open_connection("127.0.0.1", receiver.port)
        writer.write(b"POST /vast-webhook HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        body = notification()
        answer = await http.post(receiver.url, content=body, headers=signed(body, timestamp=now_of(quiet_sim)))
        assert answer.status_code == 204
        await until(lambda: runtime.watcher.status.polls == 2, "the poll of the delivery")
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 408")
        writer.close()


def test_the_webhooks_commands_register_test_and_rotate_against_the_simulator(
    sim: Simulator, api_key: str, tmp_path: Path
) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    async def serve() -> None:
        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")[1:]
            headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
            received.append((headers, await reader.readexactly(int(headers["content-length"]))))
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(on_connection, "127.0.0.1", port)
        async with server:
            await stop.wait()

    port = free_port()
    env = {"VAST_URL": sim.url, "VAST_API_KEY": api_key, "VASTEVENTS_CONFIG": ""}
    runner = CliRunner()
    url = f"http://127.0.0.1:{port}{PATH}"
    hidden = runner.invoke(app, ["webhooks", "register", url, "--json"], env=env)
    assert hidden.exit_code == 0, hidden.output
    assert "secret" not in json.loads(hidden.stdout)
    assert runner.invoke(app, ["webhooks", "test"], env=env).exit_code == 0  # one webhook: no id needed
    assert runner.invoke(app, ["webhooks", "delete", str(json.loads(hidden.stdout)["id"])], env=env).exit_code == 0

    registered = runner.invoke(app, ["webhooks", "register", url, "--json", "--show-secret"], env=env)
    assert registered.exit_code == 0, registered.output
    secret = json.loads(registered.stdout)["secret"]
    listed = runner.invoke(app, ["webhooks", "list", "--json"], env=env)
    assert [hook["url"] for hook in json.loads(listed.stdout)] == [url]
    assert secret not in listed.output
    refused = runner.invoke(app, ["webhooks", "rotate"], env=env)
    assert refused.exit_code == 2

    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    try:
        server = loop.create_task(serve())
        loop.run_until_complete(asyncio.sleep(0.05))
        tested = loop.run_until_complete(asyncio.to_thread(runner.invoke, app, ["webhooks", "test"], env=env))
        assert tested.exit_code == 0, tested.output
        assert "answered HTTP 204" in tested.output
        stop.set()
        loop.run_until_complete(server)
    finally:
        loop.close()
    (headers, body) = received[-1]
    assert json.loads(body)["notif_type"] == "webhook_test" and json.loads(body)["data"] is None
    expected = hmac.new(secret.encode(), f"{headers['x-vast-timestamp']}.".encode() + body, hashlib.sha256)
    assert headers["x-vast-signature-256"] == f"sha256={expected.hexdigest()}"

    rotated = runner.invoke(app, ["webhooks", "rotate", "--show-secret"], env=env)
    assert rotated.exit_code == 0, rotated.output
    assert secret not in rotated.output and "whsec_" in rotated.output


def test_watch_refuses_a_webhook_listener_without_its_secret(
    sim: Simulator, api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VAST_WEBHOOK_SECRET", raising=False)
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\npath = "{tmp_path / "s.db"}"\n')
    env = {"VAST_URL": sim.url, "VAST_API_KEY": api_key}
    result = CliRunner().invoke(app, ["watch", "--config", str(config), "--webhook-listen", "127.0.0.1:0"], env=env)
    assert result.exit_code == 2
    assert "VAST_WEBHOOK_SECRET" in result.output
    bad = CliRunner().invoke(app, ["watch", "--config", str(config), "--webhook-listen", "nowhere"], env=env)
    assert bad.exit_code == 2 and "HOST:PORT" in bad.output


def test_accepted_event_ids_survive_a_restart(opener: Opener) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with opener() as store:
        seen = store.repository(WebhookDeliveries)
        assert seen.first_delivery("evt-1", at) and not seen.first_delivery("evt-1", at)
    with opener() as store:
        seen = store.repository(WebhookDeliveries)
        assert not seen.first_delivery("evt-1", at + timedelta(hours=1))
        seen.forget_before(at + timedelta(days=8))
        assert seen.count() == 0
        assert seen.first_delivery("evt-1", at + timedelta(days=8))
