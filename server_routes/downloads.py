"""Download job routes: queue items or a manifest, list, inspect, cancel, pause and resume."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from ..core.download_request import parse_items
from ..core.errors import StoreUnavailable
from ._common import ROUTE_PREFIX, check_token, json_errors, only_fields, require_json

if TYPE_CHECKING:
    from ..jobs.downloads import DownloadService
    from ..services import Services

_JOB_ID = "{job_id}"


def register(routes: web.RouteTableDef, services: Services) -> None:
    token = services.settings.api_token

    def manager() -> DownloadService:
        if services.downloads is None:
            raise StoreUnavailable("the download manager is not running in this process")
        return services.downloads

    @routes.post(f"{ROUTE_PREFIX}/downloads")
    @json_errors
    async def submit(request: web.Request) -> web.Response:
        check_token(request, token)
        body = await require_json(request)
        svc = manager()
        items = parse_items(body, policy=svc.policy)
        jobs = await asyncio.to_thread(svc.submit, items, force=bool(body.get("force", False)))
        return web.json_response({"jobs": [j.to_wire() for j in jobs]}, status=202)

    @routes.get(f"{ROUTE_PREFIX}/downloads")
    @json_errors
    async def listing(request: web.Request) -> web.Response:
        check_token(request, token)  # URLs, destinations, errors
        svc = manager()
        return web.json_response({"jobs": [j.to_wire() for j in svc.jobs()], "counts": svc.counts()})

    @routes.get(f"{ROUTE_PREFIX}/downloads/{_JOB_ID}")
    @json_errors
    async def one(request: web.Request) -> web.Response:
        check_token(request, token)
        return web.json_response(manager().get(request.match_info["job_id"]).to_wire())

    @routes.delete(f"{ROUTE_PREFIX}/downloads/{_JOB_ID}")
    @json_errors
    async def cancel(request: web.Request) -> web.Response:
        check_token(request, token)
        if request.body_exists:
            only_fields(await require_json(request), set())
        job = await asyncio.to_thread(manager().cancel, request.match_info["job_id"])
        return web.json_response(job.to_wire())

    def action(name: str) -> None:
        @routes.post(f"{ROUTE_PREFIX}/downloads/{_JOB_ID}/{name}")
        @json_errors
        async def handler(request: web.Request) -> web.Response:
            check_token(request, token)
            only_fields(await require_json(request), set())
            svc = manager()
            job = await asyncio.to_thread(getattr(svc, name), request.match_info["job_id"])
            return web.json_response(job.to_wire())

    action("pause")
    action("resume")
