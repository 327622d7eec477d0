"""The account: the user, its SSH keys, charges and invoices, webhooks."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from vastevents.sim.model import SimError
from vastevents.sim.params import number_param
from vastevents.sim.routing import Request, Response, route

if TYPE_CHECKING:
    from vastevents.sim.server import Api


def current_user(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        spend = world.spend()
        keys = world.ssh_keys
        return Response(
            200,
            {
                "id": 1,
                "username": "sim",
                "email": "sim@vastevents.invalid",
                "fullname": "Simulated User",
                "credit": round(world.credit - spend, 6),
                "balance": round(world.credit - spend, 6),
                "total_spend": round(spend, 6),
                "ssh_key": keys[-1]["public_key"] if keys else None,
                "host_agreement_accepted": False,
                "has_billing": True,
                "rights": None,
            },
        )


def list_ssh_keys(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        return Response(200, list(world.ssh_keys))


def add_ssh_key(api: Api, request: Request, args: dict[str, str]) -> Response:
    key = request.object_body().get("ssh_key")
    if not isinstance(key, str):
        raise SimError(400, "invalid_args", "ssh_key is required")
    with api.sim.world() as world:
        record = world.add_ssh_key(key)
    return Response(200, {"success": True, **record})


def charges(api: Api, request: Request, args: dict[str, str]) -> Response:
    """One item per instance (gpu and storage parts), those overlapping ``select_filters`` ``day`` if given."""
    window = request.json_param("select_filters", {})
    window = window.get("day", {}) if isinstance(window, dict) else {}
    if not isinstance(window, dict):
        raise SimError(400, "invalid_args", "select_filters.day must be an object like {'gte': t0, 'lte': t1}")
    start = number_param(window.get("gte"), -math.inf, what="select_filters.day.gte")
    end = number_param(window.get("lte"), math.inf, what="select_filters.day.lte")
    with api.sim.world() as world:
        results = [world.charge_item(inst) for inst in world.all_instances()]
    results = [item for item in results if item["end"] >= start and item["start"] <= end]
    return Response(200, {"results": results, "count": len(results), "total": len(results), "next_token": None})


def invoices(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        credit = {
            "type": "transfer",
            "source": "credit",
            "description": "Simulator starting credit",
            "amount": world.credit,
            "when": world.wire.at(world.origin),
            "start": world.wire.at(world.origin),
            "end": world.wire.at(world.origin),
            "metadata": {"invoice_id": 1},
            "items": [],
        }
    return Response(200, {"results": [credit], "count": 1, "total": 1, "next_token": None})


def list_webhooks(api: Api, request: Request, args: dict[str, str]) -> Response:
    return Response(200, {"success": True, "results": api.webhooks.registered()})


def create_webhook(api: Api, request: Request, args: dict[str, str]) -> Response:
    return Response(200, api.webhooks.create(request.object_body()))


def delete_webhook(api: Api, request: Request, args: dict[str, str]) -> Response:
    api.webhooks.delete(int(args["id"]))
    return Response(200, {"success": True})


def rotate_webhook_secret(api: Api, request: Request, args: dict[str, str]) -> Response:
    return Response(200, api.webhooks.rotate(int(args["id"])))


def test_webhook(api: Api, request: Request, args: dict[str, str]) -> Response:
    return Response(200, api.webhooks.test(int(args["id"])))


# ----------------------------------------------------------------- admin


ROUTES = [
    route("GET", "/api/v0/users/current", current_user),
    route("GET", "/api/v0/ssh", list_ssh_keys),
    route("POST", "/api/v0/ssh", add_ssh_key),
    route("GET", "/api/v0/charges", charges),
    route("GET", "/api/v1/invoices", invoices),
    route("GET", "/api/v0/webhooks", list_webhooks),
    route("POST", "/api/v0/webhooks", create_webhook),
    route("DELETE", "/api/v0/webhooks/{id}", delete_webhook),
    route("POST", "/api/v0/webhooks/{id}/rotate-secret", rotate_webhook_secret),
    route("POST", "/api/v0/webhooks/{id}/test", test_webhook),
]
