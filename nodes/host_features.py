"""Detect the ComfyUI PodKit runs in: its version, the frontend it serves, the optional features.

Everything newer than ComfyUI 0.3.64 is looked up here (``getattr`` on the API modules, the
version from ``comfyui_version``) and recorded in a :class:`~podkit.core.host.HostInfo`; the rest
of PodKit asks ``services.host`` instead of probing ComfyUI again.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
from pathlib import Path
from typing import Any

from ..core.host import HostFeature, HostInfo

logger = logging.getLogger(__name__)

FRONTEND_DIST = "comfyui_frontend_package"


def detect_host() -> HostInfo:
    """The running ComfyUI, as far as it can be read without side effects."""
    api = _module("comfy_api.latest")
    io = getattr(api, "io", None)
    caching = getattr(api, "Caching", None)
    server = getattr(_module("server"), "PromptServer", None)
    instance = getattr(server, "instance", None)
    features = {
        # the LoRA loaders list the bucket through a remote combo (io.RemoteOptions)
        "remote_combo": HostFeature(present=hasattr(io, "RemoteOptions"), used=hasattr(io, "RemoteOptions")),
        # progress text on a node (presets, LoRA download, tiled decode)
        "progress_text": HostFeature(
            present=hasattr(instance, "send_progress_text"), used=hasattr(instance, "send_progress_text")
        ),
        # a shared generation cache plugs in here (ComfyUI >= 0.33)
        "cache_provider": HostFeature(
            present=hasattr(caching, "CacheProvider"),
            note=None if hasattr(caching, "CacheProvider") else "host too old for a generation cache",
        ),
    }
    return HostInfo(
        kind="comfyui",
        comfyui_version=comfyui_version(),
        frontend_version=frontend_version(getattr(instance, "web_root", None)),
        execution_cache=execution_cache_mode(),
        features=features,
    )


def _module(name: str) -> Any:
    """An already-importable host module, or None (never raises)."""
    try:
        return sys.modules.get(name) or importlib.import_module(name)
    except Exception:  # an optional host module: absent or broken means "feature absent"
        logger.debug("host module %s not importable", name, exc_info=True)
        return None


def comfyui_version() -> str | None:
    version = getattr(_module("comfyui_version"), "__version__", None)
    return str(version) if version else None


def frontend_version(web_root: object) -> str | None:
    """The release of the frontend ComfyUI serves (``--front-end-root`` and ``--front-end-version``
    included): the ``comfyui_frontend_package-<v>.dist-info`` beside the served package, or the
    version folder of a frontend ComfyUI downloaded (``web_custom_versions/<repo>/<v>``)."""
    if not web_root:
        return None
    root = Path(str(web_root)).resolve()
    if root.name == "static" and root.parent.name == FRONTEND_DIST:
        for info in root.parent.parent.glob(f"{FRONTEND_DIST}-*.dist-info"):
            return info.name[len(FRONTEND_DIST) + 1 : -len(".dist-info")]
    if re.fullmatch(r"v?\d+\.\d+\.\d+", root.name):
        return root.name.lstrip("v")
    return None


def execution_cache_mode() -> str | None:
    """How ComfyUI keeps node outputs between prompts: classic, lru, none or ram (0.33's default)."""
    args = getattr(_module("comfy.cli_args"), "args", None)
    if args is None:
        return None
    if getattr(args, "cache_none", False):
        return "none"
    if (getattr(args, "cache_lru", 0) or 0) > 0:
        return "lru"
    if getattr(args, "cache_classic", False) or not hasattr(args, "cache_ram"):
        return "classic"
    return "ram"
