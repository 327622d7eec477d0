"""The Vast wire protocol over stdlib HTTP: routing, auth, rate limits, fault storms, JSON in and out."""

from __future__ import annotations

import json
import logging
import math
import secrets
import socket
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from vastevents._logging import redact
from vastevents.clock import Clock
from vastevents.sim import (
    account,
    api_account,
    api_admin,
    api_billing,
    api_container,
    api_instances,
    api_market,
    api_volumes,
)
from vastevents.sim.model import SimError, SimInstance
from vastevents.sim.routing import Request, Response, Route, error
from vastevents.sim.vast_webhooks import SimWebhooks
from vastevents.sim.world import World

logger = logging.getLogger("vastevents.sim")

_KEPT_LOGS = 256  # texts kept for their result_url; older ones answer 404 like an expired bucket object

# (burst, refill per simulated second) per endpoint class: search is strict, lists are lenient. Buckets refill on
# the simulator's clock, so on a ManualClock whether a request is limited never depends on the machine's speed.
RATE_LIMITS: dict[str, tuple[float, float]] = {
    "search": (10.0, 10.0 / 60.0),
    "create": (20.0, 1.0),
    "list": (120.0, 20.0),
    "other": (60.0, 10.0),
}


class Served(Protocol):
    """What the API needs from the simulator that serves it (the Simulator), so this module never imports it."""

    @property
    def api_key(self) -> str: ...

    @property
    def speed(self) -> float: ...

    @property
    def stopping(self) -> threading.Event: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def client_clock(self) -> Clock: ...

    @property
    def url(self) -> str: ...

    def world(self) -> AbstractContextManager[World]:
        """The world, locked and advanced to the clock's now."""
        ...

    def save(self) -> None: ...

    def row(self, inst: SimInstance) -> dict[str, Any]: ...

    def instance_log(self, inst: SimInstance, *, daemon_only: bool = False) -> str: ...

    def keys_changed(self, inst: SimInstance) -> None: ...

    def execute(self, inst: SimInstance, argv: list[str]) -> str: ...

    def container_root(self, inst: SimInstance) -> str | None: ...

    def state(self) -> dict[str, Any]: ...

    def advance(self, seconds: float) -> datetime: ...


class _TokenBuckets:
    def __init__(self, limits: Mapping[str, tuple[float, float]]) -> None:
        self._limits = limits
        self._state: dict[tuple[str, str], tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, rate_class: str, client: str, now: float) -> float | None:
        """None when allowed, else seconds (of the clock `now` comes from) until a token is back."""
        burst, refill = self._limits[rate_class]
        with self._lock:
            tokens, last = self._state.get((rate_class, client), (burst, now))
            tokens = min(burst, tokens + (now - last) * refill)
            if tokens < 1.0:
                self._state[(rate_class, client)] = (tokens, now)
                return (1.0 - tokens) / refill
            self._state[(rate_class, client)] = (tokens - 1.0, now)
            return None


class Api:
    """Maps requests onto the Simulator's world. Every handler runs with the world advanced to now."""

    def __init__(self, sim: Served, *, rate_limits: bool = True) -> None:
        self.sim = sim
        self._buckets = _TokenBuckets(RATE_LIMITS) if rate_limits else None
        self._logs: OrderedDict[str, str] = OrderedDict()  # result_url token -> log text, the newest _KEPT_LOGS
        self.webhooks = SimWebhooks(sim.client_clock)
        self._clients: dict[str, float] = {}
        self._clients_lock = threading.Lock()

    def handle(self, request: Request) -> Response:
        for route in ROUTES:
            if route.method != request.method:
                continue
            match = route.pattern.fullmatch(request.path)
            if match is None:
                continue
            return self._dispatch(route, request, match.groupdict())
        if any(route.pattern.fullmatch(request.path) for route in ROUTES):
            return error(405, "method_not_allowed", f"{request.method} is not allowed on {request.path}")
        return error(404, "not_found", f"No route for {request.method} {request.path}")

    def _dispatch(self, route: Route, request: Request, args: dict[str, str]) -> Response:
        if route.auth:
            denied = self._check_auth(request)
            if denied is not None:
                return denied
        if route.faults:
            storm = self._storm_response(route)
            if storm is not None:
                return storm
        if self._buckets is not None and route.auth:
            wait = self._buckets.take(route.rate_class, request.client, self.sim.clock.now().timestamp())
            if wait is not None:
                return Response(
                    429,
                    {
                        "success": False,
                        "error": "rate_limited",
                        "msg": "API requests too frequent",
                        "detail": f"API requests too frequent: endpoint threshold exceeded ({route.rate_class})",
                    },
                    {"Retry-After": str(max(1, math.ceil(wait / self.sim.speed)))},
                )
        try:
            response = route.handler(self, request, args)
        except SimError as exc:
            return Response(exc.status, exc.body())
        if route.method != "GET":
            self.sim.save()
        return response

    def _check_auth(self, request: Request) -> Response | None:
        header = request.headers.get("Authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else request.param("api_key")
        if not key:
            return error(403, "auth_error", "This action requires login.")
        if not secrets.compare_digest(key.encode(), self.sim.api_key.encode()):
            with self.sim.world() as world:
                if not account.is_api_key(world, key):
                    return error(401, "auth_error", "Invalid user key")
        with self._clients_lock:
            self._clients.setdefault(request.client, self.sim.client_clock.now().timestamp())
        return None

    def clients(self) -> list[tuple[str, float]]:
        """The addresses requests came from with a valid key, and when each was first seen (clients' clock)."""
        with self._clients_lock:
            return sorted(self._clients.items(), key=lambda item: item[1])

    def _storm_response(self, route: Route) -> Response | None:
        with self.sim.world() as world:
            storms = world.active_storms()
            now = world.now
        for storm in storms:
            if storm.kind == "slow":
                self.sim.stopping.wait(min(storm.delay, 30.0))
        for storm in storms:
            if storm.kind == "slow":
                continue
            wall_left = max(1, math.ceil((storm.end - now) / self.sim.speed))
            if storm.kind == "rate_limit":
                return Response(
                    storm.status,
                    {"success": False, "error": "rate_limited", "msg": "API requests too frequent",
                     "detail": "API requests too frequent: try again later"},
                    {"Retry-After": str(wall_left)},
                )  # fmt: skip
            return error(storm.status, "server_error", "Service temporarily unavailable", {"Retry-After": "1"})
        return None

    def publish(self, text: str) -> str:
        """Keep `text` behind a fresh result URL (logs, command output): the newest _KEPT_LOGS stay readable."""
        token = secrets.token_urlsafe(12)
        self._logs[token] = text
        while len(self._logs) > _KEPT_LOGS:
            self._logs.popitem(last=False)
        return f"{self.sim.url}/_sim/logs/{token}"

    def published(self, token: str) -> str | None:
        return self._logs.get(token)


ROUTES: list[Route] = [
    *api_account.ROUTES,
    *api_billing.ROUTES,
    *api_market.ROUTES,
    *api_instances.ROUTES,
    *api_container.ROUTES,
    *api_volumes.ROUTES,
    *api_admin.ROUTES,
]


class SimHTTPServer(ThreadingHTTPServer):
    """One thread per connection (joined on close); the Api holds the state.

    Connections are kept alive (HTTP/1.1), so a client's pages share one connection as with the real API.
    Closing ends the read side of every open connection first: a thread waiting for a client's next request
    sees the end at once, while a request in progress still sends its response.
    """

    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], api: Api) -> None:
        self.api = api
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request (a SIGKILLed watcher) is no error of the simulator's; anything
        else is printed with its traceback, as socketserver does."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handleerror(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-connection (killed, timed out) is routine; anything else is logged."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            logger.debug("client %s went away", client_address[0])
            return
        logger.exception("simulator error serving %s", client_address[0])

    def server_close(self) -> None:
        with self._connections_lock:
            open_connections = list(self._connections)
        for connection in open_connections:
            try:
                connection.shutdown(socket.SHUT_RD)
            except OSError:
                pass  # already closed by its client
        super().server_close()


class _RequestHandler(BaseHTTPRequestHandler):
    server: SimHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: every response, errors included, carries its Content-Length
    server_version = "vastevents-sim"
    # Headers and body go out as two writes: on a kept-alive connection Nagle's algorithm would hold the body
    # back until the client's delayed ACK of the headers (tens of ms per page).
    disable_nagle_algorithm = True
    timeout = 30.0  # an idle kept-alive connection is closed after this; stop() ends waiting ones at once

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), redact(format % args))

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            # Where this body ends is unknown, so no next request can be read from this connection.
            self._send(error(400, "invalid_args", "Content-Length is not an integer", {"Connection": "close"}))
            return
        try:
            raw = self.rfile.read(length) if length > 0 else b""
            body = json.loads(raw) if raw.strip() else None
        except ValueError as exc:
            self._send(Response(400, {"success": False, "error": "invalid_json", "msg": f"Malformed JSON body: {exc}"}))
            return
        request = Request(
            method=method,
            path=url.path.rstrip("/") or "/",
            query=parse_qs(url.query),
            headers=dict(self.headers.items()),
            body=body,
            client=self.client_address[0],
        )
        try:
            response = self.server.api.handle(request)
        except Exception:
            logger.exception("simulator error on %s %s", method, redact(url.path))
            response = error(500, "server_error", "The simulator hit an internal error (see its log).")
        self._send(response)

    def _send(self, response: Response) -> None:
        if isinstance(response.body, str):
            payload = response.body.encode()
        else:
            payload = json.dumps(response.body).encode()
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (response.headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            logger.debug("client went away before the response was sent")
