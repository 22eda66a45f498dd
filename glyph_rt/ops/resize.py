"""Glyph's horizontal scale and auto-crop extent on pages that live on a device (torch, any device).

The same integers as `glyph_rt.render.resample.resize_width` (Pillow's bicubic horizontal pass) and
`glyph_rt.render.raster.ink_extent` (Glyph's crop rule), for pages drawn by the GPU rasterizers. Both work a few
pages at a time, so their temporaries stay within a small multiple of STEP_BYTES of page bytes.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from ..render.resample import PRECISION_BITS, tap_columns

STEP_BYTES = 32 << 20  # page bytes handled per step


@lru_cache(maxsize=32)
def _taps(in_w: int, out_w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    cols, weights = tap_columns(in_w, out_w)
    return torch.from_numpy(cols).to(device), torch.from_numpy(weights).to(device)


def _steps(pages: torch.Tensor):
    per = max(1, STEP_BYTES // max(1, pages[0].numel())) if len(pages) else 1
    for p in range(0, len(pages), per):
        yield p, min(p + per, len(pages))


def resize_width(pages: torch.Tensor, out_w: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [n, H, W, 3] -> [n, H, out_w, 3] as Pillow's `Image.resize((out_w, H))` (bicubic); `out`
    (uint8 [n, H, >= out_w, 3]) receives it in its first out_w columns."""
    if pages.dtype != torch.uint8 or pages.dim() != 4 or pages.shape[-1] != 3:
        raise ValueError(f"resize_width: need uint8 [n, H, W, 3] pages, got {pages.dtype} {tuple(pages.shape)}")
    n, H, W, _ = pages.shape
    cols, weights = _taps(W, out_w, pages.device)
    if out is None:
        out = torch.empty(n, H, out_w, 3, dtype=torch.uint8, device=pages.device)
    for p0, p1 in _steps(pages):
        part = pages[p0:p1]
        acc = torch.full((p1 - p0, H, out_w, 3), 1 << (PRECISION_BITS - 1), dtype=torch.int32, device=pages.device)
        for c, w in zip(cols, weights):  # int32, as Pillow's sums
            acc += part.index_select(2, c).to(torch.int32) * w[:, None]
        out[p0:p1, :, :out_w] = (acc >> PRECISION_BITS).clamp_(0, 255).to(torch.uint8)
    return out


def ink_extent(pages: torch.Tensor, tol: int = 5) -> torch.Tensor:
    """int32 [n, 2] per page of uint8 [n, H, W, 3]: (column after the rightmost ink, row after the lowest ink), 0 when
    blank; ink is a luma (PIL's convert("L")) differing from the median of the page's top-left 2x2 by more than tol."""
    n, H, W = pages.shape[:3]
    out = torch.zeros(n, 2, dtype=torch.int32, device=pages.device)
    if not n or not H or not W:
        return out
    cols = torch.arange(1, W + 1, dtype=torch.int32, device=pages.device)
    rows = torch.arange(1, H + 1, dtype=torch.int32, device=pages.device)
    for p0, p1 in _steps(pages):
        rgb = pages[p0:p1].to(torch.int32)
        luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
        del rgb
        corner = luma[:, :2, :2].reshape(p1 - p0, -1).sort(dim=1).values
        m = corner.shape[1]
        twice_median = corner[:, (m - 1) // 2] + corner[:, m // 2]  # |L - median| > tol, in integers
        ink = (2 * luma - twice_median[:, None, None]).abs_() > 2 * tol
        out[p0:p1, 0] = (ink.any(dim=1) * cols).amax(dim=1)
        out[p0:p1, 1] = (ink.any(dim=2) * rows).amax(dim=1)
    return out
