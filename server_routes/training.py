"""LoRA training job routes: launch, list, inspect (config, log tail, loss), cancel, delete."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from ..core.errors import Forbidden, InvalidRequest
from ._common import ROUTE_PREFIX, check_token, get_bool, json_errors, only_fields, query_int, require_json

if TYPE_CHECKING:
    from ..jobs.training import TrainingService
    from ..services import Services

_JOBS = f"{ROUTE_PREFIX}/training/jobs"
_JOB_ID = "{job_id}"
_MAX_ID = 64


def _job_id(request: web.Request) -> str:
    job_id = request.match_info["job_id"]
    if len(job_id) > _MAX_ID or not job_id.isalnum():
        raise InvalidRequest("job_id must be a training job id (letters and digits)")
    return job_id


def register(routes: web.RouteTableDef, services: Services) -> None:
    token = services.settings.api_token

    def trainer() -> TrainingService:
        svc = services.training
        if svc is None:
            raise Forbidden("training is not available in this process")
        return svc

    @routes.post(_JOBS)
    @json_errors
    async def launch(request: web.Request) -> web.Response:
        check_token(request, token)
        body = await require_json(request)
        job = await asyncio.to_thread(trainer().submit, body)
        return web.json_response(job.to_wire(), status=202)

    @routes.get(_JOBS)
    @json_errors
    async def listing(request: web.Request) -> web.Response:
        check_token(request, token)  # datasets, bucket keys
        limit = query_int(request, "limit", 200, lo=1, hi=500)
        jobs = await asyncio.to_thread(trainer().list_jobs, limit=limit)
        return web.json_response({"jobs": [j.to_wire() for j in jobs]})

    @routes.get(f"{_JOBS}/{_JOB_ID}")
    @json_errors
    async def detail(request: web.Request) -> web.Response:
        check_token(request, token)  # config, paths, the trainer's log
        job_id = _job_id(request)
        lines = query_int(request, "log_lines", 100, lo=0, hi=1000)
        return web.json_response(await asyncio.to_thread(trainer().detail, job_id, log_lines=lines))

    @routes.post(f"{_JOBS}/{_JOB_ID}/cancel")
    @json_errors
    async def cancel(request: web.Request) -> web.Response:
        check_token(request, token)
        job_id = _job_id(request)
        only_fields(await require_json(request), set())
        job = await asyncio.to_thread(trainer().cancel, job_id)
        return web.json_response(job.to_wire())

    @routes.delete(f"{_JOBS}/{_JOB_ID}")
    @json_errors
    async def delete(request: web.Request) -> web.Response:
        check_token(request, token)
        job_id = _job_id(request)
        body = await require_json(request) if request.body_exists else {}
        only_fields(body, {"force"})
        force = get_bool(body, "force", False)
        job = await asyncio.to_thread(trainer().delete, job_id, force=force)
        return web.json_response(job.to_wire())
