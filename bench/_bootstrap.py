"""Make the repo root importable as the package ``podkit`` (same as tests/conftest.py).

The repository root *is* the package ComfyUI imports from ``custom_nodes/``; the benches register it
under a stable name. ``tests/support`` (rgw.py, make_tiny_models.py) is put on ``sys.path`` too.

Usage from a bench script (``bench/`` is ``sys.path[0]`` when a script there is run)::

    import _bootstrap

    _bootstrap.register_package()
    from podkit.core.model_cache import ModelCache
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "tests" / "support"


def register_package(name: str = "podkit") -> None:
    """Import the repo root as ``name`` (idempotent) and expose tests/support helpers."""
    if str(SUPPORT) not in sys.path:
        sys.path.insert(0, str(SUPPORT))
    from podkit_import import register_package as register

    register(name)
