"""A real local HTTP server speaking the parts of the Hugging Face Hub and CivitAI APIs PodKit uses.

Two aiohttp servers on 127.0.0.1, on one event loop in a background thread:

- the **hub** (``hub.hub_url``) answers what ``huggingface_hub`` sends:
  ``GET /api/models/{repo}[/revision/{rev}]?blobs=true`` (``model_info(files_metadata=True)``:
  commit ``sha``, ``siblings`` with ``size``, ``blobId`` and ``lfs {size, sha256, pointerSize}``) and
  ``HEAD|GET /{repo}/resolve/{rev}/{path}`` with the Hub's headers: ``X-Repo-Commit``, ``ETag`` and,
  for LFS files, a ``302`` to the CDN with ``X-Linked-Size`` / ``X-Linked-Etag`` (the sha256). Errors
  carry ``X-Error-Code`` as the Hub's do: ``RepoNotFound`` (401 without a token, 404 with one),
  ``RevisionNotFound``, ``EntryNotFound``, ``GatedRepo`` (401 without a token, 403 with a token that
  was not granted). A *Xet-only* file is refused over plain HTTP: ``403`` with the ``X-Xet-Hash``
  headers a Xet-enabled Hub sends. It also serves the CivitAI REST API (``/api/v1/model-versions/{id}``,
  ``/api/v1/models/{id}``) and CivitAI's download link ``/api/download/models/{version}``
  (``307`` to the CDN; ``401`` for an early-access version without a valid token).
- the **CDN** (``hub.cdn_url``, another port, so another origin) serves the bytes with ``Range``
  support, ``ETag`` and ``Content-Disposition``, and plain files (``add_plain``) whose ``HEAD`` can be
  refused with 405 to exercise a client's ranged-GET fallback.

Every request is recorded (``hub.requests``: server, method, path, query, ``Authorization``), so a
test can prove where a token went.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from aiohttp import web

_TEXT_SUFFIXES = (".json", ".md", ".txt", ".gitattributes", ".py", ".yaml")


def git_blob_id(data: bytes) -> str:
    """The git object id of ``data`` (what the Hub reports as ``blobId`` / a small file's ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's id


def lfs_pointer(data: bytes) -> bytes:
    sha = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()


@dataclass
class HubFile:
    path: str
    data: bytes
    lfs: bool
    xet_only: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, HubFile]
    commit: str
    gated: bool = False
    private: bool = False
    granted: set[str] = field(default_factory=set)  # tokens with access to a gated/private repo
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> commit


@dataclass
class CivitFile:
    name: str
    data: bytes
    type: str = "Model"
    primary: bool = True
    file_id: int = 0

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class CivitVersion:
    version_id: int
    model_id: int
    name: str
    files: list[CivitFile]
    early_access: bool = False


@dataclass
class CivitModel:
    model_id: int
    name: str
    type: str  # CivitAI's label: LORA, Checkpoint, VAE, TextualInversion, Controlnet, Upscaler...
    versions: list[CivitVersion]  # newest first, as the API lists them


@dataclass
class PlainFile:
    data: bytes
    disposition: str | None = None  # a Content-Disposition file name
    head_status: int | None = None  # answer HEAD with this status (405: HEAD refused)


@dataclass(frozen=True)
class Recorded:
    server: str  # "hub" or "cdn"
    method: str
    path: str
    query: str
    authorization: str | None
    range: str | None


class FakeHub:
    """The two servers and their content; use :func:`fake_hub` for a started one."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.civitai: dict[int, CivitModel] = {}
        self.plain: dict[str, PlainFile] = {}
        self.tokens: set[str] = set()  # HF tokens the hub knows (any valid token reads public repos)
        self.civitai_tokens: set[str] = set()
        self.requests: list[Recorded] = []
        self._blobs: dict[str, tuple[bytes, str]] = {}  # CDN key -> (bytes, file name)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []
        self.hub_port = 0
        self.cdn_port = 0

    # ------------------------------------------------------------------ content
    @property
    def hub_url(self) -> str:
        return f"http://127.0.0.1:{self.hub_port}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self.cdn_port}"

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        *,
        gated: bool = False,
        private: bool = False,
        xet_only: tuple[str, ...] = (),
        lfs: tuple[str, ...] | None = None,
    ) -> HubRepo:
        """A model repo at a fresh commit on ``main``; LFS files are all but small text files."""
        commit = hashlib.sha1(repo_id.encode() + str(len(self.repos)).encode()).hexdigest()  # noqa: S324
        hub_files: dict[str, HubFile] = {}
        for path, data in files.items():
            is_lfs = path in lfs if lfs is not None else not path.endswith(_TEXT_SUFFIXES)
            f = HubFile(path, data, is_lfs, xet_only=path in xet_only)
            hub_files[path] = f
            if f.lfs:
                self._blobs[f.sha256] = (data, path.rsplit("/", 1)[-1])
        repo = HubRepo(repo_id, hub_files, commit, gated=gated, private=private, refs={"main": commit})
        self.repos[repo_id] = repo
        return repo

    def add_civitai_model(self, model: CivitModel) -> CivitModel:
        for version in model.versions:
            for f in version.files:
                self._blobs[f"civitai-{version.version_id}-{f.file_id}"] = (f.data, f.name)
        self.civitai[model.model_id] = model
        return model

    def add_plain(self, path: str, file: PlainFile) -> str:
        """Serve ``file`` on the CDN at ``path`` (URL-encoded); returns its URL."""
        self.plain[unquote(path)] = file
        return self.cdn_url + path

    def seen(self, server: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if server is None or r.server == server]

    # ------------------------------------------------------------------ helpers
    def _record(self, server: str, request: web.Request) -> None:
        with self._lock:
            self.requests.append(
                Recorded(
                    server,
                    request.method,
                    request.path,
                    request.query_string,
                    request.headers.get("Authorization"),
                    request.headers.get("Range"),
                )
            )

    @staticmethod
    def _token(request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    @staticmethod
    def _error(status: int, code: str | None, message: str) -> web.Response:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        return web.json_response({"error": message}, status=status, headers=headers)

    def _find_repo(self, request: web.Request, repo_id: str) -> HubRepo | web.Response:
        token = self._token(request)
        if token is not None and token not in self.tokens:
            return self._error(401, None, "Invalid credentials in Authorization header")
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and token not in repo.granted):
            # Like the Hub: a missing (or hidden private) repo is a 401 to anonymous callers.
            return self._error(401 if token is None else 404, "RepoNotFound", "Repository not found")
        return repo

    @staticmethod
    def _commit(repo: HubRepo, revision: str) -> str | None:
        if revision in repo.refs:
            return repo.refs[revision]
        return revision if revision in repo.refs.values() else None

    # ------------------------------------------------------------------ hub handlers
    async def _model_info(self, request: web.Request) -> web.StreamResponse:
        self._record("hub", request)
        repo_id = f"{request.match_info['ns']}/{request.match_info['name']}"
        found = self._find_repo(request, repo_id)
        if isinstance(found, web.Response):
            return found
        revision = request.match_info.get("rev", "main")
        commit = self._commit(found, revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        blobs = request.query.get("blobs", "").lower() in ("1", "true")
        siblings: list[dict[str, object]] = []
        for f in found.files.values():
            entry: dict[str, object] = {"rfilename": f.path}
            if blobs:
                entry["blobId"] = git_blob_id(lfs_pointer(f.data) if f.lfs else f.data)
                entry["size"] = len(f.data)
                if f.lfs:
                    entry["lfs"] = {
                        "size": len(f.data),
                        "sha256": f.sha256,
                        "pointerSize": len(lfs_pointer(f.data)),
                    }
            siblings.append(entry)
        body = {
            "_id": commit[:24],
            "id": found.repo_id,
            "modelId": found.repo_id,
            "author": found.repo_id.split("/")[0],
            "sha": commit,
            "private": found.private,
            "gated": "manual" if found.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "lastModified": "2026-01-01T00:00:00.000Z",
            "createdAt": "2026-01-01T00:00:00.000Z",
        }
        return web.json_response(body)

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        self._record("hub", request)
        repo_id = f"{request.match_info['ns']}/{request.match_info['name']}"
        found = self._find_repo(request, repo_id)
        if isinstance(found, web.Response):
            return found
        token = self._token(request)
        if found.gated and token not in found.granted:
            if token is None:
                return self._error(
                    401, "GatedRepo", f"Access to model {repo_id} is restricted. You must be authenticated."
                )
            return self._error(
                403,
                "GatedRepo",
                f"Access to model {repo_id} is restricted and you are not in the authorized list.",
            )
        revision = request.match_info["rev"]
        commit = self._commit(found, revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        f = found.files.get(request.match_info["path"])
        if f is None:
            return self._error(404, "EntryNotFound", "Entry not found")
        headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
        if f.xet_only:
            headers.update(
                {
                    "X-Xet-Hash": f.sha256,
                    "X-Xet-Refresh-Route": f"/api/models/{repo_id}/xet-read-token/{commit}",
                    "X-Linked-Size": str(len(f.data)),
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Error-Message": "This file is stored with Xet and is not served over plain HTTP",
                }
            )
            return web.Response(status=403, headers=headers, text="xet only")
        if f.lfs:
            headers.update(
                {
                    "X-Linked-Size": str(len(f.data)),
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "ETag": f'"{git_blob_id(lfs_pointer(f.data))}"',
                    "Location": f"{self.cdn_url}/blobs/{f.sha256}?X-Amz-Signature=signed{len(self.requests)}",
                    "Content-Length": "0",
                }
            )
            return web.Response(status=302, headers=headers)
        headers["ETag"] = f'"{git_blob_id(f.data)}"'
        return _ranged(request, f.data, headers)

    # ------------------------------------------------------------------ CivitAI handlers
    def _version_json(
        self, model: CivitModel, version: CivitVersion, *, with_model: bool
    ) -> dict[str, object]:
        files = [
            {
                "id": f.file_id,
                "name": f.name,
                "sizeKB": len(f.data) / 1024,
                "type": f.type,
                "primary": f.primary,
                "metadata": {"format": "SafeTensor", "size": "pruned", "fp": "fp16"},
                "hashes": {"SHA256": f.sha256.upper(), "AutoV2": f.sha256[:10].upper()},
                "downloadUrl": f"{self.hub_url}/api/download/models/{version.version_id}"
                + ("" if f.primary else f"?type={quote(f.type)}"),
            }
            for f in version.files
        ]
        out: dict[str, object] = {
            "id": version.version_id,
            "modelId": model.model_id,
            "name": version.name,
            "baseModel": "Flux.1 D",
            "files": files,
            "downloadUrl": f"{self.hub_url}/api/download/models/{version.version_id}",
        }
        if with_model:
            out["model"] = {"name": model.name, "type": model.type, "nsfw": False, "poi": False}
        return out

    def _find_version(self, version_id: int) -> tuple[CivitModel, CivitVersion] | None:
        for model in self.civitai.values():
            for version in model.versions:
                if version.version_id == version_id:
                    return model, version
        return None

    async def _civitai_version(self, request: web.Request) -> web.StreamResponse:
        self._record("hub", request)
        vid = request.match_info["vid"]
        found = self._find_version(int(vid)) if vid.isdigit() else None
        if found is None:
            return web.json_response({"error": "Model version not found"}, status=404)
        return web.json_response(self._version_json(*found, with_model=True))

    async def _civitai_model(self, request: web.Request) -> web.StreamResponse:
        self._record("hub", request)
        mid = request.match_info["mid"]
        model = self.civitai.get(int(mid)) if mid.isdigit() else None
        if model is None:
            return web.json_response({"error": f"No model with id {mid}"}, status=404)
        body = {
            "id": model.model_id,
            "name": model.name,
            "type": model.type,
            "nsfw": False,
            "modelVersions": [self._version_json(model, v, with_model=False) for v in model.versions],
        }
        return web.json_response(body)

    async def _civitai_download(self, request: web.Request) -> web.StreamResponse:
        self._record("hub", request)
        vid = request.match_info["vid"]
        found = self._find_version(int(vid)) if vid.isdigit() else None
        if found is None:
            return web.json_response({"error": "Model not found"}, status=404)
        _, version = found
        token = self._token(request) or request.query.get("token")
        if version.early_access and token not in self.civitai_tokens:
            return web.json_response(
                {
                    "error": "Unauthorized",
                    "message": "The creator of this asset requires you to be logged in",
                },
                status=401,
            )
        wanted = request.query.get("type")
        chosen = next(
            (f for f in version.files if (f.type == wanted if wanted else f.primary)), version.files[0]
        )
        key = f"civitai-{version.version_id}-{chosen.file_id}"
        location = f"{self.cdn_url}/blobs/{key}?X-Amz-Signature=civitai{len(self.requests)}"
        return web.Response(status=307, headers={"Location": location, "Content-Length": "0"})

    # ------------------------------------------------------------------ CDN handlers
    async def _cdn_blob(self, request: web.Request) -> web.StreamResponse:
        self._record("cdn", request)
        blob = self._blobs.get(request.match_info["key"])
        if blob is None or not request.query.get("X-Amz-Signature"):
            return web.Response(status=403 if blob is not None else 404, text="no such blob")
        data, name = blob
        etag = '"' + hashlib.md5(data).hexdigest() + '"'  # noqa: S324 - an ETag, not security
        headers = {"ETag": etag, "Content-Disposition": f'attachment; filename="{name}"'}
        return _ranged(request, data, headers)

    async def _cdn_plain(self, request: web.Request) -> web.StreamResponse:
        self._record("cdn", request)
        f = self.plain.get(request.path)
        if f is None:
            return web.Response(status=404, text="not found")
        if request.method == "HEAD" and f.head_status is not None:
            return web.Response(status=f.head_status)
        headers = {"ETag": '"' + hashlib.md5(f.data).hexdigest() + '"'}  # noqa: S324
        if f.disposition is not None:
            headers["Content-Disposition"] = f'attachment; filename="{f.disposition}"'
        return _ranged(request, f.data, headers)

    # ------------------------------------------------------------------ lifecycle
    def _hub_app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_get("/api/models/{ns}/{name}", self._model_info)
        r.add_get("/api/models/{ns}/{name}/revision/{rev}", self._model_info)
        r.add_get("/api/v1/model-versions/{vid}", self._civitai_version)
        r.add_get("/api/v1/models/{mid}", self._civitai_model)
        r.add_get("/api/download/models/{vid}", self._civitai_download)
        r.add_route("*", "/{ns}/{name}/resolve/{rev}/{path:.+}", self._resolve)
        return app

    def _cdn_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/blobs/{key}", self._cdn_blob)
        app.router.add_route("*", "/{path:.+}", self._cdn_plain)
        return app

    async def _serve(self, app: web.Application) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        server = site._server
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    def start(self) -> FakeHub:
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self.hub_port = loop.run_until_complete(self._serve(self._hub_app()))
            self.cdn_port = loop.run_until_complete(self._serve(self._cdn_app()))
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-hub", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake hub did not start")
        return self

    def close(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def cleanup() -> None:
            for runner in self._runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        loop.close()
        self._loop = None


def _ranged(request: web.Request, data: bytes, headers: dict[str, str]) -> web.Response:
    """``data`` as a 200, or a 206/416 for a ``bytes=a-b`` Range; no body for HEAD."""
    headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
    start, end, status = 0, len(data), 200
    rng = request.headers.get("Range", "")
    if rng.startswith("bytes=") and "," not in rng:
        first, _, last = rng[6:].partition("-")
        if first.isdigit():
            start = int(first)
            end = min(len(data), int(last) + 1) if last.isdigit() else len(data)
            if start >= len(data) or start >= end:
                headers["Content-Range"] = f"bytes */{len(data)}"
                return web.Response(status=416, headers=headers)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
    return web.Response(status=status, headers=headers, body=data[start:end])  # aiohttp omits it for HEAD


@contextmanager
def fake_hub() -> Iterator[FakeHub]:
    """A started :class:`FakeHub`, closed at the end of the block."""
    hub = FakeHub().start()
    try:
        yield hub
    finally:
        hub.close()
