"""The Vast wire protocol over stdlib HTTP: routing, auth, rate limits, fault storms, JSON in and out."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import secrets
import socket
import sys
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from vastevents._logging import redact
from vastevents.clock import Clock
from vastevents.sim.matching import matches, sort_rows
from vastevents.sim.model import SimError, SimInstance
from vastevents.sim.params import number_param
from vastevents.sim.webhooks import SimWebhooks
from vastevents.sim.world import World

logger = logging.getLogger("vastevents.sim")

PAGE_SIZE = 25
_KEPT_LOGS = 256  # log texts kept for their result_url; older ones answer 404 like an expired bucket object
JSON_TYPE = "application/json"

# (burst, refill per simulated second) per endpoint class: search is strict, lists are lenient. Buckets refill on
# the simulator's clock, so on a ManualClock whether a request is limited never depends on the machine's speed.
RATE_LIMITS: dict[str, tuple[float, float]] = {
    "search": (10.0, 10.0 / 60.0),
    "create": (20.0, 1.0),
    "list": (120.0, 20.0),
    "other": (60.0, 10.0),
}


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str] | None = None
    content_type: str = JSON_TYPE


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: Any
    client: str

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def json_param(self, name: str, default: Any) -> Any:
        raw = self.param(name)
        if raw is None or raw == "":
            return default
        try:
            return json.loads(raw)
        except ValueError:
            raise SimError(400, "invalid_args", f"query parameter {name} is not valid JSON") from None

    def object_body(self) -> dict[str, Any]:
        if self.body is None:
            return {}
        if not isinstance(self.body, dict):
            raise SimError(400, "invalid_args", "the request body must be a JSON object")
        return self.body


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

    def instance_log(self, inst: SimInstance) -> str: ...

    def keys_changed(self, inst: SimInstance) -> None: ...

    def state(self) -> dict[str, Any]: ...

    def advance(self, seconds: float) -> datetime: ...


Handler = Callable[["Api", Request, dict[str, str]], Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    rate_class: str
    auth: bool = True
    faults: bool = True


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


def _error(status: int, error: str, msg: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status, {"success": False, "error": error, "msg": msg}, headers)


class Api:
    """Maps requests onto the Simulator's world. Every handler runs with the world advanced to now."""

    def __init__(self, sim: Served, *, rate_limits: bool = True) -> None:
        self.sim = sim
        self._buckets = _TokenBuckets(RATE_LIMITS) if rate_limits else None
        self._logs: OrderedDict[str, str] = OrderedDict()  # result_url token -> log text, the newest _KEPT_LOGS
        self.webhooks = SimWebhooks(sim.client_clock)

    def handle(self, request: Request) -> Response:
        for route in ROUTES:
            if route.method != request.method:
                continue
            match = route.pattern.fullmatch(request.path)
            if match is None:
                continue
            return self._dispatch(route, request, match.groupdict())
        if any(route.pattern.fullmatch(request.path) for route in ROUTES):
            return _error(405, "method_not_allowed", f"{request.method} is not allowed on {request.path}")
        return _error(404, "not_found", f"No route for {request.method} {request.path}")

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
            return _error(403, "auth_error", "This action requires login.")
        if not secrets.compare_digest(key.encode(), self.sim.api_key.encode()):
            return _error(401, "auth_error", "Invalid user key")
        return None

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
            return _error(storm.status, "server_error", "Service temporarily unavailable", {"Retry-After": "1"})
        return None

    # ----------------------------------------------------------------- handlers

    def current_user(self, request: Request, args: dict[str, str]) -> Response:
        with self.sim.world() as world:
            spend = world.spend()
            keys = world.ssh_keys
            return Response(
                200,
                {
                    "id": 1,
                    "username": "sim",
                    "email": "sim@vastevents.invalid",
                    "fullname": "Simulated User",
                    "credit": round(world.credit - spend, 6),
                    "balance": round(world.credit - spend, 6),
                    "total_spend": round(spend, 6),
                    "ssh_key": keys[-1]["public_key"] if keys else None,
                    "host_agreement_accepted": False,
                    "has_billing": True,
                    "rights": None,
                },
            )

    def search(self, request: Request, args: dict[str, str]) -> Response:
        if request.method == "GET":
            query = request.json_param("q", {})
        elif request.path.endswith("/search/asks"):
            query = request.object_body().get("q", {})
        else:
            query = request.object_body()
        if not isinstance(query, dict):
            raise SimError(400, "invalid_args", "the search query must be a JSON object")
        with self.sim.world() as world:
            return Response(200, {"offers": world.search(query)})

    def create(self, request: Request, args: dict[str, str]) -> Response:
        with self.sim.world() as world:
            instance_id, failure = world.create(int(args["id"]), request.object_body())
        if failure is not None:
            return Response(200, failure)
        return Response(200, {"success": True, "new_contract": instance_id})

    def list_instances(self, request: Request, args: dict[str, str]) -> Response:
        filters = request.json_param("select_filters", {})
        order = request.json_param("order_by", [{"col": "id", "dir": "asc"}])
        if not isinstance(filters, dict) or not isinstance(order, list):
            raise SimError(400, "invalid_args", "select_filters must be an object and order_by a list")
        try:
            limit = max(1, min(int(request.param("limit") or PAGE_SIZE), PAGE_SIZE))
        except ValueError:
            raise SimError(400, "invalid_args", "limit must be an integer") from None
        keys = [[o.get("col"), o.get("dir", "asc")] if isinstance(o, dict) else o for o in order]
        after = _decode_token(request.param("after_token"))
        by_id = keys in ([["id", "asc"]], [["id", None]])
        with self.sim.world() as world:
            selected = sorted(world.instances.values(), key=lambda inst: inst.id)
            if filters or not by_id:
                # Only filters and other orders need every row; the plain walk by id builds just the page's.
                rows = sort_rows([r for r in map(self.sim.row, selected) if matches(r, filters)], keys)
                selected = [world.instances[row["id"]] for row in rows]
            total = len(selected)
            if by_id and "after_id" in after:
                selected = [inst for inst in selected if inst.id > int(after["after_id"])]
                chosen = selected[:limit]
                more = len(selected) > limit
            else:
                offset = int(after.get("offset", 0))
                chosen = selected[offset : offset + limit]
                more = offset + limit < len(selected)
            page = [self.sim.row(inst) for inst in chosen]
            label_counts = Counter(inst.label or "" for inst in selected)
        token = None
        if more:
            token = _encode_token(
                {"after_id": page[-1]["id"]} if by_id else {"offset": int(after.get("offset", 0)) + limit}
            )
        return Response(
            200,
            {
                "success": True,
                "instances_found": len(page),
                "total_instances": total,
                "next_token": token,
                "label_counts": label_counts,
                "instances": page,
            },
        )

    def legacy_list(self, request: Request, args: dict[str, str]) -> Response:
        return _error(410, "gone", "GET /api/v0/instances/ is retired; use /api/v1/instances/ with next_token.")

    def show_instance(self, request: Request, args: dict[str, str]) -> Response:
        with self.sim.world() as world:
            inst = world.instances.get(int(args["id"]))
            return Response(200, {"instances": self.sim.row(inst) if inst else None})

    def destroy(self, request: Request, args: dict[str, str]) -> Response:
        with self.sim.world() as world:
            world.destroy(int(args["id"]))
        return Response(200, {"success": True})

    def update_instance(self, request: Request, args: dict[str, str]) -> Response:
        body = request.object_body()
        instance_id = int(args["id"])
        with self.sim.world() as world:
            world.instance(instance_id)
            if "state" in body:
                if body["state"] == "running":
                    world.start(instance_id)
                elif body["state"] == "stopped":
                    world.stop(instance_id)
                else:
                    raise SimError(400, "invalid_args", f"state must be running or stopped, got {body['state']!r}")
            if "label" in body:
                world.set_label(instance_id, None if body["label"] is None else str(body["label"]))
            if "state" not in body and "label" not in body:
                raise SimError(400, "invalid_args", "expected state or label")
        return Response(200, {"success": True})

    def reboot(self, request: Request, args: dict[str, str]) -> Response:
        with self.sim.world() as world:
            world.reboot(int(args["id"]))
        return Response(200, {"success": True})

    def bid_price(self, request: Request, args: dict[str, str]) -> Response:
        with self.sim.world() as world:
            world.change_bid(int(args["id"]), request.object_body().get("price"))
        return Response(200, {"success": True})

    def request_logs(self, request: Request, args: dict[str, str]) -> Response:
        tail_raw = request.object_body().get("tail") or 1000
        try:
            tail = int(tail_raw)
        except (TypeError, ValueError):
            raise SimError(400, "invalid_args", "tail must be an integer") from None
        with self.sim.world() as world:
            text = self.sim.instance_log(world.instance(int(args["id"])))
        token = secrets.token_urlsafe(12)
        self._logs[token] = "".join(text.splitlines(keepends=True)[-tail:])
        while len(self._logs) > _KEPT_LOGS:
            self._logs.popitem(last=False)
        return Response(200, {"success": True, "result_url": f"{self.sim.url}/_sim/logs/{token}"})

    def fetch_log(self, request: Request, args: dict[str, str]) -> Response:
        text = self._logs.get(args["token"])
        if text is None:
            return Response(404, "<Error><Code>NoSuchKey</Code></Error>", content_type="application/xml")
        return Response(200, text, content_type="text/plain; charset=utf-8")

    def list_ssh_keys(self, request: Request, args: dict[str, str]) -> Response:
        with self.sim.world() as world:
            return Response(200, list(world.ssh_keys))

    def add_ssh_key(self, request: Request, args: dict[str, str]) -> Response:
        key = request.object_body().get("ssh_key")
        if not isinstance(key, str):
            raise SimError(400, "invalid_args", "ssh_key is required")
        with self.sim.world() as world:
            record = world.add_ssh_key(key)
        return Response(200, {"success": True, **record})

    def attach_ssh_key(self, request: Request, args: dict[str, str]) -> Response:
        with self.sim.world() as world:
            inst = world.attach_ssh_key(int(args["id"]), request.object_body().get("ssh_key"))
            self.sim.keys_changed(inst)
        return Response(200, {"success": True, "msg": "SSH key attached"})

    def charges(self, request: Request, args: dict[str, str]) -> Response:
        """One item per instance (gpu and storage parts), those overlapping ``select_filters`` ``day`` if given."""
        window = request.json_param("select_filters", {})
        window = window.get("day", {}) if isinstance(window, dict) else {}
        if not isinstance(window, dict):
            raise SimError(400, "invalid_args", "select_filters.day must be an object like {'gte': t0, 'lte': t1}")
        start = number_param(window.get("gte"), -math.inf, what="select_filters.day.gte")
        end = number_param(window.get("lte"), math.inf, what="select_filters.day.lte")
        with self.sim.world() as world:
            results = [world.charge_item(inst) for inst in world.all_instances()]
        results = [item for item in results if item["end"] >= start and item["start"] <= end]
        return Response(200, {"results": results, "count": len(results), "total": len(results), "next_token": None})

    def invoices(self, request: Request, args: dict[str, str]) -> Response:
        with self.sim.world() as world:
            credit = {
                "type": "transfer",
                "source": "credit",
                "description": "Simulator starting credit",
                "amount": world.credit,
                "when": world.wire.at(world.origin),
                "start": world.wire.at(world.origin),
                "end": world.wire.at(world.origin),
                "metadata": {"invoice_id": 1},
                "items": [],
            }
        return Response(200, {"results": [credit], "count": 1, "total": 1, "next_token": None})

    def gpu_names(self, request: Request, args: dict[str, str]) -> Response:
        with self.sim.world() as world:
            names = sorted({m.gpu_name for m in world.machines.values()})
        return Response(200, {"gpu_names": names})

    def instance_filters(self, request: Request, args: dict[str, str]) -> Response:
        return Response(200, {"filters": []})

    def list_webhooks(self, request: Request, args: dict[str, str]) -> Response:
        return Response(200, {"success": True, "results": self.webhooks.registered()})

    def create_webhook(self, request: Request, args: dict[str, str]) -> Response:
        return Response(200, self.webhooks.create(request.object_body()))

    def delete_webhook(self, request: Request, args: dict[str, str]) -> Response:
        self.webhooks.delete(int(args["id"]))
        return Response(200, {"success": True})

    def rotate_webhook_secret(self, request: Request, args: dict[str, str]) -> Response:
        return Response(200, self.webhooks.rotate(int(args["id"])))

    def test_webhook(self, request: Request, args: dict[str, str]) -> Response:
        return Response(200, self.webhooks.test(int(args["id"])))

    # ----------------------------------------------------------------- admin

    def admin_state(self, request: Request, args: dict[str, str]) -> Response:
        return Response(200, self.sim.state())

    def admin_advance(self, request: Request, args: dict[str, str]) -> Response:
        seconds = request.object_body().get("seconds")
        if not isinstance(seconds, int | float) or seconds < 0:
            raise SimError(400, "invalid_args", "seconds must be a non-negative number")
        now = self.sim.advance(float(seconds))
        return Response(200, {"success": True, "now": now.isoformat()})

    def admin_action(self, request: Request, args: dict[str, str]) -> Response:
        with self.sim.world() as world:
            result = world.apply(args["action"], request.object_body())
        return Response(200, {"success": True, **result})


def _encode_token(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def _decode_token(token: str | None) -> dict[str, Any]:
    if not token:
        return {}
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error):
        raise SimError(400, "invalid_args", "after_token is not a token this server issued") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k, 0), int) for k in ("after_id", "offset")):
        raise SimError(400, "invalid_args", "after_token is not a token this server issued")
    return data


_PATH_PARAMETERS = {"token": r"[\w-]+", "action": r"\w+"}
_ID_PARAMETER = r"\d+"  # any other {name} in a route path


def _route(method: str, path: str, handler: Handler, rate_class: str = "other", **flags: bool) -> Route:
    pattern = re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m[1]}>{_PATH_PARAMETERS.get(m[1], _ID_PARAMETER)})", path)
    return Route(method, re.compile(pattern), handler, rate_class, **flags)


ROUTES = [
    _route("GET", "/api/v0/users/current", Api.current_user),
    _route("POST", "/api/v0/bundles", Api.search, "search"),
    _route("GET", "/api/v0/bundles", Api.search, "search"),
    _route("PUT", "/api/v0/search/asks", Api.search, "search"),
    _route("PUT", "/api/v0/asks/{id}", Api.create, "create"),
    _route("GET", "/api/v1/instances", Api.list_instances, "list"),
    _route("GET", "/api/v0/instances", Api.legacy_list, "list"),
    _route("GET", "/api/v0/instances/filters", Api.instance_filters, "list"),
    _route("GET", "/api/v0/instances/{id}", Api.show_instance, "list"),
    _route("DELETE", "/api/v0/instances/{id}", Api.destroy),
    _route("PUT", "/api/v0/instances/{id}", Api.update_instance),
    _route("PUT", "/api/v0/instances/reboot/{id}", Api.reboot),
    _route("PUT", "/api/v0/instances/bid_price/{id}", Api.bid_price),
    _route("PUT", "/api/v0/instances/request_logs/{id}", Api.request_logs),
    _route("POST", "/api/v0/instances/{id}/ssh", Api.attach_ssh_key),
    _route("GET", "/api/v0/ssh", Api.list_ssh_keys),
    _route("POST", "/api/v0/ssh", Api.add_ssh_key),
    _route("GET", "/api/v0/charges", Api.charges),
    _route("GET", "/api/v1/invoices", Api.invoices),
    _route("GET", "/api/v0/gpu_names/unique", Api.gpu_names, auth=False),
    _route("GET", "/api/v0/webhooks", Api.list_webhooks),
    _route("POST", "/api/v0/webhooks", Api.create_webhook),
    _route("DELETE", "/api/v0/webhooks/{id}", Api.delete_webhook),
    _route("POST", "/api/v0/webhooks/{id}/rotate-secret", Api.rotate_webhook_secret),
    _route("POST", "/api/v0/webhooks/{id}/test", Api.test_webhook),
    _route("GET", "/_sim/logs/{token}", Api.fetch_log, auth=False, faults=False),
    _route("GET", "/_sim/state", Api.admin_state, faults=False),
    _route("POST", "/_sim/advance", Api.admin_advance, faults=False),
    _route("POST", "/_sim/{action}", Api.admin_action, faults=False),
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

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
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
            self._send(_error(400, "invalid_args", "Content-Length is not an integer", {"Connection": "close"}))
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
            response = _error(500, "server_error", "The simulator hit an internal error (see its log).")
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
