"""Money: charges (per instance and volume), invoices in their three forms (v1, the deprecated report, search).

Every amount and date is on the clients' clock (see :mod:`~vastevents.sim.wiretime`). The invoices are the
starting credit and each prepaid deposit; charges are what instances and volumes cost so far.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from vastevents.sim.matching import matches
from vastevents.sim.model import SimError
from vastevents.sim.params import number_param
from vastevents.sim.routing import Request, Response, route

if TYPE_CHECKING:
    from vastevents.sim.server import Api
    from vastevents.sim.world import World


def _window(filters: dict[str, Any], column: str) -> tuple[float, float]:
    window = filters.get(column, {})
    if not isinstance(window, dict):
        raise SimError(400, "invalid_args", f"select_filters.{column} must be an object like {{'gte': t0, 'lte': t1}}")
    start = number_param(window.get("gte"), -math.inf, what=f"select_filters.{column}.gte")
    end = number_param(window.get("lte"), math.inf, what=f"select_filters.{column}.lte")
    return start, end


def _select_filters(request: Request) -> dict[str, Any]:
    filters = request.json_param("select_filters", {})
    if not isinstance(filters, dict):
        raise SimError(400, "invalid_args", "select_filters must be an object")
    return filters


def _page(results: list[dict[str, Any]]) -> Response:
    return Response(200, {"results": results, "count": len(results), "total": len(results), "next_token": None})


def charges(api: Api, request: Request, args: dict[str, str]) -> Response:
    """Instances and volumes whose charging overlaps ``select_filters.day``, of the ``type`` asked, if asked."""
    filters = _select_filters(request)
    start, end = _window(filters, "day")
    others = {k: v for k, v in filters.items() if k != "day"}
    with api.sim.world() as world:
        items = world.charge_items()
    return _page([i for i in items if i["end"] >= start and i["start"] <= end and matches(i, others)])


def _invoices(world: World) -> list[dict[str, Any]]:
    """The account's invoices: the starting credit, then each instance's prepaid deposit (a transfer out)."""
    at = world.wire.at(world.origin)
    records = [{"id": 1, "service": "transfer", "description": "Simulator starting credit", "amount": world.credit,
                "when": at, "is_credit": True, "instance_id": None}]  # fmt: skip
    for inst in world.all_instances():
        if inst.prepaid_at is not None:
            records.append({"id": 1000 + inst.id, "service": "instance_prepay", "amount": -inst.deposit,
                            "description": f"Deposit prepaid for instance {inst.id}", "is_credit": False,
                            "when": world.wire.at(inst.prepaid_at), "instance_id": inst.id})  # fmt: skip
    return records


def invoices_v1(api: Api, request: Request, args: dict[str, str]) -> Response:
    """``show invoices-v1 -i``: invoices whose ``when`` is in the window, of the ``service`` asked, if asked."""
    filters = _select_filters(request)
    start, end = _window(filters, "when")
    services = filters.get("service", {}).get("in") if isinstance(filters.get("service"), dict) else None
    with api.sim.world() as world:
        records = _invoices(world)
    return _page([
        {"type": r["service"], "source": r["service"], "description": r["description"], "amount": r["amount"],
         "when": r["when"], "start": r["when"], "end": r["when"], "metadata": {"invoice_id": r["id"]}, "items": []}
        for r in records
        if start <= r["when"] <= end and (not services or r["service"] in services)
    ])  # fmt: skip


def search_invoices(api: Api, request: Request, args: dict[str, str]) -> Response:
    """``search invoices``: the invoices as rows of Vast's invoice fields, filtered by ``select_filters``."""
    filters = _select_filters(request)
    with api.sim.world() as world:
        rows = [
            {"id": r["id"], "user_id": 1, "when": r["when"], "paid_on": r["when"], "payment_expected": r["when"],
             "amount_cents": round(r["amount"] * 100), "is_credit": r["is_credit"], "is_delayed": False,
             "service": r["service"], "description": r["description"], "failed": False, "refunded": False,
             "is_check": False, "extra": {"instance_id": r["instance_id"]}}
            for r in _invoices(world)
        ]  # fmt: skip
    return Response(200, [row for row in rows if matches(row, filters)])


def invoice_report(api: Api, request: Request, args: dict[str, str]) -> Response:
    """The deprecated ``show invoices``: payments and (``inc_charges``) charges between ``sdate`` and ``edate``."""
    start = number_param(request.param("sdate"), -math.inf, what="sdate")
    end = number_param(request.param("edate"), math.inf, what="edate")
    with_charges = (request.param("inc_charges") or "true").lower() != "false"
    with api.sim.world() as world:
        rows = [{"id": r["id"], "type": "payment" if r["is_credit"] else "charge", "description": r["description"],
                 "quantity": 1, "rate": r["amount"], "amount": r["amount"], "timestamp": r["when"]}
                for r in _invoices(world)]  # fmt: skip
        if with_charges:
            for item in world.charge_items():
                hours = (item["end"] - item["start"]) / 3600.0
                rows.append({"id": item["source"], "type": "charge", "description": item["description"],
                             "quantity": round(hours, 4), "rate": round(item["amount"] / hours, 6) if hours else 0.0,
                             "amount": item["amount"], "timestamp": item["end"],
                             "instance_id": item["metadata"].get("instance_id")})  # fmt: skip
        spend, balance = world.spend(), world.balance()
    rows = [row for row in rows if start <= row["timestamp"] <= end]
    return Response(200, {"invoices": rows, "current": {"charges": spend, "total": spend, "credit": balance}})


ROUTES = [
    route("GET", "/api/v0/charges", charges),
    route("GET", "/api/v1/invoices", invoices_v1),
    route("GET", "/api/v0/invoices", search_invoices),
    route("GET", "/api/v0/users/me/invoices", invoice_report),
]
