"""The inference role's RunPod handler: job input → ComfyUI prompt → every output in the bucket.

One job: validate the input (``core/worker_jobs.py``), render a template if one is named, upload
the input images to ComfyUI under a per-job subfolder, queue the prompt with a client id and follow
its websocket (progress goes to ``runpod.serverless.progress_update``), then spool every output into
the outbox and wait for the uploads. Errors are answers, never tracebacks: an invalid graph returns
ComfyUI's node errors, a failing node its id, type and message. RunPod's cancel (the SDK cancels the
handler's task) and the job timeout interrupt the prompt and upload nothing of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from ..core.errors import PodKitError
from ..core.gencache import BYPASS_KEY
from ..core.worker_jobs import InferenceRequest, parse_inference, rebind_images
from ..runtime.cold_start import ComfyHandle
from ..runtime.comfy_client import ComfyClient, PromptFailed, PromptRejected
from ..services import Services
from .outputs import OutputDeliverer, ProducedFile, history_files, produced_files, saved_by_podkit, snapshot
from .templates import TemplateLibrary

logger = logging.getLogger(__name__)
ProgressFn = Callable[[Mapping[str, Any], Mapping[str, Any]], None]
JOB_FOLDER = "podkit-jobs"


class JobTimeout(PodKitError):
    http_status = 504
    code = "timeout"


class InferenceWorker:
    def __init__(
        self,
        services: Services,
        comfy: ComfyHandle,
        templates: TemplateLibrary,
        *,
        progress: ProgressFn,
        max_timeout: float = 600.0,
        max_base64_bytes: int = 8 * 1024**2,
        progress_interval: float = 1.0,
    ) -> None:
        self.services = services
        self.comfy = comfy
        self.templates = templates
        self.progress = progress
        self.max_timeout = max_timeout
        self.max_base64_bytes = max_base64_bytes
        self.progress_interval = progress_interval
        self.deliverer = OutputDeliverer(services.outbox, services.saver, services.settings.output_bucket)
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    def fit(self) -> None:
        """The SDK's fitness check: raise when this worker's ComfyUI is gone."""
        if not self.comfy.alive():
            raise RuntimeError(f"ComfyUI at {self.comfy.url} is not running")

    async def handle(self, job: Mapping[str, Any]) -> dict[str, Any]:
        job_id = str(job.get("id") or "job")
        t0 = time.monotonic()
        try:
            if not await asyncio.to_thread(self.comfy.alive):
                # this worker cannot serve any job: answer, and let RunPod replace it
                return {
                    "error": f"ComfyUI at {self.comfy.url} is not running on this worker",
                    "refresh_worker": True,
                }
            request = parse_inference(job.get("input"), max_timeout=self.max_timeout)
            return await asyncio.wait_for(self._run(job, job_id, request, t0), request.timeout)
        except asyncio.TimeoutError:
            return {"error": f"job {job_id} timed out; its prompt was interrupted and nothing was uploaded"}
        except PromptRejected as e:
            return {"error": str(e), "node_errors": e.node_errors}
        except PromptFailed as e:
            return {
                "error": str(e),
                "node": {"id": e.node_id, "type": e.node_type, "exception_type": e.exception_type},
            }
        except PodKitError as e:
            return {"error": str(e)}
        except Exception as e:  # noqa: BLE001 - an answer, never a traceback; the log keeps it
            logger.exception("job %s failed", job_id)
            return {"error": f"internal error: {type(e).__name__}: {e}"}

    async def _run(
        self, job: Mapping[str, Any], job_id: str, request: InferenceRequest, t0: float
    ) -> dict[str, Any]:
        if request.template is not None:
            template = await asyncio.to_thread(self.templates.get, request.template)
            graph: Mapping[str, Any] = template.render(request.params)
        else:
            graph = request.workflow or {}
        # one session per event loop, kept between jobs (no new connection per job)
        session = self._session_for_this_loop()
        client = ComfyClient(self.comfy.url, session)
        names = await self._upload_images(session, job_id, request)
        graph = rebind_images(graph, names)
        before = await asyncio.to_thread(snapshot, self.comfy.output_dir)
        prompt_id = str(uuid.uuid4())  # known before ComfyUI answers, so a cancel can name it
        reporter = _ProgressReporter(job, graph, self.progress, self.progress_interval)
        queued = time.monotonic()
        try:
            extra = {} if request.generation_cache else {BYPASS_KEY: False}
            run = await client.run_prompt(graph, on_event=reporter, prompt_id=prompt_id, extra_data=extra)
        except (asyncio.CancelledError, asyncio.TimeoutError):
            # RunPod cancelled the job, or its time is up: stop the prompt, upload nothing of it
            await asyncio.shield(self._interrupt(client, prompt_id))
            raise
        ran = time.monotonic()
        files = await self._produced(client, run.outputs, before)
        deadline = t0 + request.timeout
        deliveries = await asyncio.to_thread(
            self.deliverer.spool, job_id, run.prompt_id, files, request.return_base64
        )
        await asyncio.to_thread(
            self.deliverer.wait, deliveries, time.monotonic() + max(0.0, deadline - time.monotonic())
        )
        outputs, images = await asyncio.to_thread(self.deliverer.answer, deliveries, self.max_base64_bytes)
        saved_outputs, saved_images = saved_by_podkit(run.outputs)
        outputs += saved_outputs
        images += saved_images
        done = time.monotonic()
        answer: dict[str, Any] = {
            "prompt_id": run.prompt_id,
            "outputs": outputs,
            "images": images,
            "cached_nodes": run.cached_nodes,
            "timings": {
                "queue": round((run.started_at or run.queued_at) - run.queued_at, 3),
                "run": round(ran - queued, 3),
                "upload": round(done - ran, 3),
                "total": round(done - t0, 3),
            },
        }
        waiting = [o for o in outputs if o.get("status") not in ("done", None)]
        if waiting:
            answer["warning"] = (
                f"{len(waiting)} output(s) wait for the store; the outbox delivers them when it is back"
            )
        return answer

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    def _session_for_this_loop(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = aiohttp.ClientSession()
            self._session_loop = loop
        return self._session

    async def _upload_images(
        self, session: aiohttp.ClientSession, job_id: str, request: InferenceRequest
    ) -> dict[str, str]:
        """Input images into ComfyUI's input folder under ``podkit-jobs/<job>/`` (via ``/upload/image``)."""
        names: dict[str, str] = {}
        subfolder = f"{JOB_FOLDER}/{_safe(job_id)}"
        for image in request.images:
            form = aiohttp.FormData()
            form.add_field("image", image.data, filename=image.name, content_type="application/octet-stream")
            form.add_field("subfolder", subfolder)
            form.add_field("type", "input")
            form.add_field("overwrite", "true")
            async with session.post(self.comfy.url + "/upload/image", data=form) as resp:
                if resp.status != 200:
                    raise PodKitError(f"images: ComfyUI refused {image.name!r}: HTTP {resp.status}")
                body = await resp.json()
            names[image.name] = f"{body.get('subfolder') or subfolder}/{body.get('name') or image.name}"
        return names

    async def _produced(
        self, client: ComfyClient, outputs: Mapping[str, Any], before: set[Any]
    ) -> list[ProducedFile]:
        if self.comfy.output_dir is not None:
            return await asyncio.to_thread(produced_files, outputs, self.comfy.output_dir, before)
        # a ComfyUI this worker did not start: fetch what the history names over /view
        files = []
        for node_id, entry in history_files(outputs):
            query = {"filename": entry["filename"], "subfolder": entry.get("subfolder", ""), "type": "output"}
            async with client.session.get(client.base_url + "/view", params=query) as resp:
                resp.raise_for_status()
                files.append(ProducedFile(node_id, None, entry["filename"], await resp.read()))
        return files

    async def _interrupt(self, client: ComfyClient, prompt_id: str) -> None:
        try:
            await client.interrupt(prompt_id)
        except PodKitError as e:
            logger.warning("could not interrupt prompt %s: %s", prompt_id, e)


class _ProgressReporter:
    """ComfyUI's execution events → ``progress_update`` (node, step/total, percent), at most once a
    ``interval`` seconds, except that a new node is always reported."""

    def __init__(
        self, job: Mapping[str, Any], graph: Mapping[str, Any], send: ProgressFn, interval: float
    ) -> None:
        self.job, self.graph, self.send, self.interval = job, graph, send, interval
        self.node: str | None = None
        self.last = 0.0
        self.nodes_done = 0

    def __call__(self, kind: str, data: Mapping[str, Any]) -> None:
        now = time.monotonic()
        if kind == "executing" and data.get("node") is not None:
            self.node = str(data["node"])
            node_type = self._type(self.node)
            self._send({"node": self.node, "node_type": node_type, "nodes_done": self.nodes_done,
                        "nodes_total": len(self.graph)})  # fmt: skip
            self.nodes_done += 1
            self.last = now
        elif kind == "progress" and now - self.last >= self.interval:
            value, total = int(data.get("value", 0)), int(data.get("max", 0) or 0)
            node = str(data.get("node") or self.node)
            self._send({"node": node, "node_type": self._type(node), "step": value, "total": total,
                        "percent": round(100.0 * value / total, 1) if total else None})  # fmt: skip
            self.last = now

    def _type(self, node: str | None) -> str | None:
        entry = self.graph.get(node) if node is not None else None
        return entry.get("class_type") if isinstance(entry, Mapping) else None

    def _send(self, progress: Mapping[str, Any]) -> None:
        try:
            self.send(self.job, dict(progress))
        except Exception:  # progress is best effort
            logger.debug("progress update failed", exc_info=True)


def _safe(job_id: str) -> str:
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in job_id)[:128] or "job"
