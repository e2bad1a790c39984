"""The pod's routes: health (liveness and readiness in one answer) and the idle stop."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from ..core.errors import PodKitError
from ._common import ROUTE_PREFIX, check_token, json_errors, only_fields, require_json

if TYPE_CHECKING:
    from ..backends.idle_watch import IdleWatch
    from ..services import Services


class PodFeatureUnavailable(PodKitError):
    http_status = 503
    code = "unavailable"


def register(routes: web.RouteTableDef, services: Services) -> None:
    token = services.settings.api_token

    def idle() -> IdleWatch:
        if services.idle is None:
            raise PodFeatureUnavailable("the idle watch is not part of this process")
        return services.idle

    @routes.get(f"{ROUTE_PREFIX}/health")
    @json_errors
    async def health(request: web.Request) -> web.Response:
        """200 when every check passes, else 503 with the failing ones (a container HEALTHCHECK)."""
        if services.health is None:
            raise PodFeatureUnavailable("health checks are not part of this process")
        checks = await asyncio.to_thread(services.health.checks)
        failing = [c.name for c in checks if not c.ok]
        body = {"ok": not failing, "failing": failing, "checks": [c.to_wire() for c in checks]}
        return web.json_response(body, status=503 if failing else 200)

    @routes.get(f"{ROUTE_PREFIX}/idle")
    @json_errors
    async def idle_state(request: web.Request) -> web.Response:
        watch = idle()
        return web.json_response({"policy": watch.policy.to_wire(), **watch.state().to_wire()})

    @routes.post(f"{ROUTE_PREFIX}/idle/keepalive")
    @json_errors
    async def keep_alive(request: web.Request) -> web.Response:
        check_token(request, token)
        only_fields(await require_json(request), set())
        watch = idle()
        state = await asyncio.to_thread(watch.keep_alive)
        return web.json_response({"policy": watch.policy.to_wire(), **state.to_wire()})
