"""Small file-system rules that every writer on the volume follows.

A file another process may read appears whole or not at all: it is written to a unique temp name in
the same folder, fsynced, renamed over the target (``os.replace`` is atomic on one file system)
and the folder is fsynced so the rename itself survives a crash of the pod.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from pathlib import Path

_HASH_CHUNK = 8 * 2**20


def sha256_file(path: Path) -> str:
    """sha256 of a file, read in 8 MiB blocks."""
    h = hashlib.sha256()
    buf = bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside ``path`` durable (best effort: not every FS allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new content, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
