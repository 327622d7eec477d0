"""Vast's webhooks coming in: the receiver ``[webhooks]`` configures, and what an accepted delivery does.

Each new verified delivery is journaled once as ``vast_notification`` (a delivery Vast sends again is recognised
by its event id) and makes the watcher poll now.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import timedelta

from vastevents._logging import register_secret
from vastevents.clock import Clock
from vastevents.config import Config
from vastevents.errors import ConfigError
from vastevents.events import VAST_NOTIFICATION, Event
from vastevents.journaling import JournalWriter
from vastevents.store import Store
from vastevents.store.vast_webhooks import WebhookDeliveries
from vastevents.vast_webhooks import Notification, WebhookReceiver, parse_listen

log = logging.getLogger(__name__)

IDS_KEPT = timedelta(days=7)
"""How long an accepted delivery's event id is remembered (Vast's retries of it end long before)."""


def webhook_receiver(
    config: Config, listen: str, clock: Clock, accept: Callable[[Notification], None]
) -> WebhookReceiver:
    """The receiver of Vast's webhooks at `listen`, with ``[webhooks]``'s secret and limits."""
    settings = config.webhooks
    host, port = parse_listen(listen)
    secret = os.environ.get(settings.secret_env, "").strip()
    if not secret:
        raise ConfigError(
            f"webhooks need their secret in ${settings.secret_env} (`vastevents webhooks register URL"
            " --show-secret` or `vastevents webhooks rotate --show-secret` prints it once)"
        )
    register_secret(secret)
    return WebhookReceiver(
        host=host,
        port=port,
        secret=secret,
        accept=accept,
        clock=clock,
        path=settings.path,
        max_body=settings.max_body,
        max_skew=settings.max_skew,
    )


class Intake:
    """Journals each new verified delivery and wakes the watcher."""

    def __init__(self, store: Store, clock: Clock, journal: JournalWriter, wake: Callable[[], None]) -> None:
        self.store = store
        self.clock = clock
        self.journal = journal
        self.wake = wake

    def __call__(self, notification: Notification) -> None:
        now = self.clock.now()
        seen = self.store.repository(WebhookDeliveries)
        if not seen.first_delivery(notification.event_id, now):
            log.info(
                "webhook event %s delivered again (attempt %d); already handled",
                notification.event_id,
                notification.attempt,
            )
            return
        seen.forget_before(now - IDS_KEPT)
        instance_id = notification.instance_id
        view = self.store.load_snapshot().get(instance_id) if instance_id is not None else None
        subject = f": {notification.subject}" if notification.subject else ""
        event = Event(
            name=VAST_NOTIFICATION,
            instance_id=instance_id,
            at=now,
            instance=view.instance if view is not None else None,
            detail=f"{notification.notif_type}{subject} (event {notification.event_id})",
        )
        self.journal.emit(event, f"webhook:{notification.event_id}")
        self.wake()
