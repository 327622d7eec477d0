"""Vast's query semantics on rows: ``{field: {op: value}}`` filters with string-coerced values, and ordering.

Shared by the offer search and the instance list's ``select_filters``/``order_by``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vastevents.sim.model import SimError

_OPS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "in", "notin", "nin", "ne"})
_NEGATIONS = frozenset({"neq", "ne", "notin", "nin"})


def _coerce(want: Any, like: Any) -> Any:
    if isinstance(like, bool):
        if isinstance(want, str):
            return want.strip().lower() in ("true", "1", "yes")
        return bool(want)
    if isinstance(like, int | float):
        try:
            return float(want)
        except (TypeError, ValueError):
            return want
    if isinstance(like, str) and want is not None:
        return str(want)
    return want


def _equal(actual: Any, want: Any) -> bool:
    if actual is None or want is None:
        return actual is want
    want = _coerce(want, actual)
    if isinstance(actual, str) and isinstance(want, str):
        return actual.lower() == want.lower()
    return bool(actual == want)


def compare(actual: Any, op: str, want: Any) -> bool:
    if op in ("in", "notin", "nin"):
        values = want if isinstance(want, list) else [want]
        hit = any(_equal(actual, v) for v in values)
        return hit if op == "in" else not hit
    if op == "eq":
        return _equal(actual, want)
    if op in ("neq", "ne"):
        return not _equal(actual, want)
    if actual is None or isinstance(actual, bool):
        return False
    want = _coerce(want, actual)
    if type(want) is not type(actual) and not (isinstance(want, float) and isinstance(actual, int | float)):
        return False
    if op == "gt":
        return bool(actual > want)
    if op == "gte":
        return bool(actual >= want)
    if op == "lt":
        return bool(actual < want)
    return bool(actual <= want)


def _forms(name: str, value: Any) -> list[Any]:
    """The forms a field's value answers to: a location by its country code too ("Taipei, TW" is also "TW", as
    the CLI documents), a driver version by its number too ("535.86.05" is 535086005, what the CLI sends)."""
    if not isinstance(value, str):
        return [value]
    if name == "geolocation":
        return [value, value.rsplit(",", 1)[-1].strip()]
    if name == "driver_version" and value.count(".") == 2 and value.replace(".", "").isdigit():
        major, minor, patch = value.split(".")
        return [value, int(f"{major:0>3}{minor:0>3}{patch:0>3}")]
    return [value]


def _field_passes(name: str, value: Any, op: str, want: Any) -> bool:
    forms = _forms(name, value)
    if op in _NEGATIONS:
        return all(compare(form, op, want) for form in forms)
    return any(compare(form, op, want) for form in forms)


def matches(row: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """Whether a row passes `{field: {op: value}}`; a field the row lacks is not a constraint (callers that must
    refuse unknown fields check them first)."""
    for name, ops in filters.items():
        if name not in row:
            continue
        if not isinstance(ops, Mapping):
            ops = {"eq": ops}
        for op, want in ops.items():
            if op not in _OPS:
                raise SimError(400, "invalid_args", f"unknown operator {op!r} for {name}")
            if not _field_passes(name, row[name], op, want):
                return False
    return True


def sort_rows(rows: list[dict[str, Any]], order: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Stable multi-key sort by ``[[field, "asc"|"desc"], ...]``; None sorts last whatever the direction."""
    for spec in reversed(order):
        if not isinstance(spec, list | tuple):
            raise SimError(400, "invalid_args", f"order must be a list of [field, direction] pairs, not {spec!r}")
        if not spec:
            continue
        name = str(spec[0])
        descending = len(spec) > 1 and str(spec[1]).lower() == "desc"
        present = [r for r in rows if r.get(name) is not None]
        missing = [r for r in rows if r.get(name) is None]
        try:
            present.sort(key=lambda r: r[name], reverse=descending)
        except TypeError:
            present.sort(key=lambda r: str(r[name]), reverse=descending)
        rows = present + missing
    return rows
