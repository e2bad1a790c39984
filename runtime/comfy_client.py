"""A running ComfyUI, seen from a worker or pod on the same host: queue a prompt, follow it, stop it.

``run_prompt`` opens ``/ws?clientId=…`` before ``POST /prompt`` (execution events go only to the
client that queued the prompt), hands every event of its prompt to ``on_event``, and ends at
``execution_success`` / ``execution_error`` / ``execution_interrupted``, then reads the prompt's
``/history`` entry. A prompt that does not validate raises :class:`PromptRejected` with ComfyUI's
node errors; a node that fails raises :class:`PromptFailed` naming the node.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ..core.errors import InvalidRequest, PodKitError

EventHandler = Callable[[str, Mapping[str, Any]], Awaitable[None] | None]
TERMINAL = {"execution_success", "execution_error", "execution_interrupted"}


class ComfyUnavailable(PodKitError):
    http_status = 503
    code = "comfy_unavailable"


class PromptRejected(InvalidRequest):
    """ComfyUI refused the graph (validation): its error and node errors, verbatim."""

    code = "invalid_workflow"

    def __init__(self, error: Mapping[str, Any], node_errors: Mapping[str, Any]) -> None:
        lines = [str(error.get("message") or error.get("type") or "invalid workflow")]
        for node_id, info in node_errors.items():
            for err in info.get("errors", []):
                lines.append(
                    f"node {node_id} ({info.get('class_type')}): {err.get('message')}: {err.get('details')}"
                )
        super().__init__("; ".join(lines))
        self.error = dict(error)
        self.node_errors = dict(node_errors)


class PromptFailed(PodKitError):
    """A node raised: its id, type and message (ComfyUI's traceback stays in ComfyUI's log)."""

    http_status = 500
    code = "node_failed"

    def __init__(self, detail: Mapping[str, Any]) -> None:
        self.node_id = str(detail.get("node_id"))
        self.node_type = str(detail.get("node_type"))
        self.exception_type = str(detail.get("exception_type") or "")
        self.exception_message = str(detail.get("exception_message") or "").strip()
        super().__init__(
            f"node {self.node_id} ({self.node_type}) failed: {self.exception_type}: {self.exception_message}"
        )


class PromptInterrupted(PodKitError):
    http_status = 409
    code = "interrupted"


@dataclass
class PromptRun:
    prompt_id: str
    history: Mapping[str, Any] = field(default_factory=dict)
    cached_nodes: list[str] = field(default_factory=list)
    queued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def outputs(self) -> Mapping[str, Any]:
        outputs = self.history.get("outputs") or {}
        return outputs if isinstance(outputs, Mapping) else {}


class ComfyClient:
    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session

    async def get_json(self, path: str, timeout: float = 30) -> Any:
        try:
            async with self.session.get(
                self.base_url + path, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                resp.raise_for_status()
                return await resp.json()
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise ComfyUnavailable(f"ComfyUI at {self.base_url} did not answer {path}: {e}") from e

    async def post(self, path: str, body: Mapping[str, Any]) -> tuple[int, Any]:
        try:
            async with self.session.post(
                self.base_url + path, json=dict(body), timeout=aiohttp.ClientTimeout(total=60)
            ) as resp:
                text = await resp.text()
                return resp.status, (json.loads(text) if text.strip() else None)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise ComfyUnavailable(f"ComfyUI at {self.base_url} did not answer {path}: {e}") from e

    async def alive(self) -> bool:
        try:
            await self.get_json("/system_stats", timeout=5)
            return True
        except ComfyUnavailable:
            return False

    async def interrupt(self, prompt_id: str) -> None:
        """Stop ``prompt_id``: drop it from the queue if it waits, interrupt it if it runs."""
        await self.post("/queue", {"delete": [prompt_id]})
        queue = await self.get_json("/queue")
        running = [item[1] for item in queue.get("queue_running", []) if len(item) > 1]
        if prompt_id in running:
            # 0.3.64's /interrupt takes no body (it stops whatever runs); newer hosts accept prompt_id
            await self.post("/interrupt", {"prompt_id": prompt_id})

    async def run_prompt(
        self,
        prompt: Mapping[str, Any],
        *,
        on_event: EventHandler | None = None,
        extra_data: Mapping[str, Any] | None = None,
        prompt_id: str | None = None,
    ) -> PromptRun:
        client_id = uuid.uuid4().hex
        prompt_id = prompt_id or str(uuid.uuid4())
        try:
            ws = await self.session.ws_connect(f"{self.base_url}/ws?clientId={client_id}", heartbeat=30)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise ComfyUnavailable(f"ComfyUI at {self.base_url}: websocket: {e}") from e
        run = PromptRun(prompt_id=prompt_id, queued_at=time.time())
        try:
            status, body = await self.post(
                "/prompt",
                {
                    "prompt": dict(prompt),
                    "client_id": client_id,
                    "prompt_id": prompt_id,
                    "extra_data": dict(extra_data or {}),
                },
            )
            if status == 400:
                body = body or {}
                raise PromptRejected(body.get("error") or {}, body.get("node_errors") or {})
            if status != 200:
                raise ComfyUnavailable(f"POST /prompt -> HTTP {status}: {str(body)[:500]}")
            run.prompt_id = prompt_id = str(body.get("prompt_id", prompt_id))
            error: Mapping[str, Any] | None = None
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        raise ComfyUnavailable("ComfyUI closed the websocket during the prompt")
                    continue  # binary previews
                event = json.loads(msg.data)
                kind, data = event.get("type"), event.get("data") or {}
                if not isinstance(data, Mapping) or data.get("prompt_id", prompt_id) != prompt_id:
                    continue
                if kind == "execution_start":
                    run.started_at = time.time()
                elif kind == "execution_cached":
                    run.cached_nodes = [str(n) for n in data.get("nodes", [])]
                if on_event is not None:
                    maybe = on_event(str(kind), data)
                    if maybe is not None:
                        await maybe
                if kind in TERMINAL:
                    run.finished_at = time.time()
                    if kind == "execution_error":
                        error = data
                    elif kind == "execution_interrupted":
                        raise PromptInterrupted(f"prompt {prompt_id} was interrupted")
                    break
            else:
                raise ComfyUnavailable("ComfyUI closed the websocket during the prompt")
        finally:
            await ws.close()
        if error is not None:
            raise PromptFailed(error)
        run.history = await self._history(prompt_id)
        return run

    async def _history(self, prompt_id: str, timeout: float = 30.0) -> Mapping[str, Any]:
        """The prompt's history entry; ComfyUI writes it just after it sends execution_success."""
        deadline = time.monotonic() + timeout
        while True:
            history = await self.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id) if isinstance(history, Mapping) else None
            if isinstance(entry, Mapping) or time.monotonic() > deadline:
                return entry or {}
            await asyncio.sleep(0.05)
