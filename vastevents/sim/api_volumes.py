"""The user's volumes: list, rent one alone (from a volume offer), clone, delete (see :mod:`.volumes`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vastevents.sim import volumes
from vastevents.sim.routing import Request, Response, route

if TYPE_CHECKING:
    from vastevents.sim.server import Api


def list_volumes(api: Api, request: Request, args: dict[str, str]) -> Response:
    """``show volumes``: the live local volumes (the simulator has no network volumes)."""
    kind = request.param("type") or "all_volume"
    with api.sim.world() as world:
        live = [v for v in sorted(world.volumes.values(), key=lambda v: v.id) if v.ended_at is None]
        rows = [volumes.row(world, v) for v in live] if kind != "network_volume" else []
    return Response(200, {"success": True, "volumes": rows})


def create_volume(api: Api, request: Request, args: dict[str, str]) -> Response:
    body = request.object_body()
    with api.sim.world() as world:
        volume = volumes.create(world, body.get("id"), size=body.get("size"), name=body.get("name"))
    return Response(200, {"success": True, "volume_id": volume.id, "msg": f"Created volume {volume.id}"})


def clone_volume(api: Api, request: Request, args: dict[str, str]) -> Response:
    body = request.object_body()
    with api.sim.world() as world:
        volume = volumes.clone(world, body.get("src_id"), body.get("dst_id"), size=body.get("size"))
    return Response(200, {"success": True, "volume_id": volume.id, "msg": f"Cloned into volume {volume.id}"})


def delete_volume(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        volume = volumes.delete(world, request.param("id"))
    return Response(200, {"success": True, "msg": f"Deleted volume {volume.id}"})


ROUTES = [
    route("GET", "/api/v0/volumes", list_volumes, "list"),
    route("PUT", "/api/v0/volumes", create_volume, "create"),
    route("POST", "/api/v0/volumes/copy", clone_volume, "create"),
    route("DELETE", "/api/v0/volumes", delete_volume),
]
