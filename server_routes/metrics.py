"""Performance monitor and sampler-preset routes: the report, the Prometheus export, the preset table."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from ..core.errors import ConfigError, PodKitError
from ..core.metrics import PROMETHEUS_CONTENT_TYPE
from ..core.presets import table_to_wire
from ._common import ROUTE_PREFIX, json_errors, query_int

if TYPE_CHECKING:
    from ..backends.monitor import Monitor
    from ..services import Services

MAX_HOURS = 24 * 366


class MonitorUnavailable(PodKitError):
    http_status = 503
    code = "monitor_unavailable"


GENERATION_GAUGES = (
    ("hits", "served from the generation cache"),
    ("misses", "looked up in the generation cache and not found"),
    ("stores", "stored in the generation cache"),
    ("bytes_served", "bytes served from the generation cache"),
    ("bytes_stored", "bytes stored in the generation cache"),
)


def system_gauges(services: Services) -> dict[str, tuple[str, float | None]]:
    """Free disk, GPU memory/utilisation, queue length and idle seconds (absent when unknown)."""
    gauges = services.health.gauges() if services.health is not None else {}
    if services.idle is not None and services.idle.policy.enabled:
        state = services.idle.state()
        idle_s = state.idle_seconds if state.phase in ("idle", "warning", "acting") else 0.0
        gauges["podkit_idle_seconds"] = ("Seconds this pod has been idle (0 while busy).", idle_s)
    if services.generation is not None:
        totals = services.generation.stats.totals()
        for name, text in GENERATION_GAUGES:
            gauges[f"podkit_generation_cache_{name}"] = (f"Node outputs {text}, since start.", totals[name])
    return gauges


def register(routes: web.RouteTableDef, services: Services) -> None:
    def monitor() -> Monitor:
        if services.monitor is None:
            raise MonitorUnavailable("the performance monitor is not running in this process")
        return services.monitor

    @routes.get(f"{ROUTE_PREFIX}/metrics/report")
    @json_errors
    async def report(request: web.Request) -> web.Response:
        hours = query_int(request, "hours", 24, lo=1, hi=MAX_HOURS)
        answer = await asyncio.to_thread(monitor().report, hours)
        return web.json_response(answer)

    @routes.get(f"{ROUTE_PREFIX}/metrics")
    @json_errors
    async def prometheus(request: web.Request) -> web.Response:
        gauges = await asyncio.to_thread(system_gauges, services)
        text = monitor().prometheus(gauges)
        return web.Response(body=text.encode(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    @routes.get(f"{ROUTE_PREFIX}/presets")
    @json_errors
    async def presets(request: web.Request) -> web.Response:
        book = services.presets
        try:
            table, error = await asyncio.to_thread(book.table), None
        except ConfigError as e:
            table, error = book.base, str(e)
        return web.json_response({"source": book.source(), "error": error, "families": table_to_wire(table)})
