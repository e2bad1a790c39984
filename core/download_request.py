"""Download requests and bootstrap manifests: parsing and validation (name rules: ``filenames``).

One item names one source:

- ``hf``: ``repo_id`` plus ``filename`` (one file) or no filename (a snapshot, narrowed with
  ``allow_patterns``/``ignore_patterns``), optional ``revision``;
- ``civitai``: ``version_id`` or a civitai.com ``url`` (model page, version page or download
  link), optional ``filename`` to pick one of the version's files;
- ``url``: a plain ``http(s)`` ``url``;
- ``bucket``: an object ``uri`` (``r2://bucket/key``).

Every item may add ``type`` (see :data:`~podkit.core.model_types.MODEL_TYPES`), ``name`` (the
target file name), ``subfolder`` (below the type's model folder) and ``sha256``. ``source`` is
inferred when omitted. Unknown fields, and fields that do not belong to the item's source, are
refused with a message naming them, so a typo never silently downloads something else.

A manifest (YAML or JSON) lists items under ``items``/``models`` or under a model folder's name
(``loras:``, ``vae:``, ``text_encoders:`` …, which sets the items' type); an item may give
``dest``, a path below the models root such as ``loras/flux/style.safetensors``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

from .errors import InvalidRequest
from .filenames import validate_name, validate_relpath
from .model_types import FOLDER_TYPES, MODEL_TYPES
from .objects import parse_object_uri
from .url_policy import UrlPolicy, check_url, redact_url, split_url

SOURCES = ("hf", "civitai", "url", "bucket")
MAX_ITEMS = 1000
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_PATTERNS = 64
CIVITAI_HOSTS = frozenset({"civitai.com", "www.civitai.com", "civitai.green", "www.civitai.green"})

_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95})?$")
_REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,199}$")
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")

#: Fields every source accepts, and the ones each source adds.
_COMMON_FIELDS = ("source", "type", "name", "subfolder", "sha256")
_SOURCE_FIELDS: Mapping[str, tuple[str, ...]] = {
    "hf": ("repo_id", "filename", "revision", "allow_patterns", "ignore_patterns"),
    "civitai": ("version_id", "url", "filename"),
    "url": ("url",),
    "bucket": ("uri",),
}
_MANIFEST_ITEM_EXTRA = ("dest",)
_MANIFEST_TOP_KEYS = ("version", "items", "models")


@dataclass(frozen=True)
class DownloadItem:
    """One validated download request (see the module docstring for the fields)."""

    source: str
    repo_id: str | None = None
    filename: str | None = None
    revision: str | None = None
    allow_patterns: tuple[str, ...] = ()
    ignore_patterns: tuple[str, ...] = ()
    version_id: int | None = None
    url: str | None = None
    uri: str | None = None
    type: str | None = None
    name: str | None = None
    subfolder: str | None = None
    sha256: str | None = None

    def public(self) -> dict[str, object]:
        """The wire form: set fields only, credential-like URL query parameters redacted."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == ():
                continue
            if f.name == "url" and isinstance(value, str):
                value = redact_url(value)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def is_snapshot(self) -> bool:
        """An HF item without a file name: the whole repo, narrowed by the patterns."""
        return self.source == "hf" and self.filename is None

    @property
    def label(self) -> str:
        """A short human name for progress lines and ``--force NAME`` matching."""
        if self.name:
            return self.name
        if self.filename:
            return self.filename.rsplit("/", 1)[-1]
        if self.repo_id:
            return self.repo_id
        if self.version_id is not None:
            return f"civitai:{self.version_id}"
        if self.uri:
            return self.uri.rsplit("/", 1)[-1]
        path = urlsplit(self.url or "").path.rstrip("/")
        return path.rsplit("/", 1)[-1] or (self.url or "?")


@dataclass(frozen=True)
class Manifest:
    """A parsed bootstrap manifest."""

    items: tuple[DownloadItem, ...]


def is_civitai_url(url: str) -> bool:
    """Whether ``url`` points at civitai.com (a model page, version page or download link)."""
    try:
        host = (urlsplit(url).hostname or "").lower()
    except ValueError:
        return False
    return host in CIVITAI_HOSTS


# --------------------------------------------------------------------------- items


def _str(raw: Mapping[str, object], key: str, *, limit: int = 1024) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{key} must be a non-empty string")
    if len(value) > limit:
        raise InvalidRequest(f"{key} is longer than {limit} characters")
    if "\x00" in value:
        raise InvalidRequest(f"{key} contains a NUL character")
    return value.strip()


def _patterns(raw: Mapping[str, object], key: str) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(p, str) and p.strip() for p in value):
        raise InvalidRequest(f"{key} must be a list of glob patterns (strings)")
    if len(value) > MAX_PATTERNS:
        raise InvalidRequest(f"{key} has more than {MAX_PATTERNS} patterns")
    for p in value:
        if "\x00" in p or len(p) > 512:
            raise InvalidRequest(f"{key} pattern {p[:80]!r} is not a valid glob")
    return tuple(p.strip() for p in value)


def _infer_source(raw: Mapping[str, object]) -> str:
    if "repo_id" in raw:
        return "hf"
    if "version_id" in raw:
        return "civitai"
    if "uri" in raw:
        return "bucket"
    url = raw.get("url")
    if isinstance(url, str):
        return "civitai" if is_civitai_url(url) else "url"
    raise InvalidRequest("item needs one of repo_id (hf), version_id or url (civitai), url, or uri (bucket)")


def parse_item(raw: object, *, policy: UrlPolicy | None = None, where: str = "item") -> DownloadItem:
    """Validate one item mapping; see the module docstring for its fields.

    Args:
        raw: the decoded JSON/YAML object.
        policy: when given, a ``url`` is also checked against the outbound URL policy.
        where: how error messages name the item (``items[3]``).

    Raises:
        InvalidRequest: naming ``where`` and the field.
    """
    try:
        return _parse_item(raw, policy)
    except InvalidRequest as e:
        if where == "item":
            raise
        raise InvalidRequest(f"{where}: {e}") from e


class _Common(NamedTuple):
    type: str | None
    name: str | None
    subfolder: str | None
    sha256: str | None

    def kwargs(self) -> dict[str, Any]:
        return self._asdict()


def _parse_item(raw: object, policy: UrlPolicy | None) -> DownloadItem:
    if not isinstance(raw, Mapping):
        raise InvalidRequest("each item must be an object")
    source = raw.get("source")
    if source is None:
        source = _infer_source(raw)
    if source not in SOURCES:
        raise InvalidRequest(f"source must be one of {', '.join(SOURCES)} (got {source!r})")
    allowed = set(_COMMON_FIELDS) | set(_SOURCE_FIELDS[source])
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise InvalidRequest(
            f"unknown field(s) for a {source} item: {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )

    type_ = _str(raw, "type")
    if type_ is not None and type_ not in MODEL_TYPES:
        raise InvalidRequest(f"type must be one of {', '.join(MODEL_TYPES)} (got {type_!r})")
    name = _str(raw, "name")
    if name is not None:
        validate_name(name, field="name")
    subfolder = _str(raw, "subfolder")
    if subfolder is not None:
        validate_relpath(subfolder.strip("/"), field="subfolder")
        subfolder = subfolder.strip("/")
    sha256 = _str(raw, "sha256")
    if sha256 is not None:
        if not _SHA256_RE.match(sha256):
            raise InvalidRequest("sha256 must be 64 hexadecimal characters")
        sha256 = sha256.lower()
    common = _Common(type_, name, subfolder, sha256)

    if source == "hf":
        repo_id = _str(raw, "repo_id")
        if repo_id is None or not _REPO_ID_RE.match(repo_id) or ".." in repo_id:
            raise InvalidRequest(f"repo_id must look like 'owner/name' (got {repo_id!r})")
        filename = _str(raw, "filename")
        if filename is not None:
            validate_relpath(filename, field="filename")
        revision = _str(raw, "revision", limit=200)
        if revision is not None and (not _REVISION_RE.match(revision) or ".." in revision):
            raise InvalidRequest(f"revision {revision[:80]!r} is not a branch, tag or commit name")
        allow, ignore = _patterns(raw, "allow_patterns"), _patterns(raw, "ignore_patterns")
        if filename is not None and (allow or ignore):
            raise InvalidRequest("allow_patterns/ignore_patterns apply to a snapshot; drop filename or them")
        if filename is None and (name is not None or sha256 is not None):
            raise InvalidRequest(
                "name and sha256 apply to one file; a snapshot keeps the repo's names and hashes"
            )
        return DownloadItem("hf", repo_id=repo_id, filename=filename, revision=revision,
                            allow_patterns=allow, ignore_patterns=ignore, **common.kwargs())  # fmt: skip

    if source == "civitai":
        version_raw = raw.get("version_id")
        url = _str(raw, "url", limit=2048)
        filename = _str(raw, "filename")
        if filename is not None:
            validate_name(filename, field="filename")
        if version_raw is None and url is None:
            raise InvalidRequest("a civitai item needs version_id or a civitai.com url")
        version_id: int | None = None
        if version_raw is not None:
            version_id = _positive_int(version_raw, "version_id")
        if url is not None:
            split_url(url)
            if not is_civitai_url(url):
                raise InvalidRequest(f"url {redact_url(url)[:80]!r} is not a civitai.com address")
            parsed = civitai_ids(url)
            if version_id is not None and parsed[1] is not None and parsed[1] != version_id:
                raise InvalidRequest("version_id and the url name different model versions")
            if parsed == (None, None):
                raise InvalidRequest(f"url {redact_url(url)[:80]!r} names no CivitAI model or model version")
        return DownloadItem("civitai", version_id=version_id, url=url, filename=filename, **common.kwargs())

    if source == "url":
        url = _str(raw, "url", limit=8192)
        if url is None:
            raise InvalidRequest("a url item needs url")
        if policy is not None:
            check_url(url, policy)
        else:
            split_url(url)
        return DownloadItem("url", url=url, **common.kwargs())

    uri = _str(raw, "uri")
    if uri is None or "://" not in uri:
        raise InvalidRequest("a bucket item needs uri, like r2://bucket/key")
    ref = parse_object_uri(uri, "unused")
    return DownloadItem("bucket", uri=ref.uri, **common.kwargs())


def _positive_int(value: object, field: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**53:
        raise InvalidRequest(f"{field} must be a positive integer")
    return value


def civitai_ids(url: str) -> tuple[int | None, int | None]:
    """``(model_id, version_id)`` named by a civitai.com URL (either may be None).

    Understood: ``/models/<id>[/<slug>][?modelVersionId=<v>]``, ``/api/download/models/<v>``,
    ``/api/v1/model-versions/<v>``.
    """
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    query = dict(parse_qsl(parts.query))
    version = query.get("modelVersionId") or query.get("modelversionid")
    version_id = int(version) if version and version.isdigit() else None
    model_id: int | None = None
    if len(segments) >= 2 and segments[0] == "models" and segments[1].isdigit():
        model_id = int(segments[1])
    for prefix in (["api", "download", "models"], ["api", "v1", "model-versions"]):
        n = len(prefix)
        if segments[:n] == prefix and len(segments) > n and segments[n].isdigit():
            version_id = int(segments[n])
    return model_id, version_id


def parse_items(body: Mapping[str, object], *, policy: UrlPolicy | None = None) -> list[DownloadItem]:
    """Items of a request body: one item, ``{"items": [...]}`` or ``{"manifest": "<text>"}``.

    A top-level ``force`` flag is the caller's to read and is ignored here.

    Raises:
        InvalidRequest: an empty or malformed body or item; messages name ``items[i]`` and the field.
    """
    if not isinstance(body, Mapping):
        raise InvalidRequest("request body must be a JSON object")
    rest = {k: v for k, v in body.items() if k != "force"}
    if "force" in body and not isinstance(body["force"], bool):
        raise InvalidRequest("force must be true or false")
    if "manifest" in rest:
        if len(rest) != 1:
            raise InvalidRequest("send either manifest or items/an item, not both")
        text = rest["manifest"]
        if not isinstance(text, str):
            raise InvalidRequest("manifest must be the manifest's YAML or JSON text")
        return list(parse_manifest(text, policy=policy).items)
    if "items" in rest:
        if len(rest) != 1:
            extra = ", ".join(sorted(str(k) for k in rest if k != "items"))
            raise InvalidRequest(f"with items, no other top-level fields are allowed (got {extra})")
        raw_items = rest["items"]
        if not isinstance(raw_items, list) or not raw_items:
            raise InvalidRequest("items must be a non-empty list")
        if len(raw_items) > MAX_ITEMS:
            raise InvalidRequest(f"at most {MAX_ITEMS} items per request")
        return [parse_item(r, policy=policy, where=f"items[{i}]") for i, r in enumerate(raw_items)]
    if not rest:
        raise InvalidRequest("request body names nothing to download")
    return [parse_item(rest, policy=policy)]


# --------------------------------------------------------------------------- manifests


def parse_manifest(text: str, *, policy: UrlPolicy | None = None) -> Manifest:
    """Parse a bootstrap manifest (YAML or JSON).

    ::

        version: 1
        models:
          - repo_id: black-forest-labs/FLUX.1-dev
            filename: flux1-dev.safetensors
            type: diffusion_model
        loras:
          - url: https://civitai.com/models/1?modelVersionId=2
            dest: loras/flux/style.safetensors
            sha256: 0f3c…

    Raises:
        InvalidRequest: unreadable text, unknown top-level keys or item fields, bad values; the
            message names the list and index (``loras[2]``).
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("manifest is empty")
    if len(text.encode("utf-8")) > MAX_MANIFEST_BYTES:
        raise InvalidRequest(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    data = _load_manifest_text(text)
    if isinstance(data, list):
        data = {"items": data}
    if not isinstance(data, Mapping):
        raise InvalidRequest("manifest must be a mapping of lists (items, models, loras, …) or a list")
    allowed = set(_MANIFEST_TOP_KEYS) | set(FOLDER_TYPES)
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise InvalidRequest(
            f"manifest: unknown top-level key(s) {', '.join(unknown)}; use items, models or a model folder "
            f"({', '.join(sorted(FOLDER_TYPES))})"
        )
    version = data.get("version", 1)
    if version != 1:
        raise InvalidRequest(f"manifest version {version!r} is not supported (use 1)")
    items: list[DownloadItem] = []
    for key, entries in data.items():
        if key == "version":
            continue
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise InvalidRequest(f"manifest: {key} must be a list of items")
        for i, entry in enumerate(entries):
            where = f"{key}[{i}]"
            try:
                items.append(_manifest_item(entry, FOLDER_TYPES.get(str(key)), policy))
            except InvalidRequest as e:
                raise InvalidRequest(f"manifest {where}: {e}") from e
    if not items:
        raise InvalidRequest("manifest lists no items")
    if len(items) > MAX_ITEMS:
        raise InvalidRequest(f"manifest lists more than {MAX_ITEMS} items")
    return Manifest(tuple(items))


def _load_manifest_text(text: str) -> object:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            return json.loads(text)
        except ValueError as e:
            raise InvalidRequest(f"manifest is not valid JSON: {e}") from e
    import yaml  # deferred: only manifests need it

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "syntax error"
        raise InvalidRequest(f"manifest is not valid YAML{at}: {problem}") from e


def _manifest_item(entry: object, folder_type: str | None, policy: UrlPolicy | None) -> DownloadItem:
    if isinstance(entry, str):
        entry = (
            {"url": entry} if "://" in entry and not entry.startswith(("r2://", "s3://")) else {"uri": entry}
        )
    if not isinstance(entry, Mapping):
        raise InvalidRequest("each item must be a mapping (or a URL string)")
    raw = dict(entry)
    dest = raw.pop("dest", None)
    if dest is not None:
        raw.update(_split_dest(dest, raw))
    if folder_type is not None:
        given = raw.get("type")
        if given is not None and given != folder_type:
            raise InvalidRequest(f"type {given!r} contradicts its list (which holds {folder_type} files)")
        raw["type"] = folder_type
    return parse_item(raw, policy=policy)


def _split_dest(dest: object, raw: Mapping[str, object]) -> dict[str, object]:
    """``dest`` (``loras/flux/x.safetensors`` or ``loras/flux/``) as type, subfolder and name."""
    if not isinstance(dest, str) or not dest.strip("/"):
        raise InvalidRequest("dest must be a path below the models folder, like loras/style.safetensors")
    is_folder = dest.endswith("/") or (raw.get("repo_id") is not None and raw.get("filename") is None)
    path = dest.strip("/")
    validate_relpath(path, field="dest")
    parts = path.split("/")
    folder = parts[0]
    if folder not in FOLDER_TYPES:
        raise InvalidRequest(
            f"dest {dest!r} must start with a model folder: {', '.join(sorted(FOLDER_TYPES))}"
        )
    out: dict[str, object] = {}
    dest_type = FOLDER_TYPES[folder]
    if raw.get("type") is not None and raw["type"] != dest_type:
        raise InvalidRequest(f"dest folder {folder!r} holds {dest_type} files, not {raw['type']}")
    out["type"] = dest_type
    rest = parts[1:]
    if not is_folder:
        if not rest:
            raise InvalidRequest(f"dest {dest!r} names a folder; end it with '/' or add a file name")
        if raw.get("name") is not None:
            raise InvalidRequest("give the file name in dest or in name, not both")
        out["name"] = rest.pop()
    if rest:
        if raw.get("subfolder") is not None:
            raise InvalidRequest("give the subfolder in dest or in subfolder, not both")
        out["subfolder"] = "/".join(rest)
    return out


def item_fields(source: str) -> Sequence[str]:
    """The fields an item of ``source`` accepts (for documentation and error messages)."""
    return (*_COMMON_FIELDS, *_SOURCE_FIELDS[source])
