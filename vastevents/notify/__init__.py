"""The chat edge: sending one message to Slack, through slack-sdk, behind the small :class:`ChatTransport` Protocol.

Two transports: an incoming webhook (:class:`WebhookTransport`, ``slack_sdk.webhook.WebhookClient``) and a bot
token (:class:`BotTransport`, ``WebClient.chat_postMessage``, which can thread a message under a parent ``ts``).
Short hiccups are retried inside the call by slack-sdk's own retry handlers (connection errors, 5xx, 429 with a
short ``Retry-After``); what is still failing comes out as :class:`TransientSendError` (try again later) or
:class:`PermanentSendError` (4xx other than 429: drop it). Calls block: run them in a worker thread.
Webhook URLs and tokens are registered as secrets, and slack-sdk logs through :data:`SDK_LOG`, redacted.
Other services behind the same Protocol: :mod:`vastevents.notify.chat_webhook` (a generic signed JSON POST) and
:mod:`vastevents.notify.apprise` (the optional Apprise extra).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from vastevents._logging import redact, register_secret
from vastevents.errors import VastEventsError

if TYPE_CHECKING:  # slack-sdk is imported when a message is first sent: most watchers never post to Slack
    from slack_sdk import WebClient
    from slack_sdk.webhook import WebhookClient

SLACK_API_URL = "https://slack.com/api/"
_TRANSIENT_API_ERRORS = frozenset({"ratelimited", "internal_error", "fatal_error", "service_unavailable",
                                   "request_timeout"})  # fmt: skip


@dataclass(frozen=True)
class ChatMessage:
    """What to post: the plain-text fallback, Block Kit blocks, the channel, and the thread to post under.

    ``document`` is the whole queued payload, for transports that post it as it is (the generic JSON webhook).
    """

    text: str
    blocks: tuple[dict[str, Any], ...] = ()
    channel: str = ""
    thread_ts: str | None = None
    document: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Posted:
    """A confirmed send; ``ts`` identifies the posted message (bot mode only), so replies can thread under it."""

    ts: str | None = None


class SendError(VastEventsError):
    """A message was not sent; the text is safe to log (no URL, no token)."""


class TransientSendError(SendError):
    """Not sent, worth trying again (connection error, 5xx, 429); ``retry_after`` seconds if the server said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentSendError(SendError):
    """Refused for good (an invalid webhook, a revoked token, an unknown channel): never retry it."""


class ChatTransport(Protocol):
    """Posts one message; blocking; raises :class:`TransientSendError` or :class:`PermanentSendError`."""

    threads: bool
    """True if :attr:`Posted.ts` comes back, so later messages can be threaded."""

    def post(self, message: ChatMessage) -> Posted: ...


def _retry_after(headers: Mapping[str, Any] | None) -> float | None:
    for name, value in (headers or {}).items():
        if name.lower() == "retry-after":
            raw = value[0] if isinstance(value, list | tuple) else value
            try:
                return float(raw)
            except (TypeError, ValueError):
                return None
    return None


def status_error(status: int, what: str, headers: Mapping[str, Any] | None) -> SendError:
    """The error for a non-2xx answer: 429 and 5xx are transient (429 with its Retry-After), the rest permanent."""
    if status == 429:
        return TransientSendError(f"{what}: rate limited (HTTP 429)", _retry_after(headers))
    if status >= 500:
        return TransientSendError(f"{what}: HTTP {status}")
    return PermanentSendError(f"{what}: HTTP {status}")


class RedactRecords(logging.Filter):
    """Rewrites a library's log records (slack-sdk's and httpx's name the URL they call) without secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        return True


SDK_LOG = logging.getLogger("vastevents.notify.slack_sdk")
"""The logger slack-sdk clients are given: every record it makes is redacted before any handler sees it."""
SDK_LOG.addFilter(RedactRecords())


@dataclass
class WebhookTransport:
    """Incoming webhooks: one URL per channel name (``""`` is the default channel)."""

    urls: Mapping[str, str]
    timeout: float = 10.0
    retries: int = 2
    threads: bool = False
    _clients: dict[str, WebhookClient] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for url in self.urls.values():
            register_secret(url)

    def post(self, message: ChatMessage) -> Posted:
        from slack_sdk.errors import SlackClientError
        from slack_sdk.webhook import WebhookClient

        from vastevents.notify._slack_retry import retry_handlers

        what = f"Slack webhook{f' for {message.channel}' if message.channel else ''}"
        url = self.urls.get(message.channel)
        if url is None:
            raise PermanentSendError(f"{what}: no webhook URL is configured for this channel")
        client = self._clients.get(message.channel)
        if client is None:
            client = WebhookClient(
                url, timeout=int(self.timeout), retry_handlers=retry_handlers(self.retries), logger=SDK_LOG
            )
            self._clients[message.channel] = client
        try:
            response = client.send(text=message.text, blocks=list(message.blocks) or None)
        except (OSError, SlackClientError) as exc:
            raise TransientSendError(redact(f"{what}: {type(exc).__name__}: {exc}")) from None
        if 200 <= response.status_code < 300:
            return Posted()
        raise status_error(response.status_code, what, response.headers)


@dataclass
class BotTransport:
    """A bot token posting with ``chat.postMessage`` to named channels; answers carry the message ``ts``."""

    token: str
    base_url: str = SLACK_API_URL
    timeout: float = 10.0
    retries: int = 2
    threads: bool = True
    _client: WebClient | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        register_secret(self.token)

    def post(self, message: ChatMessage) -> Posted:
        from slack_sdk import WebClient
        from slack_sdk.errors import SlackApiError, SlackClientError

        from vastevents.notify._slack_retry import retry_handlers

        what = f"Slack chat.postMessage to {message.channel}"
        if self._client is None:
            base = self.base_url if self.base_url.endswith("/") else self.base_url + "/"
            self._client = WebClient(token=self.token, base_url=base, timeout=int(self.timeout),
                                     retry_handlers=retry_handlers(self.retries), logger=SDK_LOG)  # fmt: skip
        try:
            response = self._client.chat_postMessage(
                channel=message.channel, text=message.text, blocks=list(message.blocks) or None,
                thread_ts=message.thread_ts,
            )  # fmt: skip
        except SlackApiError as exc:
            answer = exc.response
            status = int(answer.status_code)
            code = answer.data.get("error") if isinstance(answer.data, dict) else None
            if status == 200 and code in _TRANSIENT_API_ERRORS:
                raise TransientSendError(f"{what}: {code}") from None
            if status == 200:
                raise PermanentSendError(f"{what}: {code or 'refused'}") from None
            raise status_error(status, f"{what}{f' ({code})' if code else ''}", answer.headers) from None
        except (OSError, SlackClientError) as exc:
            raise TransientSendError(redact(f"{what}: {type(exc).__name__}: {exc}")) from None
        ts = response.get("ts")
        return Posted(ts=str(ts) if ts is not None else None)
