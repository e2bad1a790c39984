"""Download job routes: queue items or a manifest, list, inspect, cancel, pause and resume."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from ..core.download_request import parse_items
from ._common import only_fields, require_json

if TYPE_CHECKING:
    from ..core.download_job import DownloadJob
    from ..services import Services


async def submit(request: web.Request, services: Services) -> web.Response:
    body = await require_json(request)
    svc = services.downloads
    items = parse_items(body, policy=svc.policy)
    jobs = await asyncio.to_thread(svc.submit, items, force=bool(body.get("force", False)))
    return web.json_response({"jobs": [j.to_wire() for j in jobs]}, status=202)


async def listing(request: web.Request, services: Services) -> web.Response:
    svc = services.downloads
    return web.json_response({"jobs": [j.to_wire() for j in svc.jobs()], "counts": svc.counts()})


async def one(request: web.Request, services: Services) -> web.Response:
    return web.json_response(services.downloads.get(request.match_info["job_id"]).to_wire())


async def cancel(request: web.Request, services: Services) -> web.Response:
    """Cancel an active or paused job, or remove a finished one (the body, if any, must be ``{}``)."""
    if request.body_exists:
        only_fields(await require_json(request), set())
    job = await asyncio.to_thread(services.downloads.cancel, request.match_info["job_id"])
    return web.json_response(job.to_wire())


async def pause(request: web.Request, services: Services) -> web.Response:
    return await _change(request, services.downloads.pause)


async def resume(request: web.Request, services: Services) -> web.Response:
    return await _change(request, services.downloads.resume)


async def _change(request: web.Request, verb: Callable[[str], DownloadJob]) -> web.Response:
    """Pause or resume: an empty JSON body, the job id from the path, the job as it is now."""
    only_fields(await require_json(request), set())
    job = await asyncio.to_thread(verb, request.match_info["job_id"])
    return web.json_response(job.to_wire())
