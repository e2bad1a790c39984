from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from podkit.backends.local_store import LocalStore
from podkit.core.errors import CorruptFile, InvalidRequest, ObjectChanged
from podkit.core.loras import LoraLibrary
from podkit.core.model_cache import ModelCache
from podkit.core.objects import ObjectMeta, ObjectRef


def safetensors(names: list[str]) -> bytes:
    header, offset = {}, 0
    for n in names:
        header[n] = {"dtype": "F32", "shape": [2], "data_offsets": [offset, offset + 8]}
        offset += 8
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


class CountingStore(LocalStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.heads = self.lists = 0
        self.replace_during_download: bytes | None = None
        self._inside_download = False

    def head(self, ref: ObjectRef) -> ObjectMeta:
        if not self._inside_download:  # the store's own consistency check is not a caller's HEAD
            self.heads += 1
        return super().head(ref)

    def list(self, bucket: str, prefix: str = "", *, limit: int = 10000) -> list[ObjectMeta]:
        self.lists += 1
        return super().list(bucket, prefix, limit=limit)

    def download_verified(self, meta: ObjectMeta, dest: Path, **kw: object) -> str:
        if self.replace_during_download is not None:
            data, self.replace_during_download = self.replace_during_download, None
            self.put_bytes(data, meta.ref, content_type="application/octet-stream")
        self._inside_download = True
        try:
            return super().download_verified(meta, dest, **kw)  # type: ignore[arg-type]
        finally:
            self._inside_download = False


@pytest.fixture
def lib(tmp_path: Path) -> tuple[LoraLibrary, CountingStore]:
    store = CountingStore(tmp_path / "store")
    store.ensure_bucket("loras")
    return LoraLibrary(store, ModelCache(tmp_path / "cache", max_bytes=10**9), "loras", etag_ttl=0), store


KOHYA = ["lora_unet_a.lora_up.weight", "lora_unet_a.lora_down.weight", "lora_unet_a.alpha", "lora_te_b.lora_up.weight",
         "lora_te_b.lora_down.weight"]  # fmt: skip


def test_ensure_local_uses_the_callers_head(lib: tuple[LoraLibrary, CountingStore]) -> None:
    library, store = lib
    ref = ObjectRef("loras", "a.safetensors")
    store.put_bytes(safetensors(KOHYA), ref, content_type="application/octet-stream")
    meta = library.head(ref)
    before = store.heads
    local = library.ensure_local(ref, meta=meta)
    assert store.heads == before
    assert local.info.lora_module_count == 2 and local.path.read_bytes() == safetensors(KOHYA)


def test_object_replaced_mid_download_is_fetched_again(lib: tuple[LoraLibrary, CountingStore]) -> None:
    library, store = lib
    ref = ObjectRef("loras", "moving.safetensors")
    store.put_bytes(safetensors(KOHYA), ref, content_type="application/octet-stream")
    new = safetensors([*KOHYA, "lora_unet_c.lora_up.weight"])
    store.replace_during_download = new
    assert library.ensure_local(ref).path.read_bytes() == new


def test_store_reports_a_replaced_object(lib: tuple[LoraLibrary, CountingStore], tmp_path: Path) -> None:
    _, store = lib
    ref = ObjectRef("loras", "x.safetensors")
    store.put_bytes(safetensors(KOHYA), ref, content_type="application/octet-stream")
    stale = store.head(ref)
    store.put_bytes(safetensors(KOHYA[:2]), ref, content_type="application/octet-stream")
    with pytest.raises(ObjectChanged):
        store.download_verified(stale, tmp_path / "x.tmp")


def test_not_a_lora_and_not_safetensors(lib: tuple[LoraLibrary, CountingStore]) -> None:
    library, store = lib
    ckpt = ObjectRef("loras", "ckpt.safetensors")
    store.put_bytes(
        safetensors(["model.diffusion_model.x.weight"]), ckpt, content_type="application/octet-stream"
    )
    with pytest.raises(CorruptFile, match="ckpt.safetensors: no LoRA tensors"):
        library.ensure_local(ckpt)
    with pytest.raises(InvalidRequest, match=".safetensors"):
        library.resolve("notes.txt")


def test_snapshot_never_lists(lib: tuple[LoraLibrary, CountingStore]) -> None:
    library, store = lib
    store.put_bytes(
        safetensors(KOHYA), ObjectRef("loras", "a.safetensors"), content_type="application/octet-stream"
    )
    assert library.snapshot().items == () and store.lists == 0
    assert [m.ref.key for m in library.listing().items] == ["a.safetensors"] and store.lists == 1
    assert len(library.snapshot().items) == 1 and store.lists == 1
