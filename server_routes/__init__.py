"""PodKit's HTTP routes, bound with :func:`register` under ``/podkit/``.

Mounted on ``PromptServer.instance.routes`` inside ComfyUI (which also serves them under
``/api/podkit/…``), or on a bare ``aiohttp.web.Application`` in tests and in the standalone
control plane. Handlers are thin: parse, call a service (blocking work via ``asyncio.to_thread``),
answer JSON.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from . import contract, core_routes, downloads, metrics, pod, training

if TYPE_CHECKING:
    from ..services import Services

__all__ = ["register"]


def register(routes: web.RouteTableDef, services: Services) -> None:
    """Add every PodKit route to ``routes``."""
    core_routes.register(routes, services)
    downloads.register(routes, services)
    metrics.register(routes, services)
    training.register(routes, services)
    pod.register(routes, services)
    contract.register(routes, services)
