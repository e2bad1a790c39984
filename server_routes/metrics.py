"""Performance monitor routes: the report and the Prometheus export (with the system gauges)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from ..core.prometheus import PROMETHEUS_CONTENT_TYPE
from ._common import query_int

if TYPE_CHECKING:
    from ..services import Services

MAX_HOURS = 24 * 366

GENERATION_GAUGES = (
    ("hits", "served from the generation cache"),
    ("misses", "looked up in the generation cache and not found"),
    ("stores", "stored in the generation cache"),
    ("bytes_served", "bytes served from the generation cache"),
    ("bytes_stored", "bytes stored in the generation cache"),
    ("bucket_hits", "fetched from the generation cache's bucket mirror"),
    ("bucket_uploads", "uploaded to the generation cache's bucket mirror"),
    ("bucket_refused", "refused from the bucket mirror (failed verification)"),
    ("bucket_errors", "that met an error of the bucket mirror"),
)


def system_gauges(services: Services) -> dict[str, tuple[str, float | None]]:
    """Free disk, GPU memory/utilisation, queue length and idle seconds (absent when unknown)."""
    gauges = services.health.gauges()
    if services.idle.policy.enabled:
        state = services.idle.state()
        idle_s = state.idle_seconds if state.phase in ("idle", "warning", "acting") else 0.0
        gauges["podkit_idle_seconds"] = ("Seconds this pod has been idle (0 while busy).", idle_s)
    if services.generation is not None:
        totals = services.generation.stats.totals()
        for name, text in GENERATION_GAUGES:
            gauges[f"podkit_generation_cache_{name}"] = (f"Node outputs {text}, since start.", totals[name])
    return gauges


async def report(request: web.Request, services: Services) -> web.Response:
    hours = query_int(request, "hours", 24, lo=1, hi=MAX_HOURS)
    return web.json_response(await asyncio.to_thread(services.monitor.report, hours))


async def prometheus(request: web.Request, services: Services) -> web.Response:
    gauges = await asyncio.to_thread(system_gauges, services)
    text = services.monitor.prometheus(gauges)
    return web.Response(body=text.encode(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})
