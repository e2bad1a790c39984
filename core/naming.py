"""Object-key templates for saved outputs.

A template is a ``str.format`` pattern restricted to known fields (no attribute or index access,
so a template from a workflow cannot reach into Python objects):

``{prefix}`` filename prefix (may contain ``/``), ``{date}`` YYYY-MM-DD, ``{time}`` HHMMSS,
``{year}`` ``{month}`` ``{day}`` ``{hour}`` ``{minute}`` ``{second}``, ``{prompt_id}``,
``{node_id}``, ``{batch}`` (index in the batch; format specs work: ``{batch:03d}``), ``{hash}``
(sha256 of the PNG bytes; ``{hash:.12}`` keeps 12 characters), ``{width}``, ``{height}``,
``{uuid}`` (random), ``{ext}`` (``png``).

The default template is content-addressed, so re-uploading the same image after a crash
overwrites the same object instead of creating a duplicate.
"""

from __future__ import annotations

import re
import string
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import InvalidRequest
from .objects import validate_key

DEFAULT_KEY_TEMPLATE = "{prefix}/{date}/{prompt_id}_{batch:02d}_{hash:.16}.{ext}"
KNOWN_FIELDS = frozenset(
    (
        "prefix", "date", "time", "year", "month", "day", "hour", "minute", "second",
        "prompt_id", "node_id", "batch", "hash", "width", "height", "uuid", "ext",
    )
)  # fmt: skip
_PREFIX_RE = re.compile(r"[^A-Za-z0-9._\-/ ]+")


@dataclass(frozen=True)
class KeyContext:
    prefix: str
    prompt_id: str
    node_id: str
    batch: int
    sha256: str
    width: int
    height: int
    timestamp: float
    ext: str = "png"


def clean_prefix(prefix: str) -> str:
    """Make a filename prefix safe as a key fragment: keep ``/`` folders, drop odd characters."""
    parts = [_PREFIX_RE.sub("_", p).strip(" .") for p in prefix.replace("\\", "/").split("/")]
    cleaned = "/".join(p for p in parts if p and p not in (".", ".."))
    return cleaned or "PodKit"


def check_template(template: str) -> str:
    """Validate ``template`` without rendering it.

    Raises:
        InvalidRequest: unknown field, attribute/index access, or a malformed pattern.
    """
    if not template or len(template) > 512:
        raise InvalidRequest("key_template must be 1 to 512 characters")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise InvalidRequest(f"key_template {template!r} is malformed: {e}") from e
    uses_unique = False
    for _, field_name, spec, conversion in parsed:
        if field_name is None:
            continue
        if field_name not in KNOWN_FIELDS:
            known = ", ".join(sorted(KNOWN_FIELDS))
            raise InvalidRequest(f"key_template field {{{field_name}}} is unknown; use one of: {known}")
        if conversion or (spec and "{" in spec):
            raise InvalidRequest(f"key_template field {{{field_name}}} has an unsupported conversion")
        uses_unique |= field_name in ("hash", "uuid", "batch")
    if not uses_unique:
        raise InvalidRequest(
            "key_template must contain {hash}, {uuid} or {batch} so images do not overwrite each other"
        )
    return template


def render_key(template: str, ctx: KeyContext) -> str:
    """Render ``template`` for one image; the result is a validated object key."""
    check_template(template)
    t = time.gmtime(ctx.timestamp)
    values: Mapping[str, object] = {
        "prefix": clean_prefix(ctx.prefix),
        "date": time.strftime("%Y-%m-%d", t),
        "time": time.strftime("%H%M%S", t),
        "year": f"{t.tm_year:04d}",
        "month": f"{t.tm_mon:02d}",
        "day": f"{t.tm_mday:02d}",
        "hour": f"{t.tm_hour:02d}",
        "minute": f"{t.tm_min:02d}",
        "second": f"{t.tm_sec:02d}",
        "prompt_id": re.sub(r"[^A-Za-z0-9_-]", "_", ctx.prompt_id or "noprompt")[:64],
        "node_id": re.sub(r"[^A-Za-z0-9_-]", "_", ctx.node_id or "0")[:32],
        "batch": ctx.batch,
        "hash": ctx.sha256,
        "width": ctx.width,
        "height": ctx.height,
        "uuid": uuid.uuid4().hex,
        "ext": ctx.ext,
    }
    try:
        key = template.format_map(values)
    except (ValueError, TypeError) as e:
        raise InvalidRequest(f"key_template {template!r} cannot be rendered: {e}") from e
    return validate_key(key)
