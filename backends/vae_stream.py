"""The streamed half of PodKit's low-memory decode: past a *cut*, no whole-image activation (torch).

Every GroupNorm needs statistics over the whole image before it can normalise a single row, and
those statistics depend on every earlier layer. Past the cut they are therefore measured on a
sample: a few evenly spread strips of rows of the cut's activation (:func:`estimate`) are carried
through the remaining layers together, each layer computing only the rows its strip determines
exactly (a strip loses one row per 3×3 convolution at each edge that is not the image border), and
each GroupNorm's statistics are those of its input over every strip's rows. With these statistics
one pass (:func:`stream`) pushes the cut's activation through the remaining layers as a pipeline
of row bands: each convolution keeps the two rows above its next band, a residual block queues its
shortcut rows until its second convolution catches up, and the output rows go straight to the
image. Only the statistics are estimated; every convolution, upsample and residual is the full
decode's. Memory: the cut's activation, the strips, and one band per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..core.errors import InvalidRequest
from ..core.tiling import Strip, merge_strips, needed_rows, row_bands, sample_strips, valid_rows
from .vae_bands import Affine, Run, RunningStats, Sink, Step, band_input, conv_band, conv_cost, halo

Known = dict[int, RunningStats]  # id(GroupNorm) -> the statistics of its input
#: Sample strips are kept in bfloat16 between layers (computed in the decoder's dtype): half the
#: memory, and rounding that moves a GroupNorm statistic by ~1e-5, far below the sampling error.
STRIP_DTYPE = torch.bfloat16
STRIP_ELT = 2


def _shortcut(block: Any) -> Any:
    for name in ("nin_shortcut", "conv_shortcut"):
        if hasattr(block, name):
            return getattr(block, name)
    return None


# ------------------------------------------------------------------ planning (sizes only)
def strip_ranges(steps: list[Step], height: int, fraction: float, count: int) -> list[Strip]:
    """Rows (and weights) of the activation entering ``steps`` (which end with ``"out"``) that
    determine the sample strips (``core.tiling.sample_strips``) of the last GroupNorm's input."""
    strips = sample_strips(height, fraction, count)
    for step in reversed(steps[:-1]):
        k = max((halo(c) for c in step.convs()), default=0)
        grown = []
        for lo, hi, weight in strips:
            if step.kind == "block":
                lo, hi = needed_rows(lo, hi, step.h, 1)  # conv2, then conv1 (the shortcut reads less)
                lo, hi = needed_rows(lo, hi, step.h, 1)
            else:
                lo, hi = needed_rows(lo, hi, step.h, k, step.up)
            grown.append((lo, hi, weight))
        strips = merge_strips(grown)
    return strips


def strip_sizes(steps: list[Step], strips: list[Strip], elt: int) -> tuple[int, int]:
    """(peak bytes, MACs) of :func:`estimate` over strips entering ``steps`` at ``ranges``."""
    peak = cost = 0
    ranges = [(lo, hi) for lo, hi, _ in strips]
    for step in steps[:-1]:
        rows_in = sum(hi - lo for lo, hi in ranges)
        if step.kind == "block":
            inner = [valid_rows(lo, hi, step.h, 1) for lo, hi in ranges]
            out = [valid_rows(lo, hi, step.h, 1) for lo, hi in inner]
            rows_inner = sum(hi - lo for lo, hi in inner)
            rows_out = sum(hi - lo for lo, hi in out)
            widest = max(hi - lo for lo, hi in out)
            peak = max(peak, (rows_in * step.cin + (rows_inner + widest) * step.cout) * step.w)
            conv1, conv2 = step.module.conv1, step.module.conv2
            short = _shortcut(step.module)
            cost += conv_cost(conv1, rows_inner, step.w) + conv_cost(conv2, rows_out, step.w)
            cost += conv_cost(short, rows_out, step.w)
        else:
            out = [
                valid_rows(lo, hi, step.h, max([halo(c) for c in step.convs()], default=0), step.up)
                for lo, hi in ranges
            ]
            rows_out = sum(hi - lo for lo, hi in out)
            peak = max(peak, rows_in * step.cin * step.w + rows_out * step.cout * step.w * step.up)
            cost += sum(conv_cost(c, rows_out, step.w * step.up) for c in step.convs())
        ranges = out
    return peak * elt, cost


# ------------------------------------------------------------------ the estimation pass
@dataclass
class _Strip:
    x: torch.Tensor  # rows r0:r1 of an activation (on the device)
    r0: int
    r1: int
    weight: float  # image rows each of its rows stands for


def _strip_conv(
    run: Run,
    s: _Strip,
    src_h: int,
    conv: Any,
    stats: RunningStats,
    *,
    up: int = 1,
    affine: Affine | None = None,
    residual: Callable[[int, int], torch.Tensor] | None = None,
) -> _Strip:
    k = halo(conv)
    lo, hi = valid_rows(s.r0, s.r1, src_h, k, up)
    if hi <= lo:
        raise InvalidRequest("a sample strip is narrower than the decoder's reach")
    width = s.x.shape[3] * up
    out = run.owner._alloc((1, conv.out_channels, hi - lo, width), run.owner.device, STRIP_DTYPE)
    rows = run.rows(hi - lo, width, conv.in_channels, conv.out_channels)
    for a, b in row_bands(hi - lo, rows):
        a, b = a + lo, b + lo
        y = conv_band(
            conv,
            band_input(
                s.x,
                s.r0,
                src_h,
                a,
                b,
                k=k,
                up=up,
                affine=affine,
                device=run.owner.device,
                dtype=run.owner.dtype,
            ),
        )
        if residual is not None:
            y = y.add_(residual(a, b))
        stats.add(y, s.weight)
        out[:, :, a - lo : b - lo] = y
        run.advance(conv_cost(conv, b - a, width))
    return _Strip(out, lo, hi, s.weight)


def _strip_shortcut(run: Run, block: Any, s: _Strip, src_h: int) -> Callable[[int, int], torch.Tensor]:
    short = _shortcut(block)

    def rows(a: int, b: int) -> torch.Tensor:
        if short is None:
            return s.x[:, :, a - s.r0 : b - s.r0].to(run.owner.dtype)
        part = band_input(
            s.x, s.r0, src_h, a, b, k=halo(short), device=run.owner.device, dtype=run.owner.dtype
        )
        run.advance(conv_cost(short, b - a, s.x.shape[3]))
        return conv_band(short, part)

    return rows


def estimate(run: Run, steps: list[Step], x: torch.Tensor, stats: RunningStats, ranges: list[Strip]) -> Known:
    """GroupNorm statistics of every layer in ``steps`` (ending with ``"out"``), measured on the
    weighted strips ``ranges`` of their input ``x`` (whose own, whole-image statistics are ``stats``)."""
    known: Known = {}
    like = run.like()
    strips = [_Strip(x[:, :, lo:hi].to(run.owner.device, STRIP_DTYPE), lo, hi, wt) for lo, hi, wt in ranges]
    for step in steps:
        m = step.module
        if step.kind == "out":
            known[id(m.norm_out)] = stats
            return known
        if step.kind == "up":
            new = RunningStats(stats.groups)
            if getattr(m, "with_conv", False):
                strips = [_strip_conv(run, s, step.h, m.conv, new, up=2) for s in strips]
            else:
                strips = [
                    _Strip(
                        F.interpolate(s.x.to(run.owner.dtype), scale_factor=2.0, mode="nearest").to(
                            STRIP_DTYPE
                        ),
                        2 * s.r0,
                        2 * s.r1,
                        s.weight,
                    )
                    for s in strips
                ]
                for s in strips:
                    new.add(s.x.to(run.owner.dtype), s.weight)
            stats = new
        elif step.kind == "block":
            known[id(m.norm1)] = stats
            si = RunningStats(m.norm2.num_groups)
            aff1 = stats.affine(m.norm1, like)
            inner = [_strip_conv(run, s, step.h, m.conv1, si, affine=aff1) for s in strips]
            known[id(m.norm2)] = si
            aff2 = si.affine(m.norm2, like)
            so = RunningStats(m.norm2.num_groups)
            out = []
            for i, (s, t) in enumerate(zip(strips, inner, strict=True)):
                res = _strip_shortcut(run, m, s, step.h)
                out.append(_strip_conv(run, t, step.h, m.conv2, so, affine=aff2, residual=res))
                strips[i] = inner[i] = None  # type: ignore[call-overload]  # free as we go
            strips, stats = out, so
        else:
            raise InvalidRequest(f"a {step.kind!r} step needs the whole image and cannot follow the cut")
    raise InvalidRequest("the decoder's steps must end with the output stage")


# ------------------------------------------------------------------ the row pipeline
class _RowConv:
    """A convolution over rows of ``silu(affine(x))`` upsampled ×``up`` that arrive in order.

    :meth:`step` takes the next source rows and returns every output row they complete. Between
    calls it keeps only the source rows its next band reads above the new ones (two at most).
    """

    def __init__(
        self, run: Run, conv: Any, src_h: int, slot: str, *, up: int = 1, affine: Affine | None = None
    ) -> None:
        self.run, self.conv, self.src_h, self.slot = run, conv, src_h, slot
        self.up, self.affine, self.k = up, affine, halo(conv)
        self.tail: torch.Tensor | None = None
        self.r0 = 0  # the first source row held (in tail, else the next one to come)
        self.next = 0  # the next output row

    def step(self, rows: torch.Tensor) -> torch.Tensor:
        tail, t0 = self.tail, self.r0
        start = t0 + (0 if tail is None else tail.shape[2])
        held = start + rows.shape[2]

        def take(lo: int, hi: int) -> torch.Tensor:
            if lo >= start:
                return rows[:, :, lo - start : hi - start]
            assert tail is not None and lo >= t0  # noqa: S101 - kept for exactly these rows
            if hi <= start:
                return tail[:, :, lo - t0 : hi - t0]
            return torch.cat((tail[:, :, lo - t0 :], rows[:, :, : hi - start]), dim=2)

        first = self.next
        end = max(first, self.src_h * self.up if held == self.src_h else held * self.up - self.k)
        width = rows.shape[3] * self.up
        dev = self.run.owner.device
        out = torch.empty(
            (1, self.conv.out_channels, end - first, width), device=dev, dtype=self.run.owner.dtype
        )
        if end > first:
            n = self.run.rows(end - first, width, self.conv.in_channels, self.conv.out_channels)
            for a, b in row_bands(end - first, n):
                part = band_input(
                    take,
                    0,
                    self.src_h,
                    a + first,
                    b + first,
                    k=self.k,
                    up=self.up,
                    affine=self.affine,
                    device=dev,
                )
                out[:, :, a:b] = conv_band(self.conv, part)
                del part
                self.run.advance(conv_cost(self.conv, b - a, width))
                self.run.bands += 1
        self.next = end
        keep = max(end - self.k, 0) // self.up  # the first source row later bands read
        self.tail = take(keep, held).clone() if keep < held else None
        self.r0 = min(keep, held)
        return out


class _RowBlock:
    """A residual block over rows arriving in order: ``shortcut(x) + conv2(conv1(x))``."""

    def __init__(self, run: Run, block: Any, src_h: int, known: Known, slot: str) -> None:
        like = run.like()
        self.queue: list[torch.Tensor] = []  # shortcut rows not yet matched with conv2's output
        aff1 = known[id(block.norm1)].affine(block.norm1, like)
        aff2 = known[id(block.norm2)].affine(block.norm2, like)
        self.conv1 = _RowConv(run, block.conv1, src_h, "inner", affine=aff1)
        self.conv2 = _RowConv(run, block.conv2, src_h, slot, affine=aff2)
        short = _shortcut(block)
        self.short = None if short is None else _RowConv(run, short, src_h, "shortcut")

    def step(self, x: torch.Tensor) -> torch.Tensor:
        # A 1×1 shortcut keeps pace with x, a 3×3 one lags a row: both stay ahead of conv2.
        self.queue.append(x if self.short is None else self.short.step(x))
        y = self.conv2.step(self.conv1.step(x))
        done = 0
        while done < y.shape[2]:
            head = self.queue[0]
            take = min(y.shape[2] - done, head.shape[2])
            y[:, :, done : done + take].add_(head[:, :, :take].to(y.device))
            if take == head.shape[2]:
                self.queue.pop(0)
            else:
                self.queue[0] = head[:, :, take:]
            done += take
        self.queue = [t.clone() for t in self.queue if t.shape[2]]  # a few rows: the chunk can go
        return y


def _stages(run: Run, steps: list[Step], known: Known) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The pipeline's stages; a stage's output lives in one of two buffers, never its input's."""
    stages: list[Callable[[torch.Tensor], torch.Tensor]] = []
    like = run.like()
    for i, step in enumerate(steps):
        m = step.module
        slot = "even" if i % 2 == 0 else "odd"
        if step.kind == "out":
            aff = known[id(m.norm_out)].affine(m.norm_out, like)
            stages.append(_RowConv(run, m.conv_out, step.h, slot, affine=aff).step)
            if getattr(m, "tanh_out", False):
                stages.append(torch.tanh_)
        elif step.kind == "block":
            stages.append(_RowBlock(run, m, step.h, known, slot).step)
        elif step.kind == "up" and getattr(m, "with_conv", False):
            stages.append(_RowConv(run, m.conv, step.h, slot, up=2).step)
        elif step.kind == "up":
            stages.append(_nearest_up)
        else:
            raise InvalidRequest(f"a {step.kind!r} step needs the whole image and cannot be streamed")
    return stages


def _nearest_up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def chunk_bytes_per_row(steps: list[Step], elt: int) -> int:
    """Bytes the row pipeline's buffers take per row of the activation entering ``steps``: two for
    the layers' outputs (a layer reads one while writing the other), a block's inner activation
    and its shortcut, each as large as the largest it holds."""
    h0 = steps[0].h
    outs, inner, short = [0], [0], [0]
    for s in steps:
        rows = -(-s.h // h0)
        outs.append(rows * s.up**2 * s.w * s.cout)
        if s.kind == "block":
            inner.append(rows * s.w * s.cout)
            if _shortcut(s.module) is not None:
                short.append(rows * s.w * s.cout)
    return (2 * max(outs) + max(inner) + max(short)) * elt


def stream(run: Run, steps: list[Step], x: torch.Tensor, known: Known, sink: Sink, chunk_bytes: int) -> None:
    """Push the whole-image activation ``x`` through ``steps`` (ending with ``"out"``), a chunk of
    rows at a time through every layer (each layer's output rows go on as its input is freed); the
    output rows go to ``sink``. ``known`` holds every GroupNorm's input statistics."""
    stages = _stages(run, steps, known)
    height = x.shape[2]
    rows = max(1, min(height, chunk_bytes // chunk_bytes_per_row(steps, run.elt)))
    done = 0
    for a, b in row_bands(height, rows):
        data = x[:, :, a:b].to(run.owner.device)
        for stage in stages:
            data = stage(data)
        if data.shape[2]:
            sink(done, data)
            done += data.shape[2]
