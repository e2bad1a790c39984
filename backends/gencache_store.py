"""The generation cache on disk: entries in a :class:`~podkit.core.model_cache.ModelCache` of their
own (same atomic publish, locks, LRU and size cap as the model cache), optionally mirrored to a bucket
(:mod:`.gencache_mirror`), and the sha256 of model files.

torch and safetensors are imported when an entry is written or read, which only happens inside
ComfyUI (the host provides both).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import CorruptFile
from ..core.fsutil import sha256_file
from ..core.gencache import (
    DIGEST_KEY,
    ENTRY_SUFFIX,
    METADATA_KEY,
    GenerationStats,
    MissingReference,
    Refs,
    Resolve,
    Unsupported,
    read_skeleton,
    skeleton_text,
)
from ..core.model_cache import ModelCache
from ..core.model_cache_types import CacheKey
from .gencache_mirror import BucketMirror


def _is_tensor(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.Tensor)


def _read(
    path: Path, digest: str, *, tensors: bool = True, named: bool = False, resolve: Resolve | None = None
) -> tuple[Any, Any]:
    """(outputs, ui) of the entry file at ``path``; ValueError when it is another entry's file
    (or, with ``named``, does not name its entry at all). Without ``tensors`` only the header is
    read and checked (outputs and ui are then None). ``resolve`` reads references to other entries."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        stored = metadata.get(DIGEST_KEY)
        if (named or stored is not None) and stored != digest:
            raise ValueError(f"the file holds entry {str(stored)[:12]}, not {digest[:12]}")
        if METADATA_KEY not in metadata:
            raise ValueError("no generation cache metadata")
        if not tensors:
            return None, None
        values = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    return read_skeleton(metadata[METADATA_KEY], values, resolve)


def _tensor(path: Path, digest: str, name: str) -> Any:
    """One tensor of the entry file at ``path`` (the target of a reference)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get(DIGEST_KEY) != digest:
            raise ValueError(f"the file does not hold entry {digest[:12]}")
        if name not in f.keys():  # noqa: SIM118 - safe_open has no __contains__
            raise ValueError(f"entry {digest[:12]} has no tensor {name!r}")
        return f.get_tensor(name)


def verifier(digest: str) -> Callable[[Path], None]:
    """The check a bucket download passes before it is published: a safetensors entry that names
    ``digest`` as its own (a file copied under another entry's name is refused)."""

    def verify(path: Path) -> None:
        try:
            _read(path, digest, tensors=False, named=True)
        except Exception as e:  # whatever the parser says about a broken file
            raise CorruptFile(f"generation cache entry {digest[:12]} from the bucket: {e}") from e

    return verify


class GenerationStore:
    def __init__(
        self, cache: ModelCache, stats: GenerationStats | None = None, mirror: BucketMirror | None = None
    ) -> None:
        self.cache = cache
        self.stats = stats or (mirror.stats if mirror is not None else GenerationStats())
        self.mirror = mirror
        #: finds the entry already holding a tensor (the decode node's image: ``decode_tiers``)
        self.refs: Refs | None = None

    @staticmethod
    def key(digest: str) -> CacheKey:
        return CacheKey.for_source(f"podkit-gencache:{digest}", "1", ENTRY_SUFFIX)

    def _path(self, digest: str) -> Path | None:
        key = self.key(digest)
        path = self.cache.use(key)
        if path is None and self.mirror is not None:
            path = self.mirror.fetch(digest, self.cache, key, verifier(digest))
        return path

    def load(self, digest: str) -> tuple[list[Any], Any, int] | None:
        """(outputs, ui, size in bytes) of the entry, or None when there is none (on the volume,
        nor, with a mirror, in the bucket), or when an entry it refers to is gone. The size counts
        the tensors read from referenced entries."""
        path = self._path(digest)
        if path is None:
            return None
        size = path.stat().st_size

        def resolve(target: str, name: str) -> Any:
            nonlocal size
            found = self._path(target) if target != digest else None
            if found is None:
                raise MissingReference(target)
            tensor = _tensor(found, target, name)
            size += int(tensor.nbytes)
            return tensor

        try:
            outputs, ui = _read(path, digest, resolve=resolve)
        except MissingReference:
            return None
        return list(outputs), ui, size

    def holds(self, digest: str) -> bool:
        """Whether the entry is on this volume now (no bucket request)."""
        return self.cache.lookup(self.key(digest)) is not None

    def prepare(self, outputs: Any, ui: Any) -> tuple[str, dict[str, Any]]:
        """The entry's metadata text and its tensors, copied to the CPU now (the values may change
        once the prompt goes on). Raises Unsupported for anything but data. Tensors :attr:`refs`
        finds in another entry are stored as references to it (no second copy)."""
        text, tensors = skeleton_text(outputs, ui, _is_tensor, self.refs)
        return text, {f"t{i}": t.detach().to("cpu", copy=True).contiguous() for i, t in enumerate(tensors)}

    def write(self, digest: str, entry: tuple[str, dict[str, Any]]) -> int:
        """Publish a prepared entry (once across processes, then the cap is kept); its size. With a
        mirror, an entry this call wrote is then queued for the bucket."""
        text, named = entry
        wrote = False

        def write(tmp: Path) -> None:
            nonlocal wrote
            from safetensors.torch import save_file

            save_file(named, str(tmp), metadata={METADATA_KEY: text, DIGEST_KEY: digest})
            wrote = True

        key = self.key(digest)
        path = self.cache.ensure(key, write)
        if wrote and self.mirror is not None:
            self.mirror.upload_later(digest, self.cache, key)
        return path.stat().st_size if path.exists() else 0

    def save(self, digest: str, outputs: Any, ui: Any) -> int:
        return self.write(digest, self.prepare(outputs, ui))

    def close(self) -> None:
        """Stop the mirror's uploads: entries not uploaded yet stay on this volume only."""
        if self.mirror is not None:
            self.mirror.close()


class FileIdentities:
    """sha256 of model files, computed once per (path, size, mtime) and remembered on the volume,
    so every pod sharing it hashes a file once."""

    def __init__(self, memo_dir: Path) -> None:
        self.memo_dir = memo_dir
        self._lock = threading.Lock()
        self._ram: dict[tuple[str, int, int], str] = {}

    def sha256(self, path: Path) -> str:
        real = os.path.realpath(path)
        st = os.stat(real)
        stamp = (real, st.st_size, st.st_mtime_ns)
        with self._lock:
            known = self._ram.get(stamp)
        if known is not None:
            return known
        memo = self.memo_dir / f"{hashlib.sha256(real.encode()).hexdigest()}.json"
        try:
            data = json.loads(memo.read_text())
            if (data.get("size"), data.get("mtime_ns")) == (st.st_size, st.st_mtime_ns):
                digest = str(data["sha256"])
                with self._lock:
                    self._ram[stamp] = digest
                return digest
        except (OSError, ValueError, KeyError):
            pass
        digest = sha256_file(Path(real))
        self.memo_dir.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
        tmp.write_text(
            json.dumps({"path": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest})
        )
        os.replace(tmp, memo)
        with self._lock:
            self._ram[stamp] = digest
        return digest


__all__ = ["BucketMirror", "FileIdentities", "GenerationStore", "Unsupported"]
