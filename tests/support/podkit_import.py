"""Register the repository root as the package ``podkit``, whatever the checkout folder is called.

The repo root *is* the package ComfyUI imports from ``custom_nodes/``. Tests, benches and the
subprocesses they start all import it through :func:`register_package` (``__main__.py`` keeps its
own copy so that ``python <repo> serve`` needs nothing from ``tests/``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def register_package(name: str = "podkit", root: Path = ROOT) -> None:
    """Import ``root`` as the package ``name`` (idempotent)."""
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        name, root / "__init__.py", submodule_search_locations=[str(root)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
