"""Band and strip planning for PodKit's VAE decodes, and sizing them from free memory (pure rules).

The decodes (``backends/tiled_vae.py``) run every convolution over horizontal *bands* of rows. A
band reads ``halo`` extra rows above and below (one for a 3×3 kernel) and writes only its own rows,
so bands never overlap in the output and need no blending.

``band_px`` is a band's height at the widest full-resolution layer; it sets one byte budget for a
band's temporaries that every layer shares (a narrower, lower-resolution layer gets more rows).

The decode's working memory is capped by :func:`decode_budget`. Within it, the exact decode keeps
whole-image activations up to the deepest layer that fits; past that *cut* the rest runs as a row
stream whose GroupNorm statistics are measured on a few sample *strips* of rows
(:func:`sample_strips`), each strip carried through the layers over the rows it determines exactly
(:func:`valid_rows`, :func:`needed_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .errors import InvalidRequest

#: Fewest rows a band may have at any layer (the OOM fallback stops here).
MIN_ROWS = 2
#: Smallest ``band_px`` (output rows) the planner and the OOM fallback go down to.
MIN_BAND_PX = 8
#: Share of the free memory the decode may use for whole-image activations and bands.
BUDGET_FRACTION = 0.25
#: On the CPU the decode shares host RAM with the models and everything else: this caps its working
#: memory (whole-image activations, sample strips, bands), about what core VAE Decode (Tiled) needs.
CPU_BUDGET_CAP = 768 * 2**20


def row_bands(length: int, rows: int) -> list[tuple[int, int]]:
    """Consecutive bands of at most ``rows`` covering ``0:length`` exactly once, sizes within one row.

    Raises:
        InvalidRequest: a non-positive length or band size.
    """
    if length <= 0 or rows <= 0:
        raise InvalidRequest(f"band planning needs a positive length and band size (got {length}, {rows})")
    count = math.ceil(length / rows)
    return [(length * i // count, length * (i + 1) // count) for i in range(count)]


def layer_rows(budget_bytes: int, height: int, bytes_per_row: int) -> int:
    """Rows per band of a layer whose band costs ``bytes_per_row`` per row, within ``budget_bytes``.

    Every layer gets the same byte budget, so low-resolution layers (narrow rows) run in few bands
    or one, and pay for no halo rows.
    """
    if budget_bytes <= 0 or height <= 0 or bytes_per_row <= 0:
        raise InvalidRequest("band budgets, heights and row costs must be positive")
    return min(height, max(MIN_ROWS, budget_bytes // bytes_per_row))


def choose_band(
    *,
    out_width: int,
    out_height: int,
    bytes_per_row_px: float,
    free_bytes: int,
    budget_fraction: float = 0.25,
    max_bytes: int = 128 * 2**20,
) -> int:
    """The band height (output rows) whose working memory fits the budget.

    ``bytes_per_row_px`` is what one output pixel of a band costs in temporaries at the most
    expensive layer (input and output channels of its convolution times the element size). The
    budget is ``budget_fraction`` of ``free_bytes``, capped at ``max_bytes``: beyond ~100 MiB
    larger bands buy little speed and cost RAM. Returns the whole height when it fits.

    Raises:
        InvalidRequest: non-positive sizes.
    """
    if out_width <= 0 or out_height <= 0 or bytes_per_row_px <= 0:
        raise InvalidRequest("choose_band needs a positive size and cost per pixel")
    budget = min(max(0.0, free_bytes * budget_fraction), float(max_bytes))
    rows = int(budget // (bytes_per_row_px * out_width))
    return max(MIN_BAND_PX, min(out_height, rows))


def next_smaller_band(band_px: int) -> int | None:
    """The band the out-of-memory fallback tries next (half), or None at the minimum."""
    if band_px <= MIN_BAND_PX:
        return None
    return max(MIN_BAND_PX, band_px // 2)


def decode_budget(free_bytes: int, *, host_ram: bool) -> int:
    """Working memory a decode may use: ``BUDGET_FRACTION`` of the free memory, on the CPU at most
    ``CPU_BUDGET_CAP`` (a GPU's free memory after loading the VAE is there for the decode)."""
    budget = int(max(0, free_bytes) * BUDGET_FRACTION)
    return min(budget, CPU_BUDGET_CAP) if host_ram else budget


def valid_rows(lo: int, hi: int, height: int, halo: int, up: int = 1) -> tuple[int, int]:
    """The output rows a layer determines exactly from input rows ``lo:hi`` of a ``height``-row input.

    The layer upsamples ×``up`` (nearest) and then reads ``halo`` rows each side; past the image's
    top and bottom it reads zero padding, so a strip touching the border keeps its border rows.
    """
    if not 0 <= lo < hi <= height or halo < 0 or up < 1:
        raise InvalidRequest(f"bad row range {lo}:{hi} of {height} (halo {halo}, up {up})")
    return lo * up + (halo if lo > 0 else 0), hi * up - (halo if hi < height else 0)


def needed_rows(lo: int, hi: int, height: int, halo: int, up: int = 1) -> tuple[int, int]:
    """The input rows (of a ``height``-row input) a layer needs for its output rows ``lo:hi``."""
    out = height * up
    if not 0 <= lo < hi <= out or halo < 0 or up < 1:
        raise InvalidRequest(f"bad row range {lo}:{hi} of {out} (halo {halo}, up {up})")
    return max(lo - halo, 0) // up, -(-min(hi + halo, out) // up)


Strip = tuple[int, int, float]


def merge_strips(strips: Sequence[Strip]) -> list[Strip]:
    """Sorted weighted strips ``(lo, hi, weight)``, overlapping ones merged (weights averaged by rows)."""
    out: list[Strip] = []
    for lo, hi, weight in sorted(strips):
        if out and lo < out[-1][1]:
            plo, phi, pw = out[-1]
            union = max(phi, hi) - plo
            out[-1] = (plo, max(phi, hi), (pw * (phi - plo) + weight * (hi - lo)) / union)
        else:
            out.append((lo, hi, weight))
    return out


def sample_strips(height: int, fraction: float, count: int) -> list[Strip]:
    """Sample strips ``(lo, hi, weight)`` of ``0:height``, together about ``fraction`` of the rows.

    Strata: the top and the bottom rows (a decoder's zero padding makes its border rows unlike
    the rest), each sampled whole with weight 1, and ``count`` equal shares of the rows between,
    each sampled by a strip in its middle weighted by the rows it stands for. All strips are
    equally high. ``fraction`` ≥ 1 (or strips that would cover everything) is the whole height.

    Raises:
        InvalidRequest: non-positive sizes or fraction.
    """
    if height <= 0 or count <= 0 or fraction <= 0:
        raise InvalidRequest("sample strips need a positive height, count and fraction")
    rows = max(1, round(height * fraction / (count + 2)))
    if fraction >= 1 or rows * (count + 2) >= height:
        return [(0, height, 1.0)]
    inner = height - 2 * rows
    strips = [(0, rows, 1.0)]
    for i in range(count):
        lo, hi = rows + inner * i // count, rows + inner * (i + 1) // count
        start = lo + max(0, (hi - lo - rows) // 2)
        strips.append((start, start + rows, (hi - lo) / rows))
    strips.append((height - rows, height, 1.0))
    return merge_strips(strips)


#: Sample layouts (fraction of the rows, number of strips) tried in order for the streamed decode:
#: the first that fits the memory budget and ``ESTIMATE_COST_MAX`` is taken.
SAMPLE_LAYOUTS: tuple[tuple[float, int], ...] = ((1 / 8, 4), (1 / 16, 4), (1 / 16, 2), (1 / 32, 2))
#: Most the sample strips may cost, as a fraction of the decode's own work.
ESTIMATE_COST_MAX = 0.12
#: Most bytes the streamed decode's row pipeline holds for one chunk of rows at its widest layer
#: (input, output and the residual's rows); bigger chunks run barely faster.
STREAM_CHUNK_BYTES = 128 * 2**20
