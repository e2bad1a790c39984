"""Band planning, band sizing from free memory, decode cache keys and the two-tier decode cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from podkit.core.decode_cache import RECENT_OUTPUTS, DecodeCache, ModelCacheTier, decode_key
from podkit.core.errors import InvalidRequest
from podkit.core.model_cache import ModelCache
from podkit.core.tiling import (
    CPU_BUDGET_CAP,
    MIN_BAND_PX,
    MIN_ROWS,
    choose_band,
    decode_budget,
    layer_rows,
    merge_strips,
    needed_rows,
    next_smaller_band,
    row_bands,
    sample_strips,
    valid_rows,
)

MiB = 2**20


@pytest.mark.parametrize("length", [1, 2, 7, 64, 100, 129, 1024])
@pytest.mark.parametrize("rows", [1, 3, 8, 64, 5000])
def test_bands_cover_every_row_exactly_once(length: int, rows: int) -> None:
    bands = row_bands(length, rows)
    covered = [r for a, b in bands for r in range(a, b)]
    assert covered == list(range(length))  # in order, no gap, no overlap: each row's weight is 1
    sizes = [b - a for a, b in bands]
    assert max(sizes) <= rows and max(sizes) - min(sizes) <= 1
    assert len(bands) == -(-length // rows)  # as few bands as the size allows


@pytest.mark.parametrize(("length", "rows"), [(0, 4), (4, 0), (-1, 4)])
def test_bad_band_requests_are_refused(length: int, rows: int) -> None:
    with pytest.raises(InvalidRequest):
        row_bands(length, rows)


def test_layer_rows_share_one_byte_budget() -> None:
    assert layer_rows(64 * MiB, 1024, MiB) == 64
    assert layer_rows(64 * MiB, 128, MiB // 8) == 128  # a narrow low-resolution layer: one band
    assert layer_rows(MiB, 1024, MiB) == MIN_ROWS  # never below the minimum
    assert layer_rows(2**40, 64, 1) == 64  # never more than the layer has
    with pytest.raises(InvalidRequest):
        layer_rows(0, 10, 10)


def test_choose_band_fits_the_budget() -> None:
    cost = 384 * 4  # bytes per output pixel of a band at the widest layer (fp32)
    band = choose_band(out_width=1024, out_height=1024, bytes_per_row_px=cost, free_bytes=256 * MiB)
    assert band * 1024 * cost <= 64 * MiB  # a quarter of the free memory
    assert band >= 0.9 * (64 * MiB) / (1024 * cost)  # and not much less
    capped = choose_band(out_width=1024, out_height=1024, bytes_per_row_px=cost, free_bytes=64 * 2**30)
    assert capped * 1024 * cost <= 128 * MiB  # the cap: bigger bands buy little speed, cost RAM
    small = choose_band(out_width=1024, out_height=1024, bytes_per_row_px=cost, free_bytes=64 * MiB)
    assert small < band
    assert choose_band(out_width=64, out_height=64, bytes_per_row_px=cost, free_bytes=2**30) == 64  # all fits
    assert choose_band(out_width=1024, out_height=1024, bytes_per_row_px=cost, free_bytes=0) == MIN_BAND_PX
    with pytest.raises(InvalidRequest):
        choose_band(out_width=0, out_height=8, bytes_per_row_px=cost, free_bytes=MiB)


def test_smaller_band_halves_down_to_the_minimum() -> None:
    steps = [256]
    while (n := next_smaller_band(steps[-1])) is not None:
        steps.append(n)
    assert steps == [256, 128, 64, 32, 16, 8]
    assert next_smaller_band(12) == MIN_BAND_PX


def test_decode_budget_is_a_share_of_free_memory_capped_on_the_cpu() -> None:
    assert decode_budget(400 * MiB, host_ram=True) == 100 * MiB
    assert decode_budget(64 * 2**30, host_ram=True) == CPU_BUDGET_CAP  # host RAM is shared
    assert decode_budget(64 * 2**30, host_ram=False) == 16 * 2**30  # a GPU's free memory is the decode's
    assert decode_budget(-1, host_ram=True) == 0


@pytest.mark.parametrize("height", [64, 100, 128, 1024])
@pytest.mark.parametrize("halo", [0, 1])
@pytest.mark.parametrize("up", [1, 2])
def test_needed_rows_determine_the_rows_asked_for(height: int, halo: int, up: int) -> None:
    out = height * up
    for lo, hi in [(0, 1), (0, out), (out // 3, out // 2), (out - 5, out), (7, 9)]:
        src = needed_rows(lo, hi, height, halo, up)
        assert 0 <= src[0] < src[1] <= height
        got = valid_rows(*src, height, halo, up)
        assert got[0] <= lo and hi <= got[1]  # what the input determines covers what was asked
        # and no row less would do: dropping an input row at a side that is not the border loses one
        if 0 < src[0] < src[1] - 1:
            assert valid_rows(src[0] + 1, src[1], height, halo, up)[0] > lo
        if src[0] < src[1] - 1 and src[1] < height:
            assert valid_rows(src[0], src[1] - 1, height, halo, up)[1] < hi
    with pytest.raises(InvalidRequest):
        valid_rows(3, 3, height, halo, up)
    with pytest.raises(InvalidRequest):
        needed_rows(0, out + 1, height, halo, up)


def test_valid_rows_keep_the_image_border() -> None:
    assert valid_rows(0, 10, 100, 1) == (0, 9)  # the top is zero padding: row 0 is exact
    assert valid_rows(90, 100, 100, 1) == (91, 100)
    assert valid_rows(0, 100, 100, 1) == (0, 100)
    assert valid_rows(5, 10, 100, 1, up=2) == (11, 19)


@pytest.mark.parametrize("height", [256, 512, 1024, 2048])
@pytest.mark.parametrize(("fraction", "count"), [(1 / 8, 4), (1 / 16, 4), (1 / 32, 2)])
def test_sample_strips_spread_over_the_image_and_stand_for_all_its_rows(
    height: int, fraction: float, count: int
) -> None:
    strips = sample_strips(height, fraction, count)
    assert strips[0][0] == 0 and strips[-1][1] == height  # both borders sampled
    assert all(a[1] <= b[0] for a, b in zip(strips, strips[1:], strict=False))  # sorted, disjoint
    rows = sum(hi - lo for lo, hi, _ in strips)
    assert rows <= max(count + 2, 1.2 * fraction * height)
    assert abs(sum((hi - lo) * w for lo, hi, w in strips) - height) <= height * 0.02  # weights: the image
    gaps = [b[0] - a[1] for a, b in zip(strips, strips[1:], strict=False)]
    assert max(gaps) <= 1.5 * height / count  # no region of the image is left out
    assert sample_strips(height, 1.0, count) == [(0, height, 1.0)]


def test_sample_strips_of_a_small_image_are_the_image() -> None:
    assert sample_strips(10, 0.9, 4) == [(0, 10, 1.0)]  # 6 strips of 2 rows would cover it all
    assert len(sample_strips(10, 0.5, 4)) == 6
    with pytest.raises(InvalidRequest):
        sample_strips(0, 0.1, 4)


def test_merge_strips_averages_weights_by_rows() -> None:
    assert merge_strips([(10, 20, 2.0), (0, 5, 1.0)]) == [(0, 5, 1.0), (10, 20, 2.0)]
    ((lo, hi, w),) = merge_strips([(0, 10, 1.0), (5, 15, 3.0)])
    assert (lo, hi) == (0, 15) and w == pytest.approx((10 * 1 + 10 * 3) / 15)


def test_decode_key_depends_on_every_part() -> None:
    base = decode_key("lat", "vae", {"method": "banded"})
    assert base == decode_key("lat", "vae", {"method": "banded"}) and len(base) == 64
    assert decode_key("lat2", "vae", {"method": "banded"}) != base
    assert decode_key("lat", "vae2", {"method": "banded"}) != base
    assert decode_key("lat", "vae", {"method": "fallback", "tile": 64}) != base
    tiled = decode_key("lat", "vae", {"method": "fallback", "tile": 64, "overlap": 8})
    assert tiled != decode_key("lat", "vae", {"method": "fallback", "tile": 64, "overlap": 16})
    assert tiled == decode_key("lat", "vae", {"overlap": 8, "tile": 64, "method": "fallback"})  # order-free
    # parts are delimited: moving characters between parts changes the key
    assert decode_key("ab", "c", {}) != decode_key("a", "bc", {})
    with pytest.raises(InvalidRequest):
        decode_key("", "vae", {})
    with pytest.raises(InvalidRequest):
        decode_key("lat", "vae", {"x": object()})


def key(n: int) -> str:
    return decode_key(f"latent{n}", "vae", {"method": "banded"})


def test_ram_tier_hits_misses_and_byte_bound() -> None:
    cache: DecodeCache[bytes] = DecodeCache(10)
    assert cache.get(key(1)) is None
    cache.put(key(1), b"aaaa", 4)
    cache.put(key(2), b"bbbb", 4)
    assert cache.get(key(1)) == (b"aaaa", "ram")
    cache.put(key(3), b"cccc", 4)  # over 10 bytes: the least recently used (key 2) goes
    assert cache.get(key(2)) is None and cache.get(key(3)) == (b"cccc", "ram")
    s = cache.stats()
    assert (s.ram_hits, s.misses, s.stores, s.ram_entries, s.ram_bytes) == (2, 2, 3, 2, 8)
    assert s.hit_rate == 0.5 and not s.disk_enabled
    assert s.to_wire()["ram_max_bytes"] == 10
    with pytest.raises(InvalidRequest):
        cache.get("../../etc/passwd")


def read_blob(path: Path) -> tuple[bytes, int]:
    data = path.read_bytes()
    if not data.startswith(b"IMG"):
        raise ValueError("not an image blob")
    return data, len(data)


def blob_tier(models: ModelCache) -> ModelCacheTier[bytes]:
    return ModelCacheTier(models, read_blob, lambda value, path: path.write_bytes(value), suffix=".bin")


def test_disk_tier_is_shared_through_the_model_cache(tmp_path: Path) -> None:
    models = ModelCache(tmp_path, max_bytes=MiB)
    writer: DecodeCache[bytes] = DecodeCache(MiB, blob_tier(models))
    writer.put(key(1), b"IMG1", 4)
    reader: DecodeCache[bytes] = DecodeCache(
        MiB, blob_tier(ModelCache(tmp_path, max_bytes=MiB))
    )  # another process
    assert reader.get(key(1)) == (b"IMG1", "disk")
    assert reader.get(key(1)) == (b"IMG1", "ram")
    assert reader.get(key(2)) is None
    s = reader.stats()
    assert (s.disk_hits, s.ram_hits, s.misses, s.disk_enabled, s.disk_tier) == (1, 1, 1, True, "model cache")
    (entry,) = models.entries()
    assert entry.source.startswith("podkit-decode:") and entry.path.suffix == ".bin"


def test_disk_failures_never_fail_the_decode(tmp_path: Path) -> None:
    models = ModelCache(tmp_path, max_bytes=MiB)

    def broken(value: bytes, path: Path) -> None:
        raise OSError("disk full")

    cache: DecodeCache[bytes] = DecodeCache(MiB, ModelCacheTier(models, read_blob, broken))
    cache.put(key(1), b"IMG1", 4)  # logged and counted, not raised
    assert cache.stats().disk_errors == 1 and not models.entries()
    blob_tier(models).save(key(2), b"XXXX")
    fresh: DecodeCache[bytes] = DecodeCache(MiB, blob_tier(models))
    assert fresh.get(key(2)) is None  # unreadable blob: a miss
    assert fresh.stats().disk_errors == 1 and fresh.stats().misses == 1


def test_use_disk_switches_the_tier_and_keeps_ram(tmp_path: Path) -> None:
    cache: DecodeCache[bytes] = DecodeCache(MiB)
    cache.put(key(1), b"IMG1", 4)
    models = ModelCache(tmp_path, max_bytes=MiB)
    cache.use_disk(blob_tier(models))
    assert cache.get(key(1)) == (b"IMG1", "ram") and cache.stats().disk_tier == "model cache"
    cache.put(key(2), b"IMG2", 4)
    assert len(models.entries()) == 1


def test_outputs_are_known_by_identity_while_they_live() -> None:
    cache: DecodeCache[bytes] = DecodeCache(MiB)

    class Image:  # a stand-in for the tensor a decode returned (weak-referenceable)
        pass

    first, twin = Image(), Image()
    cache.note_output(first, key(1))
    assert cache.key_of(first) == key(1) and cache.key_of(twin) is None
    kept = [Image() for _ in range(RECENT_OUTPUTS + 3)]
    for n, image in enumerate(kept):
        cache.note_output(image, key(n + 2))
    assert cache.key_of(first) is None  # only the last few decodes are remembered
    assert cache.key_of(kept[-1]) == key(len(kept) + 1)


def test_decode_cache_settings(tmp_path: Path) -> None:
    from podkit.core.errors import ConfigError
    from podkit.core.settings import Settings

    base = {"PODKIT_CACHE_DIR": str(tmp_path / "c"), "PODKIT_STATE_DIR": str(tmp_path / "s")}
    s = Settings.from_env(base)
    assert (s.decode_ram_cache_bytes, s.decode_disk_cache) == (2**30, False)
    s = Settings.from_env({**base, "PODKIT_DECODE_RAM_CACHE": "256M", "PODKIT_DECODE_DISK_CACHE": "1"})
    assert (s.decode_ram_cache_bytes, s.decode_disk_cache) == (256 * MiB, True)
    with pytest.raises(ConfigError, match="PODKIT_DECODE_RAM_CACHE"):
        Settings.from_env({**base, "PODKIT_DECODE_RAM_CACHE": "lots"})
