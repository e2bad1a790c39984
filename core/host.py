"""What PodKit runs inside: the host's versions and the optional host features PodKit uses.

PodKit supports ComfyUI 0.3.64 and later. Features newer than that floor are detected when PodKit
attaches to ComfyUI (``nodes/host_features.py``: ``getattr`` on the API modules, the version from
``comfyui_version``), never assumed; this record is what ``GET /podkit/status`` reports as ``host``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: The oldest ComfyUI PodKit supports and tests (``[tool.comfy] requires-comfyui``).
MIN_COMFYUI = "0.3.64"


@dataclass(frozen=True)
class HostFeature:
    """One optional host feature: whether this host has it, and whether PodKit is using it."""

    present: bool
    used: bool = False
    #: what PodKit does instead when the feature is absent (or why it is not used)
    note: str | None = None

    def to_wire(self) -> dict[str, object]:
        wire: dict[str, object] = {"present": self.present, "used": self.used}
        if self.note:
            wire["note"] = self.note
        return wire


@dataclass(frozen=True)
class HostInfo:
    kind: str  # "comfyui" | "standalone"
    comfyui_version: str | None = None
    frontend_version: str | None = None
    #: how the host keeps node outputs between prompts: classic, lru, none, ram (0.33's default)
    execution_cache: str | None = None
    features: dict[str, HostFeature] = field(default_factory=dict)

    @property
    def supported(self) -> bool | None:
        """False when the ComfyUI is older than the floor; None when the version is unknown."""
        if self.kind != "comfyui" or not self.comfyui_version:
            return None
        return version_tuple(self.comfyui_version) >= version_tuple(MIN_COMFYUI)

    def uses(self, name: str) -> bool:
        feature = self.features.get(name)
        return bool(feature and feature.used)

    def to_wire(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "comfyui_version": self.comfyui_version,
            "frontend_version": self.frontend_version,
            "execution_cache": self.execution_cache,
            "min_comfyui": MIN_COMFYUI,
            "supported": self.supported,
            "features": {name: f.to_wire() for name, f in sorted(self.features.items())},
        }


STANDALONE = HostInfo(kind="standalone")


def version_tuple(version: str) -> tuple[int, ...]:
    """``"0.3.64"`` → ``(0, 3, 64)``; suffixes (``rc1``, ``+local``) are ignored."""
    parts = re.findall(r"\d+", version.split("+", 1)[0])[:3]
    return tuple(int(p) for p in parts) + (0,) * (3 - len(parts))
