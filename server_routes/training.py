"""LoRA training job routes: launch, list, inspect (config, log tail, loss), cancel, delete.

Training is always a service; without ``PODKIT_AI_TOOLKIT_DIR`` the service itself refuses a
launch (403) and lists no jobs.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from ..core.errors import InvalidRequest
from ._common import get_bool, only_fields, query_int, require_json

if TYPE_CHECKING:
    from ..services import Services

_MAX_ID = 64


def _job_id(request: web.Request) -> str:
    job_id = request.match_info["job_id"]
    if len(job_id) > _MAX_ID or not job_id.isalnum():
        raise InvalidRequest("job_id must be a training job id (letters and digits)")
    return job_id


async def launch(request: web.Request, services: Services) -> web.Response:
    body = await require_json(request)
    job = await asyncio.to_thread(services.training.submit, body)
    return web.json_response(job.to_wire(), status=202)


async def listing(request: web.Request, services: Services) -> web.Response:
    limit = query_int(request, "limit", 200, lo=1, hi=500)
    jobs = await asyncio.to_thread(services.training.list_jobs, limit=limit)
    return web.json_response({"jobs": [j.to_wire() for j in jobs]})


async def detail(request: web.Request, services: Services) -> web.Response:
    job_id = _job_id(request)
    lines = query_int(request, "log_lines", 100, lo=0, hi=1000)
    return web.json_response(await asyncio.to_thread(services.training.detail, job_id, log_lines=lines))


async def cancel(request: web.Request, services: Services) -> web.Response:
    job_id = _job_id(request)
    only_fields(await require_json(request), set())
    job = await asyncio.to_thread(services.training.cancel, job_id)
    return web.json_response(job.to_wire())


async def delete(request: web.Request, services: Services) -> web.Response:
    """Remove a finished job; ``force`` also removes a failed one whose LoRA never reached the bucket."""
    job_id = _job_id(request)
    body = await require_json(request) if request.body_exists else {}
    only_fields(body, {"force"})
    job = await asyncio.to_thread(services.training.delete, job_id, force=get_bool(body, "force", False))
    return web.json_response(job.to_wire())
