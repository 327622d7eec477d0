"""What only the simulator has: the log texts behind result URLs, and ``/_sim/`` state, clock and faults."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vastevents.sim.model import SimError
from vastevents.sim.routing import Request, Response, route

if TYPE_CHECKING:
    from vastevents.sim.server import Api


def fetch_log(api: Api, request: Request, args: dict[str, str]) -> Response:
    text = api.published(args["token"])
    if text is None:
        return Response(404, "<Error><Code>NoSuchKey</Code></Error>", content_type="application/xml")
    return Response(200, text, content_type="text/plain; charset=utf-8")


def admin_state(api: Api, request: Request, args: dict[str, str]) -> Response:
    return Response(200, api.sim.state())


def admin_advance(api: Api, request: Request, args: dict[str, str]) -> Response:
    seconds = request.object_body().get("seconds")
    if not isinstance(seconds, int | float) or seconds < 0:
        raise SimError(400, "invalid_args", "seconds must be a non-negative number")
    now = api.sim.advance(float(seconds))
    return Response(200, {"success": True, "now": now.isoformat()})


def admin_action(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        result = world.apply(args["action"], request.object_body())
    return Response(200, {"success": True, **result})


ROUTES = [
    route("GET", "/_sim/logs/{token}", fetch_log, auth=False, faults=False),
    route("GET", "/_sim/state", admin_state, faults=False),
    route("POST", "/_sim/advance", admin_advance, faults=False),
    route("POST", "/_sim/{action}", admin_action, faults=False),
]
