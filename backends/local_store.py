"""The embedded object store: one folder per bucket under a root directory.

It is the default when no bucket is configured, so every node works out of the box (a laptop, a
pod without R2, CI). Keys are validated by :func:`~podkit.core.objects.validate_key` and resolved
strictly inside the root. Writes are atomic (temp file, fsync, ``os.replace``); content type and
metadata live in a sidecar under ``.podkit-meta`` (bucket names cannot start with a dot).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from ..core.errors import ObjectChanged, ObjectNotFound, StorageError, TransferFailed
from ..core.objects import ObjectMeta, ObjectRef, ProgressFn, validate_bucket

_COPY_CHUNK = 8 * 2**20


class LocalStore:
    kind = "local"

    def __init__(self, root: Path, *, url_prefix: str = "/podkit/objects") -> None:
        self.root = root
        self.url_prefix = url_prefix.rstrip("/")

    # ----------------------------------------------------------------- paths
    def _path(self, ref: ObjectRef) -> Path:
        base = (self.root / ref.bucket).resolve()
        path = (base / ref.key).resolve()
        if base not in path.parents:
            raise StorageError(f"{ref} resolves outside its bucket")
        return path

    def _meta_path(self, ref: ObjectRef) -> Path:
        return self.root / ".podkit-meta" / ref.bucket / f"{ref.key}.json"

    def path_of(self, ref: ObjectRef) -> Path:
        """The file behind ``ref`` (for the objects route); raises ObjectNotFound."""
        path = self._path(ref)
        if not path.is_file():
            raise ObjectNotFound(f"{ref} does not exist")
        return path

    # ----------------------------------------------------------------- protocol
    def head(self, ref: ObjectRef) -> ObjectMeta:
        path = self.path_of(ref)
        st = path.stat()
        extra: dict[str, object] = {}
        try:
            loaded = json.loads(self._meta_path(ref).read_text())
            if isinstance(loaded, dict):
                extra = loaded
        except (OSError, ValueError):
            pass
        metadata = extra.get("metadata")
        return ObjectMeta(
            ref=ref,
            size=st.st_size,
            etag=f'"{st.st_size:x}-{st.st_mtime_ns:x}-{st.st_ino:x}"',
            last_modified=st.st_mtime,
            content_type=str(extra["content_type"]) if "content_type" in extra else None,
            metadata={str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {},
        )

    def download(self, ref: ObjectRef, dest: Path, *, on_bytes: ProgressFn | None = None) -> ObjectMeta:
        meta = self.head(ref)
        self.download_verified(meta, dest, on_bytes=on_bytes)
        return meta

    def download_verified(self, meta: ObjectMeta, dest: Path, *, on_bytes: ProgressFn | None = None) -> str:
        current = self.head(meta.ref)
        if current.etag != meta.etag:
            raise ObjectChanged(f"{meta.ref}: the object changed during the transfer")
        h = hashlib.sha256()
        with open(self.path_of(meta.ref), "rb") as fin, open(dest, "wb") as fout:
            while chunk := fin.read(_COPY_CHUNK):
                fout.write(chunk)
                h.update(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
        digest = h.hexdigest()
        if dest.stat().st_size != meta.size:
            raise TransferFailed(f"{meta.ref}: copied {dest.stat().st_size} of {meta.size} bytes")
        if meta.sha256 and meta.sha256 != digest:
            raise TransferFailed(f"{meta.ref}: sha256 {digest} does not match the recorded {meta.sha256}")
        return digest

    def upload_file(
        self,
        src: Path,
        ref: ObjectRef,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
        on_bytes: ProgressFn | None = None,
    ) -> ObjectMeta:
        def fill(out: BinaryIO) -> None:
            with open(src, "rb") as fin:
                while chunk := fin.read(_COPY_CHUNK):
                    out.write(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))

        return self._store(ref, fill, content_type, metadata)

    def put_bytes(
        self, data: bytes, ref: ObjectRef, *, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectMeta:
        return self._store(ref, lambda out: out.write(data), content_type, metadata)

    def _store(
        self,
        ref: ObjectRef,
        fill: Callable[[BinaryIO], object],
        content_type: str,
        metadata: Mapping[str, str] | None,
    ) -> ObjectMeta:
        dest = self._path(ref)
        if not (self.root / ref.bucket).is_dir():
            raise ObjectNotFound(f"bucket {ref.bucket!r} does not exist")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
            self._write_meta(ref, content_type, metadata)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return self.head(ref)

    def _write_meta(self, ref: ObjectRef, content_type: str, metadata: Mapping[str, str] | None) -> None:
        meta = self._meta_path(ref)
        meta.parent.mkdir(parents=True, exist_ok=True)
        tmp = meta.with_name(f".{meta.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps({"content_type": content_type, "metadata": dict(metadata or {})}))
        os.replace(tmp, meta)

    def get_bytes(self, ref: ObjectRef) -> bytes:
        return self.path_of(ref).read_bytes()

    def list(self, bucket: str, prefix: str = "", *, limit: int = 10000) -> list[ObjectMeta]:
        validate_bucket(bucket)
        base = self.root / bucket
        if not base.is_dir():
            raise ObjectNotFound(f"bucket {bucket!r} does not exist")
        out: list[ObjectMeta] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith(".") and name.endswith(".tmp"):
                    continue
                key = Path(dirpath, name).relative_to(base).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    out.append(self.head(ObjectRef(bucket, key)))
                except (ObjectNotFound, ValueError):
                    continue
        out.sort(key=lambda m: m.ref.key)
        return out[:limit]

    def delete(self, ref: ObjectRef) -> None:
        self._path(ref).unlink(missing_ok=True)
        self._meta_path(ref).unlink(missing_ok=True)

    def ensure_bucket(self, bucket: str) -> None:
        validate_bucket(bucket)
        (self.root / bucket).mkdir(parents=True, exist_ok=True)

    def url_for(self, ref: ObjectRef, *, ttl: int) -> str | None:
        return f"{self.url_prefix}/{ref.bucket}/{quote(ref.key)}"
