"""The pod's routes: health (liveness and readiness in one answer) and the idle stop."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from ._common import only_fields, require_json

if TYPE_CHECKING:
    from ..services import Services


async def health(request: web.Request, services: Services) -> web.Response:
    """200 when every check passes, else 503 with the failing ones (a container HEALTHCHECK)."""
    checks = await asyncio.to_thread(services.health.checks)
    failing = [c.name for c in checks if not c.ok]
    body = {"ok": not failing, "failing": failing, "checks": [c.to_wire() for c in checks]}
    return web.json_response(body, status=503 if failing else 200)


async def idle_state(request: web.Request, services: Services) -> web.Response:
    watch = services.idle
    return web.json_response({"policy": watch.policy.to_wire(), **watch.state().to_wire()})


async def keep_alive(request: web.Request, services: Services) -> web.Response:
    """Restart the idle clock; the answer is the new idle state."""
    only_fields(await require_json(request), set())
    watch = services.idle
    state = await asyncio.to_thread(watch.keep_alive)
    return web.json_response({"policy": watch.policy.to_wire(), **state.to_wire()})
