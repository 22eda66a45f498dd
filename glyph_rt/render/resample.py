"""Glyph's horizontal scale: the page drawn at full width, then resized in x with Pillow's bicubic.

Glyph's renderer applies `horizontal-scale` to the page image, `img.resize((int(w * scale), h))` (Pillow's default
filter, bicubic; only the width changes, so Pillow runs only its horizontal pass). Pillow computes each output
column's taps in double (ImagingResample's `precompute_coeffs`, the cubic with a = -0.5, widened by the scale when
shrinking) and rounds them to 22-bit fixed point (`normalize_coeffs_8bpc`); each output byte is the integer sum of
taps times input bytes, plus half, shifted back and clipped. The same integers here give the same bytes.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images
ROWS_PER_STEP = 256  # rows resampled at a time (bounds the int32 temporaries)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=64)
def bicubic_taps(in_w: int, out_w: int) -> tuple[np.ndarray, np.ndarray]:
    """(first int64 [out_w], weights int32 [out_w, taps]): output column i is the sum over t of
    weights[i, t] * input column first[i] + t (weights past a column's support are 0), in Pillow's fixed point."""
    if in_w < 1 or out_w < 1:
        raise ValueError(f"resize {in_w} -> {out_w} columns: both must be at least 1")
    scale = filterscale = in_w / out_w
    filterscale = max(filterscale, 1.0)
    support = 2.0 * filterscale  # the bicubic filter's support, 2, widened when shrinking
    taps = int(np.ceil(support)) * 2 + 1
    center = (np.arange(out_w) + 0.5) * scale
    ss = 1.0 / filterscale
    lo = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)  # C's (int) truncates
    hi = np.minimum(np.trunc(center + support + 0.5), in_w).astype(np.int64)
    count = hi - lo
    w = np.zeros((out_w, taps), np.float64)
    total = np.zeros(out_w, np.float64)
    for t in range(taps):  # summed tap by tap, in Pillow's order
        on = t < count
        w[:, t] = np.where(on, _bicubic((t + lo - center + 0.5) * ss), 0.0)
        total += w[:, t]
    w = np.where(total[:, None] != 0.0, w / np.where(total == 0.0, 1.0, total)[:, None], w)
    one = float(1 << PRECISION_BITS)
    fixed = np.where(w < 0, np.trunc(-0.5 + w * one), np.trunc(0.5 + w * one)).astype(np.int32)
    fixed[np.arange(taps)[None, :] >= count[:, None]] = 0
    return lo, fixed


def tap_columns(in_w: int, out_w: int) -> tuple[np.ndarray, np.ndarray]:
    """(columns int64 [taps, out_w], weights int32 [taps, out_w]): per tap, the input column each output column
    reads (clamped into the page where its weight is 0) and its weight."""
    lo, fixed = bicubic_taps(in_w, out_w)
    cols = np.minimum(lo[None, :] + np.arange(fixed.shape[1])[:, None], in_w - 1)
    return cols, np.ascontiguousarray(fixed.T)


def resized_extent(right: np.ndarray, in_w: int, out_w: int) -> np.ndarray:
    """Columns of the resized row that read any of the input columns [0, right): where ink ending at `right`
    can show after `resize_width` (an upper bound of the crop extent)."""
    first, _ = bicubic_taps(in_w, out_w)
    return np.searchsorted(first, np.asarray(right), side="left").astype(np.asarray(right).dtype)


def resize_width(pages: np.ndarray, out_w: int, out: np.ndarray | None = None, backend: str = "cpu") -> np.ndarray:
    """uint8 [..., H, W, 3] -> [..., H, out_w, 3], as Pillow's `Image.resize((out_w, H))` (bicubic) resizes each
    image. `out` (uint8 [..., H, >= out_w, 3], C-contiguous) receives the result in its first out_w columns.
    Backends: "cpu" (the C++ extension) and "reference" (numpy)."""
    pages = np.ascontiguousarray(pages)
    *lead, H, W, C = pages.shape
    if C != 3 or pages.dtype != np.uint8:
        raise ValueError(f"resize_width: need uint8 [..., H, W, 3] pages, got {pages.dtype} {pages.shape}")
    first, fixed = bicubic_taps(W, out_w)
    if out is None:
        out = np.empty((*lead, H, out_w, C), np.uint8)
    if out.dtype != np.uint8 or tuple(out.shape[:-2]) != (*lead, H) or out.shape[-2] < out_w \
            or out.shape[-1] != C or not out.flags.c_contiguous:
        raise ValueError(f"resize_width: out must be C-contiguous uint8 [..., {H}, >= {out_w}, 3], "
                         f"got {out.dtype} {out.shape}")
    src = pages.reshape(-1, W, C)
    dst = out.reshape(-1, out.shape[-2], C)
    if backend == "cpu":
        from .._ext import require_extension

        require_extension("the C++ resize").resize_width(src, dst, first, fixed, PRECISION_BITS)
        return out
    if backend != "reference":
        raise ValueError(f"resize backend {backend!r} is unknown; use 'cpu' or 'reference'")
    cols, weights = tap_columns(W, out_w)
    half = np.int32(1 << (PRECISION_BITS - 1))
    for r in range(0, len(src), ROWS_PER_STEP):
        rows = src[r:r + ROWS_PER_STEP]
        acc = np.full((len(rows), out_w, C), half, np.int32)
        for c, w in zip(cols, weights):  # no overflow: Pillow sums in int32 too
            acc += rows[:, c].astype(np.int32) * w[None, :, None]
        np.clip(acc >> PRECISION_BITS, 0, 255, out=acc)
        dst[r:r + ROWS_PER_STEP, :out_w] = acc
    return out
