"""A small client for a running ComfyUI server (stdlib + aiohttp only), used by the tests/comfy tier.

    client = ComfyClient("http://127.0.0.1:8188")
    result = client.run_workflow(prompt)                # sync; run_workflow_async() inside a loop
    assert result.ok, result.describe()
    png = result.image_bytes()[0]

``run_workflow`` opens ``/ws?clientId=…`` *before* posting ``/prompt`` (execution events go only to
the client that queued the prompt), collects every JSON message (core ones and custom ones such as
``podkit.*``), waits for ``execution_success`` / ``execution_error`` / ``execution_interrupted`` of
its prompt id, then reads ``/history/<prompt_id>``. A prompt that fails validation (HTTP 400) comes
back as a ``RunResult`` with status ``"rejected"`` and its ``node_errors``; ``raise_for_status()`` turns
any non-success into a readable ``WorkflowFailed``.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp

TERMINAL_EVENTS = {
    "execution_success": "success",
    "execution_error": "error",
    "execution_interrupted": "interrupted",
}


class ComfyError(Exception):
    """Talking to ComfyUI failed (unreachable server, unexpected HTTP status, ...)."""


class ComfyHTTPError(ComfyError):
    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> HTTP {status}: {body[:2000]}")
        self.status = status
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class WorkflowFailed(ComfyError):
    def __init__(self, result: RunResult) -> None:
        super().__init__(result.describe())
        self.result = result


@dataclass(frozen=True)
class ImageRef:
    """One entry of an output node's ``images`` list (what ``/view`` needs)."""

    node_id: str
    filename: str
    subfolder: str = ""
    type: str = "output"

    def query(self) -> str:
        return urllib.parse.urlencode(
            {"filename": self.filename, "subfolder": self.subfolder, "type": self.type}
        )


@dataclass
class RunResult:
    prompt_id: str
    #: "success" | "error" | "interrupted" | "rejected" (HTTP 400 from /prompt) | "timeout"
    status: str
    base_url: str
    #: every JSON websocket message received while following the run, in order, as sent by the
    #: server ({"type": ..., "data": ...}) plus "t": seconds since the prompt was posted
    events: list[dict[str, Any]] = field(default_factory=list)
    #: /history outputs by node id (the ``ui`` dicts: {"images": [...]}, ...)
    outputs: dict[str, Any] = field(default_factory=dict)
    #: the whole /history/<prompt_id> entry (prompt, outputs, status, meta), None if never recorded
    history: dict[str, Any] | None = None
    #: execution_error / execution_interrupted data (node_id, node_type, exception_message,
    #: exception_type, traceback, ...), or the "error" object of a rejected prompt
    error: dict[str, Any] | None = None
    #: validation errors by node id (from /prompt; normally empty for accepted prompts)
    node_errors: dict[str, Any] = field(default_factory=dict)
    #: binary websocket frames seen (previews, progress text): count by frame type
    binary_frames: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def event_types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def events_of(self, *types: str) -> list[dict[str, Any]]:
        """The ``data`` of every event whose type is one of ``types`` (prefix match with a trailing
        ``*``, e.g. ``events_of("podkit.*")``)."""
        out = []
        for e in self.events:
            t = e.get("type", "")
            for want in types:
                if t == want or (want.endswith("*") and t.startswith(want[:-1])):
                    out.append(e.get("data"))
                    break
        return out

    def executed_nodes(self) -> list[str]:
        """Node ids that ran (``executing`` events), in order, without the final ``None``."""
        return [
            d["node"]
            for d in self.events_of("executing")
            if isinstance(d, dict) and d.get("node") is not None and d.get("prompt_id") == self.prompt_id
        ]

    def cached_nodes(self) -> list[str]:
        out: list[str] = []
        for d in self.events_of("execution_cached"):
            if isinstance(d, dict) and d.get("prompt_id") == self.prompt_id:
                out.extend(d.get("nodes", []))
        return out

    def images(self, node_id: str | None = None) -> list[ImageRef]:
        refs = []
        for nid, out in self.outputs.items():
            if node_id is not None and str(nid) != str(node_id):
                continue
            for img in (out or {}).get("images", []) or []:
                refs.append(
                    ImageRef(
                        node_id=str(nid),
                        filename=img["filename"],
                        subfolder=img.get("subfolder", ""),
                        type=img.get("type", "output"),
                    )
                )
        return refs

    def download(self, ref: ImageRef) -> bytes:
        return _http_bytes("GET", f"{self.base_url}/view?{ref.query()}")

    def image_bytes(self, node_id: str | None = None) -> list[bytes]:
        """Download every output image (optionally of one node) through ``/view``."""
        return [self.download(ref) for ref in self.images(node_id)]

    def describe(self) -> str:
        lines = [f"prompt {self.prompt_id}: {self.status} after {self.elapsed:.1f}s"]
        if self.error:
            err = self.error
            if "exception_message" in err or "node_type" in err:
                what = f"{err.get('exception_type', '')}: {err.get('exception_message', '')}".strip(": ")
                lines.append(
                    f"  node {err.get('node_id')} ({err.get('node_type')})" + (f": {what}" if what else "")
                )
                tb = err.get("traceback")
                if tb:
                    lines.append("  " + "".join(tb)[-3000:].replace("\n", "\n  "))
            else:
                lines.append(f"  error: {json.dumps(err)[:2000]}")
        for nid, ne in (self.node_errors or {}).items():
            for e in ne.get("errors", []):
                lines.append(
                    f"  node {nid} ({ne.get('class_type')}): {e.get('type')}: {e.get('message')} "
                    f"{e.get('details', '')}".rstrip()
                )
        if self.status != "success":
            lines.append(f"  events: {self.event_types()}")
        return "\n".join(lines)

    def raise_for_status(self) -> RunResult:
        if not self.ok:
            raise WorkflowFailed(self)
        return self


def _http_bytes(method: str, url: str, body: Any = None, timeout: float = 60) -> bytes:
    data = None
    headers = {}
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - http://127.0.0.1 only
            return resp.read()
    except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", "replace")
        e.close()
        raise ComfyHTTPError(method, url, e.code, text) from None
    except (urllib.error.URLError, OSError) as e:
        raise ComfyError(f"{method} {url}: {e}") from e


def _run_sync(coro: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise RuntimeError(
        "called a sync ComfyClient method inside a running event loop; use the *_async variant"
    )


class ComfyClient:
    def __init__(self, base_url: str, *, request_timeout: float = 60) -> None:
        self.base_url = base_url.rstrip("/")
        self.request_timeout = request_timeout

    def __repr__(self) -> str:
        return f"ComfyClient({self.base_url!r})"

    # ---- plain HTTP (sync, stdlib) -------------------------------------------------------------

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def get_bytes(self, path: str) -> bytes:
        return _http_bytes("GET", self.url(path), timeout=self.request_timeout)

    def get_json(self, path: str) -> Any:
        return json.loads(self.get_bytes(path))

    def post_json(self, path: str, body: Any = None) -> Any:
        raw = _http_bytes("POST", self.url(path), body if body is not None else {}, self.request_timeout)
        return json.loads(raw) if raw.strip() else None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Any method; returns (status, parsed JSON or text) instead of raising on 4xx/5xx."""
        try:
            raw = _http_bytes(method, self.url(path), body, self.request_timeout)
            status = 200
        except ComfyHTTPError as e:
            raw, status = e.body.encode(), e.status
        text = raw.decode("utf-8", "replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """``GET /object_info`` (all classes) or ``/object_info/<class>`` → that class's entry
        (raises KeyError when the class is unknown)."""
        if node_class is None:
            return self.get_json("/object_info")
        info = self.get_json("/object_info/" + urllib.parse.quote(node_class, safe=""))
        return info[node_class]

    def history(self, prompt_id: str | None = None) -> dict[str, Any]:
        return self.get_json("/history" + (f"/{prompt_id}" if prompt_id else ""))

    def queue(self) -> dict[str, Any]:
        return self.get_json("/queue")

    def interrupt(self) -> None:
        self.post_json("/interrupt", {})

    def free(self, *, unload_models: bool = True, free_memory: bool = True) -> None:
        self.post_json("/free", {"unload_models": unload_models, "free_memory": free_memory})

    def system_stats(self) -> dict[str, Any]:
        return self.get_json("/system_stats")

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        return self.get_bytes("/view?" + ImageRef("", filename, subfolder, type).query())

    # ---- workflows -----------------------------------------------------------------------------

    def run_workflow(
        self,
        prompt: dict[str, Any],
        *,
        extra_pnginfo: dict[str, Any] | None = None,
        timeout: float = 600,
        client_id: str | None = None,
        prompt_id: str | None = None,
        extra_data: dict[str, Any] | None = None,
    ) -> RunResult:
        return _run_sync(
            self.run_workflow_async(
                prompt,
                extra_pnginfo=extra_pnginfo,
                timeout=timeout,
                client_id=client_id,
                prompt_id=prompt_id,
                extra_data=extra_data,
            )
        )

    async def run_workflow_async(
        self,
        prompt: dict[str, Any],
        *,
        extra_pnginfo: dict[str, Any] | None = None,
        timeout: float = 600,
        client_id: str | None = None,
        prompt_id: str | None = None,
        extra_data: dict[str, Any] | None = None,
    ) -> RunResult:
        client_id = client_id or uuid.uuid4().hex
        prompt_id = prompt_id or str(uuid.uuid4())
        extra = dict(extra_data or {})
        if extra_pnginfo is not None:
            extra["extra_pnginfo"] = extra_pnginfo
        body = {"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id, "extra_data": extra}
        result = RunResult(prompt_id=prompt_id, status="timeout", base_url=self.base_url)
        t0 = time.monotonic()
        deadline = t0 + timeout
        req_timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        async with aiohttp.ClientSession(timeout=req_timeout) as session:
            ws_url = self.base_url.replace("http", "ws", 1) + f"/ws?clientId={client_id}"
            try:
                ws = await session.ws_connect(ws_url, heartbeat=None, max_msg_size=0)
            except aiohttp.ClientError as e:
                raise ComfyError(f"cannot open {ws_url}: {e}") from e
            try:
                async with session.post(self.url("/prompt"), json=body) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        try:
                            answer = json.loads(text)
                        except ValueError:
                            raise ComfyHTTPError("POST", self.url("/prompt"), resp.status, text) from None
                        result.status = "rejected"
                        result.error = answer.get("error")
                        result.node_errors = answer.get("node_errors") or {}
                        result.elapsed = time.monotonic() - t0
                        return result
                    answer = json.loads(text)
                result.node_errors = answer.get("node_errors") or {}
                prompt_id = result.prompt_id = answer.get("prompt_id", prompt_id)

                terminal = await self._follow(ws, session, result, t0, deadline)
            finally:
                await ws.close()

            if terminal is None:
                # timed out: status stays "timeout"; don't leave the prompt running on a shared server
                await self._cancel(session, prompt_id)
                entry = (await self._get_json(session, f"/history/{prompt_id}")).get(prompt_id)
            else:
                result.status = terminal
                # execution_success is sent before the prompt worker writes history: poll briefly.
                hist_deadline = time.monotonic() + 30
                while True:
                    entry = (await self._get_json(session, f"/history/{prompt_id}")).get(prompt_id)
                    if entry is not None or time.monotonic() > hist_deadline:
                        break
                    await asyncio.sleep(0.05)
            if entry is not None:
                result.history = entry
                result.outputs = entry.get("outputs") or {}
                if result.error is None and result.status in ("error", "interrupted"):
                    result.error = _error_from_history(entry)
        result.elapsed = time.monotonic() - t0
        return result

    async def _follow(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        session: aiohttp.ClientSession,
        result: RunResult,
        t0: float,
        deadline: float,
    ) -> str | None:
        """Collect websocket events until our prompt finishes; None on timeout."""
        prompt_id = result.prompt_id
        last_poll = time.monotonic()
        ws_open = True
        while time.monotonic() < deadline:
            if ws_open:
                try:
                    msg = await ws.receive(timeout=min(1.0, max(0.01, deadline - time.monotonic())))
                except asyncio.TimeoutError:
                    msg = None
                if msg is not None:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        try:
                            event = json.loads(msg.data)
                        except ValueError:
                            event = {"type": "<non-json>", "data": msg.data}
                        if isinstance(event, dict):
                            event["t"] = round(time.monotonic() - t0, 3)
                            result.events.append(event)
                            etype = event.get("type")
                            data = event.get("data") or {}
                            if etype in TERMINAL_EVENTS and data.get("prompt_id") == prompt_id:
                                if etype != "execution_success":
                                    result.error = data
                                return TERMINAL_EVENTS[etype]
                        continue
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        kind = int.from_bytes(msg.data[:4], "big") if len(msg.data) >= 4 else -1
                        result.binary_frames[kind] = result.binary_frames.get(kind, 0) + 1
                        continue
                    if msg.type in (
                        aiohttp.WSMsgType.CLOSE,
                        aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.ERROR,
                    ):
                        ws_open = False
            else:
                await asyncio.sleep(0.5)
            # Safety net (websocket dropped, or an event was missed): poll history now and then.
            if time.monotonic() - last_poll > (2.0 if ws_open else 0.5):
                last_poll = time.monotonic()
                entry = (await self._get_json(session, f"/history/{prompt_id}")).get(prompt_id)
                status = _status_from_history(entry) if entry else None
                if status is not None:
                    return status
        return None

    async def _get_json(self, session: aiohttp.ClientSession, path: str) -> Any:
        try:
            async with session.get(self.url(path)) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise ComfyHTTPError("GET", self.url(path), resp.status, text)
                return json.loads(text)
        except aiohttp.ClientError as e:
            raise ComfyError(f"GET {self.url(path)}: {e}") from e

    async def _cancel(self, session: aiohttp.ClientSession, prompt_id: str) -> None:
        try:
            async with session.post(self.url("/queue"), json={"delete": [prompt_id]}):
                pass
            queue = await self._get_json(session, "/queue")
            if any(len(item) > 1 and item[1] == prompt_id for item in queue.get("queue_running", [])):
                async with session.post(self.url("/interrupt"), json={}):
                    pass
        except ComfyError:
            pass
        except aiohttp.ClientError:
            pass

    # ---- async twins of the plain HTTP helpers -------------------------------------------------

    async def get_json_async(self, path: str) -> Any:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.request_timeout)) as s:
            return await self._get_json(s, path)

    async def post_json_async(self, path: str, body: Any = None) -> Any:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.request_timeout)) as s:
            async with s.post(self.url(path), json=body if body is not None else {}) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    raise ComfyHTTPError("POST", self.url(path), resp.status, text)
                return json.loads(text) if text.strip() else None


def _status_from_history(entry: dict[str, Any] | None) -> str | None:
    if not entry:
        return None
    status = entry.get("status") or {}
    if not status.get("completed") and status.get("status_str") != "error":
        # completed=False with status_str "success" never happens; "error" covers interrupts too
        return None
    for name, _data in status.get("messages", []):
        if name == "execution_interrupted":
            return "interrupted"
    return "success" if status.get("status_str") == "success" else "error"


def _error_from_history(entry: dict[str, Any]) -> dict[str, Any] | None:
    for name, data in (entry.get("status") or {}).get("messages", []):
        if name in ("execution_error", "execution_interrupted"):
            return data
    return None
