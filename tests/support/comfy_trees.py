"""Which ComfyUI installations the tests/comfy tier runs against.

``COMFYUI_PATH`` names one checkout of your own (its interpreter: ``COMFYUI_PYTHON``, else a
``venv``/``.venv`` beside or inside it). Without it, the tier runs every tree that
``scripts/comfy_env.py`` prepared (``.comfy/trees.json``: the trees in ``shared/comfyui``, PodKit's
``.venv`` as their interpreter, each tree's pinned frontend in a folder put on its ``PYTHONPATH``),
plus the newest frontend on the registry for the panel test.

In CI (``CI`` set to a true value) a comfy test that skips is a failure: the tier must run.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TREES_JSON = REPO / ".comfy" / "trees.json"
SKIP_HINT = "run scripts/setup (prepares the trees in shared/comfyui) or set COMFYUI_PATH to a checkout"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class ComfyInstall:
    checkout: Path
    python: Path
    version: str
    #: folder prepended to the server's PYTHONPATH (the tree's pinned frontend packages), if any
    site: Path | None = None
    #: the frontend release the tree serves by default, when known
    frontend: str | None = None

    @property
    def id(self) -> str:
        return f"comfy-{self.version}"


@dataclass(frozen=True)
class Frontend:
    version: str
    root: Path


def comfy_version(checkout: Path) -> str:
    try:
        text = (checkout / "comfyui_version.py").read_text()
    except OSError:
        return "unknown"
    m = re.search(r"__version__\s*=\s*[\"']([^\"']+)", text)
    return m.group(1) if m else "unknown"


def _valid_checkout(checkout: Path) -> bool:
    return (checkout / "main.py").is_file() and (checkout / "comfy").is_dir()


def _from_comfyui_path(raw: str) -> list[ComfyInstall] | str:
    checkout = Path(raw).expanduser().absolute()
    if not _valid_checkout(checkout):
        return f"ComfyUI not found: COMFYUI_PATH={checkout} has no main.py / comfy/ ({SKIP_HINT})"
    explicit = os.environ.get("COMFYUI_PYTHON", "").strip()
    candidates = (
        [Path(explicit).expanduser()]
        if explicit
        else [
            checkout / "venv" / "bin" / "python",
            checkout.parent / "venv" / "bin" / "python",
            checkout / ".venv" / "bin" / "python",
        ]
    )
    for cand in candidates:
        # not resolve(): a venv's python is a symlink to the base interpreter
        if cand.is_file() and os.access(cand, os.X_OK):
            return [ComfyInstall(checkout, cand.absolute(), comfy_version(checkout))]
    tried = ", ".join(str(c) for c in candidates)
    return f"ComfyUI python not found (tried {tried}): set COMFYUI_PYTHON"


def _record() -> dict[str, object] | None:
    try:
        data = json.loads(TREES_JSON.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_installs() -> list[ComfyInstall] | str:
    """The installations to test, oldest first, or the reason there are none."""
    raw = os.environ.get("COMFYUI_PATH", "").strip()
    if raw:
        return _from_comfyui_path(raw)
    record = _record()
    if record is None:
        return f"ComfyUI not found: no {TREES_JSON.relative_to(REPO)} ({SKIP_HINT})"
    python = REPO / ".venv" / "bin" / "python"
    found: list[ComfyInstall] = []
    for tree in record.get("trees") or []:  # type: ignore[attr-defined]
        checkout = Path(tree["path"])
        if not _valid_checkout(checkout):
            continue
        site = Path(tree["site"]) if tree.get("site") else None
        found.append(ComfyInstall(checkout, python, tree["version"], site, tree.get("frontend")))
    if not found:
        return f"ComfyUI not found: {TREES_JSON.relative_to(REPO)} lists no tree that exists ({SKIP_HINT})"
    return sorted(found, key=lambda i: _version_key(i.version))


def latest_frontend() -> Frontend | str:
    """The newest frontend release prepared by setup (``PODKIT_TEST_FRONTEND_ROOT`` overrides)."""
    override = os.environ.get("PODKIT_TEST_FRONTEND_ROOT", "").strip()
    if override:
        return Frontend("custom", Path(override))
    record = _record() or {}
    latest = record.get("latest_frontend")
    if not isinstance(latest, dict) or not latest.get("root") or not Path(latest["root"]).is_dir():
        return f"the newest frontend is not prepared ({SKIP_HINT})"
    return Frontend(str(latest.get("version")), Path(latest["root"]))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3]) or (0,)
