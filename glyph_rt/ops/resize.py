"""Glyph's horizontal scale and auto-crop extent on pages that live on a device (torch, any device).

The same integers as `glyph_rt.render.resample.resize_width` (Pillow's bicubic horizontal pass) and
`glyph_rt.render.raster.ink_extent` (Glyph's crop rule), for pages drawn by the GPU rasterizers.
"""
from __future__ import annotations

import torch

from ..render.resample import PRECISION_BITS, tap_columns


def resize_width(pages: torch.Tensor, out_w: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> [..., H, out_w, 3] as Pillow's `Image.resize((out_w, H))` (bicubic); `out`
    (uint8 [..., H, >= out_w, 3]) receives it in its first out_w columns."""
    if pages.dtype != torch.uint8 or pages.dim() < 3 or pages.shape[-1] != 3:
        raise ValueError(f"resize_width: need uint8 [..., H, W, 3] pages, got {pages.dtype} {tuple(pages.shape)}")
    W = pages.shape[-2]
    cols, weights = tap_columns(W, out_w)
    cols = torch.from_numpy(cols).to(pages.device)
    weights = torch.from_numpy(weights).to(pages.device)
    acc = torch.full((*pages.shape[:-2], out_w, 3), 1 << (PRECISION_BITS - 1), dtype=torch.int32,
                     device=pages.device)
    for c, w in zip(cols, weights):  # int32, as Pillow's sums
        acc += pages.index_select(-2, c).to(torch.int32) * w[:, None]
    res = (acc >> PRECISION_BITS).clamp_(0, 255).to(torch.uint8)
    if out is None:
        return res
    out[..., :out_w, :] = res
    return out


def ink_extent(pages: torch.Tensor, tol: int = 5) -> torch.Tensor:
    """int32 [n, 2] per page of uint8 [n, H, W, 3]: (column after the rightmost ink, row after the lowest ink), 0 when
    blank; ink is a luma (PIL's convert("L")) differing from the median of the page's top-left 2x2 by more than tol."""
    rgb = pages.to(torch.int64)
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    corner = luma[:, :2, :2].reshape(len(pages), -1).sort(dim=1).values.to(torch.float64)
    m = corner.shape[1]
    median = (corner[:, (m - 1) // 2] + corner[:, m // 2]) / 2
    ink = (luma.to(torch.float64) - median[:, None, None]).abs() > tol
    out = torch.zeros(len(pages), 2, dtype=torch.int32, device=pages.device)
    for k, (lines, dim) in enumerate(((ink.any(dim=1), 1), (ink.any(dim=2), 1))):
        size = lines.shape[dim]
        idx = torch.arange(1, size + 1, device=pages.device, dtype=torch.int32)
        out[:, k] = (lines * idx).amax(dim=dim) if size else 0
    return out
