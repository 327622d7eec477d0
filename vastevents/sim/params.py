"""Values a request or a scenario step passes in, checked the way Vast checks them (a bad one is a SimError)."""

from __future__ import annotations

import itertools
import math
import re
import shlex
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
    """Vast takes env as a dict (SDK) or docker options (``-e A=1 -p 8888:8888``): variables and port mappings.

    Options are split like a shell would (``-e MSG='two words'``); a port mapping is kept as Vast keeps it,
    the key ``-p 8888:8888`` with the value ``1``; other docker options are ignored.
    """
    if isinstance(env, Mapping):
        return {str(k): str(v) for k, v in env.items()}
    if isinstance(env, str):
        try:
            words = shlex.split(env)
        except ValueError:
            raise SimError(400, "invalid_args", f"env: unbalanced quotes in {env!r}") from None
        result: dict[str, str] = {}
        for flag, value in itertools.pairwise(words):
            if flag == "-e" and "=" in value:
                name, _, val = value.partition("=")
                result[name] = val
            elif flag == "-p" and _PORT_MAPPING.fullmatch(value):
                result[f"-p {value}"] = "1"
        return result
    if env is None:
        return {}
    raise SimError(400, "invalid_args", "env must be an object of NAME: value pairs")


_PORT_MAPPING = re.compile(r"(\d+:)?\d+(/(tcp|udp))?")


def exposed_ports(env: Mapping[str, str]) -> list[str]:
    """The container ports an env's ``-p HOST:CONTAINER[/proto]`` mappings expose, as ``8888/tcp``."""
    ports = set()
    for key in env:
        if key.startswith("-p ") and _PORT_MAPPING.fullmatch(key[3:]):
            mapping, _, proto = key[3:].partition("/")
            ports.add((int(mapping.rsplit(":", 1)[-1]), proto or "tcp"))
    return [f"{port}/{proto}" for port, proto in sorted(ports)]
