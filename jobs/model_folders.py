"""Verified files in the model folders on the volume, and the index that remembers them.

Layout under the models root::

    <folder>/[<subfolder>/]<name>     the placed files (``loras/``, ``vae/`` …, ComfyUI's names)
    .podkit/partial/<key>.part        a transfer in progress, with its resume map beside it
    .podkit/locks/<key>.lock          the cross-process lock of one target file
    .podkit/index/<key>.json          what PodKit placed: size, mtime, sha256, type, source

``key`` is a target file's identity (:func:`file_key`): what it is and where it goes. A file is
placed by an atomic rename of its verified partial file, confined to the root; the index record
lets a later request trust size + mtime instead of hashing gigabytes again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..backends.http_partial import discard_partial, map_path, source_id
from ..backends.sources import ResolvedFile
from ..core.download_job import describe_source
from ..core.download_request import DownloadItem
from ..core.errors import Conflict, InvalidRequest
from ..core.filenames import validate_relpath
from ..core.fsutil import fsync_dir, sha256_file, write_atomic
from ..core.locks import FileLock
from ..core.model_types import MODEL_FOLDERS, decide_type, folder_for

logger = logging.getLogger(__name__)


def file_key(item: DownloadItem, rf: ResolvedFile) -> str:
    """The identity of one target file: what it is and where it goes (partial, lock, index)."""
    what = rf.store_uri or source_id(rf.url)
    if item.source == "hf":  # URLs are pinned to a commit; the file's identity is repo + path
        what = f"hf:{item.repo_id}:{item.filename or rf.filename}"
    where = f"{item.type or ''}\n{item.subfolder or ''}\n{rf.filename}"
    return hashlib.sha256(f"{what}\n{where}".encode()).hexdigest()[:40]


@dataclass(frozen=True)
class Placed:
    """A verified file in its model folder."""

    dest: str
    size: int
    sha256: str | None
    model_type: str | None

    def file_changes(self) -> dict[str, object]:
        """The :class:`~podkit.core.download_job.FileState` fields this placement sets."""
        return {
            "dest": self.dest, "bytes_done": self.size, "bytes_total": self.size,
            "sha256": self.sha256 or None, "model_type": self.model_type,
        }  # fmt: skip


class ModelFolders:
    """The model folders under ``root``; blocking methods (call them off the event loop)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def work_dir(self) -> Path:
        return self.root / ".podkit"

    def partial(self, key: str) -> Path:
        return self.work_dir / "partial" / f"{key}.part"

    def lock(self, key: str) -> FileLock:
        return FileLock(self.work_dir / "locks" / f"{key}.lock")

    def _index_path(self, key: str) -> Path:
        return self.work_dir / "index" / f"{key}.json"

    def folders(self) -> dict[str, Path]:
        """ComfyUI folder name → folder on the volume (created), for ``folder_paths``."""
        out: dict[str, Path] = {}
        for folder in MODEL_FOLDERS.values():
            path = self.root / folder
            path.mkdir(parents=True, exist_ok=True)
            out[folder] = path
        return out

    def dest_for(self, item: DownloadItem, model_type: str, filename: str) -> tuple[str, Path]:
        parts = [folder_for(model_type)]
        if item.subfolder:
            parts.append(item.subfolder)
        parts.append(filename)
        rel = "/".join(parts)
        validate_relpath(rel, field="destination")
        path = self.root / rel
        root = self.root.resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.parent.resolve().is_relative_to(root):
            raise InvalidRequest(f"destination {rel!r} leaves the models folder")
        return rel, path

    def forget(self, key: str) -> None:
        """Drop the index record of ``key`` (a forced download places the file again)."""
        self._index_path(key).unlink(missing_ok=True)

    def present(self, item: DownloadItem, rf: ResolvedFile, key: str) -> Placed | None:
        """The target file when it is there and verified (no transfer needed), else None.

        The index record (size + mtime of what PodKit published) is trusted without re-hashing.
        A file at the destination that PodKit did not record, or that changed since, is hashed
        when the source gives a sha256: the same bytes count as present, others are a conflict
        (``force`` replaces them) found before any transfer.
        """
        record = self._read_index(key)
        model_type: str | None = item.type
        if record is not None:
            rel = str(record["dest"])
            path = self.root / rel
            recorded_type = record.get("model_type")
            model_type = recorded_type if isinstance(recorded_type, str) else model_type
            try:
                st = path.stat()
            except OSError:
                return None
            if (
                st.st_size == record.get("size")
                and st.st_mtime_ns == record.get("mtime_ns")
                and (rf.sha256 is None or rf.sha256 == record.get("sha256"))
                and (rf.size is None or rf.size == st.st_size)
            ):
                return Placed(rel, st.st_size, str(record.get("sha256")), model_type)
        elif model_type is not None:
            rel, path = self.dest_for(item, model_type, rf.filename)
            if not path.is_file():
                return None
        else:
            return None  # the folder is known only after reading the header
        size = path.stat().st_size
        if rf.size is not None and size != rf.size:
            raise Conflict(f"{rel} already exists with {size} bytes, not {rf.size}; send force to replace it")
        if rf.sha256 is None:
            raise Conflict(f"{rel} already exists and the source gives no sha256 to verify it; send force")
        digest = sha256_file(path)
        if digest != rf.sha256:
            raise Conflict(
                f"{rel} already exists with sha256 {digest}, not {rf.sha256}; send force to replace it"
            )
        self._write_index(key, rel, path, digest, model_type or "", item)
        return Placed(rel, size, digest, model_type)

    def publish(
        self, item: DownloadItem, rf: ResolvedFile, key: str, part: Path, sha: str | None, *, force: bool
    ) -> Placed:
        """Classify, then move the verified partial file into its model folder (atomic rename)."""
        decision = decide_type(explicit=item.type, path=part, filename=rf.filename, source_hint=rf.type_hint)
        if decision.type is None:
            raise InvalidRequest(
                f"could not tell the model type of {rf.filename} ({decision.reason}); give type "
                f"({', '.join(MODEL_FOLDERS)}) and request it again"
            )
        rel, path = self.dest_for(item, decision.type, rf.filename)
        sha = sha or sha256_file(part)
        if path.exists() and not force:
            existing = sha256_file(path)
            if existing != sha:
                discard_partial(part)
                raise Conflict(
                    f"{rel} already exists with other content (sha256 {existing}, downloaded {sha}); "
                    "send force to replace it"
                )
        os.replace(part, path)
        map_path(part).unlink(missing_ok=True)
        fsync_dir(path.parent)
        self._write_index(key, rel, path, sha, decision.type, item)
        logger.info("downloaded %s → %s (%s)", describe_source(item), rel, decision.reason)
        return Placed(rel, path.stat().st_size, sha, decision.type)

    def _read_index(self, key: str) -> dict[str, object] | None:
        try:
            data = json.loads(self._index_path(key).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("dest"), str) else None

    def _write_index(
        self, key: str, rel: str, path: Path, sha: str, model_type: str, item: DownloadItem
    ) -> None:
        st = path.stat()
        record = {
            "dest": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha,
            "model_type": model_type, "source": describe_source(item), "time": time.time(),
        }  # fmt: skip
        write_atomic(self._index_path(key), json.dumps(record))
