"""PodKit's banded VAE decode and the decode cache on a real SD-architecture decoder (random weights, CPU).

The decoder is ComfyUI's own ``Decoder`` when ``COMFYUI_PATH`` points to a checkout importable
here, else the op-for-op copy in tests/support/ldm_vae.py; reduced channels keep each decode
(128-256 px) to a second or so.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from ldm_vae import TinyVAE, randomize
from torch import nn

from podkit.backends import tiled_vae
from podkit.backends.decode_tiers import model_cache_tier
from podkit.backends.tiled_vae import DecodeMemoryError, LdmDecoder, Plan, TiledDecoder, UnsupportedVAE, psnr
from podkit.backends.vae_decode import DecodeHost, cached_decode, vae_fingerprint, weights_fingerprint
from podkit.backends.vae_stream import strip_ranges
from podkit.core.decode_cache import DecodeCache
from podkit.core.model_cache import ModelCache
from podkit.core.tiling import BUDGET_FRACTION, MIN_BAND_PX

PSNR_BAR = 40.0


@pytest.fixture(scope="module")
def vae() -> TinyVAE:
    torch.set_num_threads(2)
    return TinyVAE(ch=32, seed=1)


def latent(h: int, w: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 4, h, w, generator=torch.Generator().manual_seed(seed))


def full_raw(vae: TinyVAE, z: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return vae.first_stage_model.decode(z)


def banded(vae: TinyVAE) -> TiledDecoder:
    return TiledDecoder(LdmDecoder.from_model(vae.first_stage_model), torch.device("cpu"), torch.float32)


def run(decoder: TiledDecoder, z: torch.Tensor, band: int, progress=None):  # type: ignore[no-untyped-def]
    with torch.inference_mode():
        return decoder.decode(z, band, progress)


class Host:
    """A DecodeHost that records what the decode asked of it."""

    def __init__(self, vae: TinyVAE, free: int = 8 * 2**30) -> None:
        self.vae = vae
        self.free = free
        self.prepared: list[int] = []
        self.fallbacks = 0

    def fallback(self, samples: torch.Tensor) -> torch.Tensor:
        self.fallbacks += 1
        return self.vae.decode(samples)

    def host(self) -> DecodeHost:
        return DecodeHost(self.prepared.append, lambda: self.free, self.fallback, {"tile": 64, "overlap": 8})


def count_forwards(module: nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("band", [2 * MIN_BAND_PX, 40, 64, 4096])
def test_banded_decode_equals_full_decode(vae: TinyVAE, band: int) -> None:
    z = latent(16, 24, batch=2)  # 128 x 192 px, two images, bands not dividing the height
    out, report = run(banded(vae), z, band)
    full = full_raw(vae, z)
    assert out.shape == full.shape and out.dtype == torch.float32
    assert psnr(vae.process_output(out), vae.process_output(full)) >= PSNR_BAR
    assert float((out - full).abs().max()) < 1e-4  # equal up to float rounding, not just close
    assert report.retries == 0 and report.bands > 0


def test_constant_latent_has_no_seams_at_band_borders(vae: TinyVAE) -> None:
    z = torch.full((1, 4, 32, 16), 0.7)
    out, _ = run(banded(vae), z, 16)  # 16-row bands at full resolution: 16 band borders
    full = full_raw(vae, z)
    row_err = (out - full).abs().amax(dim=(0, 1, 3))
    assert float(row_err.max()) < 1e-4
    assert psnr(vae.process_output(out), vae.process_output(full)) >= PSNR_BAR


def test_progress_is_monotonic_and_completes(vae: TinyVAE) -> None:
    seen: list[tuple[int, int]] = []
    run(banded(vae), latent(16, 16), 32, lambda done, total: seen.append((done, total)))
    assert len(seen) > 10
    assert all(b[0] >= a[0] for a, b in zip(seen, seen[1:], strict=False))
    assert len({t for _, t in seen}) == 1 and seen[-1][0] == seen[-1][1]


def streamed_plan(decoder: TiledDecoder, h: int, w: int, share: float = 0.4) -> Plan:
    """The plan the decode takes when only ``share`` of the exact decode's memory is free."""
    exact = decoder.plan(h, w, 2**50, 0)
    assert exact.mode == "exact"
    plan = decoder.plan(h, w, int(exact.need * share), 0)
    assert plan.mode == "streamed" and plan.need < exact.need
    return plan


def test_low_memory_plans_stream_and_need_less_than_the_exact_decode(vae: TinyVAE) -> None:
    decoder = banded(vae)
    plan = streamed_plan(decoder, 32, 24)
    assert plan.need <= int(decoder.plan(32, 24, 2**50, 0).need * 0.4)
    assert 0 < plan.sample < 1 and plan.ranges
    assert "streamed from" in plan.describe()


def test_streamed_decode_with_statistics_from_every_row_equals_the_full_decode(vae: TinyVAE) -> None:
    # The stream's pipeline (bands, carried halo rows, queued shortcuts, upsampling) is exact; only
    # the GroupNorm statistics are sampled. Sampling every row must therefore give the full decode.
    decoder = banded(vae)
    h, w = 32, 24
    plan = streamed_plan(decoder, h, w)
    tail = decoder.dec.steps(h, w)[plan.cut :]
    whole = replace(plan, ranges=tuple(strip_ranges(tail, tail[-1].h, 1.0, 4)), sample=1.0)
    z = latent(h, w, seed=2, batch=2)
    with torch.inference_mode():
        out, report = decoder.decode(z, 16, plan=whole)
    full = full_raw(vae, z)
    assert report.mode == "streamed" and out.shape == full.shape
    assert float((out - full).abs().max()) < 5e-3  # strips are kept in bfloat16 between layers
    assert psnr(vae.process_output(out), vae.process_output(full)) >= 70


def test_streamed_decode_with_sampled_statistics_stays_close_to_the_full_decode(vae: TinyVAE) -> None:
    # This 32-channel random decoder at 256 x 192 px samples a few dozen rows: its statistics are far
    # noisier than a full-size SD VAE's at 2048² (bench/bench_decode.py measures the 40 dB bar there).
    decoder = banded(vae)
    h, w = 32, 24
    z = latent(h, w, seed=3)
    with torch.inference_mode():
        out, report = decoder.decode(z, 16, plan=streamed_plan(decoder, h, w))
    assert report.mode == "streamed"
    assert psnr(vae.process_output(out), vae.process_output(full_raw(vae, z))) >= 24


def test_cached_decode_streams_when_free_memory_is_short(vae: TinyVAE) -> None:
    z = latent(32, 24, seed=5)
    need = banded(vae).plan(32, 24, 2**50, 0).need
    host = Host(vae, free=int(need * 0.4 / BUDGET_FRACTION))  # the decode may use a quarter of it
    image, info = cached_decode(vae, z, host.host(), cache=None)
    assert info.mode == "streamed" and info.detail and "streamed from" in info.detail
    assert image.shape == (1, 256, 192, 3) and host.fallbacks == 0


class FailingConv(nn.Conv2d):
    """A convolution whose allocation fails for inputs of more than ``limit`` rows."""

    def __init__(self, conv: nn.Conv2d, limit: int, error: type[Exception] = MemoryError) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
        self.load_state_dict(conv.state_dict())
        self.limit = limit
        self.error = error
        self.failures = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] > self.limit:
            self.failures += 1
            raise self.error("DefaultCPUAllocator: can't allocate memory: you tried to allocate 4 GiB")
        return super().forward(x)


@pytest.fixture
def fragile_vae() -> TinyVAE:
    return TinyVAE(ch=32, seed=3)


@pytest.mark.parametrize("error", [MemoryError, RuntimeError])
def test_out_of_memory_falls_back_to_smaller_bands(fragile_vae: TinyVAE, error: type[Exception]) -> None:
    z = latent(16, 16, seed=4)
    expected = full_raw(fragile_vae, z)
    block = fragile_vae.first_stage_model.decoder.up[0].block[1]
    failing = FailingConv(block.conv1, limit=40, error=error)
    block.conv1 = failing
    out, report = run(banded(fragile_vae), z, 128)
    assert failing.failures >= 1 and report.retries >= 1
    assert report.band_px < 40
    assert float((out - expected).abs().max()) < 1e-4


def test_out_of_memory_at_the_smallest_band_is_a_clear_error_and_the_node_path_falls_back(
    fragile_vae: TinyVAE,
) -> None:
    block = fragile_vae.first_stage_model.decoder.up[0].block[0]
    block.conv1 = FailingConv(block.conv1, limit=1)
    z = latent(8, 8)
    with pytest.raises(DecodeMemoryError, match="does not fit"):
        run(banded(fragile_vae), z, 64)
    host = Host(fragile_vae)
    host.fallback = lambda samples: torch.full((1, 64, 64, 3), 0.5)  # type: ignore[method-assign]
    image, info = cached_decode(fragile_vae, z, host.host(), cache=None)
    assert info.method == "fallback" and info.band_px is None
    assert image.shape == (1, 64, 64, 3)


def test_host_ram_guard_refuses_before_allocating(vae: TinyVAE, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiled_vae, "available_host_bytes", lambda: 64 * 2**20)
    with pytest.raises(DecodeMemoryError, match="MiB of RAM"):
        run(banded(vae), latent(16, 16), 64)


def test_unsupported_decoders_are_named(vae: TinyVAE) -> None:
    other = TinyVAE(ch=32, seed=5, comfy=False)
    other.first_stage_model.decoder.up[1].attn.append(nn.Identity())
    with pytest.raises(UnsupportedVAE, match="attention at decoder level 1"):
        LdmDecoder.from_model(other.first_stage_model)
    with pytest.raises(UnsupportedVAE, match="not an LDM-style"):
        LdmDecoder.from_model(nn.Sequential(nn.Conv2d(4, 3, 1)))
    host = Host(other)
    _, info = cached_decode(other, latent(8, 8), host.host(), cache=None)
    assert info.method == "fallback" and info.reason and "attention" in info.reason and host.fallbacks == 1


def test_video_latents_go_to_the_fallback(vae: TinyVAE) -> None:
    host = Host(vae)
    host.fallback = lambda samples: torch.zeros(2, 16, 16, 3)  # type: ignore[method-assign]
    image, info = cached_decode(vae, torch.zeros(1, 4, 2, 2, 2), host.host(), cache=None)
    assert info.method == "fallback" and image.shape == (2, 16, 16, 3)


def test_cached_decode_output_is_a_comfy_image(vae: TinyVAE) -> None:
    z = latent(16, 16, seed=6)
    host = Host(vae)
    image, info = cached_decode(vae, z, host.host(), cache=None)
    expected = vae.decode(z)
    assert image.shape == expected.shape == (1, 128, 128, 3)
    assert image.dtype == torch.float32 and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert psnr(image, expected) >= PSNR_BAR
    assert info.method == "banded" and info.cache == "off" and info.band_px
    assert host.prepared and host.prepared[0] > 0  # asked the host to load the VAE for this size


def test_cache_hit_returns_without_touching_the_vae(vae: TinyVAE, tmp_path: Path) -> None:
    cache: DecodeCache[torch.Tensor] = DecodeCache(256 * 2**20)
    host = Host(vae)
    calls = count_forwards(vae.first_stage_model.decoder.conv_in)
    z = latent(16, 16, seed=7)
    first, info1 = cached_decode(vae, z, host.host(), cache=cache)
    assert info1.cache == "miss" and len(calls) == 1
    second, info2 = cached_decode(vae, z.clone(), host.host(), cache=cache)
    assert info2.cache == "ram" and len(calls) == 1 and host.fallbacks == 0
    assert torch.equal(first, second)
    second.zero_()  # a hit is a copy: a downstream node writing into it cannot poison the cache
    third, _ = cached_decode(vae, z, host.host(), cache=cache)
    assert torch.equal(first, third)
    _, info4 = cached_decode(vae, latent(16, 16, seed=8), host.host(), cache=cache)
    assert info4.cache == "miss" and len(calls) == 2
    s = cache.stats()
    assert (s.ram_hits, s.misses, s.stores, s.ram_entries) == (2, 2, 2, 2)


def test_a_different_vae_is_a_miss(vae: TinyVAE) -> None:
    cache: DecodeCache[torch.Tensor] = DecodeCache(256 * 2**20)
    z = latent(8, 8, seed=9)
    other = TinyVAE(ch=32, seed=2)
    a, _ = cached_decode(vae, z, Host(vae).host(), cache=cache)
    b, info = cached_decode(other, z, Host(other).host(), cache=cache)
    assert info.cache == "miss" and not torch.equal(a, b)


def test_disk_tier_survives_a_new_process_cache(vae: TinyVAE, tmp_path: Path) -> None:
    models = ModelCache(tmp_path / "cache", max_bytes=2**30)
    z = latent(16, 8, seed=10)
    image, _ = cached_decode(vae, z, Host(vae).host(), cache=DecodeCache(2**30, model_cache_tier(models)))
    fresh: DecodeCache[torch.Tensor] = DecodeCache(
        2**30, model_cache_tier(ModelCache(tmp_path / "cache", max_bytes=2**30))
    )
    calls = count_forwards(vae.first_stage_model.post_quant_conv)
    again, info = cached_decode(vae, z, Host(vae).host(), cache=fresh)
    assert info.cache == "disk" and not calls and torch.equal(image, again)
    assert fresh.stats().disk_hits == 1
    _, info = cached_decode(vae, z, Host(vae).host(), cache=fresh)
    assert info.cache == "ram"


def test_corrupt_disk_blob_is_a_miss_not_an_error(vae: TinyVAE, tmp_path: Path) -> None:
    models = ModelCache(tmp_path / "cache", max_bytes=2**30)
    z = latent(8, 8, seed=11)
    cached_decode(vae, z, Host(vae).host(), cache=DecodeCache(2**30, model_cache_tier(models)))
    (blob,) = (tmp_path / "cache" / "blobs").rglob("*.npy")
    blob.write_bytes(b"not an array")
    fresh: DecodeCache[torch.Tensor] = DecodeCache(2**30, model_cache_tier(models))
    image, info = cached_decode(vae, z, Host(vae).host(), cache=fresh)
    assert info.cache == "miss" and image.shape == (1, 64, 64, 3)
    assert fresh.stats().disk_errors == 1


def test_weights_fingerprint_is_stable_and_tracks_weights() -> None:
    a, b = TinyVAE(ch=32, seed=1), TinyVAE(ch=32, seed=1)
    assert weights_fingerprint(a.first_stage_model) == weights_fingerprint(b.first_stage_model)
    assert vae_fingerprint(a) == weights_fingerprint(a.first_stage_model)
    randomize(b.first_stage_model.decoder.conv_out, seed=99)
    c = TinyVAE(ch=32, seed=1)
    c.first_stage_model.load_state_dict(b.first_stage_model.state_dict())
    assert weights_fingerprint(c.first_stage_model) != weights_fingerprint(a.first_stage_model)
    # every ComfyUI patcher has a random uuid: without patches it is not part of the key, so
    # another process with the same VAE file shares the entry
    c.patcher = type("P", (), {"patches_uuid": "u1", "patches": {}})()
    assert vae_fingerprint(c) == weights_fingerprint(c.first_stage_model)
    c.patcher.patches = {"decoder.conv_out.weight": ["lora"]}  # a LoRA patched onto the VAE
    assert vae_fingerprint(c).endswith("+u1")


def test_psnr() -> None:
    a = torch.zeros(4, 4)
    assert psnr(a, a) == float("inf")
    assert abs(psnr(a, a + 0.1) - 20.0) < 1e-5
