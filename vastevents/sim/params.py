"""Values a request or a scenario step passes in, checked the way Vast checks them (a bad one is a SimError)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

from vastevents.sim.model import SimError


def number_param(value: Any, default: float, *, what: str) -> float:
    """A request's number (Vast often sends them as strings); absent or empty means `default`."""
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SimError(400, "invalid_args", f"{what} must be a number, got {value!r}") from None


def price_param(value: Any) -> float:
    """A bid in $/h: a positive, finite number (Vast answers ``invalid_price`` otherwise)."""
    try:
        price = float(value)
    except (TypeError, ValueError):
        raise SimError(400, "invalid_price", f"price must be a number, got {value!r}") from None
    if not (math.isfinite(price) and price > 0):
        raise SimError(400, "invalid_price", f"price must be a positive number, got {price}")
    return price


def public_key_param(value: Any) -> str:
    """An OpenSSH public key line, stripped; anything else is Vast's ``invalid_args``."""
    if not isinstance(value, str) or not value.strip().startswith(("ssh-", "ecdsa-", "sk-")):
        raise SimError(400, "invalid_args", "ssh_key must be an OpenSSH public key (ssh-ed25519 AAAA...).")
    return value.strip()


def env_param(env: Any) -> dict[str, str]:
    """Vast takes env as a dict (CLI) or a docker-style string (``-e A=1 -p 22:22``)."""
    if isinstance(env, Mapping):
        return {str(k): str(v) for k, v in env.items()}
    if isinstance(env, str):
        result: dict[str, str] = {}
        words = env.split()
        for flag, value in itertools.pairwise(words):
            if flag == "-e" and "=" in value:
                name, _, val = value.partition("=")
                result[name] = val
            elif flag == "-p":
                result[f"-p {value}"] = "1"
        return result
    if env is None:
        return {}
    raise SimError(400, "invalid_args", "env must be an object of NAME: value pairs")
