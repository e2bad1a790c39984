"""PodKit's HTTP routes, bound with :func:`register` under ``/podkit/``.

Mounted on ``PromptServer.instance.routes`` inside ComfyUI (which also serves them under
``/api/podkit/…``), or on a bare ``aiohttp.web.Application`` in tests and in the standalone
control plane. Every route is a row of :mod:`.table` (method, path, handler, auth level); the
handlers live in one module per area, each with its OpenAPI fragment in ``openapi/``. Handlers are
thin: parse, call a service (blocking work via ``asyncio.to_thread``), answer JSON.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from .table import ROUTES, mount

if TYPE_CHECKING:
    from ..services import Services

__all__ = ["ROUTES", "register"]


def register(routes: web.RouteTableDef, services: Services) -> None:
    """Add every PodKit route to ``routes`` (the table's policy applied)."""
    mount(routes, services)
