"""The generation cache on disk: entries in a :class:`~podkit.core.model_cache.ModelCache` of their
own (same atomic publish, locks, LRU and size cap as the model cache), and the sha256 of model files.

torch and safetensors are imported when an entry is written or read, which only happens inside
ComfyUI (the host provides both).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from ..core.fsutil import sha256_file
from ..core.gencache import METADATA_KEY, GenerationStats, Unsupported, read_skeleton, skeleton_text
from ..core.model_cache import CacheKey, ModelCache

SUFFIX = ".safetensors"


def _is_tensor(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.Tensor)


class GenerationStore:
    def __init__(self, cache: ModelCache, stats: GenerationStats | None = None) -> None:
        self.cache = cache
        self.stats = stats or GenerationStats()

    @staticmethod
    def key(digest: str) -> CacheKey:
        return CacheKey.for_source(f"podkit-gencache:{digest}", "1", SUFFIX)

    def load(self, digest: str) -> tuple[list[Any], Any, int] | None:
        """(outputs, ui, size in bytes) of the entry, or None when there is none."""
        path = self.cache.lookup(self.key(digest))
        if path is None:
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        outputs, ui = read_skeleton(metadata[METADATA_KEY], tensors)
        return list(outputs), ui, path.stat().st_size

    def prepare(self, outputs: Any, ui: Any) -> tuple[str, dict[str, Any]]:
        """The entry's metadata text and its tensors, copied to the CPU now (the values may change
        once the prompt goes on). Raises Unsupported for anything but data."""
        text, tensors = skeleton_text(outputs, ui, _is_tensor)
        return text, {f"t{i}": t.detach().to("cpu", copy=True).contiguous() for i, t in enumerate(tensors)}

    def write(self, digest: str, entry: tuple[str, dict[str, Any]]) -> int:
        """Publish a prepared entry (once across processes, then the cap is kept); its size."""
        text, named = entry

        def write(tmp: Path) -> None:
            from safetensors.torch import save_file

            save_file(named, str(tmp), metadata={METADATA_KEY: text})

        path = self.cache.ensure(self.key(digest), write)
        return path.stat().st_size if path.exists() else 0

    def save(self, digest: str, outputs: Any, ui: Any) -> int:
        return self.write(digest, self.prepare(outputs, ui))


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


__all__ = ["FileIdentities", "GenerationStore", "Unsupported"]
