"""The market: offer search (and its legacy forms) and the GPU names."""

from __future__ import annotations

from typing import TYPE_CHECKING

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


ROUTES = [
    route("POST", "/api/v0/bundles", search, "search"),
    route("GET", "/api/v0/bundles", search, "search"),
    route("PUT", "/api/v0/search/asks", search, "search"),
    route("GET", "/api/v0/gpu_names/unique", gpu_names, auth=False),
]
