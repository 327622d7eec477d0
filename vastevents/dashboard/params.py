"""Query parameters: each route names the ones it takes; anything else, or a value of the wrong shape, is a
:class:`BadParameter` whose message is one line (the route answers 400 with it)."""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import UTC, date, datetime

from starlette.datastructures import QueryParams

MAX_PAGE = 100_000
_EVENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class BadParameter(ValueError):
    """A query parameter the route does not take, or a value it cannot use."""


def allowed(query: QueryParams, names: Collection[str]) -> dict[str, str]:
    """The non-empty parameters of `query`, all among `names`, each given once (an empty value is absent)."""
    found: dict[str, str] = {}
    for key in query:
        if key not in names:
            expected = ", ".join(sorted(names)) or "none"
            raise BadParameter(f"unknown parameter {_show(key)} (this page takes: {expected})")
    for key in names:
        values = query.getlist(key)
        if len(values) > 1:
            raise BadParameter(f"parameter {key} is given {len(values)} times")
        if values and values[-1].strip():
            found[key] = values[-1].strip()
    return found


def page(value: str | None) -> int:
    if value is None:
        return 1
    number = integer("page", value)
    if not 1 <= number <= MAX_PAGE:
        raise BadParameter(f"page={_show(value)}: expected a page number from 1 to {MAX_PAGE}")
    return number


def integer(name: str, value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise BadParameter(f"{name}={_show(value)}: expected a whole number")
    return int(value)


def event_name(value: str) -> str:
    if not _EVENT_NAME.fullmatch(value):
        raise BadParameter(f"name={_show(value)}: expected an event name such as loading_to_running")
    return value


def moment(name: str, value: str) -> datetime:
    """A date (``2026-01-31``, midnight UTC) or a time (``2026-01-31T12:00``, UTC unless it says otherwise)."""
    try:
        if len(value) <= 10:
            at = datetime.combine(date.fromisoformat(value), datetime.min.time())
        else:
            at = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise BadParameter(f"{name}={_show(value)}: expected a date like 2026-01-31 or 2026-01-31T12:00") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def choice(name: str, value: str | None, choices: tuple[str, ...]) -> str:
    if value is None:
        return choices[0]
    if value not in choices:
        raise BadParameter(f"{name}={_show(value)}: expected one of {', '.join(choices)}")
    return value


def _show(value: str) -> str:
    """`value` quoted on one line and cut short, safe to echo in a plain-text message."""
    text = value if len(value) <= 40 else value[:40] + "…"
    return repr(text.encode("unicode_escape").decode("ascii"))
