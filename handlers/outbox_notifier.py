"""What every outbox notifier shares (``slack``, ``webhook``, ``apprise``): routing, de-noising, the durable send.

Each event it wants becomes a row of the store's outbox, written in the transaction that marks the event
delivered, so a crash never loses a message nor queues one twice. A periodic sender posts pending rows in
order per channel through a :class:`vastevents.ChatTransport`, marks them sent on 2xx, keeps them on connection
errors, 5xx and 429 (for up to ``max_age``) and drops a permanently refused one, reporting it once as
``notification_failed``. De-noising: a raw ``*_to_offline`` is held for the flap grace and folds with its return
into one message; a down message still unsent when the instance is back folds the same way; a return is told only
after its down was; more than ``burst_count`` messages to a channel within ``burst_window`` go out as one digest;
sends to one channel are spaced by ``pace`` seconds.

A subclass says what a message looks like (:meth:`OutboxNotifier.event_payload`, :meth:`~OutboxNotifier.back_payload`,
:meth:`~OutboxNotifier.digest_payload`), where it goes by default (:meth:`~OutboxNotifier.default_channel`) and
which transport carries it.

Delivery is exactly once unless the process dies after the service accepted a message and before the outbox
recorded it as sent: that message goes out again after the restart (at least once, never lost).
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field

from vastevents import (
    ChatMessage,
    ChatTransport,
    Conn,
    Context,
    Duration,
    Event,
    Handler,
    HandlerFunc,
    HandlerOptions,
    Outbox,
    OutboxMessage,
    PermanentSendError,
    TransientSendError,
    every,
)

from .slack_messages import SEVERITIES, is_back, is_down, severity, transition

DEFAULT_EVENTS = (
    "preempted", "stuck_loading", "offline_too_long", "host_flap", "vanished",
    "scheduling_to_running", "created_to_running", "loading_to_running",
    "job_started", "job_finished", "job_failed", "recovered", "recovery_failed", "host_blocked",
    "budget_warning", "budget_exceeded", "reaped", "vast_notification",
)  # fmt: skip
_RETURNS = ("offline_to_running", "stopped_to_running", "exited_to_running")
"""Always subscribed: a return is told (or folded) when its instance's going down was."""
NOTIFICATION_FAILED = "notification_failed"
_MAX_BACKOFF = 300.0


class NotifierOptions(HandlerOptions):
    channels: dict[str, str] = Field(default_factory=dict)
    """Label prefix → where that instance's messages go (the longest matching prefix wins)."""
    events: tuple[str, ...] = DEFAULT_EVENTS
    min_severity: Literal["info", "warning", "critical"] = "info"
    flap_grace: Duration | None = None
    """How long a raw ``*_to_offline`` waits for the instance to come back (default ``[watch] offline_grace``)."""
    burst_count: int = Field(default=5, ge=1)
    burst_window: Duration = 60.0
    pace: Duration = Field(default=1.0, ge=0)
    max_age: Duration = Field(default=86400.0, gt=0)
    timeout: Duration = Field(default=10.0, gt=0)
    retries: int = Field(default=2, ge=0)
    """Retries made within one send (connection errors, 5xx, 429 with a short Retry-After)."""


OptionsT = TypeVar("OptionsT", bound=NotifierOptions)


def env_value(name: str, what: str) -> str:
    """The value of environment variable `name`; a ValueError (a config error) naming it when unset."""
    value = os.environ.get(name, "").strip()
    if not value:
        raise ValueError(f"needs {what}: set the environment variable {name}")
    return value


class OutboxNotifier(Handler[OptionsT]):
    """Posts the meaningful events, one de-noised message each, from the durable outbox."""

    emits: ClassVar[tuple[str, ...]] = (NOTIFICATION_FAILED,)

    def __init__(self, options: OptionsT | None = None, *, transport: ChatTransport | None = None) -> None:
        super().__init__(options)
        self.transport = transport or self.make_transport()

    # --- what a subclass decides -----------------------------------------------------------------------------

    def make_transport(self) -> ChatTransport:
        raise NotImplementedError

    def default_channel(self) -> str:
        """The channel of a message no ``channels`` prefix routes elsewhere."""
        raise NotImplementedError

    def event_payload(self, event: Event, level: str) -> dict[str, Any]:
        """One event's message; ``text`` is what a digest or a folded flap quotes (or ``line`` if present)."""
        raise NotImplementedError

    def back_payload(self, event: Event, down_for: float, folded: dict[str, Any] | None) -> dict[str, Any]:
        """The instance runs again after `down_for` s; `folded` is the unsent down message's payload it replaces."""
        raise NotImplementedError

    def digest_payload(self, members: list[dict[str, Any]], level: str) -> dict[str, Any]:
        """One message standing for a burst of messages (their payloads, oldest first)."""
        raise NotImplementedError

    def chat_message(self, message: OutboxMessage, thread_ts: str | None) -> ChatMessage:
        payload = message.payload
        return ChatMessage(text=str(payload["text"]), blocks=tuple(payload.get("blocks", ())),
                           channel=message.channel, thread_ts=thread_ts, document=payload)  # fmt: skip

    # --- routing ---------------------------------------------------------------------------------------------

    def subscriptions(self) -> list[tuple[str, HandlerFunc]]:
        names = dict.fromkeys(self.options.events)
        if not {"*", "any_change"} & set(names):
            names.update(dict.fromkeys(_RETURNS))
        return [(name, self.on_event) for name in names]

    def _wanted(self, event: Event) -> bool:
        events = self.options.events
        return (
            event.name in events
            or "*" in events
            or (
                "any_change" in events
                and (transition(event.name) is not None or event.name in ("appeared", "vanished"))
            )
        )

    def channel_of(self, event: Event) -> str:
        label = event.instance.label if event.instance is not None and event.instance.label else ""
        matches = [prefix for prefix in self.options.channels if label.startswith(prefix)]
        if matches:
            return self.options.channels[max(matches, key=len)]
        return self.default_channel()

    # --- queueing, in the delivery's transaction -------------------------------------------------------------

    async def on_event(self, event: Event, ctx: Context) -> None:
        if event.name == NOTIFICATION_FAILED and event.detail.startswith(f"{ctx.handler}:"):
            return  # never tell the channel that the channel cannot be told
        outbox = ctx.store.repository(Outbox)
        grace = self.options.flap_grace if self.options.flap_grace is not None else ctx.config.watch.offline_grace
        ctx.in_delivery(lambda conn: self._queue(conn, outbox, ctx.handler, event, grace))

    def _queue(self, conn: Conn, outbox: Outbox, handler: str, event: Event, grace: float) -> None:
        def queue(payload: dict[str, Any], kind: str, level: str, hold: datetime | None = None) -> None:
            thread = str(event.instance_id) if event.instance_id is not None else None
            outbox.queue(conn, handler=handler, key=f"event:{event.id}", channel=self.channel_of(event),
                         payload=payload, created_at=event.at, thread_key=thread, instance_id=event.instance_id,
                         kind=kind, severity=level, hold_until=hold)  # fmt: skip

        if is_back(event.name) and event.instance_id is not None:
            down = outbox.last_of_kinds(conn, handler, event.instance_id, ("down", "up"))
            if down is not None and down.kind == "down" and down.state not in ("failed", "expired"):
                down_for = (event.at - down.created_at).total_seconds()
                folded = down.state == "pending"
                if folded:
                    outbox.set_state(conn, down.id, "folded")
                queue(self.back_payload(event, down_for, down.payload if folded else None), "up", "info")
                return
        level = severity(event.name)
        if not self._wanted(event) or SEVERITIES.index(level) < SEVERITIES.index(self.options.min_severity):
            return
        moved = transition(event.name)
        hold = event.at + timedelta(seconds=grace) if moved is not None and moved[1] == "offline" else None
        kind = "down" if is_down(event.name) else "up" if is_back(event.name) else "note"
        queue(self.event_payload(event, level), kind, level, hold)

    # --- sending ---------------------------------------------------------------------------------------------

    @every("10s")
    async def send_pending(self, ctx: Context) -> None:
        """Post what is due, oldest first per channel; ``watch --once`` tries every pending message once."""
        outbox = ctx.store.repository(Outbox)
        by_channel: dict[str, list[OutboxMessage]] = defaultdict(list)
        for message in outbox.pending(ctx.handler):
            by_channel[message.channel].append(message)
        for channel, messages in by_channel.items():
            await self._drain(ctx, outbox, channel, messages)

    async def _drain(self, ctx: Context, outbox: Outbox, channel: str, messages: list[OutboxMessage]) -> None:
        now = ctx.clock.now()
        ready = []
        for message in messages:
            if now - message.created_at > timedelta(seconds=self.options.max_age):
                reason = f"not sent within max_age {self.options.max_age:g}s ({message.last_error or 'never tried'})"
                outbox.drop(message, "expired", reason)
                await self._report(ctx, message, reason)
            elif message.hold_until is not None and message.hold_until > now:
                continue  # a flap's grace: it may yet fold with the instance's return
            elif message.next_attempt > now and not ctx.forced:
                break  # nothing overtakes a message waiting for its retry
            else:
                ready.append(message)
        recent = outbox.sent_since(ctx.handler, channel, now - timedelta(seconds=self.options.burst_window))
        if len(ready) > 1 and len(ready) + recent > self.options.burst_count:
            ready = [self._digest(outbox, ready, now)]
        for n, message in enumerate(ready):
            if n and self.options.pace:
                await ctx.clock.sleep(self.options.pace)
            if not await self._send(ctx, outbox, message):
                break

    def _digest(self, outbox: Outbox, members: list[OutboxMessage], now: datetime) -> OutboxMessage:
        level = max((m.severity for m in members), key=SEVERITIES.index)
        payload = self.digest_payload([m.payload for m in members], level)
        return outbox.digest(members, key=f"digest:{members[0].id}-{members[-1].id}", created_at=now,
                             payload=payload, severity=level)  # fmt: skip

    async def _send(self, ctx: Context, outbox: Outbox, message: OutboxMessage) -> bool:
        """Post one message; False if the channel should wait (a transient failure keeps the order)."""
        threaded = self.transport.threads and message.thread_key is not None
        parent = outbox.thread_ts(ctx.handler, message.channel, message.thread_key or "") if threaded else None
        try:
            posted = await asyncio.to_thread(self.transport.post, self.chat_message(message, parent))
        except TransientSendError as exc:
            wait = exc.retry_after if exc.retry_after is not None else min(_MAX_BACKOFF, 10.0 * 2**message.attempts)
            outbox.retry_later(message, ctx.clock.now() + timedelta(seconds=wait), str(exc))
            ctx.logger.warning("message %d kept for a retry in %gs: %s", message.id, wait, exc)
            return False
        except PermanentSendError as exc:
            outbox.drop(message, "failed", str(exc))
            await self._report(ctx, message, f"refused, dropped: {exc}")
            return True
        outbox.mark_sent(message, ctx.clock.now(), thread_ts=posted.ts if threaded and parent is None else None)
        return True

    async def _report(self, ctx: Context, message: OutboxMessage, reason: str) -> None:
        about = f" about instance {message.instance_id}" if message.instance_id is not None else ""
        ctx.logger.error("message %d%s was not sent: %s", message.id, about, reason)
        detail = f"{ctx.handler}: message{about} not sent: {reason}"
        await ctx.emit(NOTIFICATION_FAILED, detail=detail, key=f"outbox:{message.id}")
