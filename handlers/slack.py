"""The ``slack`` handler: team alerts in a Slack channel, de-noised and durable.

    [handlers.slack]
    use = "slack"                 # the webhook URL comes from env SLACK_WEBHOOK_URL

Routing, de-noising and the durable outbox are :mod:`handlers.outbox_notifier`'s; this module says what a
Slack message looks like (Block Kit with a plain ``text`` fallback, a mention on critical events) and posts it
through an incoming webhook or a bot token (which threads an instance's updates under its first message).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from vastevents import BotTransport, ChatTransport, Event, WebhookTransport

from . import slack_messages as messages
from .outbox_notifier import NotifierOptions, OutboxNotifier, env_value


class SlackOptions(NotifierOptions):
    mode: Literal["webhook", "bot"] = "webhook"
    webhook_url_env: str = "SLACK_WEBHOOK_URL"
    token_env: str = "SLACK_BOT_TOKEN"  # noqa: S105 - the name of an env var, not a token
    channel: str | None = None
    """Bot mode: the channel every message goes to unless ``channels`` routes it elsewhere."""
    api_url: str = "https://slack.com/api/"
    """Bot mode: the Web API base URL (a local server in tests)."""
    mention: str = "@here"
    """Who to mention on critical events ("" for nobody): @here, @channel, a user or group id."""

    @model_validator(mode="after")
    def _bot_needs_a_channel(self) -> SlackOptions:
        if self.mode == "bot" and not self.channel:
            raise ValueError('mode = "bot" needs `channel` (e.g. channel = "#gpu-alerts")')
        return self


class SlackHandler(OutboxNotifier[SlackOptions]):
    """Posts the meaningful events to Slack; ``channels`` maps a label prefix to a channel (bot mode) or to the
    env var holding that channel's webhook URL (webhook mode)."""

    Options = SlackOptions

    def make_transport(self) -> ChatTransport:
        o = self.options
        if o.mode == "bot":
            token = env_value(o.token_env, "a Slack bot token")
            return BotTransport(token, o.api_url, timeout=o.timeout, retries=o.retries)
        urls = {o.webhook_url_env: env_value(o.webhook_url_env, "a Slack incoming webhook URL")}
        for env in sorted(set(o.channels.values())):
            urls[env] = env_value(env, "a Slack incoming webhook URL for `channels`")
        return WebhookTransport(urls, timeout=o.timeout, retries=o.retries)

    def default_channel(self) -> str:
        return (self.options.channel or "") if self.options.mode == "bot" else self.options.webhook_url_env

    def _mention(self, level: str) -> str:
        return messages.mention_markup(self.options.mention) if level == "critical" else ""

    def event_payload(self, event: Event, level: str) -> dict[str, Any]:
        return messages.event_payload(event, mention=self._mention(level))

    def back_payload(self, event: Event, down_for: float, folded: dict[str, Any] | None) -> dict[str, Any]:
        line = str(folded.get("line", "")) if folded is not None else None
        return messages.back_payload(event, down_for, folded=line)

    def digest_payload(self, members: list[dict[str, Any]], level: str) -> dict[str, Any]:
        lines = [str(m.get("line") or m.get("text", "")) for m in members]
        return messages.digest_payload(lines, mention=self._mention(level))
