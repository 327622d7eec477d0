"""Vast's webhooks in the simulator: registrations (``/api/v0/webhooks/``) and signed deliveries to them.

Deliveries go out as Vast sends them: a JSON POST with ``X-Vast-Event-Id``, ``X-Vast-Delivery-Attempt``,
``X-Vast-Timestamp`` (the simulator clock's integer seconds) and ``X-Vast-Signature-256``. Unlike Vast (public
HTTPS only), the simulator registers loopback URLs only, so it never sends anything off this machine.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from vastevents._logging import register_secret
from vastevents.clock import Clock
from vastevents.sim.model import SimError
from vastevents.vast_webhooks import is_loopback, sign

logger = logging.getLogger("vastevents.sim")

MAX_WEBHOOKS = 4
DELIVERY_TIMEOUT = 10.0
TEST_TYPE = "webhook_test"


@dataclass
class Registration:
    id: int
    url: str
    notif_types: list[str]
    secret: str
    created_at: float
    deliveries: list[int] = field(default_factory=list)
    """The HTTP status of each delivery attempt (0: no answer), oldest first."""

    def public(self) -> dict[str, Any]:
        """What the list shows: everything but the secret."""
        return {"id": self.id, "url": self.url, "notif_types": self.notif_types, "created_at": self.created_at}

    def wants(self, notif_type: str) -> bool:
        return not self.notif_types or any(kind.split(":")[-1] == notif_type for kind in self.notif_types)


class SimWebhooks:
    """The account's webhook registrations; thread-safe, deliveries sent outside the lock."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._hooks: dict[int, Registration] = {}
        self._next_id = 1

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        url = body.get("url")
        if not isinstance(url, str) or not _loopback_http(url):
            raise SimError(400, "invalid_args", "url must be an http(s) URL on loopback in the simulator")
        types = body.get("notif_types") or []
        if not isinstance(types, list) or not all(isinstance(kind, str) for kind in types):
            raise SimError(400, "invalid_args", "notif_types must be a list of strings like 'client:outbid'")
        with self._lock:
            if len(self._hooks) >= MAX_WEBHOOKS:
                raise SimError(400, "too_many_webhooks", f"at most {MAX_WEBHOOKS} webhooks per user")
            hook = Registration(self._next_id, url, types, _new_secret(), self._clock.now().timestamp())
            self._hooks[hook.id] = hook
            self._next_id += 1
            return {"success": True, **hook.public(), "secret": hook.secret}

    def registered(self) -> list[dict[str, Any]]:
        with self._lock:
            return [hook.public() for hook in self._hooks.values()]

    def delete(self, webhook_id: int) -> None:
        with self._lock:
            if self._hooks.pop(webhook_id, None) is None:
                raise SimError(404, "not_found", f"no webhook {webhook_id}")

    def rotate(self, webhook_id: int) -> dict[str, Any]:
        with self._lock:
            hook = self._get(webhook_id)
            hook.secret = _new_secret()
            return {"success": True, "id": hook.id, "secret": hook.secret}

    def test(self, webhook_id: int) -> dict[str, Any]:
        """Send one signed ``webhook_test`` delivery now (not retried); its HTTP status in the answer."""
        with self._lock:
            hook = self._get(webhook_id)
        status = self._deliver(hook, _payload(TEST_TYPE, "Test notification", "A test delivery.", None), 1)
        return {"success": True, "id": webhook_id, "status": status}

    def notify(self, notif_type: str, subject: str, data: dict[str, Any] | None = None) -> list[int]:
        """One delivery of a notification to every webhook subscribed to it; the status of each."""
        with self._lock:
            hooks = [hook for hook in self._hooks.values() if hook.wants(notif_type)]
        payload = _payload(notif_type, subject, subject, data)
        return [self._deliver(hook, payload, 1) for hook in hooks]

    def deliveries(self, webhook_id: int) -> list[int]:
        with self._lock:
            return list(self._get(webhook_id).deliveries)

    def _get(self, webhook_id: int) -> Registration:
        hook = self._hooks.get(webhook_id)
        if hook is None:
            raise SimError(404, "not_found", f"no webhook {webhook_id}")
        return hook

    def _deliver(self, hook: Registration, payload: dict[str, Any], attempt: int) -> int:
        payload = {**payload, "timestamp": self._clock.now().timestamp()}
        body = json.dumps(payload).encode()
        timestamp = str(int(self._clock.now().timestamp()))
        headers = {
            "Content-Type": "application/json",
            "X-Vast-Event-Id": str(payload["event_id"]),
            "X-Vast-Delivery-Attempt": str(attempt),
            "X-Vast-Timestamp": timestamp,
            "X-Vast-Signature-256": sign(hook.secret, timestamp, body),
        }
        try:
            status = httpx.post(hook.url, content=body, headers=headers, timeout=DELIVERY_TIMEOUT).status_code
        except httpx.HTTPError as exc:
            logger.debug("webhook %d: delivery failed (%s)", hook.id, type(exc).__name__)
            status = 0
        with self._lock:
            hook.deliveries.append(status)
        return status


def _payload(notif_type: str, subject: str, message: str, data: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "user_id": 1,
        "notif_type": notif_type,
        "subject": subject,
        "message": message,
        "data": data,
        "data_truncated": False,
    }


def _new_secret() -> str:
    secret = f"whsec_{secrets.token_hex(24)}"
    register_secret(secret)
    return secret


def _loopback_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and is_loopback(parts.hostname or "")
