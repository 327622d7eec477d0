"""The ``apprise`` handler: the meaningful events on Discord, Teams, Telegram, email, ... through Apprise.

    [handlers.chat]
    use = "apprise"               # Apprise URLs (space or comma separated) from env VASTEVENTS_APPRISE_URLS

Needs the optional extra: ``pip install 'vastevents[apprise]'``. Each message is one plain line in words (a
folded flap, a burst digest as for Slack); routing, de-noising and the durable outbox are
:mod:`handlers.outbox_notifier`'s.
"""

from __future__ import annotations

import re
from typing import Any

from vastevents import AppriseTransport, ChatTransport, Event

from . import slack_messages as messages
from .outbox_notifier import NotifierOptions, OutboxNotifier, env_value


class AppriseOptions(NotifierOptions):
    urls_env: str = "VASTEVENTS_APPRISE_URLS"
    """The env var holding the Apprise URLs (they carry tokens: never put them in the config)."""
    title: str = "vastevents"


def _urls(env: str) -> list[str]:
    return [url for url in re.split(r"[\s,]+", env_value(env, "Apprise URLs")) if url]


class AppriseHandler(OutboxNotifier[AppriseOptions]):
    """Posts the meaningful events through Apprise; ``channels`` maps a label prefix to the env var of other URLs."""

    Options = AppriseOptions

    def make_transport(self) -> ChatTransport:
        o = self.options
        envs = sorted({o.urls_env, *o.channels.values()})
        return AppriseTransport({env: _urls(env) for env in envs}, title=o.title, timeout=o.timeout)

    def default_channel(self) -> str:
        return self.options.urls_env

    def event_payload(self, event: Event, level: str) -> dict[str, Any]:
        return {"text": messages.describe(event), "severity": level}

    def back_payload(self, event: Event, down_for: float, folded: dict[str, Any] | None) -> dict[str, Any]:
        line = str(folded.get("text", "")) if folded is not None else None
        return {"text": messages.back_payload(event, down_for, folded=line)["text"], "severity": "info"}

    def digest_payload(self, members: list[dict[str, Any]], level: str) -> dict[str, Any]:
        return {"text": messages.digest_payload([str(m.get("text", "")) for m in members])["text"], "severity": level}
