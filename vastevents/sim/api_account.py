"""The account: the user, its SSH keys, API keys and env-vars, the addresses it was used from, webhooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vastevents.sim import account
from vastevents.sim.routing import Request, Response, route

if TYPE_CHECKING:
    from vastevents.sim.server import Api


def current_user(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        spend = world.spend()
        balance = world.balance()
        keys = world.ssh_keys
        return Response(
            200,
            {
                "id": 1,
                "username": "sim",
                "email": "sim@vastevents.invalid",
                "fullname": "Simulated User",
                "credit": round(balance, 6),
                "balance": round(balance, 6),
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
    with api.sim.world() as world:
        record = account.add_ssh_key(world, request.object_body().get("ssh_key"))
    return Response(200, {"success": True, **record})


def update_ssh_key(api: Api, request: Request, args: dict[str, str]) -> Response:
    """A new public key for an account key: instances created from now on let it in (existing ones keep theirs)."""
    with api.sim.world() as world:
        record = account.update_ssh_key(world, args["id"], request.object_body().get("ssh_key"))
    return Response(200, {"success": True, **record})


def delete_ssh_key(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        account.delete_ssh_key(world, args["id"])
    return Response(200, {"success": True, "msg": "SSH key removed from the account"})


def list_api_keys(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        return Response(200, {"apikeys": account.api_key_rows(world)})


def show_api_key(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        return Response(200, account.api_key_row(world, int(args["id"])))


def create_api_key(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        return Response(200, account.create_api_key(world, request.object_body()))


def delete_api_key(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        account.delete_api_key(world, int(args["id"]))
    return Response(200, {"success": True, "msg": "API key deleted"})


def list_env_vars(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        return Response(200, {"success": True, "secrets": dict(world.env_vars)})


def create_env_var(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        name = account.set_env_var(world, request.object_body(), new=True)
    return Response(200, {"success": True, "msg": f"env-var {name} created"})


def update_env_var(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        name = account.set_env_var(world, request.object_body(), new=False)
    return Response(200, {"success": True, "msg": f"env-var {name} updated"})


def delete_env_var(api: Api, request: Request, args: dict[str, str]) -> Response:
    with api.sim.world() as world:
        name = account.delete_env_var(world, request.object_body())
    return Response(200, {"success": True, "msg": f"env-var {name} deleted"})


def ip_addresses(api: Api, request: Request, args: dict[str, str]) -> Response:
    """``show ipaddrs``: the addresses this simulator has served the account's key to, first seen when."""
    rows = [{"ip": ip, "first_seen": seen, "first_location": "loopback (simulator)"} for ip, seen in api.clients()]
    return Response(200, {"success": True, "results": rows})


def cloud_connections(api: Api, request: Request, args: dict[str, str]) -> Response:
    """``show connections``: cloud storage integrations, which the simulator has none of."""
    return Response(200, [])


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


ROUTES = [
    route("GET", "/api/v0/users/current", current_user),
    route("GET", "/api/v0/ssh", list_ssh_keys),
    route("POST", "/api/v0/ssh", add_ssh_key),
    route("PUT", "/api/v0/ssh/{id}", update_ssh_key),
    route("DELETE", "/api/v0/ssh/{id}", delete_ssh_key),
    route("GET", "/api/v0/auth/apikeys", list_api_keys),
    route("POST", "/api/v0/auth/apikeys", create_api_key),
    route("GET", "/api/v0/auth/apikeys/{id}", show_api_key),
    route("DELETE", "/api/v0/auth/apikeys/{id}", delete_api_key),
    route("GET", "/api/v0/secrets", list_env_vars),
    route("POST", "/api/v0/secrets", create_env_var),
    route("PUT", "/api/v0/secrets", update_env_var),
    route("DELETE", "/api/v0/secrets", delete_env_var),
    route("GET", "/api/v0/users/me/ipaddrs", ip_addresses),
    route("GET", "/api/v0/users/cloud_integrations", cloud_connections),
    route("GET", "/api/v0/webhooks", list_webhooks),
    route("POST", "/api/v0/webhooks", create_webhook),
    route("DELETE", "/api/v0/webhooks/{id}", delete_webhook),
    route("POST", "/api/v0/webhooks/{id}/rotate-secret", rotate_webhook_secret),
    route("POST", "/api/v0/webhooks/{id}/test", test_webhook),
]
