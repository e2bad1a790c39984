"""Band planning for PodKit's exact banded VAE decode, and sizing bands from free memory (pure rules).

The decode (``backends/tiled_vae.py``) keeps whole-image activations and runs every convolution
over horizontal *bands* of rows. A band reads one extra row above and below (the 3×3 kernel's
reach) and writes only its own rows, so bands never overlap in the output and need no blending:
the result equals a full decode, and so does every GroupNorm statistic, accumulated band by band.

``band_px`` is a band's height at the widest full-resolution layer; it sets one byte budget for a
band's temporaries that every layer shares (a narrower, lower-resolution layer gets more rows).
"""

from __future__ import annotations

import math

from .errors import InvalidRequest

#: Fewest rows a band may have at any layer (the OOM fallback stops here).
MIN_ROWS = 2
#: Smallest ``band_px`` (output rows) the planner and the OOM fallback go down to.
MIN_BAND_PX = 8


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
