"""ComfyUI-PodKit: a LoRA production pipeline inside ComfyUI on GPU pods.

This file is declarative and import-safe (pytest and ComfyUI-Manager import it): no ComfyUI,
torch or boto3 import, no I/O. ComfyUI calls :func:`comfy_entrypoint`, which wires the services,
the ``/podkit/`` routes and the V3 nodes. There is deliberately no ``NODE_CLASS_MAPPINGS``: its
presence, even empty, makes ComfyUI skip ``comfy_entrypoint``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .nodes import PodKitExtension

__version__ = "0.1.0"
WEB_DIRECTORY = "./js"
__all__ = ["WEB_DIRECTORY", "comfy_entrypoint", "__version__"]


async def comfy_entrypoint() -> PodKitExtension:
    """ComfyUI's V3 entry point: build services, mount routes, return the node extension."""
    from .nodes import PodKitExtension
    from .nodes.host import attach_generation_cache, attach_to_comfyui

    services = attach_to_comfyui()
    await attach_generation_cache(services)
    return PodKitExtension()
