"""Handler registration, config validation, and discovery of an installed example plugin."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from vastevents import Context, Event, Handler, HandlerOptions, Instance, on
from vastevents.config import parse_config
from vastevents.errors import ConfigError
from vastevents.plugins import activate, installed_handlers, load_handlers, resolve, subscribed_events
from vastevents.testing import Harness

ROOT = Path(__file__).resolve().parents[1]


def test_on_returns_the_function_and_stacks() -> None:
    async def handler(event: Event, ctx: Context) -> None: ...

    marked = on("appeared")(on("vanished")(handler))
    assert marked is handler
    assert subscribed_events(handler) == ("vanished", "appeared")
    with pytest.raises(TypeError):
        on()


class CountingOptions(HandlerOptions):
    threshold: int = 3


class Counting(Handler[CountingOptions]):
    Options = CountingOptions

    def __init__(self, options: CountingOptions | None = None) -> None:
        super().__init__(options)
        self.seen: list[str] = []

    @on("appeared", "vanished")
    async def count(self, event: Event, ctx: Context) -> None:
        self.seen.append(event.name)


def test_class_handlers_get_validated_options() -> None:
    active = activate("counting", Counting, {"threshold": 5})
    assert isinstance(active.target, Counting) and active.target.options.threshold == 5
    assert sorted(name for name, _ in active.subscriptions) == ["appeared", "vanished"]
    with pytest.raises(ValueError, match="threshold"):
        activate("counting", Counting, {"threshold": "many"})


def test_only_instances_labelled_with_the_prefix_are_owned() -> None:
    def owner(prefix: str | None) -> Harness:
        return Harness(config=parse_config(f'[vast]\nlabel_prefix = "{prefix}"\n') if prefix is not None else None)

    default, team, nobody = owner(None), owner("team-a:"), owner("")
    try:
        assert default.context.owns(Instance(id=1, label="vastevents:job-2"))  # the default prefix
        owns = team.context.owns
        assert owns(Instance(id=2, label="team-a:job-1"))
        assert not owns(Instance(id=3, label="team-b:job-1")) and not owns(Instance(id=4, label="job team-a:"))
        assert not owns(Instance(id=5, label=None)) and not owns(Instance(id=6, label="")) and not owns(None)
        assert not nobody.context.owns(Instance(id=7, label="anything"))  # an empty prefix owns nothing
    finally:
        for h in (default, team, nobody):
            h.close()


def test_a_function_takes_no_options_and_an_unmarked_object_is_refused() -> None:
    @on("*")
    async def anything(event: Event, ctx: Context) -> None: ...

    with pytest.raises(ValueError, match="takes no options"):
        activate("x", anything, {"colour": "red"})
    with pytest.raises(ValueError, match="subscribes to no events"):
        activate("x", object())


def test_the_built_in_log_handler_is_installed_and_configurable() -> None:
    assert "log" in {h.name for h in installed_handlers()}
    config = parse_config('[handlers.log]\nuse = "log"\nevents = ["appeared", "preempted"]\nlevel = "warning"\n')
    (active,) = load_handlers(config)
    assert active.source.startswith("entry point 'log' = vastevents_handlers.log:LogHandler")
    assert sorted(name for name, _ in active.subscriptions) == ["appeared", "preempted"]


def test_unknown_handler_keys_name_the_file_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "vastevents.toml"
    text = '[watch]\ninterval = 5\n\n[handlers.log]\nuse = "log"\nevnts = ["*"]\n'
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_handlers(parse_config(text, path))
    assert f"{path}:6: handlers.log.evnts: unknown key" in str(caught.value)


def test_bad_use_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"handlers\.x\.use: .*expected an installed handler name"):
        load_handlers(parse_config('[handlers.x]\nuse = "nosuch"\n'))
    with pytest.raises(ConfigError, match="cannot import"):
        load_handlers(parse_config('[handlers.x]\nuse = "no_such_module_here:thing"\n'))
    with pytest.raises(ConfigError, match="has no attribute"):
        load_handlers(parse_config('[handlers.x]\nuse = "vastevents.events:nothing"\n'))


def test_use_by_import_path() -> None:
    target, source = resolve("vastevents_handlers.log:LogHandler")
    assert source == "import vastevents_handlers.log:LogHandler"
    assert getattr(target, "__name__", "") == "LogHandler"


def install_example(source: Path, target: Path) -> None:
    """Install the example like a wheel installer would (module + dist-info from its pyproject), offline.

    (pip would need the network or the `wheel` package to build it; the result on disk is the same.)
    """
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    for module in tomllib.loads((source / "pyproject.toml").read_text())["tool"]["setuptools"]["py-modules"]:
        shutil.copy(source / f"{module}.py", target / f"{module}.py")
    dist_info = target / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = [f"[{group}]" + "".join(f"\n{k} = {v}" for k, v in points.items()) for group, points in
             project["entry-points"].items()]  # fmt: skip
    (dist_info / "entry_points.txt").write_text("\n\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example plugin installed into a directory put on sys.path."""
    target = tmp_path_factory.mktemp("site")
    install_example(ROOT / "examples" / "hello_plugin", target)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        sys.modules.pop("vastevents_hello", None)


def test_installed_example_plugin_is_discovered_and_works(installed_example: Path) -> None:
    installed = {h.name: h for h in installed_handlers()}
    assert installed["hello"].distribution == "vastevents-hello 0.1.0"
    (active,) = load_handlers(parse_config('[handlers.greeter]\nuse = "hello"\ngreeting = "is ready"\n'))
    assert active.name == "greeter" and "vastevents-hello 0.1.0" in active.source


async def test_example_plugin_through_the_harness(installed_example: Path) -> None:
    (active,) = load_handlers(parse_config('[handlers.hello]\nuse = "hello"\n'))
    h = Harness(active)
    h.cloud.add(1, "loading", label="vastevents:job-1", gpu_name="RTX 4090")
    h.cloud.add(2, "loading", label="someone-else")
    await h.poll_once()
    h.cloud.set_status(1, "running")
    h.cloud.set_status(2, "running")
    h.clock.advance(15)
    await h.poll_once()
    assert h.notifier.messages == ["vastevents:job-1 is up on RTX 4090"]


def test_handlers_command_shows_installed_versus_active(installed_example: Path, tmp_path: Path) -> None:
    config = tmp_path / "vastevents.toml"
    config.write_text('[handlers.greeter]\nuse = "hello"\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed_example), str(ROOT)])}
    out = subprocess.run(
        [sys.executable, "-m", "vastevents", "handlers", "--config", str(config)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=True,
    ).stdout  # fmt: skip
    installed, active = out.split("active (from")
    assert "hello" in installed and "vastevents-hello 0.1.0" in installed
    assert "log" in installed and "vastevents_handlers.log:LogHandler" in installed
    assert "greeter" in active and "entry point 'hello'" in active and "loading_to_running" in active
