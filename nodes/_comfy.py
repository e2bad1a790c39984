"""The one import site of ComfyUI's node API (pin ``comfy_api.v0_0_x`` here when it stabilises)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io, ui

CATEGORY = "podkit"

__all__ = ["CATEGORY", "ComfyExtension", "io", "ui"]
