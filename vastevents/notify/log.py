"""The default notifier: without a chat handler, messages go to the ``vastevents.notify`` logger."""

from __future__ import annotations

import logging

from vastevents.events import Event


class LoggingNotifier:
    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("vastevents.notify")

    async def notify(self, text: str, *, event: Event | None = None) -> None:
        self.logger.info("%s%s", f"[#{event.id} {event.name}] " if event is not None else "", text)
