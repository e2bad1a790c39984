"""Sources: turn a :class:`DownloadItem` into the files to fetch, with size and sha256 when known.

- Hugging Face, through ``huggingface_hub``: one ``model_info(files_metadata=True)`` call gives the
  commit and every file's size and LFS sha256 (nothing is downloaded), then a ``HEAD`` of each
  file's resolve URL (the first alone, the rest 8 at a time) surfaces a gated repo (401/403), a
  missing file or a Xet-only file before any transfer starts. URLs are pinned to the commit, so
  every file of a snapshot comes from the same revision even if the branch moves during a 20 GB
  download.
- CivitAI, through its REST API (``/api/v1/model-versions/{id}``; a model page URL without a
  version takes the newest version): download URL, file name, SHA256 and the model type; a ``HEAD``
  of the download link (not following its redirect) surfaces a version that needs a token.
- A plain ``http(s)`` URL: a ``HEAD`` (or a one-byte ranged ``GET`` where HEAD is refused) for
  the size and the ``Content-Disposition`` file name.
- A bucket object (``r2://bucket/key``): the store's HEAD; the engine copies it with the store.

Tokens travel only in :attr:`ResolvedFile.headers` (never in ``repr``, a job or an event) and
only to the source's own origin: aiohttp drops ``Authorization`` when a redirect leaves the origin
(the signed CDN URL needs none), as ``huggingface_hub`` does for its own downloads.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .. import __version__
from ..core.download_request import DownloadItem, civitai_ids
from ..core.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PodKitError,
    StorageError,
    StoreUnavailable,
    Unauthorized,
)
from ..core.filenames import sanitize_name, sanitize_relpath
from ..core.model_types import civitai_type
from ..core.objects import ObjectStore, parse_object_uri
from ..core.settings import Settings
from ..core.url_policy import UrlPolicy, check_url, redact_url
from .url_guard import guard_trace, guarded_connector, policy_refusal

logger = logging.getLogger(__name__)

MAX_API_BYTES = 8 * 2**20
API_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=20, sock_read=30)
#: HEADs of a snapshot's files in flight at once.
HF_PROBE_THREADS = 8
#: What a network failure looks like from aiohttp (``Forbidden`` is an ``OSError`` too).
_NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
SHA256_HEX = frozenset("0123456789abcdef")


class XetOnly(PodKitError):
    """The Hub serves this file through the Xet protocol only, and PodKit fetches over HTTP."""

    http_status = 502
    code = "xet_only"


@dataclass(frozen=True)
class ResolvedFile:
    """One file to fetch."""

    url: str  #: where to GET (may redirect; the engine follows with the policy)
    filename: str  #: sanitised file name (may contain a subfolder for HF snapshots)
    size: int | None
    sha256: str | None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  #: auth; never serialised
    type_hint: str | None = None
    store_uri: str | None = None  #: set for bucket objects: the engine copies via the ObjectStore

    def public(self) -> dict[str, object]:
        """A loggable form: URL with credential-like query values redacted, no headers."""
        return {
            "url": redact_url(self.url),
            "filename": self.filename,
            "size": self.size,
            "sha256": self.sha256,
            "type_hint": self.type_hint,
            "store_uri": self.store_uri,
        }


def make_session(policy: UrlPolicy, *, limit: int) -> aiohttp.ClientSession:
    """The one HTTP session for sources and the download engine, with the URL policy wired in.

    ``Accept-Encoding: identity`` and no automatic decompression keep byte ranges and sizes exact;
    ``trust_env=False`` keeps proxies from the environment out of the policy's way. Call it on the
    event loop that will use the session.
    """
    return aiohttp.ClientSession(
        connector=guarded_connector(policy, limit=limit),
        trace_configs=[guard_trace(policy)],
        trust_env=False,
        auto_decompress=False,
        headers={"User-Agent": f"PodKit/{__version__}", "Accept-Encoding": "identity"},
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120),
    )


async def resolve(
    item: DownloadItem, *, session: aiohttp.ClientSession, settings: Settings, store: ObjectStore
) -> list[ResolvedFile]:
    """The files ``item`` stands for (several for an HF snapshot).

    Raises:
        NotFound: unknown repo, revision, file, model version or URL (404).
        Unauthorized: the source wants a token (gated HF repo, CivitAI early access); the message
            names the setting.
        Forbidden: the URL policy refused an address, or the source refused the token.
        XetOnly: the Hub refused a plain HTTP download of a Xet-stored file.
        Conflict: the request's sha256 differs from the one the source publishes.
        StorageError / StoreUnavailable: the source failed or cannot be reached.
    """
    if item.source == "hf":
        files = await asyncio.to_thread(resolve_hf, item, settings)
    elif item.source == "civitai":
        files = [await _resolve_civitai(item, session, settings)]
    elif item.source == "url":
        files = [await _resolve_url(item, session)]
    elif item.source == "bucket":
        files = [await _resolve_bucket(item, store, settings)]
    else:  # parse_items only builds the four sources
        raise InvalidRequest(f"unknown source {item.source!r}")
    if item.sha256 is not None and len(files) == 1:
        source_sha = files[0].sha256
        if source_sha is not None and source_sha != item.sha256:
            raise Conflict(
                f"{item.label}: the request's sha256 {item.sha256} differs from the source's {source_sha}"
            )
        files = [_with(files[0], sha256=item.sha256)]
    return files


def _with(f: ResolvedFile, **changes: Any) -> ResolvedFile:
    values = {name: getattr(f, name) for name in f.__dataclass_fields__}
    values.update(changes)
    return ResolvedFile(**values)


def _sha256_or_none(value: object) -> str | None:
    if isinstance(value, str) and len(value) == 64 and set(value.lower()) <= SHA256_HEX:
        return value.lower()
    return None


def _target_name(item: DownloadItem, remote_name: str) -> str:
    return item.name or sanitize_name(remote_name)


# --------------------------------------------------------------------------- Hugging Face


def resolve_hf(item: DownloadItem, settings: Settings) -> list[ResolvedFile]:
    """Blocking HF resolution (run in a thread): sizes and LFS sha256 without downloading."""
    from huggingface_hub import HfApi, HfFileMetadata, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils._paths import filter_repo_objects

    if item.repo_id is None:
        raise InvalidRequest("an hf item needs repo_id")
    token = settings.hf_token
    endpoint = settings.hf_endpoint
    api = HfApi(endpoint=endpoint, token=token or False, library_name="podkit", library_version=__version__)
    revision = item.revision or "main"
    where = f"{item.repo_id}@{revision}"
    with _hf_errors(item, where, token is not None):
        info = api.model_info(item.repo_id, revision=item.revision, files_metadata=True, token=token or False)
    commit = info.sha or revision
    siblings = {s.rfilename: s for s in info.siblings or []}
    if item.filename is not None:
        if item.filename not in siblings:
            raise NotFound(f"{item.filename!r} is not a file of Hugging Face repo {where}")
        chosen = [item.filename]
    else:
        visible = [n for n in siblings if not any(part.startswith(".") for part in n.split("/"))]
        chosen = sorted(
            filter_repo_objects(
                visible,
                allow_patterns=list(item.allow_patterns) or None,
                ignore_patterns=list(item.ignore_patterns) or None,
            )
        )
        if not chosen:
            raise NotFound(f"no file of Hugging Face repo {where} matches the allow/ignore patterns")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    files: list[ResolvedFile] = []
    for name in chosen:
        sibling = siblings[name]
        lfs = sibling.lfs
        size = lfs.size if lfs is not None else sibling.size
        sha = _sha256_or_none(lfs.sha256) if lfs is not None else None
        if item.filename is not None:
            target = _target_name(item, name)
        else:
            target = sanitize_relpath(name)
        url = hf_hub_url(item.repo_id, name, revision=commit, endpoint=endpoint)
        files.append(ResolvedFile(url=url, filename=target, size=size, sha256=sha, headers=headers))

    # HEAD each file before any transfer: a gated repo lists its files publicly but refuses the
    # bytes, and a Xet-only file is refused over plain HTTP; both fail the request now, not after
    # the first 20 GB of a snapshot. The first HEAD runs alone: a gated repo fails there.
    def probe(i: int) -> HfFileMetadata:
        with _hf_errors(item, where, token is not None, filename=chosen[i]):
            return get_hf_file_metadata(
                files[i].url, token=token or False, endpoint=endpoint, retry_on_errors=True
            )

    metas = [probe(0)]
    if len(files) > 1:
        with ThreadPoolExecutor(HF_PROBE_THREADS, thread_name_prefix="podkit-hf-head") as pool:
            metas.extend(pool.map(probe, range(1, len(files))))
    for i, meta in enumerate(metas):
        f = files[i]
        if f.size is None and meta.size is not None:
            f = _with(f, size=meta.size)
        if f.sha256 is None:  # the Hub's ETag of an LFS file is its sha256 (git ids have 40 digits)
            f = _with(f, sha256=_sha256_or_none((meta.etag or "").strip('"')))
        files[i] = f
    return files


class _hf_errors:
    """Map ``huggingface_hub`` errors to PodKit's, with the hint that fixes each."""

    def __init__(self, item: DownloadItem, where: str, has_token: bool, filename: str | None = None) -> None:
        self.item, self.where, self.has_token, self.filename = item, where, has_token, filename

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None or isinstance(exc, PodKitError):
            return
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        what = f"{self.filename} in {self.where}" if self.filename else self.where
        token_hint = (
            "HF_TOKEN is set but that account has not been granted access; accept the model's terms on "
            "its Hugging Face page with that account"
            if self.has_token
            else "accept the model's terms on Hugging Face and set HF_TOKEN"
        )
        if isinstance(exc, GatedRepoError):
            status = _status(exc)
            cls = Forbidden if self.has_token else Unauthorized
            raise cls(f"Hugging Face repo {self.where} is gated (HTTP {status}): {token_hint}") from None
        if isinstance(exc, RevisionNotFoundError):
            raise NotFound(f"revision {self.item.revision!r} does not exist in {self.item.repo_id}") from None
        if isinstance(exc, EntryNotFoundError):
            raise NotFound(f"{what} does not exist on Hugging Face") from None
        if isinstance(exc, RepositoryNotFoundError):
            hint = "" if self.has_token else " (if it is private or gated, set HF_TOKEN)"
            raise NotFound(f"Hugging Face repo {self.item.repo_id} was not found{hint}") from None
        if isinstance(exc, HfHubHTTPError):
            status = _status(exc)
            response = getattr(exc, "response", None)
            xet = response is not None and (
                "x-xet-hash" in {k.lower() for k in response.headers} or "xet" in str(exc).lower()
            )
            if xet and status is not None and 400 <= status < 500:
                raise XetOnly(
                    f"{what} is stored with Xet only and the Hub refused a plain HTTP download (HTTP "
                    f"{status}); PodKit downloads over HTTP: fetch it with `hf download` (hf_xet) into the "
                    "models folder, or pick a repo/revision served over HTTP"
                ) from None
            if status == 401 and self.has_token:
                raise Unauthorized(
                    f"Hugging Face refused HF_TOKEN for {what} (HTTP 401): the token is invalid or expired"
                ) from None
            if status in (401, 403):
                raise Unauthorized(f"Hugging Face refused {what} (HTTP {status}): {token_hint}") from None
            if status == 404:
                raise NotFound(f"{what} was not found on Hugging Face") from None
            raise StorageError(f"Hugging Face answered HTTP {status} for {what}") from None
        if isinstance(exc, OSError) or type(exc).__module__.startswith(("httpx", "httpcore")):
            raise StoreUnavailable(f"cannot reach the Hugging Face endpoint for {what}: {exc}") from None


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


# --------------------------------------------------------------------------- CivitAI


async def _resolve_civitai(
    item: DownloadItem, session: aiohttp.ClientSession, settings: Settings
) -> ResolvedFile:
    token = settings.civitai_token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = settings.civitai_base_url
    model_id, version_id = civitai_ids(item.url) if item.url else (None, None)
    version_id = item.version_id or version_id
    if version_id is not None:
        version = await _api_json(
            session, f"{base}/api/v1/model-versions/{version_id}", headers, token is not None
        )
    else:
        model = await _api_json(session, f"{base}/api/v1/models/{model_id}", headers, token is not None)
        versions = model.get("modelVersions") if isinstance(model, dict) else None
        if not isinstance(versions, list) or not versions or not isinstance(versions[0], dict):
            raise NotFound(f"CivitAI model {model_id} has no downloadable version")
        version = dict(versions[0])
        version.setdefault("model", {"type": model.get("type"), "name": model.get("name")})
    if not isinstance(version, dict):
        raise StorageError("CivitAI answered with an unexpected document")
    label = f"CivitAI model version {version.get('id', version_id)}"
    files = [f for f in version.get("files") or [] if isinstance(f, dict)]
    if item.filename is not None:
        chosen = next((f for f in files if f.get("name") == item.filename), None)
        if chosen is None:
            names = ", ".join(str(f.get("name")) for f in files) or "none"
            raise NotFound(f"{label} has no file named {item.filename!r} (files: {names})")
    else:
        chosen = next((f for f in files if f.get("primary")), None) or next(
            (f for f in files if f.get("type") in (None, "Model")), None
        )
        if chosen is None:
            raise NotFound(f"{label} lists no model file")
    url = chosen.get("downloadUrl") or version.get("downloadUrl")
    if not isinstance(url, str):
        raise StorageError(f"{label}: the API gave no download URL")
    check_url(url, UrlPolicy(allow_private=True))  # shape only; the session checks the addresses
    await _probe_civitai_download(session, url, headers, label, token is not None)
    hashes = _mapping(chosen.get("hashes"))
    model_info = _mapping(version.get("model"))
    return ResolvedFile(
        url=url,
        filename=_target_name(item, str(chosen.get("name") or f"civitai-{version_id}.safetensors")),
        size=_kb_to_bytes(chosen.get("sizeKB")),
        sha256=_sha256_or_none(hashes.get("SHA256")),
        headers=headers,
        type_hint=civitai_type(str(model_info.get("type") or "")),
    )


async def _probe_civitai_download(
    session: aiohttp.ClientSession, url: str, headers: Mapping[str, str], label: str, has_token: bool
) -> None:
    """HEAD the download link without following it: a version that needs a login fails now."""
    shown = redact_url(url)
    try:
        async with session.head(url, headers=headers, allow_redirects=False, timeout=API_TIMEOUT) as resp:
            status = resp.status
    except _NETWORK_ERRORS as e:
        raise _network_error(e, f"CivitAI ({shown})") from None
    if status in (401, 403):
        hint = (
            "CIVITAI_TOKEN was refused (invalid, or that account may not download it)"
            if has_token
            else "it needs a CivitAI account: set CIVITAI_TOKEN to an API key"
        )
        raise Unauthorized(f"CivitAI refused the download of {label} (HTTP {status}): {hint}")
    if status in (404, 410):
        raise NotFound(f"CivitAI has no download for {label} (HTTP {status})")
    # Anything else (a redirect, 200, a HEAD-less 405, a passing 5xx) is the engine's to follow or retry.


def _network_error(e: BaseException, what: str) -> PodKitError:
    """A URL-policy refusal as itself; any other network failure as ``StoreUnavailable``."""
    refused = policy_refusal(e)
    return (
        refused if refused is not None else StoreUnavailable(f"cannot reach {what}: {type(e).__name__}: {e}")
    )


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, dict) else {}


def _kb_to_bytes(size_kb: object) -> int | None:
    """CivitAI gives ``sizeKB`` as bytes / 1024; trust it only when it maps back to whole bytes."""
    if isinstance(size_kb, bool) or not isinstance(size_kb, (int, float)) or size_kb <= 0:
        return None
    size = size_kb * 1024
    return round(size) if abs(size - round(size)) < 1e-6 else None


async def _api_json(
    session: aiohttp.ClientSession, url: str, headers: Mapping[str, str], has_token: bool
) -> Any:
    shown = redact_url(url)
    try:
        async with session.get(url, headers=headers, timeout=API_TIMEOUT) as resp:
            if resp.status == 404:
                raise NotFound(f"CivitAI has no {shown.rsplit('/api/v1/', 1)[-1]}")
            if resp.status in (401, 403):
                hint = "the token was refused" if has_token else "set CIVITAI_TOKEN"
                raise Unauthorized(f"CivitAI refused {shown} (HTTP {resp.status}): {hint}")
            if resp.status >= 400:
                raise StorageError(f"CivitAI answered HTTP {resp.status} for {shown}")
            body = await resp.content.read(MAX_API_BYTES + 1)
    except _NETWORK_ERRORS as e:
        raise _network_error(e, f"CivitAI ({shown})") from None
    if len(body) > MAX_API_BYTES:
        raise StorageError(f"CivitAI's answer for {shown} is larger than {MAX_API_BYTES} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise StorageError(f"CivitAI's answer for {shown} is not JSON") from None


# --------------------------------------------------------------------------- plain URL and bucket


async def _resolve_url(item: DownloadItem, session: aiohttp.ClientSession) -> ResolvedFile:
    if item.url is None:
        raise InvalidRequest("a url item needs url")
    url = item.url
    shown = redact_url(url)
    try:
        async with session.head(url, allow_redirects=True, timeout=API_TIMEOUT) as resp:
            status, resp_headers = resp.status, resp.headers
            disposition = resp.content_disposition
            final_url = str(resp.url)
            size = _content_length(resp)
        if status in (405, 501) or (
            status == 403 and "x-amz-request-id" in {k.lower() for k in resp_headers}
        ):
            async with session.get(url, headers={"Range": "bytes=0-0"}, timeout=API_TIMEOUT) as got:
                status, disposition, final_url = got.status, got.content_disposition, str(got.url)
                size = _range_total(got) if status == 206 else _content_length(got)
    except _NETWORK_ERRORS as e:
        raise _network_error(e, shown) from None
    if status == 404 or status == 410:
        raise NotFound(f"{shown} was not found (HTTP {status})")
    if status in (401, 403):
        raise Unauthorized(f"{shown} refused access (HTTP {status})")
    if status >= 400:
        raise StorageError(f"{shown} answered HTTP {status}")
    remote_name = (disposition.filename if disposition is not None else None) or _url_basename(final_url)
    return ResolvedFile(
        url=url, filename=_target_name(item, remote_name or "download"), size=size, sha256=None
    )


def _content_length(resp: aiohttp.ClientResponse) -> int | None:
    if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
        return None
    value = resp.headers.get("Content-Length")
    return int(value) if value is not None and value.isdigit() else None


def _range_total(resp: aiohttp.ClientResponse) -> int | None:
    total = resp.headers.get("Content-Range", "").rpartition("/")[2]
    return int(total) if total.isdigit() else None


def _url_basename(url: str) -> str:
    from urllib.parse import unquote, urlsplit

    return unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])


async def _resolve_bucket(item: DownloadItem, store: ObjectStore, settings: Settings) -> ResolvedFile:
    if item.uri is None:
        raise InvalidRequest("a bucket item needs uri")
    ref = parse_object_uri(item.uri, settings.lora_bucket)
    meta = await asyncio.to_thread(store.head, ref)
    return ResolvedFile(
        url=ref.uri,
        filename=_target_name(item, ref.name),
        size=meta.size,
        sha256=meta.sha256,
        store_uri=ref.uri,
    )
