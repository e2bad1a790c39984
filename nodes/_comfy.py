"""The one import site of ComfyUI's node API (pin ``comfy_api.v0_0_x`` here when it stabilises),
and the shims that keep PodKit's nodes the same on every supported host."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import ComfyExtension, io, ui

CATEGORY = "podkit"


class ComboListOutput(io.Combo.Output):  # type: ignore[misc, name-defined]
    """A combo output typed by its option list, so it links into V1 combo inputs (core KSampler's
    ``sampler_name``/``scheduler``) on every host.

    ComfyUI 0.3.64 typed ``io.Combo.Output`` this way; later hosts type it ``"COMBO"``, which their
    prompt validator refuses to link into a V1 combo input ("return_type_mismatch ... received_type
    (COMBO)"), while an option-list type (what V1 nodes declare in ``RETURN_TYPES``) still matches.
    """

    @property
    def io_type(self) -> Any:
        return self.options


__all__ = ["CATEGORY", "ComboListOutput", "ComfyExtension", "io", "ui"]
