"""The ``log`` handler: writes each event it is subscribed to as one log line.

[handlers.log]
use = "log"
events = ["*"]          # event names or wildcards ("any_change", "*")
level = "info"          # debug | info | warning
"""

from __future__ import annotations

import logging
from typing import Literal

from vastevents import Context, Event, Handler, HandlerFunc, HandlerOptions

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


class LogOptions(HandlerOptions):
    events: tuple[str, ...] = ("*",)
    level: Literal["debug", "info", "warning"] = "info"


class LogHandler(Handler[LogOptions]):
    """Logs events (all of them by default) to the ``vastevents.handlers.<name>`` logger."""

    Options = LogOptions

    def subscriptions(self) -> list[tuple[str, HandlerFunc]]:
        return [(name, self.log) for name in self.options.events]

    async def log(self, event: Event, ctx: Context) -> None:
        ctx.logger.log(_LEVELS[self.options.level], "%s %s", event.at.isoformat(), event.describe())
