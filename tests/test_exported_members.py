"""The public API is exactly ``vastevents.__all__``: what a handler author writes against, and nothing else."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import vastevents

ROOT = Path(__file__).resolve().parent.parent


def test_every_name_the_package_offers_is_in_all_and_every_name_in_all_is_offered() -> None:
    offered = {
        name
        for name, value in vars(vastevents).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)  # submodules are attributes once imported
    }
    assert offered | {"__version__"} == set(vastevents.__all__)
    assert len(vastevents.__all__) == len(set(vastevents.__all__))


def test_every_exported_name_is_documented_for_plugin_authors() -> None:
    """Exporting a name is a promise to plugins: docs/plugins.md says what each one is for."""
    documented = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert [name for name in vastevents.__all__ if name != "__version__" and f"`{name}`" not in documented] == []
