"""Instances: list (paged), show, rent an offer, destroy, start/stop/label, reboot, bid, logs, SSH keys on one."""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING

from vastevents.sim.matching import matches, sort_rows
from vastevents.sim.model import SimError
from vastevents.sim.routing import Request, Response, decode_token, encode_token, error, route

if TYPE_CHECKING:
    from vastevents.sim.server import Api

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


def update_instance(api: Api, request: Request, args: dict[str, str]) -> Response:
    body = request.object_body()
    instance_id = int(args["id"])
    with api.sim.world() as world:
        world.instance(instance_id)
        if "state" in body:
            if body["state"] == "running":
                world.start(instance_id)
            elif body["state"] == "stopped":
                world.stop(instance_id)
            else:
                raise SimError(400, "invalid_args", f"state must be running or stopped, got {body['state']!r}")
        if "label" in body:
            world.set_label(instance_id, None if body["label"] is None else str(body["label"]))
        if "state" not in body and "label" not in body:
            raise SimError(400, "invalid_args", "expected state or label")
    return Response(200, {"success": True})


def reboot(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        world.reboot(int(args["id"]))
    return Response(200, {"success": True})


def bid_price(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        world.change_bid(int(args["id"]), request.object_body().get("price"))
    return Response(200, {"success": True})


def request_logs(api: Api, request: Request, args: dict[str, str]) -> Response:
    """The log behind a result URL: the last `tail` lines, of those matching `filter` (a regular expression, or
    plain text if it is none); `daemon_logs` keeps the daemon's own lines only (no onstart output)."""
    body = request.object_body()
    try:
        tail = int(body.get("tail") or 1000)
    except (TypeError, ValueError):
        raise SimError(400, "invalid_args", "tail must be an integer") from None
    wanted = body.get("filter")
    if wanted is not None and not isinstance(wanted, str):
        raise SimError(400, "invalid_args", "filter must be a string")
    daemon_only = str(body.get("daemon_logs", "")).lower() in ("true", "1")
    with api.sim.world() as world:
        text = api.sim.instance_log(world.instance(int(args["id"])), daemon_only=daemon_only)
    lines = text.splitlines(keepends=True)
    if wanted:
        lines = [line for line in lines if _grep(wanted, line)]
    return Response(200, {"success": True, "result_url": api.publish("".join(lines[-tail:]))})


def _grep(pattern: str, line: str) -> bool:
    try:
        return re.search(pattern, line) is not None
    except re.error:
        return pattern in line


def attach_ssh_key(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        inst = world.attach_ssh_key(int(args["id"]), request.object_body().get("ssh_key"))
        api.sim.keys_changed(inst)
    return Response(200, {"success": True, "msg": "SSH key attached"})


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
    route("PUT", "/api/v0/instances/request_logs/{id}", request_logs),
    route("POST", "/api/v0/instances/{id}/ssh", attach_ssh_key),
]
