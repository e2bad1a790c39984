"""PodKit's low-memory decode of LDM-style image VAEs: exact where memory allows, streamed past that (torch).

Imported lazily (by the decode node and the benches): it needs torch, which the package root,
``core`` and ``server_routes`` must not import.

Why not tiles: each tile of a naive tiled decode normalises with its own GroupNorm statistics
(tone seams), and a convolution near a tile border sees zero padding instead of the neighbour.
Measured on a random SD VAE (256², 128 px tiles): statistics from a 1/4-resolution pass + 64 px
feathered overlap gave 24.6 dB against the full decode, exact whole-image statistics + the same
overlap 31.5 dB — the decoder's receptive field reaches ~12 latent px past a tile border. Both
miss the 40 dB bar, and ComfyUI's VAEDecodeTiled pays 3 decodes for its averaging.

How it works instead, for a decoder shaped like ``comfy.ldm.modules.diffusionmodules.model.Decoder``
(SD1.x, SD2, SDXL, SD3 and FLUX image VAEs), as a list of :class:`Step` s after ``conv_in``:

1. **Exact part** (``vae_bands.Run``): every layer runs over whole-image activations, one band of
   rows at a time; a band's convolution reads the rows its kernel reaches and writes only its own
   rows, so bands tile the layer exactly. GroupNorm statistics are accumulated band by band and
   applied (fused with the SiLU) by the next convolution; the upsample is fused with its
   convolution; a residual block writes its output over its input. A layer holds two whole-image
   activations (input and output): cheap at the latent's resolution, 1.5 GiB at a 1024² output.
2. **Streamed part** (``vae_stream``), past the deepest *cut* whose activations fit the budget:
   GroupNorm statistics measured on sample strips of rows, then one row pipeline to the image.
   Not bit-exact (statistics from ~1/8 of the rows), ≥ 40 dB from the full decode, with the
   memory of the cut's activation plus a few bands.

:meth:`TiledDecoder.plan` picks the cut from the memory budget (``core.tiling.decode_budget``):
when the whole decode fits it is exact (``mode == "exact"``), else ``"streamed"``.

Out of memory (CUDA OOM, a failed CPU allocation, or the host-RAM guard on the CPU) halves the
band, then falls back to the smallest streamed plan; on a GPU the whole-image activations then
move to host RAM with only bands on the device.
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.errors import DecodeMemoryError, InvalidRequest, UnsupportedVAE
from ..core.tiling import (
    ESTIMATE_COST_MAX,
    SAMPLE_LAYOUTS,
    STREAM_CHUNK_BYTES,
    choose_band,
    next_smaller_band,
)
from .vae_bands import (
    Progress,
    Run,
    RunningStats,
    Step,
    conv_cost,
    host_allocations,
    release_host_memory,
    stats_of,
)
from .vae_stream import STRIP_ELT, chunk_bytes_per_row, estimate, stream, strip_ranges, strip_sizes

__all__ = [
    "DecodeMemoryError",
    "DecodeReport",
    "LdmDecoder",
    "Plan",
    "Progress",
    "RunningStats",
    "Step",
    "TiledDecoder",
    "UnsupportedVAE",
    "psnr",
    "stats_of",
]

logger = logging.getLogger(__name__)

#: Host RAM the guard keeps free on top of what a CPU allocation needs.
HOST_RESERVE = 512 * 2**20


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
        mid: Any = decoder.mid
        if not all(hasattr(mid, n) for n in ("block_1", "attn_1", "block_2")):
            raise UnsupportedVAE(f"{kind}: unexpected mid block")
        _check_block(mid.block_1, "decoder.mid.block_1")
        _check_block(mid.block_2, "decoder.mid.block_2")
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
        """``post_quant_conv`` and ``conv_in`` (the latent's resolution, a few channels in)."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder.conv_in(z)  # type: ignore[no-any-return]

    def head_cost(self, h: int, w: int) -> int:
        return sum(conv_cost(m, h, w) for m in (self.post_quant_conv, self.decoder.conv_in))

    def steps(self, h: int, w: int) -> list[Step]:
        """The layers after ``conv_in`` for a latent ``h`` × ``w``, ending with the output stage."""
        d = self.decoder
        c = d.conv_in.out_channels
        steps = [
            Step("block", d.mid.block_1, h, w, c, c),
            Step("attn", d.mid.attn_1, h, w, c, c),
            Step("block", d.mid.block_2, h, w, c, c),
        ]
        for level in reversed(range(len(d.up))):
            for block in d.up[level].block:
                steps.append(Step("block", block, h, w, c, block.conv1.out_channels))
                c = block.conv1.out_channels
            if level != 0:
                ups = d.up[level].upsample
                cout = ups.conv.out_channels if getattr(ups, "with_conv", False) else c
                steps.append(Step("up", ups, h, w, c, cout))
                h, w, c = h * 2, w * 2, cout
        steps.append(Step("out", d, h, w, c, d.conv_out.out_channels))
        return steps

    def widest_full_res(self) -> tuple[int, int]:
        """(input, output) channels of the widest convolution at the output resolution."""
        d = self.decoder
        convs = [c for b in d.up[0].block for c in b.modules() if isinstance(c, nn.Conv2d)]
        if len(d.up) > 1 and getattr(d.up[1].upsample, "with_conv", False):
            convs.append(d.up[1].upsample.conv)
        widest = max(convs, key=lambda c: c.in_channels + c.out_channels)
        return widest.in_channels, widest.out_channels


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


@dataclass(frozen=True)
class Plan:
    """How a decode runs: ``steps[:cut]`` over whole-image activations, the rest streamed.

    ``ranges`` are the sample strips' rows (and weights) at the cut (empty: the exact decode,
    ``cut`` = the output stage); ``sample`` their share of the output rows; ``need`` the bytes the
    plan is expected to hold at its peak besides the output image; ``extra_cost`` the strips' MACs.
    """

    cut: int
    ranges: tuple[tuple[int, int, float], ...] = ()
    sample: float = 0.0
    need: int = 0
    extra_cost: int = 0
    at: str = "output"  # the step the stream starts at, for logs
    chunk: int = STREAM_CHUNK_BYTES  # bytes of the row pipeline's chunk at its widest layer

    @property
    def mode(self) -> str:
        return "streamed" if self.ranges else "exact"

    def describe(self) -> str:
        if not self.ranges:
            return "exact"
        return f"streamed from {self.at}, statistics from {self.sample:.0%} of the rows"


@dataclass
class DecodeReport:
    """What a decode did (for logs, the bench and tests)."""

    band_px: int
    bands: int
    retries: int
    storage: str
    plan: Plan = field(default_factory=lambda: Plan(0))

    @property
    def mode(self) -> str:
        return self.plan.mode


def _step_name(steps: list[Step], i: int) -> str:
    s = steps[i]
    return f"{s.kind} {i} ({s.cin} ch at {s.h}×{s.w})"


@dataclass
class TiledDecoder:
    """Decodes latents ``[B, C, h, w]`` to images in the VAE's raw output range.

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
    @property
    def elt(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def bytes_per_row_px(self) -> float:
        """Band temporaries per output pixel at the widest full-resolution layer."""
        cin, cout = self.dec.widest_full_res()
        return float((cin + 2 * cout) * self.elt)

    def band_bytes(self, band_px: int, w: int) -> int:
        """One band's temporaries, at every layer, for ``band_px``-row bands of a latent ``w`` wide."""
        return max(1, int(band_px * w * self.dec.scale * self.bytes_per_row_px()))

    def whole_image_bytes(self, h: int, w: int) -> int:
        """The whole-image activations the exact decode holds at its peak (per image)."""
        return max(s.whole_bytes(self.elt) for s in self.dec.steps(h, w))

    def auto_band(self, h: int, w: int, budget: int) -> int:
        """Band height for latent ``h`` × ``w`` within a working-memory ``budget`` (whole-image
        activations take their share first)."""
        plan = self.plan(h, w, budget, 0)
        s = self.dec.scale
        return choose_band(
            out_width=w * s,
            out_height=h * s,
            bytes_per_row_px=self.bytes_per_row_px(),
            free_bytes=max(0, budget - plan.need),
            budget_fraction=0.5,
            max_bytes=(budget // 16) if plan.ranges else 128 * 2**20,
        )

    def plan(self, h: int, w: int, budget: int, band_bytes: int) -> Plan:
        """The exact decode when it fits ``budget``; else the largest sample of ``SAMPLE_LAYOUTS``
        that fits at some cut and costs at most ``ESTIMATE_COST_MAX`` of the decode, at the
        deepest such cut. Nothing fits: the plan that needs least."""
        steps = self.dec.steps(h, w)
        elt = self.elt
        body = sum(s.cost(s.h * s.up) for s in steps)
        first = max(i for i, s in enumerate(steps) if s.kind == "attn") + 1
        pre = [
            max((s.whole_bytes(elt) for s in steps[:cut]), default=0) + band_bytes
            for cut in range(len(steps))
        ]
        last = len(steps) - 1
        exact = Plan(last, need=max(pre[last], steps[last].whole_bytes(elt) + band_bytes))
        if exact.need <= budget:
            return exact
        least = exact
        for fraction, count in SAMPLE_LAYOUTS:
            for cut in range(last - 1, first - 1, -1):
                tail = steps[cut:]
                ranges = strip_ranges(tail, tail[-1].h, fraction, count)
                mem, cost = strip_sizes(tail, ranges, STRIP_ELT)
                held = steps[cut - 1].out_bytes(elt)
                row = chunk_bytes_per_row(tail, elt)
                chunk = max(row, min(STREAM_CHUNK_BYTES, budget - held - band_bytes) // row * row)
                need = max(pre[cut], held + max(mem, chunk) + band_bytes)
                plan = Plan(cut, tuple(ranges), fraction, need, cost, _step_name(steps, cut), chunk)
                if need <= budget and cost <= ESTIMATE_COST_MAX * body:
                    return plan
                if need < least.need:
                    least = plan
        return least

    # ------------------------------------------------------------------ decode
    def decode(
        self,
        z: torch.Tensor,
        band_px: int,
        progress: Progress | None = None,
        *,
        plan: Plan | None = None,
        post: Any = None,
    ) -> tuple[torch.Tensor, DecodeReport]:
        """Decode ``z`` in bands of ``band_px`` output rows, shrinking them on out-of-memory.

        ``plan`` (default: exact) comes from :meth:`plan`. Returns raw ``[B, C, H, W]`` float32,
        or with ``post`` (ComfyUI's ``vae.process_output``, elementwise) an IMAGE ``[B, H, W, C]``
        written band by band.

        Raises:
            InvalidRequest: ``z`` is not a 4-D latent with the decoder's channels.
            DecodeMemoryError: the smallest plan and band with host-RAM storage still do not fit.
        """
        conv_in = self.dec.post_quant_conv or self.dec.decoder.conv_in
        if z.ndim != 4 or z.shape[0] < 1 or z.shape[1] != getattr(conv_in, "in_channels", z.shape[1]):
            raise InvalidRequest(
                f"expected a [B, {getattr(conv_in, 'in_channels', 'C')}, h, w] latent, "
                f"got shape {tuple(z.shape)}"
            )
        if band_px <= 0:
            raise InvalidRequest("band size must be positive")
        h, w = z.shape[2:]
        plan = plan or Plan(len(self.dec.steps(h, w)) - 1)
        storage = self.device
        first = band_px
        retries = 0
        while True:
            error: str | None = None
            try:
                with host_allocations() if "cpu" in (storage.type, self.device.type) else nullcontext():
                    out, bands = self._decode_all(z, band_px, plan, storage, progress, post)
                return out, DecodeReport(band_px, bands, retries, storage.type, plan)
            except Exception as e:
                if not is_oom(e):
                    raise
                error = str(e) or type(e).__name__
            # Outside the except block, so the failed attempt's tensors can be freed first.
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            smaller = next_smaller_band(band_px)
            if smaller is None:
                least = self.plan(h, w, 0, 0)
                if least.need < plan.need:
                    plan, smaller = least, first
                elif storage.type != "cpu":
                    storage, smaller = torch.device("cpu"), first
            if smaller is None:
                raise DecodeMemoryError(f"VAE decode does not fit even with {band_px}-row bands: {error}")
            logger.warning(
                "PodKit decode: out of memory with %d-row bands (%s); retrying with %d rows, %s, "
                "activations on %s",
                band_px,
                error,
                smaller,
                plan.describe(),
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
        self,
        z: torch.Tensor,
        band_px: int,
        plan: Plan,
        storage: torch.device,
        progress: Progress | None,
        post: Any,
    ) -> tuple[torch.Tensor, int]:
        d: Any = self.dec.decoder
        batch, (h, w) = z.shape[0], z.shape[2:]
        steps = self.dec.steps(h, w)
        s = self.dec.scale
        cost = self.dec.head_cost(h, w) + sum(st.cost(st.h * st.up) for st in steps) + plan.extra_cost
        run = Run(self, storage, self.band_bytes(band_px, w), progress, batch * cost)
        out_ch = d.conv_out.out_channels
        shape = (batch, h * s, w * s, out_ch) if post is not None else (batch, out_ch, h * s, w * s)
        out = self._alloc(shape, self.output_device, torch.float32)
        for b in range(batch):
            x = self.dec.head(z[b : b + 1].to(self.device, self.dtype)).to(storage)
            run.advance(self.dec.head_cost(h, w))
            x, stats = run.steps(steps[: plan.cut], x, stats_of(x, d.mid.block_1.norm1.num_groups))
            sink = _writer(out, b, post)
            if plan.ranges:
                release_host_memory(storage)
                known = estimate(run, steps[plan.cut :], x, stats, list(plan.ranges))
                release_host_memory(self.device)
                stream(run, steps[plan.cut :], x, known, sink, plan.chunk)
            else:
                run.out(steps[-1], x, stats, sink)
            del x
            run.slots.clear()
            release_host_memory(storage)
        run.complete()
        return out, run.bands


def _writer(out: torch.Tensor, b: int, post: Any) -> Any:
    def write(a: int, y: torch.Tensor) -> None:
        rows = y.to(out.device, torch.float32)
        if post is None:
            out[b : b + 1, :, a : a + rows.shape[2]] = rows
        else:
            out[b, a : a + rows.shape[2]] = post(rows)[0].movedim(0, -1)

    return write


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of ``a`` against ``b`` (inf when equal)."""
    mse = float(torch.mean((a.double() - b.double()) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)
