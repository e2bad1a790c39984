"""Every PodKit route in one place: method, path under ``/podkit``, handler, and who may call it.

This table *is* the read/write policy. :func:`mount` applies it: with ``PODKIT_API_TOKEN`` set, a
``TOKEN`` route answers 401 without ``Authorization: Bearer <token>``; an ``OPEN`` route answers
anyone. Unset, every route is open (a laptop, a private pod), as the startup warning says.

The rule for a new route: ``OPEN`` only if it changes nothing and shows no bucket key, job detail,
log line, file path or cache folder; a monitor or load balancer must be able to read it without a
secret. ``tests/routes/test_route_table.py`` walks this table against the mounted app, the OpenAPI
document (a ``TOKEN`` route documents the bearer scheme and its 401) and docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from aiohttp import web

from . import cache, contract, downloads, loras, metrics, objects, outbox, pod, presets, status, training
from ._common import Auth, Route

if TYPE_CHECKING:
    from ..services import Services

OPEN, TOKEN = Auth.OPEN, Auth.TOKEN

STATUS = (
    Route("GET", "/status", status.status, OPEN),  # public settings only, never a secret
    Route("GET", "/openapi.json", contract.openapi, OPEN),
)
POD = (
    Route("GET", "/health", pod.health, OPEN),  # a container HEALTHCHECK has no token
    Route("GET", "/idle", pod.idle_state, OPEN),  # the policy /status shows, and a phase
    Route("POST", "/idle/keepalive", pod.keep_alive, TOKEN),
)
METRICS = (
    Route("GET", "/metrics", metrics.prometheus, OPEN),  # a Prometheus scraper has no token
    Route("GET", "/metrics/report", metrics.report, TOKEN),  # prompt ids and their graphs' nodes
)
PRESETS = (Route("GET", "/presets", presets.table, TOKEN),)  # the presets file's path
CACHE = (
    Route("GET", "/cache/stats", cache.stats, TOKEN),  # cache folders
    Route("POST", "/cache/evict", cache.evict, TOKEN),
)
LORAS = (
    Route("GET", "/loras", loras.listing, TOKEN),  # bucket keys
    Route("GET", "/loras/names", loras.names, TOKEN),
    Route("POST", "/loras/refresh", loras.refresh, TOKEN),
)
OUTBOX = (
    Route("GET", "/outbox", outbox.listing, TOKEN),  # bucket keys, errors
    Route("POST", "/outbox/retry", outbox.retry, TOKEN),
)
OBJECTS = (
    # any key, so a bad one gets a JSON 400 instead of aiohttp's plain 404
    Route("GET", "/objects/{bucket}/{key:[\\s\\S]+}", objects.get_object, TOKEN),
)
DOWNLOADS = (
    Route("POST", "/downloads", downloads.submit, TOKEN),
    Route("GET", "/downloads", downloads.listing, TOKEN),  # URLs, destinations, errors
    Route("GET", "/downloads/{job_id}", downloads.one, TOKEN),
    Route("DELETE", "/downloads/{job_id}", downloads.cancel, TOKEN),
    Route("POST", "/downloads/{job_id}/pause", downloads.pause, TOKEN),
    Route("POST", "/downloads/{job_id}/resume", downloads.resume, TOKEN),
)
TRAINING = (
    Route("POST", "/training/jobs", training.launch, TOKEN),
    Route("GET", "/training/jobs", training.listing, TOKEN),  # datasets, bucket keys
    Route("GET", "/training/jobs/{job_id}", training.detail, TOKEN),  # config, paths, the log
    Route("DELETE", "/training/jobs/{job_id}", training.delete, TOKEN),
    Route("POST", "/training/jobs/{job_id}/cancel", training.cancel, TOKEN),
)

ROUTES: tuple[Route, ...] = (
    *STATUS, *POD, *METRICS, *PRESETS, *CACHE, *LORAS, *OUTBOX, *OBJECTS, *DOWNLOADS, *TRAINING,
)  # fmt: skip


def mount(routes: web.RouteTableDef, services: Services, table: Iterable[Route] = ROUTES) -> None:
    """Add each route of ``table`` to ``routes``, its handler bound to ``services`` behind the policy."""
    for route in table:
        routes.route(route.method, route.url)(route.bind(services))
