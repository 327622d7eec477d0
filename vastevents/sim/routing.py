"""The simulator's request plumbing: requests and responses, routes by method and path, paging tokens.

Each ``api_*`` module serves one concern and exports its ``ROUTES``; a handler is a function of the Api (the
simulator it serves, the log store, the webhooks), the request and the path's arguments.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vastevents.sim.model import SimError

if TYPE_CHECKING:
    from vastevents.sim.server import Api

JSON_TYPE = "application/json"


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str] | None = None
    content_type: str = JSON_TYPE


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: Any
    client: str

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def json_param(self, name: str, default: Any) -> Any:
        raw = self.param(name)
        if raw is None or raw == "":
            return default
        try:
            return json.loads(raw)
        except ValueError:
            raise SimError(400, "invalid_args", f"query parameter {name} is not valid JSON") from None

    def object_body(self) -> dict[str, Any]:
        if self.body is None:
            return {}
        if not isinstance(self.body, dict):
            raise SimError(400, "invalid_args", "the request body must be a JSON object")
        return self.body


Handler = Callable[["Api", Request, dict[str, str]], Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    rate_class: str
    auth: bool = True
    faults: bool = True


_PATH_PARAMETERS = {"token": r"[\w-]+", "action": r"\w+"}
_ID_PARAMETER = r"\d+"  # any other {name} in a route path


def route(method: str, path: str, handler: Handler, rate_class: str = "other", **flags: bool) -> Route:
    """A route for `path` (trailing slash optional, ``{id}`` an integer, ``{token}``/``{action}`` a word)."""
    pattern = re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m[1]}>{_PATH_PARAMETERS.get(m[1], _ID_PARAMETER)})", path)
    return Route(method, re.compile(pattern), handler, rate_class, **flags)


def error(status: int, error: str, msg: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status, {"success": False, "error": error, "msg": msg}, headers)


def encode_token(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def decode_token(token: str | None) -> dict[str, Any]:
    """A paging cursor this server issued (``after_id`` or ``offset``); anything else is a 400."""
    if not token:
        return {}
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error):
        raise SimError(400, "invalid_args", "after_token is not a token this server issued") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k, 0), int) for k in ("after_id", "offset")):
        raise SimError(400, "invalid_args", "after_token is not a token this server issued")
    return data
