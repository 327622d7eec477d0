"""Scenario files: a world (seed, host count or explicit machines) and a timeline of scripted actions.

TOML (or JSON with the same shape); a built-in scenario can be named instead of a file (``demo``)::

    description = "One line saying what happens."

    [world]
    seed = 7
    hosts = 12            # or [[machine]] tables with explicit fields
    flaky = 0.2           # that share of the machines misbehave, the cheaper ones (market.make_flaky); bids compete

    [[step]]
    at = "30s"            # after the simulator starts; numbers are seconds
    action = "preempt"    # see vastevents.sim.world.ACTIONS
    instance = "job-1"    # id, label, or label suffix after ':'
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vastevents.config import parse_duration
from vastevents.errors import VastEventsError
from vastevents.sim.market import machines_from_specs
from vastevents.sim.model import Step
from vastevents.sim.world import ACTIONS

_SCENARIOS = Path(__file__).resolve().parent / "scenarios"


class ScenarioError(VastEventsError):
    """A scenario file is unreadable or names an unknown action; the message says which step."""


@dataclass(frozen=True)
class Scenario:
    source: Path
    description: str = ""
    seed: int | None = None
    hosts: int | None = None
    flaky: float = 0.0
    credit: float | None = None
    machines: list[dict[str, Any]] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)


def _builtin_names() -> str:
    return ", ".join(sorted(p.stem for p in _SCENARIOS.glob("*.toml")))


def builtin_scenario(name: str) -> Path:
    """The path of a scenario shipped with vastevents (``demo``)."""
    path = _SCENARIOS / f"{name}.toml"
    if not path.is_file():
        raise ScenarioError(f"no built-in scenario {name!r}; known: {_builtin_names()}")
    return path


def resolve_scenario(ref: Path | str) -> Path:
    """A scenario file, or a built-in one by name (``demo``) when no file of that name exists."""
    path = Path(ref)
    if not path.exists() and path.name == str(ref) and not path.suffix and (_SCENARIOS / f"{ref}.toml").is_file():
        return _SCENARIOS / f"{ref}.toml"
    return path


def load_scenario(ref: Path | str) -> Scenario:
    """Read and check a scenario file (or a built-in scenario by name); errors name the file and the step."""
    path = resolve_scenario(ref)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(
            f"{path}: cannot read scenario: {exc.strerror} (or name a built-in one: {_builtin_names()})"
        ) from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: expected a table with [world] and [[step]] entries")
    unknown = set(data) - {"world", "machine", "step", "description"}
    if unknown:
        raise ScenarioError(f"{path}: unknown top-level keys {sorted(unknown)}; expected world, machine, step")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ScenarioError(f"{path}: description must be a string")
    world = data.get("world", {})
    steps = []
    for number, raw in enumerate(data.get("step", []), start=1):
        where = f"{path}: step {number}"
        if not isinstance(raw, dict) or "action" not in raw:
            raise ScenarioError(f"{where}: each [[step]] needs an action")
        params = dict(raw)
        action = str(params.pop("action"))
        if action not in ACTIONS:
            raise ScenarioError(f"{where}: unknown action {action!r}; known: {', '.join(sorted(ACTIONS))}")
        try:
            at = parse_duration(params.pop("at", 0))
            for key in ("duration", "pull", "after"):
                if key in params:
                    parse_duration(params[key])
        except ValueError as exc:
            raise ScenarioError(f"{where}: {exc}") from None
        steps.append(Step(at=at, action=action, params=params))
    machines = data.get("machine", [])
    if not isinstance(machines, list) or not all(isinstance(m, dict) for m in machines):
        raise ScenarioError(f"{path}: each [[machine]] must be a table of machine fields")
    try:
        machines_from_specs(machines, origin=0.0)
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{path}: [[machine]] {exc}") from None
    flaky = world.get("flaky", 0.0)
    if not isinstance(flaky, int | float) or not 0 <= flaky <= 1:
        raise ScenarioError(f"{path}: [world] flaky must be a share between 0 and 1, not {flaky!r}")
    try:
        return Scenario(
            source=path,
            description=description,
            seed=int(world["seed"]) if "seed" in world else None,
            hosts=int(world["hosts"]) if "hosts" in world else None,
            flaky=float(flaky),
            credit=float(world["credit"]) if "credit" in world else None,
            machines=[dict(m) for m in machines],
            steps=steps,
        )
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{path}: [world]: {exc}") from None
