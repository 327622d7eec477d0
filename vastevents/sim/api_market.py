"""The market: offer search (and its legacy forms), volume offers, templates, the GPU names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vastevents.sim import volumes
from vastevents.sim.matching import matches
from vastevents.sim.model import SimError
from vastevents.sim.routing import Request, Response, route

if TYPE_CHECKING:
    from vastevents.sim.server import Api


def search(api: Api, request: Request, args: dict[str, str]) -> Response:
    if request.method == "GET":
        query = request.json_param("q", {})
    elif request.path.endswith("/search/asks"):
        query = request.object_body().get("q", {})
    else:
        query = request.object_body()
    if not isinstance(query, dict):
        raise SimError(400, "invalid_args", "the search query must be a JSON object")
    with api.sim.world() as world:
        return Response(200, {"offers": world.search(query)})


def gpu_names(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        names = sorted({m.gpu_name for m in world.machines.values()})
    return Response(200, {"gpu_names": names})


def search_volumes(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        return Response(200, {"offers": volumes.search(world, request.object_body())})


def search_templates(api: Api, request: Request, args: dict[str, str]) -> Response:
    """The newest version of the public templates and the user's own, filtered by ``select_filters``."""
    filters = request.json_param("select_filters", {})
    if not isinstance(filters, dict):
        raise SimError(400, "invalid_args", "select_filters must be an object")
    with api.sim.world() as world:
        rows = [t.row() for t in world.templates.visible()]
    return Response(200, {"success": True, "templates": [row for row in rows if matches(row, filters)]})


def create_template(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        template = world.templates.create(request.object_body(), now=world.wire.at(world.now))
    return Response(200, {"success": True, "msg": "Template created", "template": template.row()})


def update_template(api: Api, request: Request, args: dict[str, str]) -> Response:
    """A new version of one of the user's templates (a new hash_id; the old one keeps working)."""
    with api.sim.world() as world:
        template = world.templates.update(request.object_body(), now=world.wire.at(world.now))
    return Response(200, {"success": True, "msg": "Template updated", "template": template.row()})


def delete_template(api: Api, request: Request, args: dict[str, str]) -> Response:
    body = request.object_body()
    with api.sim.world() as world:
        template = world.templates.delete(template_id=body.get("template_id"), hash_id=body.get("hash_id"))
    return Response(200, {"success": True, "msg": f"Template {template.id} deleted"})


ROUTES = [
    route("POST", "/api/v0/bundles", search, "search"),
    route("GET", "/api/v0/bundles", search, "search"),
    route("PUT", "/api/v0/search/asks", search, "search"),
    route("GET", "/api/v0/gpu_names/unique", gpu_names, auth=False),
    route("POST", "/api/v0/volumes/search", search_volumes, "search"),
    route("GET", "/api/v0/template", search_templates),
    route("POST", "/api/v0/template", create_template),
    route("PUT", "/api/v1/template", update_template),
    route("DELETE", "/api/v0/template", delete_template),
]
