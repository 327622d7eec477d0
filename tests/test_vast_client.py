"""Unit tests of VastClient against httpx.MockTransport: wire shapes, error mapping, retries, secrecy."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from vastevents._logging import redact
from vastevents.errors import AmbiguousCreate, ApiError, AuthError, NoSuchAsk, NotFound, RateLimited
from vastevents.models import Rental, State, VolumeMount
from vastevents.query import parse_query
from vastevents.sim import Simulator
from vastevents.vast import MAX_RETRY_AFTER, VastClient

KEY = "vk-test-0123456789abcdef-secret"
BASE = "http://vast.test"

Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class FakeVast:
    """A scripted server: answers each request with the next reply (the last one repeats) and records it."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, httpx.Response):
            return reply
        return reply(request)

    def body(self, index: int = -1) -> Any:
        return json.loads(self.requests[index].content)


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def ok(body: Any, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def client_for(fake: FakeVast, sleeps: Sleeps | None = None, *, key: str | None = KEY, attempts: int = 4) -> VastClient:
    return VastClient(
        key,
        BASE,
        transport=httpx.MockTransport(fake),
        max_attempts=attempts,
        sleep=sleeps if sleeps is not None else Sleeps(),
    )


def row(instance_id: int, **fields: Any) -> dict[str, Any]:
    return {"id": instance_id, "actual_status": "running", "start_date": 1.0, "extra_env": [], **fields}


# --- request shapes ----------------------------------------------------------------------------------------


async def test_every_request_carries_the_bearer_key_and_accepts_json() -> None:
    fake = FakeVast(ok({"id": 1, "email": "a@b.c"}))
    async with client_for(fake) as client:
        assert await client.current_user() == {"id": 1, "email": "a@b.c"}
    request = fake.requests[0]
    assert (request.method, request.url.path) == ("GET", "/api/v0/users/current/")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["accept"] == "application/json"
    assert KEY not in str(request.url)


async def test_no_key_sends_no_authorization_header() -> None:
    fake = FakeVast(ok({"id": 1}))
    async with client_for(fake, key=None) as client:
        await client.current_user()
    assert "authorization" not in fake.requests[0].headers


async def test_search_offers_posts_the_parsed_query_with_type_order_and_limit() -> None:
    fake = FakeVast(ok({"offers": [{"id": 11, "gpu_name": "RTX 4090", "dph_total": "0.4"}, {"id": 12}]}))
    async with client_for(fake) as client:
        offers = await client.search_offers("gpu_ram>=24 num_gpus=1", limit=5)
    request = fake.requests[0]
    assert (request.method, request.url.path) == ("POST", "/api/v0/bundles/")
    expected = parse_query("gpu_ram>=24 num_gpus=1") | {
        "type": "on-demand",
        "order": [["dph_total", "asc"]],
        "limit": 5,
    }
    assert fake.body() == expected
    assert fake.body()["gpu_ram"] == {"gte": 24000.0}
    assert [offer.id for offer in offers] == [11, 12]
    assert offers[0].dph_total == 0.4


async def test_search_offers_keeps_a_dict_query_and_maps_interruptible_to_bid() -> None:
    fake = FakeVast(ok({"offers": []}))
    async with client_for(fake) as client:
        assert (
            await client.search_offers({"num_gpus": {"eq": 2}}, type="interruptible", order=[["score", "desc"]]) == []
        )
    assert fake.body() == {"num_gpus": {"eq": 2}, "type": "bid", "order": [["score", "desc"]]}


async def test_search_offers_uses_the_order_from_the_query_text() -> None:
    fake = FakeVast(ok({"offers": []}))
    async with client_for(fake) as client:
        await client.search_offers("num_gpus=1 -o 'dph_total-'")
    assert fake.body()["order"] == [["dph_total", "desc"]]


async def test_create_instance_puts_the_ask_with_the_cli_body() -> None:
    fake = FakeVast(ok({"success": True, "new_contract": 4242}))
    async with client_for(fake) as client:
        new_id = await client.create_instance(
            Rental(77, image="pytorch/pytorch", disk=32, label="vastevents:job-1", env={"A": "1"}, onstart="echo hi")
        )
    assert new_id == 4242
    request = fake.requests[0]
    assert (request.method, request.url.path) == ("PUT", "/api/v0/asks/77/")
    assert fake.body() == {
        "client_id": "me",
        "image": "pytorch/pytorch",
        "env": {"A": "1"},
        "price": None,
        "disk": 32,
        "label": "vastevents:job-1",
        "onstart": "echo hi",
        "runtype": "ssh_direct",
    }


async def test_a_create_from_a_template_with_a_private_image_and_a_new_volume_sends_them_as_the_cli() -> None:
    fake = FakeVast(ok({"success": True, "new_contract": 4243}))
    login = "-u robot -p reg-token-ABCDEF0123 registry.example.com"
    rental = Rental(
        77,
        disk=20,
        label="vastevents:job-2",
        template_hash="4e17788f74f075dd9aab7d0d4427968f",
        template_id=12,
        image_login=login,
        volume=VolumeMount.new(90000007, 15, "/root/ckpt", name="vastevents:job-2"),
    )
    assert login not in repr(rental), "the login never shows in a repr (logs, tracebacks)"
    async with client_for(fake) as client:
        assert await client.create_instance(rental) == 4243
    body = fake.body()
    assert body["image"] is None, "the template's image"
    assert (body["template_hash_id"], body["template_id"], body["image_login"]) == (rental.template_hash, 12, login)
    assert body["volume_info"] == {
        "mount_path": "/root/ckpt",
        "create_new": True,
        "volume_id": 90000007,
        "size": 15,
        "name": "vastevents:job-2",
    }
    assert VolumeMount.existing(31, "/root/ckpt").to_wire() == {
        "mount_path": "/root/ckpt",
        "create_new": False,
        "volume_id": 31,
    }
    assert "reg-token" not in redact(f"pull failed with {login}"), "registered as a secret once sent"


def test_a_rental_needs_an_image_or_a_template() -> None:
    with pytest.raises(ValueError, match="image or a template"):
        Rental(77, disk=10)


async def test_a_create_refused_for_a_missing_template_is_not_taken_for_a_vanished_offer() -> None:
    fake = FakeVast(ok({"success": False, "error": "no_such_template", "msg": "No template with hash x."}, 404))
    async with client_for(fake) as client:
        with pytest.raises(ApiError, match="No template with hash x") as caught:
            await client.create_instance(Rental(77, disk=10, template_hash="x"))
    assert not isinstance(caught.value, NoSuchAsk), "the next offer would fail the same way"


async def test_volumes_are_listed_searched_and_deleted_on_vasts_routes() -> None:
    rows = [{"id": 5, "name": "vastevents:job-1", "machine_id": 7, "disk_space": 15, "instances": [4001]}]
    fake = FakeVast(
        ok({"success": True, "volumes": rows}),
        ok({"offers": [{"id": 90000007, "machine_id": 7, "disk_space": 900}]}),
        ok({"success": True, "msg": "Deleted volume 5"}),
        ok({"success": False, "error": "no_such_volume", "msg": "No volume 5."}, 404),
    )
    async with client_for(fake) as client:
        volumes = await client.list_volumes()
        offers = await client.search_volume_offers({"machine_id": {"eq": 7}}, limit=1)
        assert await client.delete_volume(5) is True
        assert await client.delete_volume(5) is False, "already gone"
    assert volumes[0].instances == (4001,) and volumes[0].machine_id == 7
    assert offers[0].id == 90000007
    listed, searched, deleted = fake.requests[:3]
    assert (listed.method, listed.url.path, listed.url.params["owner"]) == ("GET", "/api/v0/volumes/", "me")
    assert (searched.method, searched.url.path) == ("POST", "/api/v0/volumes/search/")
    assert fake.body(1)["machine_id"] == {"eq": 7} and fake.body(1)["limit"] == 1
    assert (deleted.method, deleted.url.path, deleted.url.params["id"]) == ("DELETE", "/api/v0/volumes/", "5")


async def test_list_instances_sends_the_v1_paging_parameters() -> None:
    fake = FakeVast(ok({"success": True, "instances": [row(1), row(2, actual_status=None)], "next_token": None}))
    async with client_for(fake) as client:
        instances = await client.list_instances()
    request = fake.requests[0]
    assert (request.method, request.url.path) == ("GET", "/api/v1/instances/")
    params = request.url.params
    assert json.loads(params["select_filters"]) == {}
    assert json.loads(params["order_by"]) == [{"col": "id", "dir": "asc"}]
    assert params["limit"] == "25"
    assert "after_token" not in params
    assert [(i.id, i.state.value) for i in instances] == [(1, "running"), (2, "scheduling")]


async def test_list_instances_follows_next_token_one_get_per_page_and_deduplicates() -> None:
    fake = FakeVast(
        ok({"instances": [row(i) for i in range(1, 26)], "next_token": "t1"}),
        ok({"instances": [row(25, actual_status="offline"), row(26)], "next_token": "t2"}),
        ok({"instances": [row(27)], "next_token": None}),
    )
    async with client_for(fake) as client:
        instances = await client.list_instances()
    assert len(fake.requests) == 3
    assert [r.url.params.get("after_token") for r in fake.requests] == [None, "t1", "t2"]
    assert [i.id for i in instances] == list(range(1, 28))
    assert next(i for i in instances if i.id == 25).actual_status == "offline"


async def test_list_instances_fails_whole_when_a_later_page_fails() -> None:
    fake = FakeVast(ok({"instances": [row(1)], "next_token": "t1"}), ok({"error": "server_error"}, status=500))
    async with client_for(fake) as client:
        with pytest.raises(ApiError, match="HTTP 500"):
            await client.list_instances()


async def test_list_instances_stops_on_a_repeated_page_token() -> None:
    fake = FakeVast(ok({"instances": [row(1)], "next_token": "same"}))
    async with client_for(fake) as client:
        with pytest.raises(ApiError, match="repeated a page token"):
            await client.list_instances()
    assert len(fake.requests) == 2


async def test_malformed_instance_row_is_an_api_error_that_does_not_echo_values() -> None:
    fake = FakeVast(ok({"instances": [{"actual_status": "running", "extra_env": [["TOKEN", "hunter2-secret"]]}]}))
    async with client_for(fake) as client:
        with pytest.raises(ApiError) as caught:
            await client.list_instances()
    assert "id" in str(caught.value)
    assert "hunter2" not in str(caught.value)


async def test_get_instance_shows_one_and_returns_none_once_gone() -> None:
    fake = FakeVast(
        ok({"instances": row(5, label="x")}), ok({"instances": None}), ok({"error": "no_such_instance"}, 404)
    )
    async with client_for(fake) as client:
        instance = await client.get_instance(5)
        assert instance is not None and instance.label == "x"
        assert await client.get_instance(5) is None
        assert await client.get_instance(5) is None
    request = fake.requests[0]
    assert (request.method, request.url.path, dict(request.url.params)) == (
        "GET",
        "/api/v0/instances/5/",
        {"owner": "me"},
    )


async def test_destroy_deletes_and_treats_404_as_already_gone() -> None:
    fake = FakeVast(ok({"success": True}), ok({"success": False, "error": "no_such_instance"}, 404))
    async with client_for(fake) as client:
        assert await client.destroy_instance(5) is True
        assert await client.destroy_instance(5) is False
    assert [(r.method, r.url.path) for r in fake.requests] == [("DELETE", "/api/v0/instances/5/")] * 2


@pytest.mark.parametrize(
    ("call", "method", "path", "body"),
    [
        (lambda c: c.start_instance(5), "PUT", "/api/v0/instances/5/", {"state": "running"}),
        (lambda c: c.stop_instance(5), "PUT", "/api/v0/instances/5/", {"state": "stopped"}),
        (lambda c: c.set_label(5, "vastevents:a"), "PUT", "/api/v0/instances/5/", {"label": "vastevents:a"}),
        (lambda c: c.reboot_instance(5), "PUT", "/api/v0/instances/reboot/5/", {}),
        (lambda c: c.change_bid(5, 0.31), "PUT", "/api/v0/instances/bid_price/5/", {"client_id": "me", "price": 0.31}),
        (lambda c: c.add_ssh_key("ssh-ed25519 AAAA me"), "POST", "/api/v0/ssh/", {"ssh_key": "ssh-ed25519 AAAA me"}),
        (
            lambda c: c.attach_ssh_key(5, "ssh-ed25519 AAAA"),
            "POST",
            "/api/v0/instances/5/ssh/",
            {"ssh_key": "ssh-ed25519 AAAA"},
        ),
    ],
    ids=["start", "stop", "label", "reboot", "bid", "add_ssh_key", "attach_ssh_key"],
)
async def test_instance_actions_send_the_documented_request(
    call: Callable[[VastClient], Any], method: str, path: str, body: dict[str, Any]
) -> None:
    fake = FakeVast(ok({"success": True}))
    async with client_for(fake) as client:
        await call(client)
    request = fake.requests[0]
    assert (request.method, request.url.path) == (method, path)
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert fake.body() == body


async def test_action_answered_with_success_false_is_an_error() -> None:
    fake = FakeVast(ok({"success": False, "error": "invalid_args", "msg": "label too long"}))
    async with client_for(fake) as client:
        with pytest.raises(ApiError, match="label too long") as caught:
            await client.set_label(5, "x" * 500)
    assert caught.value.error == "invalid_args"


async def test_ssh_keys_list() -> None:
    fake = FakeVast(ok([{"id": 1, "public_key": "ssh-ed25519 AAAA"}]), ok({"ssh_keys": [{"id": 2}]}))
    async with client_for(fake) as client:
        assert await client.list_ssh_keys() == [{"id": 1, "public_key": "ssh-ed25519 AAAA"}]
        assert await client.list_ssh_keys() == [{"id": 2}]
    assert [(r.method, r.url.path) for r in fake.requests] == [("GET", "/api/v0/ssh/")] * 2


async def test_charges_and_invoices_filter_by_date() -> None:
    fake = FakeVast(ok({"results": [], "total": 0}))
    async with client_for(fake) as client:
        assert await client.charges(start=1000, end=2000, limit=50) == {"results": [], "total": 0}
        await client.invoices(start=1000, end=2000)
        await client.charges(end=1_000_000)
    charges, invoices, default_window = fake.requests
    assert (charges.method, charges.url.path) == ("GET", "/api/v0/charges/")
    assert json.loads(charges.url.params["select_filters"]) == {"day": {"gte": 1000, "lte": 2000}}
    assert charges.url.params["limit"] == "50"
    assert (invoices.method, invoices.url.path) == ("GET", "/api/v1/invoices/")
    assert json.loads(invoices.url.params["select_filters"]) == {"when": {"gte": 1000, "lte": 2000}}
    assert json.loads(default_window.url.params["select_filters"]) == {
        "day": {"gte": 1_000_000 - 7 * 86400, "lte": 1_000_000}
    }


async def test_request_logs_polls_the_result_url_without_leaking_the_key_to_another_host() -> None:
    not_ready = httpx.Response(404, text="<Error>NoSuchKey</Error>")
    fake = FakeVast(
        ok({"success": True, "result_url": "https://bucket.example/logs/5.txt"}),
        not_ready,
        not_ready,
        httpx.Response(200, text="line 1\nline 2\n"),
    )
    sleeps = Sleeps()
    async with client_for(fake, sleeps) as client:
        assert await client.request_logs(5, tail=20) == "line 1\nline 2\n"
    put, *polls = fake.requests
    assert (put.method, put.url.path) == ("PUT", "/api/v0/instances/request_logs/5/")
    assert json.loads(put.content) == {"tail": "20"}
    assert [str(p.url) for p in polls] == ["https://bucket.example/logs/5.txt"] * 3
    assert all("authorization" not in p.headers for p in polls)
    assert len(sleeps) == 2


async def test_request_logs_gives_up_after_bounded_polls() -> None:
    fake = FakeVast(ok({"result_url": f"{BASE}/logs/5"}), httpx.Response(404))
    sleeps = Sleeps()
    async with client_for(fake, sleeps) as client:
        with pytest.raises(ApiError, match="not ready after 30 tries"):
            await client.request_logs(5)
    assert len(fake.requests) == 1 + 30
    assert fake.requests[1].headers["authorization"] == f"Bearer {KEY}"  # same host as the API: key goes along


# --- error mapping -----------------------------------------------------------------------------------------


async def test_401_is_an_auth_error_that_says_what_to_do_without_the_key() -> None:
    fake = FakeVast(ok({"success": False, "error": "auth_error", "msg": "Invalid user key"}, 401))
    async with client_for(fake) as client:
        with pytest.raises(AuthError) as caught:
            await client.current_user()
    message = str(caught.value)
    assert "rejected the API key (HTTP 401" in message
    assert "VAST_API_KEY" in message and "vastai set api-key" in message
    assert caught.value.status_code == 401 and caught.value.error == "auth_error"
    assert KEY not in message and KEY not in repr(caught.value)
    assert len(fake.requests) == 1


async def test_403_without_a_key_says_a_key_is_needed() -> None:
    fake = FakeVast(ok({"success": False, "error": "auth_error", "msg": "This action requires login."}, 403))
    async with client_for(fake, key=None) as client:
        with pytest.raises(AuthError, match=r"needs an API key \(HTTP 403: This action requires login.\)"):
            await client.list_instances()


async def test_error_body_echoing_the_key_is_redacted() -> None:
    fake = FakeVast(ok({"error": "auth_error", "msg": f"key {KEY} is not valid"}, 403))
    async with client_for(fake) as client:
        with pytest.raises(AuthError) as caught:
            await client.current_user()
    assert KEY not in str(caught.value)
    assert "***" in str(caught.value)


@pytest.mark.parametrize("status", [404, 410])
async def test_404_and_410_are_not_found(status: int) -> None:
    fake = FakeVast(ok({"error": "no_such_instance", "msg": "Instance 5 not found"}, status))
    async with client_for(fake) as client:
        with pytest.raises(NotFound, match=f"HTTP {status}: Instance 5 not found") as caught:
            await client.start_instance(5)
    assert caught.value.status_code == status


@pytest.mark.parametrize("status", [404, 410])
async def test_create_on_a_taken_offer_is_no_such_ask(status: int) -> None:
    fake = FakeVast(ok({"success": False, "error": "no_such_ask", "msg": "Instance type no longer available."}, status))
    async with client_for(fake) as client:
        with pytest.raises(NoSuchAsk, match="try the next offer") as caught:
            await client.create_instance(Rental(77, image="img", disk=10))
    assert caught.value.error == "no_such_ask"
    assert len(fake.requests) == 1


async def test_other_4xx_carries_the_server_message() -> None:
    fake = FakeVast(ok({"success": False, "error": "invalid_price", "msg": "bid too low"}, 400))
    async with client_for(fake) as client:
        with pytest.raises(ApiError, match=r"HTTP 400: bid too low") as caught:
            await client.change_bid(5, 0.0001)
    assert type(caught.value) is ApiError
    assert caught.value.error == "invalid_price"


async def test_429_after_every_attempt_is_rate_limited() -> None:
    fake = FakeVast(ok({"detail": "API requests too frequent endpoint threshold=1.0"}, 429, **{"Retry-After": "2"}))
    sleeps = Sleeps()
    async with client_for(fake, sleeps, attempts=3) as client:
        with pytest.raises(RateLimited, match="too frequent") as caught:
            await client.list_instances()
    assert len(fake.requests) == 3
    assert sleeps == [2.0, 2.0]
    assert caught.value.retry_after == 2.0
    assert caught.value.status_code == 429
    assert "after 3 attempts; wait 2 s and try again" in str(caught.value)


async def test_html_502_page_is_retried_then_a_clear_api_error() -> None:
    page = "<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>"
    fake = FakeVast(httpx.Response(502, text=page, headers={"content-type": "text/html"}))
    sleeps = Sleeps()
    async with client_for(fake, sleeps, attempts=4) as client:
        with pytest.raises(ApiError) as caught:
            await client.current_user()
    message = str(caught.value)
    assert "HTTP 502 (an HTML page)" in message and "try again later" in message
    assert "<html" not in message
    assert len(fake.requests) == 4 and len(sleeps) == 3


async def test_html_page_with_200_is_not_json() -> None:
    fake = FakeVast(
        httpx.Response(200, text="<!DOCTYPE html><html>login</html>", headers={"content-type": "text/html"})
    )
    async with client_for(fake) as client:
        with pytest.raises(ApiError, match=r"with an HTML page instead of JSON \(HTTP 200\)"):
            await client.list_instances()


async def test_wrong_content_type_is_an_api_error() -> None:
    fake = FakeVast(httpx.Response(200, text='{"offers": []}', headers={"content-type": "text/plain"}))
    async with client_for(fake) as client:
        with pytest.raises(ApiError, match="with text/plain instead of JSON"):
            await client.search_offers("num_gpus=1")


async def test_json_content_type_with_charset_is_accepted() -> None:
    fake = FakeVast(httpx.Response(200, text='{"id": 3}', headers={"content-type": "application/json; charset=utf-8"}))
    async with client_for(fake) as client:
        assert await client.current_user() == {"id": 3}


async def test_truncated_json_is_an_api_error_not_a_decode_error() -> None:
    fake = FakeVast(
        httpx.Response(200, text='{"instances": [{"id": 1, "actual_st', headers={"content-type": "application/json"})
    )
    async with client_for(fake) as client:
        with pytest.raises(ApiError, match="malformed or truncated JSON") as caught:
            await client.list_instances()
    assert type(caught.value) is ApiError
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# --- retries -------------------------------------------------------------------------------------------------


async def test_retry_after_is_honoured() -> None:
    fake = FakeVast(ok({"detail": "slow down"}, 429, **{"Retry-After": "7"}), ok({"id": 1}))
    sleeps = Sleeps()
    async with client_for(fake, sleeps) as client:
        assert await client.current_user() == {"id": 1}
    assert sleeps == [7.0]


async def test_retry_after_is_capped() -> None:
    fake = FakeVast(ok({"detail": "slow down"}, 503, **{"Retry-After": "3600"}), ok({"id": 1}))
    sleeps = Sleeps()
    async with client_for(fake, sleeps) as client:
        await client.current_user()
    assert sleeps == [MAX_RETRY_AFTER] == [60.0]


async def test_max_wait_caps_retry_after_and_backoff_for_impatient_callers() -> None:
    fake = FakeVast(
        ok({"detail": "slow down"}, 429, **{"Retry-After": "30"}),
        httpx.ConnectError("refused"),
        httpx.ConnectError("refused"),
        httpx.ConnectError("refused"),
        ok({"id": 1}),
    )
    sleeps = Sleeps()
    client = VastClient(KEY, BASE, transport=httpx.MockTransport(fake), max_attempts=5, max_wait=1.5, sleep=sleeps)
    async with client:
        assert await client.current_user() == {"id": 1}
    assert len(sleeps) == 4
    assert sleeps[0] == 1.5, "Retry-After 30 is cut to max_wait"
    assert all(0 <= seconds <= 1.5 for seconds in sleeps[1:])


def test_patience_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        VastClient(KEY, BASE, max_attempts=0)
    with pytest.raises(ValueError, match="max_wait"):
        VastClient(KEY, BASE, max_wait=-1)


async def test_retry_after_as_an_http_date_in_the_past_means_now() -> None:
    fake = FakeVast(ok({}, 429, **{"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), ok({"id": 1}))
    sleeps = Sleeps()
    async with client_for(fake, sleeps) as client:
        await client.current_user()
    assert sleeps == [0.0]


async def test_backoff_without_retry_after_is_exponential_with_bounded_jitter() -> None:
    fake = FakeVast(httpx.Response(503), httpx.Response(504), httpx.Response(502), ok({"id": 1}))
    sleeps = Sleeps()
    async with client_for(fake, sleeps, attempts=5) as client:
        assert await client.current_user() == {"id": 1}
    assert len(sleeps) == 3
    for attempt, seconds in enumerate(sleeps, start=1):
        assert 0 <= seconds <= 0.5 * 2**attempt


async def test_connection_errors_are_retried_then_reported_clearly() -> None:
    fake = FakeVast(httpx.ConnectError("connection refused"))
    sleeps = Sleeps()
    async with client_for(fake, sleeps, attempts=3) as client:
        with pytest.raises(ApiError, match=r"Could not reach the Vast API at http://vast.test after 3 attempts"):
            await client.current_user()
    assert len(fake.requests) == 3 and len(sleeps) == 2


async def test_a_connection_blip_is_retried() -> None:
    fake = FakeVast(httpx.ReadTimeout("slow"), ok({"id": 1}))
    async with client_for(fake) as client:
        assert await client.current_user() == {"id": 1}
    assert len(fake.requests) == 2


async def test_other_4xx_and_500_are_not_retried() -> None:
    fake = FakeVast(ok({"error": "bad"}, 400))
    async with client_for(fake) as client:
        with pytest.raises(ApiError):
            await client.current_user()
    assert len(fake.requests) == 1
    fake = FakeVast(ok({"error": "server_error"}, 500))
    async with client_for(fake) as client:
        with pytest.raises(ApiError, match="HTTP 500: server_error"):
            await client.current_user()
    assert len(fake.requests) == 1


# --- create is never blindly retried -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_create_is_not_retried_on_gateway_errors_and_is_ambiguous(status: int) -> None:
    fake = FakeVast(httpx.Response(status, text="<html>bad gateway</html>"), ok({"success": True, "new_contract": 1}))
    sleeps = Sleeps()
    async with client_for(fake, sleeps) as client:
        with pytest.raises(AmbiguousCreate, match=f"may or may not have succeeded \\(HTTP {status}\\)") as caught:
            await client.create_instance(Rental(77, image="img", disk=10, label="vastevents:j"))
    assert caught.value.instance_id is None
    assert "reconcile by label 'vastevents:j'" in str(caught.value)
    assert len(fake.requests) == 1 and sleeps == []


async def test_create_is_not_retried_after_a_mid_request_failure() -> None:
    fake = FakeVast(httpx.ReadTimeout("timed out"), ok({"success": True, "new_contract": 1}))
    async with client_for(fake) as client:
        with pytest.raises(AmbiguousCreate, match="connection failed mid-request") as caught:
            await client.create_instance(Rental(77, image="img", disk=10))
    assert "no label was sent to match: look in `vastevents status`" in str(caught.value)
    assert len(fake.requests) == 1


async def test_create_reporting_failure_with_a_new_contract_names_the_instance() -> None:
    fake = FakeVast(ok({"success": False, "error": "invalid_price", "msg": "bid below min", "new_contract": 9001}))
    async with client_for(fake) as client:
        with pytest.raises(AmbiguousCreate) as caught:
            await client.create_instance(Rental(77, image="img", disk=10, price=0.01))
    error = caught.value
    assert isinstance(error, ApiError)
    assert error.instance_id == 9001 and error.error == "invalid_price"
    assert "9001" in str(error) and "bid below min" in str(error)
    assert fake.body()["price"] == 0.01
    assert len(fake.requests) == 1


async def test_create_error_status_with_a_new_contract_names_the_instance() -> None:
    fake = FakeVast(ok({"error": "invalid_price", "msg": "bid too low", "new_contract": "9002"}, 400))
    async with client_for(fake) as client:
        with pytest.raises(AmbiguousCreate, match="created instance 9002") as caught:
            await client.create_instance(Rental(77, image="img", disk=10, price=0.01))
    assert caught.value.instance_id == 9002 and caught.value.status_code == 400


async def test_create_success_without_a_success_flag_returns_the_id() -> None:
    fake = FakeVast(ok({"new_contract": 31}))
    async with client_for(fake) as client:
        assert await client.create_instance(Rental(77, image="img", disk=10)) == 31


async def test_create_success_naming_no_usable_instance_is_ambiguous() -> None:
    fake = FakeVast(ok({"success": True, "new_contract": "soon"}))
    async with client_for(fake) as client:
        with pytest.raises(AmbiguousCreate, match="named no new instance") as caught:
            await client.create_instance(Rental(77, image="img", disk=10))
    assert caught.value.instance_id is None


async def test_create_on_a_wrong_url_html_404_is_not_found_rather_than_a_taken_offer() -> None:
    fake = FakeVast(httpx.Response(404, text="<html>Not Found</html>", headers={"content-type": "text/html"}))
    async with client_for(fake) as client:
        with pytest.raises(NotFound):
            await client.create_instance(Rental(77, image="img", disk=10))


async def test_create_with_unreadable_success_answer_is_ambiguous() -> None:
    fake = FakeVast(httpx.Response(200, text='{"success": tr', headers={"content-type": "application/json"}))
    async with client_for(fake) as client:
        with pytest.raises(AmbiguousCreate, match="not Vast's JSON"):
            await client.create_instance(Rental(77, image="img", disk=10))


async def test_create_refused_cleanly_is_a_plain_api_error() -> None:
    fake = FakeVast(ok({"success": False, "error": "invalid_args", "msg": "disk too small"}))
    async with client_for(fake) as client:
        with pytest.raises(ApiError, match="disk too small") as caught:
            await client.create_instance(Rental(77, image="img", disk=1))
    assert not isinstance(caught.value, AmbiguousCreate)


async def test_create_is_resent_only_when_the_server_surely_did_nothing() -> None:
    fake = FakeVast(
        ok({"detail": "API requests too frequent"}, 429, **{"Retry-After": "1"}),
        httpx.ConnectError("refused"),
        ok({"success": True, "new_contract": 55}),
    )
    async with client_for(fake) as client:
        assert await client.create_instance(Rental(77, image="img", disk=10)) == 55
    assert len(fake.requests) == 3


# --- secrecy and logging ---------------------------------------------------------------------------------------


async def test_key_is_in_no_repr_error_or_debug_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="vastevents")
    caplog.set_level(logging.DEBUG, logger="httpx")
    fake = FakeVast(
        ok({"id": 1}),
        ok({"detail": "slow"}, 429),
        ok({"error": "auth_error"}, 401),
        httpx.ConnectError(f"failed for Bearer {KEY}"),
    )
    errors: list[BaseException] = []
    async with client_for(fake, attempts=2) as client:
        assert KEY not in repr(client)
        await client.current_user()
        for _ in range(2):
            try:
                await client.list_instances()
            except ApiError as exc:
                errors.append(exc)
    assert len(errors) == 2
    assert any("GET /api/v0/users/current/ -> 200" in r.getMessage() for r in caplog.records)
    assert any("-> 429" in r.getMessage() for r in caplog.records)
    assert all(r.name == "vastevents.vast" for r in caplog.records if "->" in r.getMessage())
    assert KEY not in caplog.text
    for error in errors:
        assert KEY not in str(error) and KEY not in repr(error)


async def test_the_runtime_builds_the_client_from_config_url_and_resolved_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from vastevents.config import load_config
    from vastevents.runtime import Runtime
    from vastevents.store import SqliteStore

    config_file = tmp_path / "vastevents.toml"
    config_file.write_text('[vast]\nurl = "http://127.0.0.1:9"\n')
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("VAST_URL", raising=False)
    monkeypatch.setenv("VAST_API_KEY", KEY)
    for url, expected in ((None, "http://127.0.0.1:9"), ("http://127.0.0.1:8", "http://127.0.0.1:8")):
        if url:
            monkeypatch.setenv("VAST_URL", url)
        async with Runtime(load_config(config_file), store=SqliteStore(":memory:"), handlers=[]) as runtime:
            client = runtime.client
            assert isinstance(client, VastClient) and client.base_url == expected
            assert KEY not in repr(client) and "***" in repr(client)


# --- through the simulator (a real HTTP server on loopback) ----------------------------------------------------


class CountingTransport(httpx.AsyncHTTPTransport):
    """A real network transport that also records what went over it."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path))
        return await super().handle_async_request(request)


async def test_every_call_works_against_the_simulator(sim: Simulator, api_key: str) -> None:
    async with VastClient(api_key, sim.url, sleep=Sleeps()) as client:
        assert (await client.current_user())["email"]
        offers = await client.search_offers("num_gpus=1 reliability>0.5", limit=5)
        assert 0 < len(offers) <= 5
        prices = [offer.dph_total or 0.0 for offer in offers]
        assert prices == sorted(prices)
        instance_id = await client.create_instance(
            Rental(offers[0].id, image="pytorch/pytorch", disk=10, label="vastevents:t1")
        )
        listed = {instance.id: instance for instance in await client.list_instances()}
        assert listed[instance_id].label == "vastevents:t1"
        sim.advance(3600)
        shown = await client.get_instance(instance_id)
        assert shown is not None and shown.state is State.RUNNING and shown.machine_id == offers[0].machine_id
        await client.set_label(instance_id, "vastevents:t1-renamed")
        await client.stop_instance(instance_id)
        stopped = await client.get_instance(instance_id)
        assert stopped is not None and stopped.intended_status == "stopped" and stopped.label == "vastevents:t1-renamed"
        await client.start_instance(instance_id)
        sim.advance(3600)
        await client.reboot_instance(instance_id)
        public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests test@vastevents"
        await client.add_ssh_key(public_key)
        assert any(public_key in json.dumps(key) for key in await client.list_ssh_keys())
        await client.attach_ssh_key(instance_id, public_key)
        assert "status running" in await client.request_logs(instance_id, tail=10)
        now = sim.clock.now().timestamp()
        charged = (await client.charges(start=now - 86400, end=now))["results"]
        assert [item["source"] for item in charged] == [f"instance-{instance_id}"] and charged[0]["amount"] > 0
        assert (await client.invoices(start=now - 86400, end=now))["results"][0]["amount"] == 100.0
        assert await client.destroy_instance(instance_id) is True
        assert await client.destroy_instance(instance_id) is False
        assert await client.get_instance(instance_id) is None
    assert sim.instance_count() == 0


async def test_unclear_creates_against_the_simulator_are_reconciled_by_label(sim: Simulator, api_key: str) -> None:
    async with VastClient(api_key, sim.url, sleep=Sleeps()) as client:
        offer = (await client.search_offers("num_gpus=1", limit=3))[0]
        sim.apply("create_error")
        with pytest.raises(AmbiguousCreate) as server_error:
            await client.create_instance(Rental(offer.id, image="img", disk=10, label="vastevents:ambiguous"))
        assert server_error.value.instance_id is None and server_error.value.status_code == 500
        left_behind = [i.id for i in await client.list_instances() if i.label == "vastevents:ambiguous"]
        assert len(left_behind) == 1
        assert await client.destroy_instance(left_behind[0]) is True

        offer = (await client.search_offers("num_gpus=1", limit=3))[0]
        with pytest.raises(AmbiguousCreate) as low_bid:
            await client.create_instance(
                Rental(offer.id, image="img", disk=10, label="vastevents:lowbid", price=0.0001)
            )
        assert low_bid.value.instance_id is not None
        assert await client.destroy_instance(low_bid.value.instance_id) is True

        sim.apply("no_such_ask")
        offer = (await client.search_offers("num_gpus=1", limit=3))[0]
        with pytest.raises(NoSuchAsk):
            await client.create_instance(Rental(offer.id, image="img", disk=10, label="vastevents:race"))
    assert sim.instance_count() == 0


async def test_listing_pages_through_the_simulator_one_get_per_page(sim: Simulator, api_key: str) -> None:
    created = {sim.create_instance(label=f"vastevents:page-{n}") for n in range(30)}
    transport = CountingTransport()
    async with VastClient(api_key, sim.url, transport=transport, sleep=Sleeps()) as client:
        listed = await client.list_instances()
        assert {instance.id for instance in listed} == created
        assert transport.sent == [("GET", "/api/v1/instances/")] * 2
        for instance_id in created:
            assert await client.destroy_instance(instance_id)
    assert sim.instance_count() == 0


async def test_a_wrong_key_is_rejected_by_the_simulator(sim: Simulator) -> None:
    async with VastClient("not-the-sim-key", sim.url, sleep=Sleeps()) as client:
        with pytest.raises(AuthError, match="rejected the API key") as caught:
            await client.list_instances()
    assert "not-the-sim-key" not in str(caught.value)
