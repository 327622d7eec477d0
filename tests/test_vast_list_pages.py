"""The instance list's page path: read in one pass from the bytes, and an unchanged page not read again.

Both must give exactly what reading each row with ``Instance.model_validate`` gives, errors included.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from vastevents.errors import ApiError
from vastevents.models import Instance
from vastevents.vast import VastClient, _model

BASE = "http://vast.test"

scalar = st.none() | st.booleans() | st.integers(-5, 10**12) | st.floats(allow_nan=False) | st.text(max_size=6)
numeric_text = st.sampled_from(["", " ", "3", "2.5", "x", "1e3"])
value = scalar | numeric_text
row = st.fixed_dictionaries(
    {"id": st.integers(1, 40) | st.sampled_from(["7", "x", None])},
    optional={
        "actual_status": st.none() | st.sampled_from(["running", "loading", "Offline", "new"]),
        "is_bid": value,
        "num_gpus": value,
        "gpu_ram": value,
        "ssh_port": value,
        "dph_total": value,
        "label": value,
        "start_date": value,
        "extra_env": st.lists(st.tuples(st.text(max_size=3), st.text(max_size=3)), max_size=2),
        "ports": st.dictionaries(st.text(max_size=3), st.lists(scalar, max_size=2), max_size=2),
    },
)


def _pages(rows: list[dict[str, Any]], size: int = 3) -> list[bytes]:
    chunks = [rows[n : n + size] for n in range(0, len(rows), size)] or [[]]
    return [
        json.dumps(
            {"success": True, "instances": chunk, "next_token": f"t{n + 1}" if n + 1 < len(chunks) else None}
        ).encode()
        for n, chunk in enumerate(chunks)
    ]


class Pages:
    """Serves the pages, by cursor; records how many GETs it answered."""

    def __init__(self, pages: list[bytes]) -> None:
        self.pages = pages
        self.gets = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.gets += 1
        token = request.url.params.get("after_token")
        index = int(token[1:]) if token else 0
        return httpx.Response(200, content=self.pages[index], headers={"content-type": "application/json"})


def _client(pages: Pages) -> VastClient:
    return VastClient("key", BASE, transport=httpx.MockTransport(pages), max_attempts=1)


def _expected(rows: list[dict[str, Any]]) -> list[Instance] | str:
    """The rows read one by one as before: the instances, or the message of the first row's error."""
    instances: dict[int, Instance] = {}
    for raw in rows:
        try:
            instance = _model(Instance, raw, "an instance row")
        except ApiError as exc:
            return str(exc)
        instances[instance.id] = instance
    return list(instances.values())


@settings(max_examples=200, deadline=None)
@given(st.lists(row, max_size=10))
async def test_one_pass_reading_equals_reading_row_by_row(rows: list[dict[str, Any]]) -> None:
    expected = _expected(json.loads(json.dumps(rows)))  # the rows as the step-by-step path decodes them
    async with _client(Pages(_pages(rows))) as client:
        if isinstance(expected, str):
            with pytest.raises(ApiError) as caught:
                await client.list_instances()
            assert str(caught.value) == expected
        else:
            listed = await client.list_instances()
            # repr: the same values of the same types, and a NaN sent as "nan" equals itself
            assert [repr(i.model_dump()) for i in listed] == [repr(i.model_dump()) for i in expected]


def _rows(*ids: int, status: str = "running") -> list[dict[str, Any]]:
    return [{"id": n, "actual_status": status, "start_date": 1.0, "extra_env": []} for n in ids]


async def test_an_unchanged_page_gives_the_same_rows_and_a_changed_one_is_read_again() -> None:
    pages = Pages(_pages(_rows(1, 2, 3, 4, 5, 6)))
    async with _client(pages) as client:
        first = await client.list_instances()
        again = await client.list_instances()
        assert all(a is b for a, b in zip(first, again, strict=True))
        pages.pages[1] = _pages([*_rows(1, 2, 3), *_rows(4, 5, 6, status="offline")])[1]
        changed = await client.list_instances()
    assert pages.gets == 6  # still one GET per page, every time
    assert all(a is b for a, b in zip(first[:3], changed[:3], strict=True))
    assert [i.actual_status for i in changed[3:]] == ["offline"] * 3
    assert all(a is not b for a, b in zip(first[3:], changed[3:], strict=True))


async def test_a_list_that_fails_on_a_later_page_keeps_the_last_complete_one_for_reuse() -> None:
    pages = Pages(_pages(_rows(1, 2, 3, 4)))
    async with _client(pages) as client:
        first = await client.list_instances()
        good = pages.pages[1]
        pages.pages[1] = b'{"instances": [{"id": "not a number"}]}'
        with pytest.raises(ApiError, match="an instance row"):
            await client.list_instances()
        pages.pages[1] = good
        again = await client.list_instances()
    assert all(a is b for a, b in zip(first, again, strict=True))


def test_the_page_model_refuses_what_the_step_by_step_path_reports() -> None:
    from vastevents.vast import _InstancePageBody

    for body in (b"[]", b'{"instances": {}}', b'{"next_token": null}', b"{not json"):
        with pytest.raises(ValidationError):
            _InstancePageBody.model_validate_json(body)
