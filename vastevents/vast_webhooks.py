"""The receiver of Vast's signed notification webhooks (incoming): HTTP/1.1 on a socket in, verified notifications
out. (Our own outgoing chat webhook is :mod:`vastevents.notify.chat_webhook`.)

A delivery is accepted only as ``POST <path>`` with ``Content-Type: application/json``, a body of at most
``max_body`` bytes, an integer ``X-Vast-Timestamp`` within ``max_skew`` seconds of our clock and an
``X-Vast-Signature-256: sha256=<hex>`` equal (compared in constant time) to the HMAC-SHA256 of
``"<timestamp>.<raw body>"`` under the webhook's secret. Accepted deliveries are handed to ``accept`` and answered
204; everything else gets its 4xx and one log line that names neither the secret nor the signature. A client that
has not sent a whole request within ``read_timeout`` seconds is dropped, so a slow client never holds anything up.
Requests are parsed by h11 (one request per connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import h11

from vastevents._logging import redact
from vastevents.clock import Clock
from vastevents.errors import ConfigError

log = logging.getLogger("vastevents.vast_webhooks")

SIGNATURE_HEADER = "x-vast-signature-256"
TIMESTAMP_HEADER = "x-vast-timestamp"
EVENT_ID_HEADER = "x-vast-event-id"
ATTEMPT_HEADER = "x-vast-delivery-attempt"
_MAX_HEADER_BYTES = 16 * 1024
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 8 << 20
_REASONS = {
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


@dataclass(frozen=True)
class Notification:
    """One verified delivery: what Vast says happened (polling still decides what changed)."""

    event_id: str
    notif_type: str
    subject: str
    data: Mapping[str, Any] | None
    attempt: int

    @property
    def instance_id(self) -> int | None:
        """The instance the notification names, when its ``data`` names one."""
        if self.data is None:
            return None
        for key in ("instance_id", "contract_id", "instance"):
            value = self.data.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str) and value.isdigit():
                return int(value)
        return None


class Rejected(Exception):
    """A delivery refused with `status`; the message says why, without any secret."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Vast-Signature-256`` value for `body` sent with ``X-Vast-Timestamp: <timestamp>``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(headers: Mapping[str, str], body: bytes, *, secret: str, now: float, max_skew: float) -> Notification:
    """The notification in a delivery (`headers` with lower-case names), or :class:`Rejected`."""
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise Rejected(415, "the content type is not application/json")
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    signature = headers.get(SIGNATURE_HEADER, "")
    if not timestamp.isascii() or not timestamp.isdigit():
        raise Rejected(401, "no integer X-Vast-Timestamp")
    if not hmac.compare_digest(signature.encode(), sign(secret, timestamp, body).encode()):
        raise Rejected(401, "the signature does not match (wrong secret, or the body was changed)")
    skew = now - int(timestamp)
    if abs(skew) > max_skew:
        raise Rejected(401, f"the timestamp is {skew:+.0f} s from our clock (allowed: {max_skew:g} s)")
    event_id = headers.get(EVENT_ID_HEADER, "").strip()
    if not event_id:
        raise Rejected(400, "no X-Vast-Event-Id")
    try:
        payload = json.loads(body)
    except ValueError:
        raise Rejected(400, "the body is not JSON") from None
    if not isinstance(payload, dict):
        raise Rejected(400, "the body is not a JSON object")
    data = payload.get("data")
    attempt = headers.get(ATTEMPT_HEADER, "1")
    return Notification(
        event_id=event_id,
        notif_type=str(payload.get("notif_type") or "unknown"),
        subject=str(payload.get("subject") or ""),
        data=data if isinstance(data, dict) else None,
        attempt=int(attempt) if attempt.isdigit() else 1,
    )


def parse_listen(value: str, what: str = "webhook listen address", example: int = 8787) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8787`` for IPv6) as (host, port); a ConfigError naming the value otherwise."""
    host, sep, port = value.rpartition(":")
    host = host.strip().removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} {value!r} is not HOST:PORT (e.g. 127.0.0.1:{example})")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1`` (a listener only this machine reaches)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebhookReceiver:
    """Serves ``POST <path>`` on (host, port); each verified delivery goes to `accept` before the 204 is sent.

    `accept` runs on the event loop and must be quick (record, journal, wake the watcher); if it raises, Vast
    gets a 500 and delivers again.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        secret: str,
        accept: Callable[[Notification], None],
        clock: Clock,
        path: str = "/vast-webhook",
        max_body: int = 1 << 20,
        max_skew: float = 300.0,
        read_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.path = path
        self._secret = secret
        self._accept = accept
        self._clock = clock
        self.max_body = max_body
        self.max_skew = max_skew
        self.read_timeout = read_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.listening = asyncio.Event()
        """Set once the socket is bound (``port`` is then the real one, also when 0 was asked for)."""

    def __repr__(self) -> str:
        return f"WebhookReceiver({self.url!r})"  # never the secret

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"

    async def serve(self, stop: asyncio.Event) -> None:
        """Listen until `stop` is set, then close the socket and drop the connections still open."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.close()

    async def start(self) -> None:
        if self._server is not None:
            return
        try:
            self._server = await asyncio.start_server(self._connection, self.host, self.port)
        except OSError as exc:
            raise ConfigError(f"cannot listen for webhooks on {self.host}:{self.port}: {exc.strerror or exc}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        self.listening.set()
        log.info("listening for Vast webhooks on %s", self.url)

    async def close(self) -> None:
        server, self._server = self._server, None
        self.listening.clear()
        if server is not None:
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peer = writer.get_extra_info("peername")
        who = peer[0] if isinstance(peer, tuple) else "?"
        try:
            try:
                async with asyncio.timeout(self.read_timeout):
                    status = await self._handle(reader, who)
            except TimeoutError:
                log.warning("webhook client %s sent no complete request within %g s; dropped", who, self.read_timeout)
                status = 408
            except h11.RemoteProtocolError as exc:
                reason = redact(str(exc)) or "not valid HTTP/1.1"
                log.warning("webhook request from %s refused (%d): %s", who, exc.error_status_hint, reason)
                status = exc.error_status_hint
            if status is not None:
                writer.write(_response(status))
                await writer.drain()
                await _linger(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
            if task is not None:
                self._connections.discard(task)

    async def _handle(self, reader: asyncio.StreamReader, who: str) -> int | None:
        """Read and judge one request; the status to answer (None: the client went away first)."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEADER_BYTES)
        event = await _next_event(conn, reader)
        if not isinstance(event, h11.Request):
            return None
        target = event.target.decode("ascii", "replace").split("?", 1)[0]
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in event.headers}
        if target != self.path:
            return _refuse(who, Rejected(404, f"nothing is served at {target[:80]!r}"))
        if event.method != b"POST":
            return _refuse(who, Rejected(405, f"{event.method.decode('ascii', 'replace')[:10]} is not POST"))
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return _refuse(who, Rejected(413, f"a body of {length} bytes is over the limit of {self.max_body}"))
        body = bytearray()
        while True:
            event = await _next_event(conn, reader)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.max_body:
                    return _refuse(who, Rejected(413, f"the body is over the limit of {self.max_body} bytes"))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                log.warning("webhook request from %s refused: the client closed before the whole body came", who)
                return None
        try:
            notification = verify(
                headers, bytes(body), secret=self._secret, now=self._clock.now().timestamp(), max_skew=self.max_skew
            )
        except Rejected as rejected:
            return _refuse(who, rejected)
        try:
            self._accept(notification)
        except Exception:
            log.exception("a webhook delivery could not be recorded; Vast will deliver it again")
            return 500
        return 204


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(65536))


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then read what the client still sends for a moment before closing.

    Closing with unread bytes makes the kernel reset the connection, and the client may lose our answer (a 413
    sent before the body was read) to that reset.
    """
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(_LINGER_SECONDS):
            discarded = 0
            while discarded < _LINGER_BYTES and (chunk := await reader.read(65536)):
                discarded += len(chunk)


def _refuse(who: str, rejected: Rejected) -> int:
    log.warning("webhook delivery from %s refused (%d): %s", who, rejected.status, redact(str(rejected)))
    return rejected.status


def _response(status: int) -> bytes:
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nConnection: close\r\n"
    if status != 204:
        head += "Content-Length: 0\r\n"
    return (head + "\r\n").encode("ascii")
