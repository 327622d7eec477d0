"""Who may read the dashboard: a token, when one is configured, on every request; and headers for every answer.

The token comes from the environment variable ``[dashboard] token_env`` names. A request carries it as
``Authorization: Bearer <token>``, or as the HttpOnly cookie ``POST /login`` sets (a value derived from the token,
so the token itself is never stored in a browser). Both are compared in constant time. Everything but the login
form answers 401 without it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.requests import cookie_parser

COOKIE = "vastevents_dashboard"
LOGIN = "/login"
MAX_FORM_BYTES = 4096

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def security_headers(style: str) -> list[tuple[bytes, bytes]]:
    """Sent with every answer: only our own script and the page's own `style` (by its hash) apply, nothing
    frames the page, nothing is cached."""
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    policy = (
        f"default-src 'none'; script-src 'self'; style-src 'sha256-{digest}'; img-src 'self'; connect-src 'self';"
        " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    return [
        (b"content-security-policy", policy.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        (b"cache-control", b"no-store"),
    ]


def session_value(token: str) -> str:
    """What the login cookie holds: derived from the token, never the token itself."""
    return hmac.new(token.encode(), b"vastevents dashboard session", hashlib.sha256).hexdigest()


class Guard:
    """ASGI middleware: security headers on every answer; with a token, 401 for any request that lacks it."""

    def __init__(self, app: ASGIApp, *, token: str | None, refuse: ASGIApp, headers: list[tuple[bytes, bytes]]) -> None:
        self.app = app
        self.token = token
        self.refuse = refuse
        self.headers = headers
        self.session = session_value(token) if token is not None else ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        if self.token is None or scope["path"] == LOGIN or self.allows(Headers(scope=scope)):
            await self.app(scope, receive, with_headers)
        else:
            await self.refuse(scope, receive, with_headers)

    def allows(self, headers: Headers) -> bool:
        """True if the request carries the token (header) or the session cookie; constant time either way."""
        assert self.token is not None
        scheme, _, given = headers.get("authorization", "").partition(" ")
        by_header = scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())
        cookie = cookie_parser(headers.get("cookie", "")).get(COOKIE, "")
        by_cookie = hmac.compare_digest(cookie.encode(), self.session.encode())
        return by_header or by_cookie

    def accepts(self, token: str) -> bool:
        return self.token is not None and hmac.compare_digest(token.encode(), self.token.encode())


def login_form(body: bytes) -> tuple[str, str]:
    """The ``token`` and ``next`` fields of an urlencoded login form ('' for a missing one)."""
    try:
        fields = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=10)
    except ValueError:  # more fields than any login form has
        return "", ""
    return (fields.get("token") or [""])[0], (fields.get("next") or [""])[0]


def local_path(value: str | None) -> str:
    """Where to go after logging in: a path on this site (never another site), else the overview."""
    if value and value.startswith("/") and not value.startswith(("//", "/\\")) and value.isprintable():
        return value
    return "/"
