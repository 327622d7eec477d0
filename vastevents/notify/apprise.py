"""The Apprise edge (the optional ``apprise`` extra): Discord, Teams, Telegram, email, ... through one library.

Each channel is a set of Apprise URLs (``discord://...``, ``msteams://...``, ``tgram://...``, ``mailto://...``);
they carry their tokens, so they come from the environment and are registered for redaction. Apprise tells only
whether every URL took the message, not why one did not: a failure is :class:`TransientSendError` (kept and
retried by the outbox until its ``max_age``, then reported once). A retry after a partial failure repeats the
message on the URLs that had taken it, so give each service a channel of its own. Calls block: run them in a
worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vastevents._logging import register_secret
from vastevents.notify import ChatMessage, PermanentSendError, Posted, RedactRecords, TransientSendError

INSTALL_HINT = "pip install 'vastevents[apprise]'"
_NOTIFY_TYPES = {"info": "info", "warning": "warning", "critical": "failure"}

logging.getLogger("apprise").addFilter(RedactRecords())


@dataclass
class AppriseTransport:
    """Posts a message's ``text`` to every Apprise URL of its channel; raises ValueError on an unusable URL."""

    urls: Mapping[str, Sequence[str]]
    title: str = "vastevents"
    timeout: float = 10.0
    threads: bool = False
    _targets: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            import apprise
        except ImportError:
            raise ValueError(f"needs Apprise, an optional extra: {INSTALL_HINT}") from None
        for channel, urls in self.urls.items():
            target = apprise.Apprise()
            for n, url in enumerate(urls, 1):
                register_secret(url)
                if not target.add(url):
                    raise ValueError(f"cannot use Apprise URL #{n} of {channel} (an unknown scheme or a typo?)")
            self._targets[channel] = target

    def post(self, message: ChatMessage) -> Posted:
        what = f"Apprise{f' {message.channel}' if message.channel else ''}"
        target = self._targets.get(message.channel)
        if target is None:
            raise PermanentSendError(f"{what}: no Apprise URL is configured for this channel")
        kind = _NOTIFY_TYPES.get(str(message.document.get("severity", "info")), "info")
        result = target.notify(body=message.text, title=self.title, notify_type=kind, timeout=self.timeout)
        if not result:
            raise TransientSendError(f"{what}: not delivered to every URL")
        return Posted()
