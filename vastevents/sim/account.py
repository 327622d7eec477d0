"""The account's keys and variables: SSH keys (the account's, and those attached to one instance), extra API
keys, and env-vars.

As on Vast, an instance lets in the account's SSH keys as they were when it was created plus the keys attached
to it since (``attach ssh``); changing the account's keys later does not reach existing instances. An API key
made with ``create api-key`` authenticates like the main key until deleted; the world keeps its SHA-256 only.
Env-vars are set in every instance created after them.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

from vastevents._logging import register_secret
from vastevents.sim.lifecycle import Lifecycle
from vastevents.sim.model import SimError, SimInstance
from vastevents.sim.params import public_key_param

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ----------------------------------------------------------------- SSH keys


def add_ssh_key(world: Lifecycle, public_key: Any) -> dict[str, Any]:
    key = public_key_param(public_key)
    record = {
        "id": world.next_key_id,
        "user_id": 1,
        "public_key": key,
        "key": key,
        "created_at": world.wire.iso(world.now),
        "deleted_at": None,
    }
    world.next_key_id += 1
    world.ssh_keys.append(record)
    return record


def _account_key(world: Lifecycle, key_id: Any) -> dict[str, Any]:
    for record in world.ssh_keys:
        if str(record["id"]) == str(key_id):
            return record
    raise SimError(404, "no_such_key", f"No SSH key {key_id} on the account.")


def update_ssh_key(world: Lifecycle, key_id: Any, public_key: Any) -> dict[str, Any]:
    record = _account_key(world, key_id)
    record["public_key"] = record["key"] = public_key_param(public_key)
    return record


def delete_ssh_key(world: Lifecycle, key_id: Any) -> None:
    world.ssh_keys.remove(_account_key(world, key_id))


def attach_ssh_key(world: Lifecycle, instance_id: int, public_key: Any) -> tuple[SimInstance, int]:
    """Let `public_key` into one instance too (the caller tells its host); the key's id, to detach it by."""
    key = public_key_param(public_key)
    inst = world.instance(instance_id)
    key_id = next((r["id"] for r in world.ssh_keys if r["public_key"] == key), None)
    if key_id is None:
        key_id = next((i for i, k in world.attached_keys.items() if k == key), None)
    if key_id is None:
        key_id = world.next_key_id
        world.next_key_id += 1
        world.attached_keys[key_id] = key
    if key not in inst.ssh_keys:
        inst.ssh_keys.append(key)
    return inst, int(key_id)


def detach_ssh_key(world: Lifecycle, instance_id: int, key_id: Any) -> SimInstance:
    """Stop key `key_id` (an account key's id, or the one ``attach`` answered) logging in to one instance."""
    inst = world.instance(instance_id)
    key = next((r["public_key"] for r in world.ssh_keys if str(r["id"]) == str(key_id)), None)
    key = key or next((k for i, k in world.attached_keys.items() if str(i) == str(key_id)), None)
    if key is None or key not in inst.ssh_keys:
        raise SimError(404, "no_such_key", f"SSH key {key_id} is not attached to instance {instance_id}.")
    inst.ssh_keys.remove(key)
    return inst


# ----------------------------------------------------------------- API keys


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(world: Lifecycle, body: dict[str, Any]) -> dict[str, Any]:
    """A new key (shown this once, as Vast shows it) that authenticates like the main key."""
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SimError(400, "invalid_args", "name is required")
    key = secrets.token_hex(32)
    register_secret(key)
    key_id = max((int(k["id"]) for k in world.api_keys), default=1) + 1
    record = {
        "id": key_id,
        "name": name.strip(),
        "permissions": body.get("permissions") or {},
        "key_params": body.get("key_params"),
        "created_at": world.wire.at(world.now),
        "sha256": _digest(key),
    }
    world.api_keys.append(record)
    return {"success": True, **_public(record), "key": key}


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "sha256"}


def api_key_rows(world: Lifecycle) -> list[dict[str, Any]]:
    """The account's keys without their secrets: the main key (id 1) and those made since."""
    main = {
        "id": 1,
        "name": "main key",
        "permissions": {},
        "key_params": None,
        "created_at": world.wire.at(world.origin),
    }
    return [main, *(_public(r) for r in world.api_keys)]


def api_key_row(world: Lifecycle, key_id: int) -> dict[str, Any]:
    for row in api_key_rows(world):
        if row["id"] == key_id:
            return row
    raise SimError(404, "no_such_key", f"No API key {key_id}.")


def delete_api_key(world: Lifecycle, key_id: int) -> None:
    if key_id == 1:
        raise SimError(400, "invalid_args", "the main key cannot be deleted (reset it on Vast's console)")
    api_key_row(world, key_id)
    world.api_keys[:] = [r for r in world.api_keys if int(r["id"]) != key_id]


def is_api_key(world: Lifecycle, key: str) -> bool:
    """Whether `key` is one of the extra keys (compared in constant time)."""
    digest = _digest(key)
    return any(secrets.compare_digest(digest, str(r["sha256"])) for r in world.api_keys)


# ----------------------------------------------------------------- env-vars


def _env_name(body: dict[str, Any]) -> str:
    name = body.get("key")
    if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
        raise SimError(400, "invalid_args", f"key must be an environment variable name, got {name!r}")
    return name


def set_env_var(world: Lifecycle, body: dict[str, Any], *, new: bool) -> str:
    """Create (`new`) or update one env-var; creating an existing one or updating a missing one is a 400/404."""
    name = _env_name(body)
    value = body.get("value")
    if not isinstance(value, str):
        raise SimError(400, "invalid_args", "value must be a string")
    if new and name in world.env_vars:
        raise SimError(400, "already_exists", f"env-var {name} exists: update it instead")
    if not new and name not in world.env_vars:
        raise SimError(404, "no_such_env_var", f"No env-var {name}.")
    world.env_vars[name] = value
    return name


def delete_env_var(world: Lifecycle, body: dict[str, Any]) -> str:
    name = _env_name(body)
    if world.env_vars.pop(name, None) is None:
        raise SimError(404, "no_such_env_var", f"No env-var {name}.")
    return name
