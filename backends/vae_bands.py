"""Band primitives of PodKit's VAE decodes, and the exact pass over whole-image activations (torch).

A 3×3 convolution's output rows ``a:b`` read its input rows ``a-1:b+1``: :func:`band_input` cuts
them out of an activation (applying the GroupNorm affine + SiLU and a nearest ×2 upsample on the
way, zero rows past the image's top and bottom) and :func:`conv_band` convolves them without
padding rows again, so a band's output is exactly those rows of the whole-image convolution.

:class:`Run` is one decode attempt over whole-image activations: every layer runs band by band
into a whole-image output, the GroupNorm statistics of that output are accumulated band by band
(:class:`RunningStats`), and a residual block writes its output over its input's storage, so a
block holds two activations (input and inner). The mid block's attention is global and runs over
the whole latent with fused, query-chunked attention.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import InvalidRequest
from ..core.tiling import layer_rows, row_bands

Progress = Callable[[int, int], None]
Affine = tuple[torch.Tensor, torch.Tensor]
#: Receives output rows ``a:a+n`` of a layer as a ``[1, C, n, W]`` tensor.
Sink = Callable[[int, torch.Tensor], None]
#: MACs per progress unit.
COST_UNIT = 10**6


class RunningStats:
    """Per-group mean and variance of a layer's output, merged band by band (Chan et al., float64)."""

    def __init__(self, groups: int) -> None:
        self.groups = groups
        self.n: float = 0.0
        self.mean = torch.zeros(groups, dtype=torch.float64)
        self.m2 = torch.zeros(groups, dtype=torch.float64)

    def add(self, x: torch.Tensor, weight: float = 1.0) -> None:
        """Fold in a band ``[1, C, rows, W]`` whose rows each stand for ``weight`` rows."""
        # Per-channel sums and sums of squares (one vectorised pass each, no temporaries), then
        # channels into groups in float64. Welford-style var_mean costs twice a whole GroupNorm here.
        band = x[0].float()
        n = band[0].numel()
        sums = band.sum(dim=(1, 2)).double().cpu().reshape(self.groups, -1)  # cascade sums: accurate
        squares = torch.linalg.vector_norm(band, dim=(1, 2)).double().cpu().reshape(self.groups, -1)
        count: float = n * sums.shape[1]
        mean = sums.sum(dim=1) / count
        var = ((squares**2).sum(dim=1) / count - mean**2).clamp_min(0.0)
        count *= weight
        total = self.n + count
        delta = mean - self.mean
        self.mean += delta * (count / total)
        self.m2 += var * count + delta**2 * (self.n * count / total)
        self.n = total

    def affine(self, norm: nn.GroupNorm, like: torch.Tensor) -> Affine:
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


#: glibc ``mallopt`` parameter number of ``M_MMAP_THRESHOLD``.
_M_MMAP_THRESHOLD = -3
#: The mmap threshold during a decode: every buffer of a MiB or more is its own mapping, given
#: back to the OS when freed. glibc's default (dynamic, up to 32 MiB) serves a decode's band and
#: chunk buffers from its heap, where their freed blocks stay mapped and fragment (measured: the
#: streamed 1024² decode peaked anywhere between 0.4 and 0.85 GiB over its baseline, vs 0.37).
DECODE_MMAP_THRESHOLD = 2**20
#: What the threshold is set back to: glibc's dynamic threshold settles at its maximum, 32 MiB,
#: in a process that has freed large tensors.
RESTORED_MMAP_THRESHOLD = 32 * 2**20


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc
        return None


def release_host_memory(device: torch.device) -> None:
    """Give freed heap memory back to the OS between a decode's phases."""
    libc = _libc() if device.type == "cpu" else None
    if libc is not None:
        libc.malloc_trim(0)


@contextlib.contextmanager
def host_allocations() -> Iterator[None]:
    """For the duration of a CPU decode, big allocations come straight from (and go back to) the OS."""
    libc = _libc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, DECODE_MMAP_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, RESTORED_MMAP_THRESHOLD)
        libc.malloc_trim(0)


def stats_of(x: torch.Tensor, groups: int) -> RunningStats:
    s = RunningStats(groups)
    s.add(x)
    return s


def conv_cost(m: object, h: int, w: int) -> int:
    return int(m.weight.numel()) * h * w if isinstance(m, nn.Conv2d) else 0


def halo(conv: nn.Module) -> int:
    """Rows a convolution reads above and below each output row."""
    return int(conv.kernel_size[0]) // 2  # type: ignore[index]


@contextlib.contextmanager
def _rows_unpadded(conv: nn.Module) -> Iterator[None]:
    # Conv2d (and ComfyUI's cast-weights subclass) read ``self.padding`` on every call; the band
    # already carries its halo rows (or the zero rows past the image border).
    padding: Any = conv.padding
    conv.padding = (0, padding[1])  # type: ignore[assignment]
    try:
        yield
    finally:
        conv.padding = padding


def conv_band(conv: nn.Module, part: torch.Tensor) -> torch.Tensor:
    """``conv`` over a band from :func:`band_input`: only the rows the band determines."""
    if halo(conv) == 0:
        return conv(part)  # type: ignore[no-any-return]
    with _rows_unpadded(conv):
        return conv(part)  # type: ignore[no-any-return]


def band_input(
    src: torch.Tensor | Callable[[int, int], torch.Tensor],
    r0: int,
    src_h: int,
    a: int,
    b: int,
    *,
    k: int,
    up: int = 1,
    affine: Affine | None = None,
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Rows ``a-k:b+k`` of ``silu(affine(src))`` upsampled ×``up``, on ``device`` (in ``dtype``),
    zero rows outside.

    ``src`` holds rows ``r0:`` of an activation ``src_h`` rows high (at its own resolution), or is
    a function returning its rows ``lo:hi``; it must hold every source row the band reads.
    """
    out_h = src_h * up
    lo, hi = max(a - k, 0), min(b + k, out_h)
    slo, shi = lo // up, -(-hi // up)
    if callable(src):
        part = src(slo, shi)
    else:
        if slo < r0 or shi - r0 > src.shape[2]:
            raise InvalidRequest(f"band rows {slo}:{shi} are not held (rows {r0}:{r0 + src.shape[2]})")
        part = src[:, :, slo - r0 : shi - r0]
    part = part.to(device=device, dtype=dtype)
    if affine is not None:
        part = F.silu(torch.addcmul(affine[1], part, affine[0]), inplace=True)
    if up != 1:
        part = F.interpolate(part, scale_factor=float(up), mode="nearest")
        part = part[:, :, lo - slo * up : hi - slo * up]
    if lo > a - k or hi < b + k:
        part = F.pad(part, (0, 0, lo - (a - k), b + k - hi))
    return part


def _plain_attention(block: Any) -> bool:
    names = {n for n, _ in block.named_children()}
    convs = [getattr(block, n, None) for n in ("q", "k", "v", "proj_out")]
    return names == {"norm", "q", "k", "v", "proj_out"} and all(
        isinstance(c, nn.Conv2d) and c.kernel_size == (1, 1) and c.groups == 1 and c.padding == (0, 0)
        for c in convs
    )


@dataclass(frozen=True)
class Step:
    """One stage after the decoder's input convolution, with its input's size.

    ``kind``: ``"block"`` (a residual block), ``"attn"`` (the mid block's attention), ``"up"`` (an
    upsampler) or ``"out"`` (``norm_out`` + SiLU + ``conv_out``; ``module`` is the decoder).
    """

    kind: str
    module: Any
    h: int
    w: int
    cin: int
    cout: int

    @property
    def up(self) -> int:
        return 2 if self.kind == "up" else 1

    def convs(self) -> list[nn.Conv2d]:
        m = self.module
        if self.kind == "out":
            return [m.conv_out]
        if self.kind == "up":
            return [m.conv] if getattr(m, "with_conv", False) else []
        return [c for c in m.children() if isinstance(c, nn.Conv2d)]

    def cost(self, rows: int) -> int:
        """MACs for ``rows`` output rows."""
        if self.kind == "attn":
            n = self.h * self.w
            return (
                sum(conv_cost(c, self.h, self.w) for c in self.convs()) * rows // self.h
                + 2 * n * n * self.cin
            )
        return sum(int(c.weight.numel()) for c in self.convs()) * rows * self.w * self.up

    def whole_bytes(self, elt: int) -> int:
        """Whole-image activations the exact pass holds during this step (the output image not included)."""
        px = self.h * self.w
        if self.kind == "block":
            separate = self.cout > self.cin or hasattr(self.module, "conv_shortcut")
            return (self.cin + self.cout * (2 if separate else 1)) * px * elt
        if self.kind == "attn":
            return 3 * self.cin * px * elt  # the input, keys and values
        if self.kind == "up":
            return (self.cin + 4 * self.cout) * px * elt
        return self.cin * px * elt

    def out_bytes(self, elt: int) -> int:
        return self.cout * self.h * self.w * self.up**2 * elt


@dataclass
class Run:
    """One decode attempt: band loops over whole-image activations, with progress."""

    owner: Any  # TiledDecoder: device, dtype, _alloc (the host-RAM guard)
    storage: torch.device
    budget: int  # bytes of one band's temporaries, at every layer
    progress: Progress | None
    total_cost: int
    done_cost: int = 0
    bands: int = 0
    slots: dict[str, torch.Tensor] = field(default_factory=dict)

    def slot(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A tensor of ``shape`` (device, compute dtype) in a buffer reused by every call with ``name``.

        The row pipeline asks for the same few sizes chunk after chunk: reusing the storage keeps the
        allocator from piling up freed blocks of odd sizes (glibc keeps them mapped: RSS creeps up).
        """
        need = math.prod(shape)
        buf = self.slots.get(name)
        if buf is None or buf.numel() < need:
            self.slots.pop(name, None)
            del buf
            buf = torch.empty(need, device=self.owner.device, dtype=self.owner.dtype)
            self.slots[name] = buf
        return buf[:need].view(shape)

    def advance(self, cost: int) -> None:
        self.done_cost += cost
        if self.progress is not None:
            total = max(1, self.total_cost // COST_UNIT)
            self.progress(min(total, self.done_cost // COST_UNIT), total)

    def complete(self) -> None:
        """Report the whole decode done (planned costs are close, not exact, to the work done)."""
        self.done_cost = max(self.done_cost, self.total_cost)
        self.advance(0)

    def rows(self, height: int, width: int, cin: int, cout: int) -> int:
        """Rows per band of a layer with ``width`` output columns, within the band budget."""
        return layer_rows(self.budget, height, (cin + 2 * cout) * width * self.elt)

    @property
    def elt(self) -> int:
        return torch.empty((), dtype=self.owner.dtype).element_size()

    def like(self) -> torch.Tensor:
        return torch.empty((), device=self.owner.device, dtype=self.owner.dtype)

    def conv(
        self,
        src: torch.Tensor,
        conv: nn.Module,
        *,
        sink: Sink,
        pre: tuple[nn.GroupNorm, RunningStats] | None = None,
        residual: Callable[[int, int], torch.Tensor] | None = None,
        up: int = 1,
        post: Callable[[torch.Tensor], torch.Tensor] | None = None,
        groups: int | None = None,
    ) -> RunningStats | None:
        """``post(conv(silu(norm(src))) + residual)`` of a whole-image ``src``, band by band into ``sink``;
        statistics of the output if ``groups`` is given."""
        _, _, src_h, src_w = src.shape
        height, width = src_h * up, src_w * up
        stats = RunningStats(groups) if groups else None
        affine = pre[1].affine(pre[0], self.like()) if pre else None
        k = halo(conv)
        rows = self.rows(height, width, conv.in_channels, conv.out_channels)  # type: ignore[arg-type]
        for a, b in row_bands(height, rows):
            part = band_input(src, 0, src_h, a, b, k=k, up=up, affine=affine, device=self.owner.device)
            y = conv_band(conv, part)
            del part
            if residual is not None:
                y = y.add_(residual(a, b))  # the residual + the convolution, as ComfyUI's x + h
            if post is not None:
                y = post(y)
            if stats is not None:
                stats.add(y)
            sink(a, y)
            del y
            self.bands += 1
            self.advance(conv_cost(conv, b - a, width))
        return stats

    def into(self, dst: torch.Tensor) -> Sink:
        def write(a: int, y: torch.Tensor) -> None:
            dst[:, :, a : a + y.shape[2]] = y.to(dst.device, dst.dtype)

        return write

    def block(self, block: Any, x: torch.Tensor, sx: RunningStats) -> tuple[torch.Tensor, RunningStats]:
        """A residual block; its output overwrites ``x``'s storage."""
        _, cin, height, width = x.shape
        cout = block.conv1.out_channels
        inner = self.owner._alloc((1, cout, height, width), self.storage, x.dtype)
        si = self.conv(
            x, block.conv1, sink=self.into(inner), pre=(block.norm1, sx), groups=block.norm2.num_groups
        )
        assert si is not None  # noqa: S101 - asked for with groups
        short = getattr(block, "nin_shortcut", None) or getattr(block, "conv_shortcut", None)
        if cout <= cin and not hasattr(block, "conv_shortcut"):
            # Output channel c, row r lands where input channel c, row r was: a band only
            # overwrites input rows it has already read (for its shortcut), never rows still needed.
            dst = x.view(-1)[: cout * height * width].view(1, cout, height, width)
        else:  # wider output, or a 3×3 shortcut that reads rows ahead
            dst = self.owner._alloc((1, cout, height, width), self.storage, x.dtype)
        dev = self.owner.device

        def residual(a: int, b: int) -> torch.Tensor:
            if short is None:
                return x[:, :, a:b].to(dev)
            part = band_input(x, 0, height, a, b, k=halo(short), device=dev)
            return conv_band(short, part)

        so = self.conv(
            inner,
            block.conv2,
            sink=self.into(dst),
            pre=(block.norm2, si),
            residual=residual,
            groups=block.norm2.num_groups,
        )
        assert so is not None  # noqa: S101 - asked for with groups
        del inner
        if short is not None:
            self.advance(conv_cost(short, height, width))
        return dst, so

    def upsample(self, ups: Any, x: torch.Tensor, groups: int) -> tuple[torch.Tensor, RunningStats]:
        """Nearest ×2 fused with the upsampler's convolution."""
        _, c, height, width = x.shape
        if not getattr(ups, "with_conv", False):
            y = F.interpolate(x, scale_factor=2.0, mode="nearest")
            return y, stats_of(y, groups)
        dst = self.owner._alloc((1, ups.conv.out_channels, height * 2, width * 2), self.storage, x.dtype)
        stats = self.conv(x, ups.conv, sink=self.into(dst), up=2, groups=groups)
        assert stats is not None  # noqa: S101 - asked for with groups
        return dst, stats

    def attention(self, block: Any, x: torch.Tensor) -> torch.Tensor:
        """LDM's single-head self-attention over all latent pixels, added into ``x`` in place.

        Same math as ``AttnBlock`` (``x + proj_out(softmax(q kᵀ / √C) v)``) with fused attention
        over chunks of queries: keys and values are the only whole-latent temporaries (ComfyUI's
        CPU path materialises the pixels × pixels matrix, 1 GiB at 1024²).
        """
        _, c, height, width = x.shape
        dev = self.owner.device
        if not _plain_attention(block):
            return block(x.to(dev)).to(x.device)  # type: ignore[no-any-return]
        stats = stats_of(x, block.norm.num_groups)
        scale, shift = stats.affine(block.norm, self.like())
        n = height * width
        keys = self.owner._alloc((1, 1, n, c), dev, x.dtype)
        values = self.owner._alloc((1, 1, n, c), dev, x.dtype)
        bands = row_bands(height, self.rows(height, width, c, 2 * c))
        for a, b in bands:
            normed = torch.addcmul(shift, x[:, :, a:b].to(dev), scale)
            keys[0, 0, a * width : b * width] = block.k(normed).flatten(2)[0].t()
            values[0, 0, a * width : b * width] = block.v(normed).flatten(2)[0].t()
        for a, b in bands:
            rows = x[:, :, a:b]
            normed = torch.addcmul(shift, rows.to(dev), scale)
            # Contiguous queries: with a transposed view torch falls back to the math kernel and
            # materialises the queries × pixels matrix (600 MiB for 4096 queries at 1024²).
            q = block.q(normed).reshape(1, 1, c, (b - a) * width).transpose(2, 3).contiguous()
            del normed
            att = F.scaled_dot_product_attention(q, keys, values)
            del q
            out = block.proj_out(att.transpose(2, 3).reshape(1, c, b - a, width))
            rows += out.to(rows.device)
            del att, out
            self.bands += 1
        self.advance(Step("attn", block, height, width, c, c).cost(height))
        return x

    def steps(
        self, steps: list[Step], x: torch.Tensor, stats: RunningStats
    ) -> tuple[torch.Tensor, RunningStats]:
        """Run ``steps`` (no ``"out"``) over the whole-image ``x``: the last output and its statistics."""
        for step in steps:
            if step.kind == "block":
                x, stats = self.block(step.module, x, stats)
            elif step.kind == "attn":
                x = self.attention(step.module, x)
                stats = stats_of(x, stats.groups)
            elif step.kind == "up":
                x, stats = self.upsample(step.module, x, stats.groups)
            else:
                raise InvalidRequest(f"a whole-image pass cannot run a {step.kind!r} step")
        return x, stats

    def out(self, step: Step, x: torch.Tensor, stats: RunningStats, sink: Sink) -> None:
        """``conv_out(silu(norm_out(x)))`` (+ tanh) of the whole-image ``x`` into ``sink``."""
        d = step.module
        post = torch.tanh if getattr(d, "tanh_out", False) else None
        self.conv(x, d.conv_out, sink=sink, pre=(d.norm_out, stats), post=post)
