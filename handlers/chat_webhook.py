"""The ``webhook`` handler, an outgoing chat webhook: each meaningful event POSTed as JSON to a URL of yours,
optionally signed.

    [handlers.webhook]
    use = "webhook"               # the URL comes from env VASTEVENTS_WEBHOOK_URL
    secret_env = "MY_HOOK_SECRET" # optional: sign each POST with HMAC-SHA256

The body is the event's object as ``events --json`` prints it, plus ``text`` (one line in words). A folded flap
is the return event with ``folded`` (the down message it replaces); a burst digest is
``{"name": "digest", "text": ..., "messages": [...]}``. Routing, de-noising and the durable outbox are
:mod:`handlers.outbox_notifier`'s.
"""

from __future__ import annotations

from typing import Any

from vastevents import ChatTransport, Event, JsonWebhookTransport

from . import slack_messages as messages
from .outbox_notifier import NotifierOptions, OutboxNotifier, env_value


class ChatWebhookOptions(NotifierOptions):
    url_env: str = "VASTEVENTS_WEBHOOK_URL"
    """The env var holding the URL to POST to (never put the URL itself in the config)."""
    secret_env: str | None = None
    """The env var holding the HMAC-SHA256 signing secret; unset: the POSTs are not signed."""


class ChatWebhookHandler(OutboxNotifier[ChatWebhookOptions]):
    """POSTs the meaningful events as JSON; ``channels`` maps a label prefix to the env var of another URL."""

    Options = ChatWebhookOptions

    def make_transport(self) -> ChatTransport:
        o = self.options
        urls = {o.url_env: env_value(o.url_env, "the webhook URL")}
        for env in sorted(set(o.channels.values())):
            urls[env] = env_value(env, "a webhook URL for `channels`")
        secret = env_value(o.secret_env, "the webhook signing secret") if o.secret_env else None
        return JsonWebhookTransport(urls, secret, timeout=o.timeout, retries=o.retries)

    def default_channel(self) -> str:
        return self.options.url_env

    def event_payload(self, event: Event, level: str) -> dict[str, Any]:
        return {**event.to_json(), "text": messages.describe(event), "severity": level}

    def back_payload(self, event: Event, down_for: float, folded: dict[str, Any] | None) -> dict[str, Any]:
        line = str(folded.get("text", "")) if folded is not None else None
        text = messages.back_payload(event, down_for, folded=line)["text"]
        return {**event.to_json(), "text": text, "severity": "info", "folded": folded}

    def digest_payload(self, members: list[dict[str, Any]], level: str) -> dict[str, Any]:
        text = messages.digest_payload([str(m.get("text", "")) for m in members])["text"]
        return {"name": "digest", "text": text, "severity": level, "messages": members}
