"""The offer query language of the ``vastai`` CLI, turned into the JSON query ``POST /api/v0/bundles/`` takes.

``gpu_ram>=24 num_gpus=1 reliability>0.9 gpu_name=RTX_4090 -o dph_total`` becomes
``{"gpu_ram": {"gte": 24000.0}, "num_gpus": {"eq": 1}, ..., "order": [["dph_total", "asc"]]}`` plus the CLI's
default filters. As in the CLI: RAM sizes are typed in GB and sent in MB, ``duration`` in days is sent in
seconds, ``_`` in a string value is a space, ``field=any`` drops a filter (including a default), and
``-o 'field-'`` sorts descending. Unlike the CLI, an unknown field or operator is an error, and numbers and
booleans are sent typed. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from typing import Any

from vastevents.errors import QueryError

_NUMBER_FIELDS = frozenset(
    {
        "bw_nvlink", "compute_cap", "cpu_cores", "cpu_cores_effective", "cpu_ghz", "cpu_ram", "cuda_max_good",
        "direct_port_count", "disk_bw", "disk_space", "dlperf", "dlperf_per_dphtotal", "dph_total", "duration",
        "flops_per_dphtotal", "gpu_frac", "gpu_mem_bw", "gpu_max_power", "gpu_max_temp", "gpu_ram",
        "gpu_total_ram", "host_id", "id", "inet_down", "inet_down_cost", "inet_up", "inet_up_cost", "machine_id",
        "min_bid", "num_gpus", "pci_gen", "pcie_bw", "reliability", "reliability2", "storage_cost",
        "total_flops", "cluster_id",
    }
)  # fmt: skip
_BOOL_FIELDS = frozenset(
    {"datacenter", "external", "gpu_display_active", "has_avx", "rentable", "rented", "static_ip", "verified",
     "vms_enabled"}
)  # fmt: skip
_STRING_FIELDS = frozenset({"cpu_arch", "geolocation", "gpu_arch", "gpu_name", "mobo_name", "ubuntu_version",
                            "verification"})  # fmt: skip
_VERSION_FIELDS = frozenset({"driver_version"})

FIELDS = _NUMBER_FIELDS | _BOOL_FIELDS | _STRING_FIELDS | _VERSION_FIELDS
"""Every field an offer query may filter on (after aliases)."""

ALIASES = {
    "cuda_vers": "cuda_max_good",
    "display_active": "gpu_display_active",
    "dlperf_usd": "dlperf_per_dphtotal",
    "dph": "dph_total",
    "flops_usd": "flops_per_dphtotal",
}

_MULTIPLIERS = {"cpu_ram": 1000.0, "gpu_ram": 1000.0, "gpu_total_ram": 1000.0, "duration": 24.0 * 60.0 * 60.0}

DEFAULT_FILTERS: dict[str, dict[str, Any]] = {
    "verified": {"eq": True},
    "external": {"eq": False},
    "rentable": {"eq": True},
    "rented": {"eq": False},
}
"""What the CLI and SDK add unless told otherwise (``verified=any`` removes one)."""

_OPERATORS = {
    "=": "eq", "==": "eq", "eq": "eq",
    "!=": "neq", "neq": "neq", "noteq": "neq", "not eq": "neq",
    ">": "gt", "gt": "gt", ">=": "gte", "gte": "gte",
    "<": "lt", "lt": "lt", "<=": "lte", "lte": "lte",
    "in": "in", "notin": "notin", "nin": "notin", "not in": "notin",
}  # fmt: skip
_VALID_OPERATORS = "= == != > >= < <= eq neq gt gte lt lte in notin (nin, not in)"
_WILDCARDS = frozenset({"any", "?", "*"})

_ORDER_OPTION = re.compile(r"(?:^|\s)(?:-o|--order)(?:\s+|=)(\"[^\"]*\"|'[^']*'|\S+)")
_FIELD = re.compile(r"\s*([A-Za-z0-9_]+)")
_SYMBOL_OP = re.compile(r"\s*([=<>!]+)\s*")
_WORD_OP = re.compile(r"\s+(not\s+in|not\s+eq|[A-Za-z]+)\s+")
_VALUE = re.compile(r"\[[^\]]*\]|\"[^\"]*\"|'[^']*'|\S+")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INTEGER = re.compile(r"^[+-]?\d+$")


def parse_query(text: str, *, defaults: bool = True) -> dict[str, Any]:
    """Parse an offer query (``gpu_ram>=24 num_gpus=1 -o dph_total``) into the JSON query dict.

    The result holds one ``{op: value}`` dict per field, the default filters unless `defaults` is false,
    and ``"order"`` when the text has ``-o``/``--order``. Raises :class:`QueryError` naming what is wrong.
    """
    query: dict[str, Any] = {field: dict(ops) for field, ops in DEFAULT_FILTERS.items()} if defaults else {}
    text, order = _split_order(text)
    position = 0
    while position < len(text):
        if not text[position:].strip():
            break
        field, op, value, position = _next_condition(text, position)
        if isinstance(value, str) and value.lower() in _WILDCARDS:
            if op != "eq":
                raise QueryError(f"'{field} {value}': the wildcard '{value}' only works with '=' (e.g. {field}=any)")
            query.pop(field, None)
            continue
        query.setdefault(field, {})[op] = value
    if order is not None:
        query["order"] = order
    return query


def parse_order(text: str) -> list[list[str]]:
    """``"dph_total,num_gpus-"`` -> ``[["dph_total", "asc"], ["num_gpus", "desc"]]`` (``-`` means descending)."""
    order: list[list[str]] = []
    for part in text.strip().strip("\"'").split(","):
        name = part.strip()
        if not name:
            continue
        direction = "asc"
        if name.startswith("-") or name.endswith("-"):
            direction = "desc"
            name = name.strip("-")
        elif name.startswith("+") or name.endswith("+"):
            name = name.strip("+")
        if not _IDENTIFIER.match(name):
            raise QueryError(f"cannot sort by '{part.strip()}': expected a field name, e.g. -o 'dph_total-'")
        order.append([ALIASES.get(name, name), direction])
    if not order:
        raise QueryError("-o needs at least one field, e.g. -o dph_total or -o 'dph_total-' for descending")
    return order


def _split_order(text: str) -> tuple[str, list[list[str]] | None]:
    matches = list(_ORDER_OPTION.finditer(text))
    if not matches:
        return text, None
    if len(matches) > 1:
        raise QueryError("give -o/--order once, with comma-separated fields: -o 'num_gpus-,dph_total'")
    match = matches[0]
    return text[: match.start()] + " " + text[match.end() :], parse_order(match.group(1))


def _next_condition(text: str, position: int) -> tuple[str, str, Any, int]:
    """Parse ``FIELD OP VALUE`` starting at `position`; return field, op name, typed value and the new position."""
    field_match = _FIELD.match(text, position)
    if field_match is None:
        raise QueryError(f"cannot parse the query at {text[position:].strip()!r}: expected FIELD OP VALUE, "
                         "e.g. gpu_ram>=24")  # fmt: skip
    raw_field = field_match.group(1)
    field = ALIASES.get(raw_field, raw_field)
    if field not in FIELDS:
        raise QueryError(f"unknown field '{raw_field}'; valid fields: {', '.join(sorted(FIELDS | ALIASES.keys()))}")
    position = field_match.end()
    op_match = _SYMBOL_OP.match(text, position) or _WORD_OP.match(text, position)
    if op_match is None:
        raise QueryError(f"expected an operator after '{raw_field}'; valid operators: {_VALID_OPERATORS}")
    raw_op = " ".join(op_match.group(1).split())
    op = _OPERATORS.get(raw_op.lower())
    if op is None:
        raise QueryError(f"unknown operator '{raw_op}' after '{raw_field}'; valid operators: {_VALID_OPERATORS}")
    position = op_match.end()
    value_match = _VALUE.match(text, position)
    if value_match is None:
        raise QueryError(f"'{raw_field} {raw_op}' needs a value, e.g. {raw_field}{raw_op}24")
    raw_value = value_match.group(0)
    if op in ("in", "notin"):
        items = [item.strip() for item in raw_value.strip("[]").split(",") if item.strip()]
        if not items:
            raise QueryError(f"'{raw_field} {raw_op}' needs a list, e.g. gpu_name in [RTX_4090,RTX_3090]")
        value: Any = [_typed_value(field, item) for item in items]
    elif raw_value.startswith("["):
        raise QueryError(f"a [list] needs 'in' or 'notin', not '{raw_op}': {raw_field} in {raw_value}")
    elif raw_value.lower() in _WILDCARDS:
        value = raw_value
    else:
        value = _typed_value(field, raw_value)
    return field, op, value, value_match.end()


def _typed_value(field: str, raw: str) -> Any:
    """Turn one value into what the API expects for `field` (MB, seconds, numbers, booleans, spaces)."""
    text = _unquote(raw)
    if text in ("null", "None"):
        return None
    if field in _STRING_FIELDS:
        return text.replace("_", " ")
    if field in _BOOL_FIELDS:
        lowered = text.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise QueryError(f"{field} is true or false, not '{text}'")
    if field in _VERSION_FIELDS:
        return _numeric_version(field, text)
    number = _number(field, text)
    if field in _MULTIPLIERS:
        return float(number) * _MULTIPLIERS[field]
    return number


def _number(field: str, text: str) -> int | float:
    try:
        if _INTEGER.match(text):
            return int(text)
        number = float(text)
    except ValueError:
        raise QueryError(f"{field} expects a number, not '{text}'") from None
    if not math.isfinite(number):
        raise QueryError(f"{field} expects a finite number, not '{text}'")
    return number


def _numeric_version(field: str, text: str) -> int | float:
    """``535.86.05`` -> ``535086005``, as the CLI sends driver versions; a plain number passes through."""
    parts = text.split(".")
    if len(parts) == 3 and all(part.isdigit() for part in parts):
        return int("".join(part.zfill(3) for part in parts))
    return _number(field, text)


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text
