"""The offer query language: examples from the vastai CLI's help, its conversions, and property tests."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vastevents.errors import QueryError
from vastevents.query import ALIASES, DEFAULT_FILTERS, FIELDS, parse_order, parse_query

DEFAULTS = {"verified": {"eq": True}, "external": {"eq": False}, "rentable": {"eq": True}, "rented": {"eq": False}}


def test_the_documented_example() -> None:
    query = parse_query("gpu_ram>=24 num_gpus=1 reliability>0.9 disk_space>=64 gpu_name=RTX_4090 -o dph_total")
    assert query == {
        **DEFAULTS,
        "gpu_ram": {"gte": 24000.0},
        "num_gpus": {"eq": 1},
        "reliability": {"gt": 0.9},
        "disk_space": {"gte": 64},
        "gpu_name": {"eq": "RTX 4090"},
        "order": [["dph_total", "asc"]],
    }


def test_defaults_match_the_cli_and_sdk() -> None:
    assert parse_query("") == DEFAULTS == DEFAULT_FILTERS
    assert parse_query("", defaults=False) == {}
    assert parse_query("num_gpus=2", defaults=False) == {"num_gpus": {"eq": 2}}


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("gpu_ram>=24", "gpu_ram", {"gte": 24000.0}),
        ("cpu_ram>32.5", "cpu_ram", {"gt": 32500.0}),
        ("gpu_total_ram<=80", "gpu_total_ram", {"lte": 80000.0}),
        ("duration>=2", "duration", {"gte": 172800.0}),
        ("disk_space>=64", "disk_space", {"gte": 64}),
        ("dph<0.5", "dph_total", {"lt": 0.5}),
        ("cuda_vers>=12.1", "cuda_max_good", {"gte": 12.1}),
        ("dlperf_usd>10", "dlperf_per_dphtotal", {"gt": 10}),
        ("driver_version >= 535.86.05", "driver_version", {"gte": 535086005}),
        ("verified=False", "verified", {"eq": False}),
        ("static_ip=true", "static_ip", {"eq": True}),
        ("geolocation!=CN", "geolocation", {"neq": "CN"}),
        ("gpu_name=RTX_A6000", "gpu_name", {"eq": "RTX A6000"}),
        ('gpu_name="RTX 3090"', "gpu_name", {"eq": "RTX 3090"}),
        ("cpu_arch=arm64", "cpu_arch", {"eq": "arm64"}),
        ("min_bid=null", "min_bid", {"eq": None}),
        ("reliability gte 0.99", "reliability", {"gte": 0.99}),
        ("reliability > 0.99", "reliability", {"gt": 0.99}),
        ("num_gpus == 4", "num_gpus", {"eq": 4}),
        ("num_gpus neq 4", "num_gpus", {"neq": 4}),
        ("num_gpus not eq 4", "num_gpus", {"neq": 4}),
    ],
)
def test_conversions_aliases_and_operators(text: str, field: str, expected: dict[str, Any]) -> None:
    assert parse_query(text, defaults=False) == {field: expected}


def test_lists_with_in_and_notin() -> None:
    query = parse_query(
        'gpu_name in [RTX_4090,RTX_3090] geolocation notin [CN,VN] num_gpus in [1, 2] gpu_arch nin ["amd"]',
        defaults=False,
    )
    assert query == {
        "gpu_name": {"in": ["RTX 4090", "RTX 3090"]},
        "geolocation": {"notin": ["CN", "VN"]},
        "num_gpus": {"in": [1, 2]},
        "gpu_arch": {"notin": ["amd"]},
    }
    assert parse_query('gpu_name in ["RTX 4090", "RTX 3090"] geolocation not in [CN]', defaults=False) == {
        "gpu_name": {"in": ["RTX 4090", "RTX 3090"]},
        "geolocation": {"notin": ["CN"]},
    }


def test_conditions_on_one_field_combine() -> None:
    assert parse_query("gpu_ram>=24 gpu_ram<=48", defaults=False) == {"gpu_ram": {"gte": 24000.0, "lte": 48000.0}}


@pytest.mark.parametrize("wildcard", ["any", "?", "*"])
def test_field_equals_any_removes_a_default_or_earlier_filter(wildcard: str) -> None:
    query = parse_query(f"verified={wildcard} num_gpus=2 num_gpus={wildcard}")
    assert "verified" not in query and "num_gpus" not in query
    assert query["rentable"] == {"eq": True}


def test_wildcard_needs_equals() -> None:
    with pytest.raises(QueryError, match="only works with '='"):
        parse_query("verified!=any")


@pytest.mark.parametrize(
    ("text", "order"),
    [
        ("num_gpus=1 -o dph_total", [["dph_total", "asc"]]),
        ("-o 'dph_total-' num_gpus=1", [["dph_total", "desc"]]),
        ('num_gpus=1 --order "num_gpus-,dph"', [["num_gpus", "desc"], ["dph_total", "asc"]]),
        ("num_gpus=1 --order=+score", [["score", "asc"]]),
        ("num_gpus=1 -o -dlperf", [["dlperf", "desc"]]),
    ],
)
def test_order(text: str, order: list[list[str]]) -> None:
    query = parse_query(text, defaults=False)
    assert query == {"num_gpus": {"eq": 1}, "order": order}


def test_no_order_means_no_order_key() -> None:
    assert "order" not in parse_query("num_gpus=1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gpu_rams>=24", r"unknown field 'gpu_rams'; valid fields: .*gpu_ram, .*num_gpus"),
        ("gpu_ram=>24", r"unknown operator '=>' after 'gpu_ram'; valid operators: = == != > >= < <= eq"),
        ("gpu_ram about 24", r"unknown operator 'about'"),
        ("num_gpus", r"expected an operator after 'num_gpus'"),
        ("num_gpus>=", r"'num_gpus >=' needs a value"),
        ("gpu_ram>=lots", r"gpu_ram expects a number, not 'lots'"),
        ("gpu_ram>=nan", r"finite number"),
        ("verified=maybe", r"verified is true or false, not 'maybe'"),
        ("gpu_name=[RTX_4090]", r"a \[list\] needs 'in' or 'notin'"),
        ("gpu_name in []", r"needs a list"),
        ("num_gpus=1 -o x -o y", r"give -o/--order once"),
        ("num_gpus=1 -o ','", r"-o needs at least one field"),
        ("num_gpus=1 -o 'a.b'", r"cannot sort by 'a.b'"),
        ("<=4", r"cannot parse the query at '<=4'"),
    ],
)
def test_bad_queries_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_query(text)


def test_parse_order_directly() -> None:
    assert parse_order("dph_total,num_gpus-") == [["dph_total", "asc"], ["num_gpus", "desc"]]
    assert parse_order("'cuda_vers-'") == [["cuda_max_good", "desc"]]


# --- properties ----------------------------------------------------------------------------------------------

_NUMERIC = sorted(f for f in FIELDS if f not in {"gpu_name", "geolocation", "cpu_arch", "gpu_arch", "mobo_name",
                  "ubuntu_version", "verification", "driver_version", "datacenter", "external", "gpu_display_active",
                  "has_avx", "rentable", "rented", "static_ip", "verified", "vms_enabled"})  # fmt: skip
_MULTIPLIED = {"gpu_ram": 1000.0, "cpu_ram": 1000.0, "gpu_total_ram": 1000.0, "duration": 86400.0}
_SYMBOLS = {"=": "eq", "!=": "neq", ">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}
_WORDS = {"eq": "eq", "neq": "neq", "gt": "gt", "gte": "gte", "lt": "lt", "lte": "lte"}

numbers = st.one_of(
    st.integers(min_value=0, max_value=10**6),
    st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
)


@given(field=st.sampled_from(_NUMERIC), symbol=st.sampled_from(sorted(_SYMBOLS)), value=numbers, spaced=st.booleans())
def test_any_numeric_condition_round_trips(field: str, symbol: str, value: float, spaced: bool) -> None:
    gap = " " if spaced else ""
    query = parse_query(f"{field}{gap}{symbol}{gap}{value!r}", defaults=False)
    expected = float(value) * _MULTIPLIED[field] if field in _MULTIPLIED else value
    assert query == {field: {_SYMBOLS[symbol]: expected}}


@given(
    conditions=st.lists(
        st.tuples(st.sampled_from(_NUMERIC), st.sampled_from(sorted(_WORDS)), st.integers(0, 10_000)),
        min_size=1,
        max_size=6,
    )
)
def test_a_conjunction_keeps_the_last_value_per_field_and_operator(conditions: list[tuple[str, str, int]]) -> None:
    text = "  ".join(f"{field} {word} {value}" for field, word, value in conditions)
    expected: dict[str, dict[str, Any]] = {}
    for field, word, value in conditions:
        expected.setdefault(field, {})[_WORDS[word]] = value * _MULTIPLIED[field] if field in _MULTIPLIED else value
    assert parse_query(text, defaults=False) == expected


names = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", min_size=1, max_size=12).filter(
    lambda s: s.strip("_") and s.lower() not in {"null", "none"} and not s.startswith("_")
)


@given(items=st.lists(names, min_size=1, max_size=5), negate=st.booleans())
def test_string_lists_turn_underscores_into_spaces(items: list[str], negate: bool) -> None:
    op = "notin" if negate else "in"
    query = parse_query(f"gpu_name {op} [{','.join(items)}]", defaults=False)
    assert query == {"gpu_name": {op: [item.replace("_", " ") for item in items]}}


@given(
    order=st.lists(
        st.tuples(st.sampled_from(sorted(FIELDS | ALIASES.keys())), st.sampled_from(["asc", "desc"])),
        min_size=1,
        max_size=4,
    )
)
def test_order_round_trips(order: list[tuple[str, str]]) -> None:
    text = ",".join(field + ("-" if direction == "desc" else "") for field, direction in order)
    assert parse_order(text) == [[ALIASES.get(field, field), direction] for field, direction in order]


@given(text=st.text(max_size=60))
def test_arbitrary_text_parses_or_raises_query_error(text: str) -> None:
    try:
        query = parse_query(text)
    except QueryError as exc:
        assert str(exc)
    else:
        assert all(key in FIELDS or key == "order" for key in query)


@given(field=st.sampled_from(sorted(DEFAULT_FILTERS)))
def test_any_default_can_be_removed(field: str) -> None:
    query = parse_query(f"{field}=any")
    assert field not in query
    assert set(query) == set(DEFAULT_FILTERS) - {field}


# --- the same queries as the official vastai CLI's parser ----------------------------------------------------------

_NUMBER_FIELDS = frozenset(_NUMERIC) | {"driver_version"}


def _official(text: str) -> dict[str, Any]:
    """What `vastai search offers TEXT` (1.9.1) sends, without its defaults; numbers made typed like ours."""
    official = pytest.importorskip("vastai.api.query", reason="the official vastai CLI is not installed")
    raw = official.parse_query(text, {}, official.offers_fields, official.offers_alias, official.offers_mult)

    def typed(field: str, value: Any) -> Any:
        if isinstance(value, list):
            return [typed(field, item) for item in value]
        if isinstance(value, str) and field in _NUMBER_FIELDS:
            return float(value)
        return value

    return {field: {op: typed(field, value) for op, value in ops.items()} for field, ops in raw.items()}


@pytest.mark.parametrize(
    "text",
    [
        "gpu_ram>=24 num_gpus=1 reliability>0.9 disk_space>=64 gpu_name=RTX_4090",
        "gpu_name in [RTX_4090,RTX_3090] geolocation notin [CN,VN] num_gpus in [1,2]",
        "reliability gte 0.99 num_gpus neq 4 cuda_vers>=12.1 dph<0.5 duration>=2",
        "verified=False static_ip=true min_bid=null driver_version >= 535.86.05",
        "verified=any num_gpus=2",
        'gpu_name="RTX 3090"',
        "dlperf_usd>10 gpu_total_ram<=80 cpu_ram>32.5",
        "num_gpus not eq 4 geolocation not in [CN] num_gpus nin [1] num_gpus == 4",
    ],
)
def test_the_official_cli_parses_the_same_query(text: str) -> None:
    assert parse_query(text, defaults=False) == _official(text)


@given(
    conditions=st.lists(
        st.tuples(
            st.sampled_from(_NUMERIC + sorted(alias for alias, field in ALIASES.items() if field in _NUMERIC)),
            st.sampled_from([*_SYMBOLS, *_WORDS]),
            st.one_of(st.integers(0, 10_000), st.floats(0, 1e4, allow_nan=False).map(lambda f: round(f, 3))),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_any_numeric_conjunction_matches_the_official_cli(conditions: list[tuple[str, str, float]]) -> None:
    text = " ".join(
        f"{field} {op} {value}" if op.isalpha() else f"{field}{op}{value}" for field, op, value in conditions
    )
    assert parse_query(text, defaults=False) == _official(text)
