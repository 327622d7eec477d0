"""What `pip install vastevents` puts into site-packages: every package of ours, and no top-level `handlers`."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setuptools() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return dict(tomllib.load(file)["tool"]["setuptools"])


def test_every_package_folder_is_listed_and_the_handlers_install_under_a_name_of_our_own() -> None:
    settings = _setuptools()
    listed = set(settings["packages"])  # type: ignore[arg-type]
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "vastevents").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert on_disk - listed == set(), "a package folder pyproject.toml does not list (it would not be installed)"
    assert settings["package-dir"] == {"vastevents_handlers": "handlers"}
    assert "handlers" not in listed and "vastevents_handlers" in listed


def test_the_entry_points_name_the_installed_handler_package() -> None:
    with (ROOT / "pyproject.toml").open("rb") as file:
        points = tomllib.load(file)["project"]["entry-points"]["vastevents.handlers"]
    assert points and all(value.startswith("vastevents_handlers.") for value in points.values())
    for value in points.values():
        module = value.split(":")[0].removeprefix("vastevents_handlers.")
        assert (ROOT / "handlers" / f"{module}.py").is_file(), value


def test_the_pytest_plugin_installs_as_a_module_of_its_own() -> None:
    """pytest loads it into every run of the environment: it must not import vastevents (a second or two) until a
    test asks for its fixtures, so it lives outside the vastevents package."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        points = tomllib.load(file)["project"]["entry-points"]["pytest11"]
    assert points == {"vastevents": "vastevents_pytest"}
    assert "vastevents_pytest" in _setuptools()["packages"]  # type: ignore[operator]
    source = (ROOT / "vastevents_pytest" / "__init__.py").read_text()
    top_level_imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert not [line for line in top_level_imports if "vastevents" in line], top_level_imports
