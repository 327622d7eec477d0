"""The outgoing chat webhook: a message's JSON document POSTed to a URL of yours with httpx, optionally signed.

(Vast's webhooks coming in are :mod:`vastevents.vast_webhooks`.)

The signature mirrors Vast's own scheme: ``X-Vastevents-Timestamp: <unix seconds>`` and
``X-Vastevents-Signature-256: sha256=<hex>``, the HMAC-SHA256 of ``"<timestamp>.<raw body>"`` with the shared
secret, so a receiver checks it exactly as it would check Vast's. Short hiccups (connection errors, 5xx, 429 with
a short ``Retry-After``) are retried inside the call by tenacity; what still fails comes out as
:class:`TransientSendError` (the outbox tries again later) or :class:`PermanentSendError` (other 4xx, or a
redirect: drop it). URLs and the secret are registered for redaction. Calls block: run them in a worker thread.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from vastevents._logging import redact, register_secret
from vastevents.notify import (
    ChatMessage,
    PermanentSendError,
    Posted,
    RedactRecords,
    TransientSendError,
    status_error,
)

SIGNATURE_HEADER = "X-Vastevents-Signature-256"
TIMESTAMP_HEADER = "X-Vastevents-Timestamp"

logging.getLogger("httpx").addFilter(RedactRecords())  # its request line names the (secret) URL


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``sha256=<hex>`` header value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


@dataclass
class JsonWebhookTransport:
    """POSTs :attr:`ChatMessage.document` as JSON to the URL of the message's channel."""

    urls: Mapping[str, str]
    secret: str | None = None
    timeout: float = 10.0
    retries: int = 2
    max_rate_limit_wait: float = 5.0
    """A 429 asking to wait longer than this is left to the outbox's next attempt."""
    unix_time: Callable[[], float] = time.time
    threads: bool = False
    _client: httpx.Client | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for url in self.urls.values():
            register_secret(url)
        register_secret(self.secret)

    def post(self, message: ChatMessage) -> Posted:
        what = f"webhook{f' {message.channel}' if message.channel else ''}"
        url = self.urls.get(message.channel)
        if url is None:
            raise PermanentSendError(f"{what}: no URL is configured for this channel")
        body = json.dumps(dict(message.document), separators=(",", ":")).encode()
        retrying = Retrying(
            stop=stop_after_attempt(self.retries + 1),
            retry=retry_if_exception(self._worth_retrying_now),
            wait=self._wait,
            reraise=True,
        )
        retrying(self._attempt, what, url, body)
        return Posted()

    def _attempt(self, what: str, url: str, body: bytes) -> None:
        headers = {"Content-Type": "application/json"}
        if self.secret:
            stamp = str(int(self.unix_time()))
            headers[TIMESTAMP_HEADER] = stamp
            headers[SIGNATURE_HEADER] = signature(self.secret, stamp, body)
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, follow_redirects=False)
        try:
            response = self._client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise TransientSendError(redact(f"{what}: {type(exc).__name__}: {exc}")) from None
        if not 200 <= response.status_code < 300:
            raise status_error(response.status_code, what, response.headers)

    def _worth_retrying_now(self, exc: BaseException) -> bool:
        if not isinstance(exc, TransientSendError):
            return False
        return exc.retry_after is None or exc.retry_after <= self.max_rate_limit_wait

    @staticmethod
    def _wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, TransientSendError) and error.retry_after is not None:
            return error.retry_after
        return float(wait_exponential(multiplier=0.5, max=4)(state))
