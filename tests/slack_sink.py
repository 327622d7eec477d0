"""A real local HTTP endpoint playing Slack (incoming webhooks, the Web API's chat.postMessage) or any webhook.

It records every post and answers from a script: ``sink.answer(429, retry_after=120)`` queues one answer,
``sink.failing = 503`` answers every request that way until cleared, ``sink.stop()``/``sink.start()`` takes
the port down and back up (connection refused in between),
``sink.gate = threading.Event()`` holds every request once read until the test opens the gate.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from vastevents import Event, Store
from vastevents.config import parse_config
from vastevents.plugins import load_handlers
from vastevents.runtime import Runtime
from vastevents.sim import Simulator
from vastevents.vast import VastClient

WEBHOOK_PATH = "/services/T000/B000/SECRETWEBHOOKPATH"


@dataclass
class Post:
    path: str
    body: dict[str, Any]
    authorization: str | None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""


@dataclass
class Answer:
    status: int
    retry_after: float | None = None


@dataclass
class SlackSink:
    posts: list[Post] = field(default_factory=list)
    """Requests answered 2xx (what Slack would show), in order."""
    attempts: list[Post] = field(default_factory=list)
    """Every request, answered however."""
    failing: int | None = None
    script: list[Answer] = field(default_factory=list)
    port: int = 0
    gate: threading.Event | None = None
    """When set, each request is read, announced on :attr:`received`, then held until the gate opens."""
    received: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def texts(self) -> list[str]:
        return [str(post.body.get("text")) for post in self.posts]

    def answer(self, status: int, *, retry_after: float | None = None) -> None:
        self.script.append(Answer(status, retry_after))

    def start(self) -> None:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"raw": raw.decode(errors="replace")}
                if sink.gate is not None:
                    sink.received.set()
                    sink.gate.wait(timeout=60)
                post = Post(self.path, body, self.headers.get("Authorization"), dict(self.headers.items()), raw)
                with sink._lock:
                    sink.attempts.append(post)
                    scripted = sink.script.pop(0) if sink.script else None
                    status = scripted.status if scripted else (sink.failing or 200)
                    if status < 300:
                        sink.posts.append(post)
                        ts = f"1700000000.{len(sink.posts):06d}"
                api = self.path.startswith("/api/")
                if status < 300:
                    reply = json.dumps({"ok": True, "ts": ts, "channel": body.get("channel")}) if api else "ok"
                elif status == 404:
                    reply = json.dumps({"ok": False, "error": "channel_not_found"}) if api else "no_service"
                else:
                    reply = json.dumps({"ok": False, "error": "ratelimited"}) if api else "error"
                data = reply.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if api else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                if scripted is not None and scripted.retry_after is not None:
                    self.send_header("Retry-After", f"{scripted.retry_after:g}")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="slack-sink", daemon=True
        )  # a short poll: stop() waits for it
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


@asynccontextmanager
async def running(sim: Simulator, api_key: str, store: Store, toml: str) -> AsyncIterator[Runtime]:
    """The real Runtime with the handlers of `toml`, against the simulator over HTTP, on `store` (closed after)."""
    config = parse_config(toml)
    with contextlib.closing(store):
        async with VastClient(api_key, sim.url) as client, Runtime(
            config, client=client, store=store, clock=sim.clock, handlers=load_handlers(config)
        ) as runtime:  # fmt: skip
            yield runtime


async def destroy_all(sim: Simulator, api_key: str) -> None:
    async with VastClient(api_key, sim.url) as client:
        for instance in await client.list_instances():
            await client.destroy_instance(instance.id)
    assert sim.instance_count() == 0


def failures(runtime: Runtime) -> list[Event]:
    return runtime.store.events(name="notification_failed")
