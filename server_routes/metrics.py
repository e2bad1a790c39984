"""Performance monitor routes: the report and the Prometheus export (with the system gauges)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from ..core.prometheus import PROMETHEUS_CONTENT_TYPE, generation_families
from ._common import query_int

if TYPE_CHECKING:
    from ..services import Services

MAX_HOURS = 24 * 366


def system_gauges(services: Services) -> dict[str, tuple[str, float | None]]:
    """Free disk, GPU memory/utilisation, queue length and idle seconds (absent when unknown)."""
    gauges = services.health.gauges()
    if services.idle.policy.enabled:
        state = services.idle.state()
        idle_s = state.idle_seconds if state.phase in ("idle", "warning", "acting") else 0.0
        gauges["podkit_idle_seconds"] = ("Seconds this pod has been idle (0 while busy).", idle_s)
    return gauges


async def report(request: web.Request, services: Services) -> web.Response:
    hours = query_int(request, "hours", 24, lo=1, hi=MAX_HOURS)
    return web.json_response(await asyncio.to_thread(services.monitor.report, hours))


async def prometheus(request: web.Request, services: Services) -> web.Response:
    gauges = await asyncio.to_thread(system_gauges, services)
    cache = generation_families(services.generation.stats) if services.generation is not None else []
    text = services.monitor.prometheus(gauges, cache)
    return web.Response(body=text.encode(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})
