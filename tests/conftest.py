"""Shared test setup: make the repo root importable as the package ``podkit``.

The repository root *is* the package ComfyUI imports from ``custom_nodes/`` (under whatever folder
name the user cloned it to), so tests register it under a stable name instead of relying on the
checkout's folder name.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _register_package(name: str = "podkit") -> None:
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_register_package()
