"""Instances: list (paged), show, rent (one offer, several, or the best of a query), destroy, start/stop/label (one or
several), reboot, recycle, update from a template, bid, prepay and its deposit."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vastevents.sim.matching import matches, sort_rows
from vastevents.sim.model import SimError
from vastevents.sim.routing import Request, Response, decode_token, encode_token, error, route

if TYPE_CHECKING:
    from vastevents.sim.server import Api
    from vastevents.sim.world import World

PAGE_SIZE = 25


def create(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        instance_id, failure = world.create(int(args["id"]), request.object_body())
    if failure is not None:
        return Response(200, failure)
    return Response(200, {"success": True, "new_contract": instance_id})


def list_instances(api: Api, request: Request, args: dict[str, str]) -> Response:
    filters = request.json_param("select_filters", {})
    order = request.json_param("order_by", [{"col": "id", "dir": "asc"}])
    if not isinstance(filters, dict) or not isinstance(order, list):
        raise SimError(400, "invalid_args", "select_filters must be an object and order_by a list")
    try:
        limit = max(1, min(int(request.param("limit") or PAGE_SIZE), PAGE_SIZE))
    except ValueError:
        raise SimError(400, "invalid_args", "limit must be an integer") from None
    keys = [[o.get("col"), o.get("dir", "asc")] if isinstance(o, dict) else o for o in order]
    after = decode_token(request.param("after_token"))
    by_id = keys in ([["id", "asc"]], [["id", None]])
    with api.sim.world() as world:
        selected = sorted(world.instances.values(), key=lambda inst: inst.id)
        if filters or not by_id:
            # Only filters and other orders need every row; the plain walk by id builds just the page's.
            rows = sort_rows([r for r in map(api.sim.row, selected) if matches(r, filters)], keys)
            selected = [world.instances[row["id"]] for row in rows]
        total = len(selected)
        if by_id and "after_id" in after:
            selected = [inst for inst in selected if inst.id > int(after["after_id"])]
            chosen = selected[:limit]
            more = len(selected) > limit
        else:
            offset = int(after.get("offset", 0))
            chosen = selected[offset : offset + limit]
            more = offset + limit < len(selected)
        page = [api.sim.row(inst) for inst in chosen]
        label_counts = Counter(inst.label or "" for inst in selected)
    token = None
    if more:
        token = encode_token({"after_id": page[-1]["id"]} if by_id else {"offset": int(after.get("offset", 0)) + limit})
    return Response(
        200,
        {
            "success": True,
            "instances_found": len(page),
            "total_instances": total,
            "next_token": token,
            "label_counts": label_counts,
            "instances": page,
        },
    )


def legacy_list(api: Api, request: Request, args: dict[str, str]) -> Response:
    return error(410, "gone", "GET /api/v0/instances/ is retired; use /api/v1/instances/ with next_token.")


def instance_filters(api: Api, request: Request, args: dict[str, str]) -> Response:
    return Response(200, {"filters": []})


def show_instance(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        inst = world.instances.get(int(args["id"]))
        return Response(200, {"instances": api.sim.row(inst) if inst else None})


def destroy(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        world.destroy(int(args["id"]))
    return Response(200, {"success": True})


def _set_state(world: World, instance_id: int, state: Any) -> None:
    if state == "running":
        world.start(instance_id)
    elif state == "stopped":
        world.stop(instance_id)
    else:
        raise SimError(400, "invalid_args", f"state must be running or stopped, got {state!r}")


def update_instance(api: Api, request: Request, args: dict[str, str]) -> Response:
    body = request.object_body()
    instance_id = int(args["id"])
    with api.sim.world() as world:
        world.instance(instance_id)
        if "state" in body:
            _set_state(world, instance_id, body["state"])
        if "label" in body:
            world.set_label(instance_id, None if body["label"] is None else str(body["label"]))
        if "state" not in body and "label" not in body:
            raise SimError(400, "invalid_args", "expected state or label")
    return Response(200, {"success": True})


def _ids(body: dict[str, Any], key: str) -> list[int]:
    ids = body.get(key)
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise SimError(400, "invalid_args", f"{key} must be a non-empty list of ids")
    return ids


def _each(ids: list[int], verb: Callable[[int], Any]) -> Response:
    """One verb on several ids: each one's outcome; success only if every one succeeded."""
    results = []
    for item in ids:
        try:
            outcome = verb(item)
        except SimError as exc:
            results.append({"id": item, "success": False, "error": exc.error, "msg": exc.msg})
        else:
            results.append({"id": item, "success": True, **(outcome or {})})
    return Response(200, {"success": all(r["success"] for r in results), "results": results})


def bulk_state(api: Api, request: Request, args: dict[str, str]) -> Response:
    """``start instances`` / ``stop instances``: ``{"state": ..., "ids": [...]}``."""
    body = request.object_body()
    ids = _ids(body, "ids")
    with api.sim.world() as world:
        return _each(ids, lambda instance_id: _set_state(world, instance_id, body.get("state")))


def bulk_destroy(api: Api, request: Request, args: dict[str, str]) -> Response:
    ids = _ids(request.object_body(), "instance_ids")
    with api.sim.world() as world:
        return _each(ids, world.destroy)


def bulk_create(api: Api, request: Request, args: dict[str, str]) -> Response:
    """``create instances``: the same request on each offer of ``ids``."""
    body = request.object_body()
    ids = _ids(body, "ids")
    with api.sim.world() as world:

        def rent(ask_id: int) -> dict[str, Any]:
            instance_id, failure = world.create(ask_id, body)
            if failure is not None:
                raise SimError(400, str(failure["error"]), str(failure["msg"]), new_contract=instance_id)
            return {"new_contract": instance_id}

        answer = _each(ids, rent)
    answer.body["new_contracts"] = [r["new_contract"] for r in answer.body["results"] if "new_contract" in r]
    return answer


def launch(api: Api, request: Request, args: dict[str, str]) -> Response:
    """``launch instance``: rent the first offer of a search (``q``) with the rest of the request."""
    with api.sim.world() as world:
        instance_id, failure = world.launch(request.object_body())
    return Response(200, failure or {"success": True, "new_contract": instance_id})


def recycle(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        world.recycle(int(args["id"]))
    return Response(200, {"success": True})


def update_template(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        world.update_template(int(args["id"]), request.object_body())
    return Response(200, {"success": True, "msg": "Recreating the instance with its new configuration."})


def prepay(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        terms = world.prepay(int(args["id"]), request.object_body().get("amount"))
    return Response(200, {"success": True, **terms})


def deposit(api: Api, request: Request, args: dict[str, str]) -> Response:
    """``show deposit``: what is left of the instance's prepaid deposit, and its discount."""
    with api.sim.world() as world:
        inst = world.instance(int(args["id"]))
        spent = world.charges(inst).from_deposit
        return Response(200, {
            "success": True,
            "instance_id": inst.id,
            "deposit": round(inst.deposit - spent, 6),
            "prepaid": inst.deposit,
            "discount_rate": inst.discount_rate,
            "prepaid_at": world.wire.at(inst.prepaid_at) if inst.prepaid_at is not None else None,
        })  # fmt: skip


def fetch_contracts(api: Api, request: Request, args: dict[str, str]) -> Response:
    """The instances (live or ended) with a label and/or among ids: what ``show invoices --instance_label`` asks."""
    body = request.object_body()
    label, ids = body.get("label"), body.get("contract_ids")
    with api.sim.world() as world:
        rows = [
            api.sim.row(inst)
            for inst in world.all_instances()
            if (label is None or inst.label == label) and (not isinstance(ids, list) or inst.id in ids)
        ]
    return Response(200, {"success": True, "contracts": rows})


def pending_price_increases(api: Api, request: Request, args: dict[str, str]) -> Response:
    """Hosts of the simulated market never raise their prices: always none pending."""
    return Response(200, {"success": True, "pending_price_increases": []})


def reboot(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        world.reboot(int(args["id"]))
    return Response(200, {"success": True})


def bid_price(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        world.change_bid(int(args["id"]), request.object_body().get("price"))
    return Response(200, {"success": True})


ROUTES = [
    route("PUT", "/api/v0/asks/{id}", create, "create"),
    route("GET", "/api/v1/instances", list_instances, "list"),
    route("GET", "/api/v0/instances", legacy_list, "list"),
    route("GET", "/api/v0/instances/filters", instance_filters, "list"),
    route("GET", "/api/v0/instances/{id}", show_instance, "list"),
    route("DELETE", "/api/v0/instances/{id}", destroy),
    route("PUT", "/api/v0/instances/{id}", update_instance),
    route("PUT", "/api/v0/instances/reboot/{id}", reboot),
    route("PUT", "/api/v0/instances/bid_price/{id}", bid_price),
    route("PUT", "/api/v0/instances", bulk_state),
    route("DELETE", "/api/v0/instances", bulk_destroy),
    route("POST", "/api/v0/asks/bulk", bulk_create, "create"),
    route("PUT", "/api/v0/launch_instance", launch, "create"),
    route("PUT", "/api/v0/instances/recycle/{id}", recycle),
    route("PUT", "/api/v0/instances/update_template/{id}", update_template),
    route("PUT", "/api/v0/instances/prepay/{id}", prepay),
    route("GET", "/api/v0/instances/balance/{id}", deposit, "list"),
    route("POST", "/api/v0/contracts/fetch", fetch_contracts, "list"),
    route("GET", "/api/v0/instances/pending-price-increases", pending_price_increases, "list"),
]
