"""Inside an instance: its logs, commands run in its filesystem (``execute``), the SSH keys it lets in."""

from __future__ import annotations

import re
import shlex
from typing import TYPE_CHECKING

from vastevents.sim import account
from vastevents.sim.model import SimError
from vastevents.sim.routing import Request, Response, route

if TYPE_CHECKING:
    from vastevents.sim.server import Api

EXECUTE_COMMANDS = frozenset({"ls", "rm", "du"})
"""What Vast's ``execute`` runs: a constrained command, on paths inside the container."""


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


def execute(api: Api, request: Request, args: dict[str, str]) -> Response:
    """``execute``: ``ls``, ``rm`` or ``du`` on relative paths, in the running instance's filesystem."""
    argv = _command(request.object_body().get("command"))
    with api.sim.world() as world:
        inst = world.instance(int(args["id"]))
        if inst.actual_status != "running":
            raise SimError(400, "invalid_args", f"Instance {inst.id} is not running.")
        root = api.sim.container_root(inst) or ""
    output = api.sim.execute(inst, argv)  # outside the lock: the command takes what it takes
    return Response(200, {"success": True, "result_url": api.publish(output), "writeable_path": root})


def _command(command: object) -> list[str]:
    if not isinstance(command, str):
        raise SimError(400, "invalid_args", "command is required")
    try:
        argv = shlex.split(command)
    except ValueError:
        raise SimError(400, "invalid_args", f"command has unbalanced quotes: {command!r}") from None
    if not argv or argv[0] not in EXECUTE_COMMANDS:
        raise SimError(400, "invalid_args", f"execute runs only {', '.join(sorted(EXECUTE_COMMANDS))}; got {command!r}")
    for word in argv[1:]:
        if word.startswith("/") or ".." in word.split("/"):
            raise SimError(400, "invalid_args", f"paths are relative to the container's root, got {word!r}")
    return argv


def attach_ssh_key(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        inst, key_id = account.attach_ssh_key(world, int(args["id"]), request.object_body().get("ssh_key"))
        api.sim.keys_changed(inst)
    return Response(200, {"success": True, "msg": "SSH key attached", "key_id": key_id})


def detach_ssh_key(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        inst = account.detach_ssh_key(world, int(args["id"]), args["key"])
        api.sim.keys_changed(inst)
    return Response(200, {"success": True, "msg": "SSH key detached"})


ROUTES = [
    route("PUT", "/api/v0/instances/request_logs/{id}", request_logs),
    route("PUT", "/api/v0/instances/command/{id}", execute),
    route("POST", "/api/v0/instances/{id}/ssh", attach_ssh_key),
    route("DELETE", "/api/v0/instances/{id}/ssh/{key}", detach_ssh_key),
]
