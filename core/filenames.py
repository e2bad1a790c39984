"""File-name safety: the names PodKit accepts from a request and makes of a remote's names.

A request's name or folder is *validated* (refused with a reason); a name a remote supplies
(Content-Disposition, an API's file list, a repo path) is *sanitised* (made safe, never refused),
so nothing a user or a server sends can leave the target folder or name a device.
"""

from __future__ import annotations

import re

from .errors import InvalidRequest

MAX_NAME_LENGTH = 200

_RESERVED = {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"|?*\\/]')


def validate_name(value: object, *, field: str = "name") -> str:
    """Return ``value`` if it is a safe single file or folder name, else raise.

    Refused: empty, over-long, path separators, ``.``/``..``, hidden dot-names, NUL and control
    characters, characters Windows forbids, trailing dots/spaces and reserved device names (``CON``,
    ``NUL``, ``COM1``…).

    Raises:
        InvalidRequest: naming ``field`` and the reason.
    """
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{field} must be a non-empty string")
    shown = value[:80]
    if len(value.encode("utf-8")) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"{field} {shown!r} is longer than {MAX_NAME_LENGTH} bytes")
    if "/" in value or "\\" in value:
        raise InvalidRequest(f"{field} {shown!r} must be a plain name, without '/' or '\\'")
    if value.startswith("."):
        raise InvalidRequest(f"{field} {shown!r} must not start with '.' (no hidden names, no '..')")
    if _UNSAFE_CHARS.search(value):
        raise InvalidRequest(f"{field} {shown!r} contains a control or reserved character")
    if value != value.rstrip(" .") or value != value.lstrip(" "):
        raise InvalidRequest(f"{field} {shown!r} must not start with a space or end with a space or '.'")
    if value.split(".")[0].strip().lower() in _RESERVED:
        raise InvalidRequest(f"{field} {shown!r} is a reserved device name")
    return value


def validate_relpath(value: object, *, field: str) -> str:
    """Return ``value`` if it is a safe relative path (``a/b/c``) of safe names, else raise."""
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{field} must be a non-empty string")
    if value.startswith("/") or re.match(r"^[A-Za-z]:", value):
        raise InvalidRequest(f"{field} {value[:80]!r} must be relative, not an absolute path")
    if "\\" in value:
        raise InvalidRequest(f"{field} {value[:80]!r} must use '/' as the separator")
    for part in value.split("/"):
        validate_name(part, field=field)
    return value


def sanitize_name(text: str, *, fallback: str = "download") -> str:
    """Turn a remote-supplied name (Content-Disposition, API file name) into a safe file name.

    Keeps the last path segment, replaces unsafe characters with ``_``, drops leading dots and
    trailing dots/spaces, and prefixes reserved device names; never returns an unsafe name.
    """
    base = text.replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE_CHARS.sub("_", base).strip().lstrip(".").rstrip(" .")
    if base.split(".")[0].strip().lower() in _RESERVED:
        base = f"_{base}"
    while len(base.encode("utf-8")) > MAX_NAME_LENGTH:
        stem, dot, ext = base.rpartition(".")
        base = (stem[:-1] + dot + ext) if dot and stem else base[:-1]
    return base or fallback


def sanitize_relpath(text: str, *, fallback: str = "download") -> str:
    """Like :func:`sanitize_name` for each segment of a repo path; drops ``.``/``..``/empty segments."""
    parts = [p for p in text.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    cleaned = [sanitize_name(p, fallback="_") for p in parts]
    return "/".join(cleaned) or fallback
