"""Exact banded decode of LDM-style image VAEs: a full decode's result in a fraction of its memory (torch).

Imported lazily (by the decode node and the benches): it needs torch, which the package root,
``core`` and ``server_routes`` must not import.

Why not tiles: each tile of a naive tiled decode normalises with its own GroupNorm statistics
(tone seams), and a convolution near a tile border sees zero padding instead of the neighbour.
Measured on a random SD VAE (256², 128 px tiles): statistics from a 1/4-resolution pass + 64 px
feathered overlap gave 24.6 dB against the full decode, exact whole-image statistics + the same
overlap 31.5 dB — the decoder's receptive field reaches ~12 latent px past a tile border. Both
miss the 40 dB bar, and ComfyUI's VAEDecodeTiled pays 3 decodes for its averaging.

How it works instead, for a decoder shaped like ``comfy.ldm.modules.diffusionmodules.model.Decoder``
(SD1.x, SD2, SDXL, SD3 and FLUX image VAEs):

1. The *head* (``post_quant_conv``, ``conv_in`` and the mid block with its global
   self-attention) runs as usual on the latent: it works at latent resolution and is cheap.
2. Every later layer runs over whole-image activations, one horizontal band of rows at a time: a
   3×3 convolution's band reads one row more above and below and writes only its own rows, so
   the bands' outputs tile the layer exactly (no overlap, no blending). GroupNorm statistics are
   accumulated band by band as each layer's output is produced and applied band by band (fused
   with the SiLU) by the next convolution. The nearest-neighbour upsample is fused with its
   convolution. The result equals a full decode up to float rounding.
3. A residual block writes its output over its input's storage; only the block's inner activation
   is a second whole-image tensor. The peak is two activations of the widest full-resolution
   layer plus one band's temporaries (ComfyUI's full decode keeps several activations and
   per-layer temporaries of the whole image).

Out of memory (CUDA OOM, a failed CPU allocation, or the host-RAM guard on the CPU) halves the
band; on a GPU the whole-image activations then move to host RAM with only bands on the device.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import InvalidRequest, PodKitError
from ..core.tiling import choose_band, layer_rows, next_smaller_band, row_bands

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
#: MACs per progress unit.
_COST_UNIT = 10**6
#: Host RAM the guard keeps free on top of what a CPU allocation needs.
HOST_RESERVE = 512 * 2**20


class UnsupportedVAE(PodKitError, TypeError):
    """The VAE is not an LDM-style 2-D image VAE; callers fall back to ComfyUI's own tiled path."""

    http_status = 422
    code = "unsupported_vae"


class DecodeMemoryError(PodKitError, MemoryError):
    """Even the smallest band (with activations in host RAM) does not fit."""

    http_status = 507
    code = "decode_out_of_memory"


class _HostMemoryLow(MemoryError):
    """Raised by the host-RAM guard before a CPU allocation that would not fit."""


_BLOCK_PARTS = {"norm1", "conv1", "norm2", "conv2", "nin_shortcut", "conv_shortcut", "swish", "dropout"}


def _is_conv(m: object, kernel: int) -> bool:
    return (
        isinstance(m, nn.Conv2d)
        and m.kernel_size == (kernel, kernel)
        and m.stride == (1, 1)
        and m.dilation == (1, 1)
        and m.groups == 1
        and m.padding == (kernel // 2, kernel // 2)
        and m.padding_mode == "zeros"
    )


def _check_block(block: Any, where: str) -> None:
    names = {n for n, _ in block.named_children()}
    ok = (
        names <= _BLOCK_PARTS
        and isinstance(getattr(block, "norm1", None), nn.GroupNorm)
        and isinstance(getattr(block, "norm2", None), nn.GroupNorm)
        and _is_conv(getattr(block, "conv1", None), 3)
        and _is_conv(getattr(block, "conv2", None), 3)
        and ("nin_shortcut" not in names or _is_conv(block.nin_shortcut, 1))
        and ("conv_shortcut" not in names or _is_conv(block.conv_shortcut, 3))
        and not any(p.numel() for n, p in block.named_parameters() if "temb" in n)
    )
    if not ok:
        raise UnsupportedVAE(f"{where} ({type(block).__name__}) is not a plain 2-D residual block")


@dataclass
class LdmDecoder:
    """An LDM-style decoder, checked to be one the banded decode reproduces exactly."""

    decoder: Any  # nn.Module; its submodules are reached by their LDM attribute names
    post_quant_conv: nn.Module | None
    scale: int

    @classmethod
    def from_model(cls, model: nn.Module) -> LdmDecoder:
        """Check and wrap ``model`` (an ``AutoencoderKL``/``AutoencodingEngine`` or a bare decoder).

        Raises:
            UnsupportedVAE: not a 2-D LDM decoder (video, audio, TAESD, attention in up blocks, …).
        """
        decoder: Any = getattr(model, "decoder", model)
        if not isinstance(decoder, nn.Module):
            raise UnsupportedVAE(f"{type(model).__name__} has no decoder module")
        kind = type(model).__name__
        needed = ("conv_in", "mid", "up", "norm_out", "conv_out")
        if not all(hasattr(decoder, n) for n in needed) or not isinstance(decoder.up, nn.ModuleList):
            raise UnsupportedVAE(f"{kind} is not an LDM-style image VAE")
        if not _is_conv(decoder.conv_in, 3) or not _is_conv(decoder.conv_out, 3):
            raise UnsupportedVAE(f"{kind} is not a 2-D image VAE")
        if getattr(decoder, "give_pre_end", False) or not isinstance(decoder.norm_out, nn.GroupNorm):
            raise UnsupportedVAE(f"{kind}: unexpected decoder output stage")
        mid = decoder.mid
        if not all(hasattr(mid, n) for n in ("block_1", "attn_1", "block_2")):
            raise UnsupportedVAE(f"{kind}: unexpected mid block")
        levels: list[Any] = list(decoder.up)
        for level, up in enumerate(levels):
            if len(getattr(up, "attn", ())) > 0:
                raise UnsupportedVAE(f"{kind}: attention at decoder level {level} needs the whole image")
            for i, block in enumerate(up.block):
                _check_block(block, f"decoder.up.{level}.block.{i}")
            if level != 0:
                ups = up.upsample
                if getattr(ups, "scale_factor", 2.0) != 2.0 or (
                    getattr(ups, "with_conv", False) and not _is_conv(ups.conv, 3)
                ):
                    raise UnsupportedVAE(f"{kind}: unexpected upsampler at level {level}")
        post = getattr(model, "post_quant_conv", None) if decoder is not model else None
        # AutoencodingEngine (FLUX, SD3) keeps no post_quant_conv; the legacy AutoencoderKL does.
        return cls(decoder, post if isinstance(post, nn.Module) else None, 2 ** (len(decoder.up) - 1))

    def head(self, z: torch.Tensor) -> torch.Tensor:
        d = self.decoder
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        h = d.conv_in(z)
        h = d.mid.block_1(h, None)
        h = _attention(d.mid.attn_1, h)
        return d.mid.block_2(h, None)  # type: ignore[no-any-return]

    def head_cost(self, h: int, w: int) -> int:
        d = self.decoder
        mods = [self.post_quant_conv, d.conv_in, d.mid.block_1, d.mid.attn_1, d.mid.block_2]
        return sum(_conv_cost(c, h, w) for m in mods if m is not None for c in m.modules())

    def body_cost(self, h: int, w: int) -> int:
        """MACs of the banded convolutions after the head (what progress counts), at latent ``h`` × ``w``."""
        d = self.decoder
        total = 0
        for level in reversed(range(len(d.up))):
            for block in d.up[level].block:
                total += _conv_cost(block.conv1, h, w) + _conv_cost(block.conv2, h, w)
            if level != 0:
                h, w = h * 2, w * 2
                total += _conv_cost(getattr(d.up[level].upsample, "conv", None), h, w)
        return total + _conv_cost(d.conv_out, h, w)

    def widest_full_res(self) -> tuple[int, int]:
        """(input, output) channels of the widest convolution at the output resolution."""
        d = self.decoder
        convs = [c for b in d.up[0].block for c in b.modules() if isinstance(c, nn.Conv2d)]
        if len(d.up) > 1 and getattr(d.up[1].upsample, "with_conv", False):
            convs.append(d.up[1].upsample.conv)
        widest = max(convs, key=lambda c: c.in_channels + c.out_channels)
        return widest.in_channels, widest.out_channels


_ATTN_PARTS = {"norm", "q", "k", "v", "proj_out"}


def _attention(block: Any, x: torch.Tensor) -> torch.Tensor:
    """The mid block's single-head self-attention over all latent pixels, in O(pixels) memory.

    Same math as LDM's ``AttnBlock`` (``x + proj_out(softmax(q kᵀ / √C) v)``), through
    ``scaled_dot_product_attention``'s fused kernels: ComfyUI's CPU path materialises the
    pixels × pixels matrix (1 GiB at 1024², more than all of the banded decode's activations).
    Any other attention module runs as it is.
    """
    names = {n for n, _ in block.named_children()}
    if names != _ATTN_PARTS or not all(_is_conv(getattr(block, n), 1) for n in ("q", "k", "v", "proj_out")):
        return block(x)  # type: ignore[no-any-return]
    b, c, h, w = x.shape
    n = block.norm(x)
    q, k, v = (getattr(block, p)(n).reshape(b, 1, c, h * w).transpose(2, 3) for p in ("q", "k", "v"))
    del n
    a = F.scaled_dot_product_attention(q, k, v)
    del q, k, v
    return x + block.proj_out(a.transpose(2, 3).reshape(b, c, h, w))  # type: ignore[no-any-return]


def _conv_cost(m: object, h: int, w: int) -> int:
    return int(m.weight.numel()) * h * w if isinstance(m, nn.Conv2d) else 0


class RunningStats:
    """Per-group mean and variance of a layer's output, merged band by band (Chan et al., float64)."""

    def __init__(self, groups: int) -> None:
        self.groups = groups
        self.n = 0
        self.mean = torch.zeros(groups, dtype=torch.float64)
        self.m2 = torch.zeros(groups, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        """Fold in a band ``[1, C, rows, W]``."""
        # Per-channel sums and sums of squares (one vectorised pass each, no temporaries; each
        # channel's rows are contiguous), then channels into groups in float64. Welford-style
        # var_mean costs twice a whole GroupNorm here.
        band = x[0].float()
        n = band[0].numel()
        sums = band.sum(dim=(1, 2)).double().cpu().reshape(self.groups, -1)  # cascade sums: accurate
        squares = torch.linalg.vector_norm(band, dim=(1, 2)).double().cpu().reshape(self.groups, -1)
        count = n * sums.shape[1]
        mean = sums.sum(dim=1) / count
        var = ((squares**2).sum(dim=1) / count - mean**2).clamp_min(0.0)
        total = self.n + count
        delta = mean - self.mean
        self.mean += delta * (count / total)
        self.m2 += var * count + delta**2 * (self.n * count / total)
        self.n = total

    def affine(self, norm: nn.GroupNorm, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (scale, shift) so that ``x * scale + shift == norm(x)`` with these statistics."""
        if self.n == 0 or norm.num_groups != self.groups:
            raise InvalidRequest("GroupNorm statistics do not match the layer")
        per = norm.num_channels // self.groups
        inv = torch.rsqrt(self.m2 / self.n + norm.eps).repeat_interleave(per)
        mean = self.mean.repeat_interleave(per)
        weight = norm.weight.detach().double().cpu() if norm.weight is not None else torch.ones_like(inv)
        bias = norm.bias.detach().double().cpu() if norm.bias is not None else torch.zeros_like(inv)
        scale = weight * inv
        shift = bias - mean * scale
        shape = (1, norm.num_channels, 1, 1)
        return scale.to(like).reshape(shape), shift.to(like).reshape(shape)


def stats_of(x: torch.Tensor, groups: int) -> RunningStats:
    s = RunningStats(groups)
    s.add(x)
    return s


def is_oom(e: BaseException) -> bool:
    """CUDA OOM, a failed CPU allocation, or the host-RAM guard."""
    if isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def available_host_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class DecodeReport:
    """What a decode did (for logs, the bench and tests)."""

    band_px: int
    bands: int
    retries: int
    storage: str


@dataclass
class TiledDecoder:
    """Decodes latents ``[B, C, h, w]`` to images ``[B, C_out, H, W]`` in the VAE's raw output range.

    Args:
        dec: the checked decoder.
        device: where the decoder's layers run.
        dtype: the decoder's compute dtype.
        output_device: where the image is assembled (ComfyUI's intermediate device, the CPU).
        host_guard: refuse CPU allocations that would leave less than ``HOST_RESERVE`` of RAM.
    """

    dec: LdmDecoder
    device: torch.device
    dtype: torch.dtype
    output_device: torch.device = torch.device("cpu")
    host_guard: bool = True

    # ------------------------------------------------------------------ sizing
    def bytes_per_row_px(self) -> float:
        """Band temporaries per output pixel at the widest full-resolution layer."""
        cin, cout = self.dec.widest_full_res()
        elt = torch.empty((), dtype=self.dtype).element_size()
        return float((cin + 2 * cout) * elt)

    def whole_image_bytes(self, h: int, w: int) -> int:
        """The two whole-image activations at full resolution the decode keeps (per image)."""
        cin, cout = self.dec.widest_full_res()
        elt = torch.empty((), dtype=self.dtype).element_size()
        return (cin + cout) * h * w * self.dec.scale**2 * elt

    def auto_band(self, h: int, w: int, free_bytes: int) -> int:
        """Band height for latent ``h`` × ``w`` from the device's free memory."""
        left = max(0, free_bytes - self.whole_image_bytes(h, w))
        s = self.dec.scale
        return choose_band(
            out_width=w * s, out_height=h * s, bytes_per_row_px=self.bytes_per_row_px(), free_bytes=left
        )

    # ------------------------------------------------------------------ decode
    def decode(
        self, z: torch.Tensor, band_px: int, progress: Progress | None = None
    ) -> tuple[torch.Tensor, DecodeReport]:
        """Decode ``z`` in bands of ``band_px`` output rows, shrinking them on out-of-memory.

        Raises:
            InvalidRequest: ``z`` is not a 4-D latent with the decoder's channels.
            DecodeMemoryError: the smallest band with host-RAM storage still does not fit.
        """
        conv_in = self.dec.post_quant_conv or self.dec.decoder.conv_in
        if z.ndim != 4 or z.shape[0] < 1 or z.shape[1] != getattr(conv_in, "in_channels", z.shape[1]):
            raise InvalidRequest(
                f"expected a [B, {getattr(conv_in, 'in_channels', 'C')}, h, w] latent, "
                f"got shape {tuple(z.shape)}"
            )
        if band_px <= 0:
            raise InvalidRequest("band size must be positive")
        storage = self.device
        first = band_px
        retries = 0
        while True:
            error: str | None = None
            try:
                out, bands = self._decode_all(z, band_px, storage, progress)
                return out, DecodeReport(band_px, bands, retries, storage.type)
            except Exception as e:
                if not is_oom(e):
                    raise
                error = str(e) or type(e).__name__
            # Outside the except block, so the failed attempt's tensors can be freed first.
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            smaller = next_smaller_band(band_px)
            if smaller is None and storage.type != "cpu":
                storage, smaller = torch.device("cpu"), first
            if smaller is None:
                raise DecodeMemoryError(f"VAE decode does not fit even with {band_px}-row bands: {error}")
            logger.warning(
                "PodKit banded decode: out of memory with %d-row bands (%s); retrying with %d "
                "rows, activations on %s",
                band_px,
                error,
                smaller,
                storage,
            )
            band_px = smaller
            retries += 1

    def _alloc(self, shape: tuple[int, ...], storage: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if storage.type == "cpu":
            self._guard(math.prod(shape) * torch.empty((), dtype=dtype).element_size())
        return torch.empty(shape, device=storage, dtype=dtype)

    def _guard(self, nbytes: int) -> None:
        if not self.host_guard:
            return
        free = available_host_bytes()
        if free is not None and nbytes + HOST_RESERVE > free:
            raise _HostMemoryLow(f"needs {nbytes / 2**20:.0f} MiB of RAM, {free / 2**20:.0f} MiB available")

    def _decode_all(
        self, z: torch.Tensor, band_px: int, storage: torch.device, progress: Progress | None
    ) -> tuple[torch.Tensor, int]:
        d: Any = self.dec.decoder
        batch, (h, w) = z.shape[0], z.shape[2:]
        s = self.dec.scale
        run = _Run(
            self,
            storage,
            max(1, int(band_px * w * s * self.bytes_per_row_px())),
            progress,
            batch * (self.dec.head_cost(h, w) + self.dec.body_cost(h, w)),
        )
        out_ch = d.conv_out.out_channels
        out = self._alloc((batch, out_ch, h * s, w * s), self.output_device, torch.float32)
        for b in range(batch):
            x = self.dec.head(z[b : b + 1].to(self.device, self.dtype)).to(storage)
            run.advance(self.dec.head_cost(h, w))
            stats = stats_of(x, d.up[-1].block[0].norm1.num_groups)
            for level in reversed(range(len(d.up))):
                up = d.up[level]
                for block in up.block:
                    x, stats = run.block(block, x, stats)
                if level != 0:
                    x, stats = run.upsample(up.upsample, x, stats.groups)
            run.conv(
                x,
                d.conv_out,
                pre=(d.norm_out, stats),
                dst=out[b : b + 1],
                post=torch.tanh if getattr(d, "tanh_out", False) else None,
            )
            del x
        return out, run.bands


@dataclass
class _Run:
    """One decode attempt: band loops over whole-image activations, with progress."""

    owner: TiledDecoder
    storage: torch.device
    budget: int  # bytes of one band's temporaries, at every layer
    progress: Progress | None
    total_cost: int
    done_cost: int = 0
    bands: int = 0

    def advance(self, cost: int) -> None:
        self.done_cost += cost
        if self.progress is not None:
            self.progress(self.done_cost // _COST_UNIT, max(1, self.total_cost // _COST_UNIT))

    def _rows(self, height: int, width: int, conv: Any) -> list[tuple[int, int]]:
        elt = torch.empty((), dtype=self.owner.dtype).element_size()
        per_row = (conv.in_channels + 2 * conv.out_channels) * width * elt
        return row_bands(height, layer_rows(self.budget, height, per_row))

    def _band_in(self, src: torch.Tensor, a: int, b: int, upsample: bool) -> tuple[torch.Tensor, int]:
        """Input rows a 3×3 convolution needs for output rows ``a:b`` (on the device), and their start."""
        height = src.shape[2] * (2 if upsample else 1)
        lo, hi = max(a - 1, 0), min(b + 1, height)
        dev = self.owner.device
        if not upsample:
            return src[:, :, lo:hi].to(dev), lo
        ilo, ihi = lo // 2, (hi + 1) // 2
        part = F.interpolate(src[:, :, ilo:ihi].to(dev), scale_factor=2.0, mode="nearest")
        return part[:, :, lo - 2 * ilo : hi - 2 * ilo], lo

    def conv(
        self,
        src: torch.Tensor,
        conv: nn.Module,
        *,
        pre: tuple[nn.GroupNorm, RunningStats] | None = None,
        dst: torch.Tensor,
        residual: Callable[[int, int], torch.Tensor] | None = None,
        upsample: bool = False,
        post: Callable[[torch.Tensor], torch.Tensor] | None = None,
        groups: int | None = None,
    ) -> RunningStats | None:
        """``dst = post(conv(silu(norm(src))) + residual)`` band by band; statistics of ``dst`` if asked."""
        height = dst.shape[2]
        stats = RunningStats(groups) if groups else None
        affine = (
            pre[1].affine(pre[0], torch.empty((), device=self.owner.device, dtype=self.owner.dtype))
            if pre
            else None
        )
        for a, b in self._rows(height, dst.shape[3], conv):
            part, lo = self._band_in(src, a, b, upsample)
            if affine is not None:
                part = F.silu(torch.addcmul(affine[1], part, affine[0]), inplace=True)
            y = conv(part)[:, :, a - lo : b - lo]
            del part
            if residual is not None:
                y = y + residual(a, b)
            if post is not None:
                y = post(y)
            if stats is not None:
                stats.add(y)
            dst[:, :, a:b] = y.to(dst.device, dst.dtype)
            del y
            self.bands += 1
            self.advance(_conv_cost(conv, b - a, dst.shape[3]))
        return stats

    def block(self, block: Any, x: torch.Tensor, sx: RunningStats) -> tuple[torch.Tensor, RunningStats]:
        """A residual block; its output overwrites ``x``'s storage."""
        _, cin, height, width = x.shape
        cout = block.conv1.out_channels
        inner = self.owner._alloc((1, cout, height, width), self.storage, x.dtype)
        si = self.conv(x, block.conv1, pre=(block.norm1, sx), dst=inner, groups=block.norm2.num_groups)
        assert si is not None  # noqa: S101 - asked for with groups
        if cout <= cin:
            # Output channel c, row r lands where input channel c, row r was: a band only
            # overwrites input rows it has already read (for its shortcut), never rows still needed.
            dst = x.view(-1)[: cout * height * width].view(1, cout, height, width)
        else:
            dst = self.owner._alloc((1, cout, height, width), self.storage, x.dtype)
        dev = self.owner.device
        if hasattr(block, "nin_shortcut") or hasattr(block, "conv_shortcut"):
            short = block.nin_shortcut if hasattr(block, "nin_shortcut") else block.conv_shortcut
            k3 = short.kernel_size == (3, 3)

            def residual(a: int, b: int) -> torch.Tensor:
                if not k3:
                    return short(x[:, :, a:b].to(dev))  # type: ignore[no-any-return]
                part, lo = self._band_in(x, a, b, False)
                return short(part)[:, :, a - lo : b - lo]  # type: ignore[no-any-return]
        else:

            def residual(a: int, b: int) -> torch.Tensor:
                return x[:, :, a:b].to(dev)

        if hasattr(block, "conv_shortcut") and cout <= cin:
            dst = self.owner._alloc((1, cout, height, width), self.storage, x.dtype)  # 3×3 reads rows ahead
        so = self.conv(
            inner,
            block.conv2,
            pre=(block.norm2, si),
            dst=dst,
            residual=residual,
            groups=block.norm2.num_groups,
        )
        assert so is not None  # noqa: S101 - asked for with groups
        del inner
        return dst, so

    def upsample(self, ups: Any, x: torch.Tensor, groups: int) -> tuple[torch.Tensor, RunningStats]:
        """Nearest ×2 fused with the upsampler's convolution."""
        _, c, height, width = x.shape
        if not getattr(ups, "with_conv", False):
            y = F.interpolate(x, scale_factor=2.0, mode="nearest")
            return y, stats_of(y, groups)
        dst = self.owner._alloc((1, ups.conv.out_channels, height * 2, width * 2), self.storage, x.dtype)
        stats = self.conv(x, ups.conv, dst=dst, upsample=True, groups=groups)
        assert stats is not None  # noqa: S101 - asked for with groups
        return dst, stats


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of ``a`` against ``b`` (inf when equal)."""
    mse = float(torch.mean((a.double() - b.double()) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)
