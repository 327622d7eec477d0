"""What the ``slack`` handler says: Block Kit messages whose plain ``text`` always names the instance and the event.

Pure functions of an event (no I/O): the words for each event, its severity, and the payloads for one event,
a folded flap (down, then back) and a burst digest.
"""

from __future__ import annotations

from typing import Any

from vastevents import Event, Instance

SEVERITIES = ("info", "warning", "critical")

_WORDS = {
    "preempted": "preempted",
    "stuck_loading": "stuck loading",
    "offline_too_long": "offline for too long",
    "host_flap": "flapping (its host keeps going offline)",
    "vanished": "vanished",
    "appeared": "appeared",
    "job_started": "job started",
    "job_finished": "job finished",
    "job_failed": "job failed",
    "recovered": "recovered",
    "recovery_failed": "recovery failed",
    "host_blocked": "host blocked",
    "budget_warning": "budget warning",
    "budget_exceeded": "budget exceeded",
    "reaped": "reaped",
    "vast_notification": "Vast notification",
    "handler_failed": "handler failed",
    "notification_failed": "notification failed",
    "poll_failed": "poll failed",
}
_CRITICAL = frozenset({"preempted", "offline_too_long", "job_failed", "recovery_failed", "budget_exceeded"})
_WARNING = frozenset({"stuck_loading", "host_flap", "vanished", "host_blocked", "budget_warning", "handler_failed",
                      "notification_failed", "poll_failed"})  # fmt: skip
_DOWN_STATES = ("offline", "stopped", "exited")
_EMOJI = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}


def transition(name: str) -> tuple[str, str] | None:
    """(old, new) of an ``old_to_new`` event name, else None."""
    old, sep, new = name.partition("_to_")
    return (old, new) if sep and old and new else None


def is_down(name: str) -> bool:
    """An event saying a running instance went down (a later ``*_to_running`` is its recovery)."""
    moved = transition(name)
    return name in ("preempted", "offline_too_long") or (moved is not None and moved[1] in _DOWN_STATES)


def is_back(name: str) -> bool:
    """A return to running from a down state (not a first start)."""
    moved = transition(name)
    return moved is not None and moved[0] in _DOWN_STATES and moved[1] == "running"


def severity(name: str) -> str:
    if name in _CRITICAL:
        return "critical"
    moved = transition(name)
    if name in _WARNING or (moved is not None and moved[0] == "running" and moved[1] in _DOWN_STATES):
        return "warning"
    return "info"


def words(event: Event) -> str:
    """The event in words: ``preempted``, ``running``, ``job failed (host unfit)``, ``offline (was running)``."""
    moved = transition(event.name)
    if moved is not None:
        old, new = moved
        return "running" if new == "running" and old not in _DOWN_STATES else f"{new} (was {old})"
    said = _WORDS.get(event.name, event.name.replace("_", " "))
    return f"{said} ({event.cause.value.replace('_', ' ')})" if event.cause is not None else said


def mention_markup(mention: str) -> str:
    """Slack markup for a mention: ``@here`` → ``<!here>``, ``@U123`` → ``<@U123>``; markup passes through."""
    if not mention or mention.startswith("<"):
        return mention
    name = mention.removeprefix("@")
    return f"<!{name}>" if name in ("here", "channel", "everyone") else f"<@{name}>"


def _gpu(instance: Instance | None) -> str:
    if instance is None or not instance.gpu_name:
        return "unknown GPU"
    return f"{instance.num_gpus or 1}x {instance.gpu_name}"


def _label(instance: Instance | None) -> str:
    return instance.label if instance is not None and instance.label else "no label"


def _cost_so_far(event: Event) -> float | None:
    instance = event.instance
    if instance is None or instance.dph_total is None or instance.start_date is None:
        return None
    hours = (event.at.timestamp() - instance.start_date) / 3600
    return instance.dph_total * hours if hours > 0 else None


def ssh_command(instance: Instance | None) -> str | None:
    if instance is None or not instance.ssh_host or not instance.ssh_port:
        return None
    return f"ssh -p {instance.ssh_port} root@{instance.ssh_host}"


def describe(event: Event) -> str:
    """The plain line: instance id, label, GPU, the event in words, its detail and the price."""
    who = f"Instance {event.instance_id}" if event.instance_id is not None else "vastevents"
    price = event.instance.dph_total if event.instance is not None else None
    parts = [f"{who} ({_label(event.instance)}, {_gpu(event.instance)}): {words(event)}"]
    if event.detail:
        parts.append(f" — {event.detail}")
    if price is not None:
        parts.append(f" · ${price:.3f}/h")
    return "".join(parts)


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _context(lines: list[str]) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": line} for line in lines]}


def event_payload(event: Event, *, mention: str = "") -> dict[str, Any]:
    """One event's message: ``text`` (the fallback and notification line) and Block Kit ``blocks``."""
    level = severity(event.name)
    prefix = f"{mention} " if mention else ""
    text = prefix + describe(event)
    who = f"`{event.instance_id}` ({_label(event.instance)})" if event.instance_id is not None else "vastevents"
    headline = f"{prefix}{_EMOJI[level]} *{words(event)}* — {who} on {_gpu(event.instance)}"
    blocks: list[dict[str, Any]] = [_section(headline)]
    if event.detail:
        blocks.append(_section(event.detail))
    facts = []
    if event.instance is not None and event.instance.dph_total is not None:
        facts.append(f"${event.instance.dph_total:.3f}/h")
    cost = _cost_so_far(event)
    if cost is not None:
        facts.append(f"≈ ${cost:.2f} so far")
    if facts:
        blocks.append(_context(facts))
    ssh = ssh_command(event.instance) if words(event) == "running" else None
    if ssh is not None:
        text += f" · {ssh}"
        blocks.append(_section(f"```{ssh}```"))
    return {"text": text, "blocks": blocks, "line": text.removeprefix(prefix)}


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def back_payload(event: Event, down_for: float, *, folded: str | None = None) -> dict[str, Any]:
    """The instance is running again after `down_for` seconds; `folded` is the unsent down message it replaces."""
    again = f"running again after {_duration(down_for)}"
    if folded is not None:
        text = f"{folded} — {again}"
    else:
        text = describe(event).replace(f": {words(event)}", f": {again}", 1)
    return {"text": text, "blocks": [_section(text)], "line": text}


def digest_payload(texts: list[str], *, mention: str = "") -> dict[str, Any]:
    """One message standing for a burst of messages (their ``line``s, without mentions)."""
    prefix = f"{mention} " if mention else ""
    head = f"{prefix}{len(texts)} vastevents notifications at once:"
    shown = texts[:20]
    more = [f"… and {len(texts) - len(shown)} more"] if len(texts) > len(shown) else []
    body = "\n".join(f"• {line}" for line in [*shown, *more])
    return {"text": f"{head}\n{body}", "blocks": [_section(f"*{head}*"), _section(body[:2900])]}
