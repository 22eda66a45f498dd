"""Triton rasterizer: composites binned glyph placements from the font atlas into pages.

One program draws one tile of one page. It fills the page background, paints the
rectangles (paragraph backgrounds, borders) binned to the tile, then blends the glyphs
binned to the tile in placement order, with the same integer arithmetic as the C++ CPU
rasterizer, so the pixels are identical. What happens to the tile then is the mode:

    MODE_BG      median luma of the page's top-left 2x2 pixels (Glyph's auto-crop background)
    MODE_INK     per page: column after the rightmost ink, row after the lowest ink
    MODE_PAGES   uint8 RGB pages [H, W, 3], each at its own offset (optionally with MODE_INK)
    MODE_PIXELS  GLM-4.1V / Qwen2.5-VL pixel_values rows, normalized through a [3, 256] lookup table
    MODE_PATCHES the same rows as raw uint8 levels, one frame: [N, 588] (channel, py, px) in rows of
                 592 bytes (4 zero pad bytes: 16-byte aligned rows, glyph_rt.ops.pixel_values), for the patch
                 embedding that folds the normalization into its weights

Under TRITON_INTERPRET=1 the kernel runs on CPU tensors (that is how CI checks it).
The launcher takes a prepared `RasterBatch` (glyph_rt.ops.raster) and the device tensors.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .aot import AotSpec

MODE_BG, MODE_INK, MODE_PAGES, MODE_PIXELS, MODE_PATCHES = 0, 1, 2, 3, 4
TILE_H, TILE_W = 14, 28  # one patch row of a 2x2 merge block, drawn in a 16x32 block
MAX_GRID_Y = 65535


@triton.jit
def _div255(v):
    # floor(v / 255) for v in [0, 255 * 255], as poppler and the CPU rasterizer blend
    return v // 255


@triton.jit
def _luma(r, g, b):
    return (r * 19595 + g * 38470 + b * 7471 + 32768) >> 16


@triton.jit
def raster_kernel(
    out_ptr, ink_ptr, bgv_ptr, lut_ptr,
    meta_ptr, out_off_ptr,
    glyph_start_ptr, glyph_items_ptr, g_x0_ptr, g_y0_ptr, g_w_ptr, g_h_ptr, g_off_ptr, g_rgb_ptr,
    rect_start_ptr, rect_items_ptr, r_box_ptr, r_rgb_ptr,
    atlas_ptr, page0, tol,
    TH: tl.constexpr, TW: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
    MODE: tl.constexpr, INK: tl.constexpr, GRAY: tl.constexpr,
):
    tile = tl.program_id(0)
    page = tl.program_id(1) + page0
    m = meta_ptr + page * 8
    H = tl.load(m + 0)
    W = tl.load(m + 1)
    ntx = tl.load(m + 2)
    nty = tl.load(m + 3)
    tile_base = tl.load(m + 4)
    bg = tl.load(m + 5)
    if tile < ntx * nty:
        ty = tile // ntx
        tx = tile % ntx
        ly = tl.arange(0, BH)[:, None]
        lx = tl.arange(0, BW)[None, :]
        rows = ty * TH + ly
        cols = tx * TW + lx
        inside = (ly < TH) & (lx < TW) & (rows < H) & (cols < W)

        r = tl.zeros([BH, BW], dtype=tl.int32) + (bg & 255)
        g = tl.zeros([BH, BW], dtype=tl.int32) + ((bg >> 8) & 255)
        b = tl.zeros([BH, BW], dtype=tl.int32) + ((bg >> 16) & 255)

        t = tile_base + tile
        r_lo = tl.load(rect_start_ptr + t)
        r_hi = tl.load(rect_start_ptr + t + 1)
        for j in range(r_lo, r_hi):
            k = tl.load(rect_items_ptr + j)
            x0 = tl.load(r_box_ptr + 4 * k)
            y0 = tl.load(r_box_ptr + 4 * k + 1)
            x1 = tl.load(r_box_ptr + 4 * k + 2)
            y1 = tl.load(r_box_ptr + 4 * k + 3)
            c = tl.load(r_rgb_ptr + k)
            hit = (cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)
            r = tl.where(hit, c & 255, r)
            g = tl.where(hit, (c >> 8) & 255, g)
            b = tl.where(hit, (c >> 16) & 255, b)

        g_lo = tl.load(glyph_start_ptr + t)
        g_hi = tl.load(glyph_start_ptr + t + 1)
        for j in range(g_lo, g_hi):
            k = tl.load(glyph_items_ptr + j)
            x0 = tl.load(g_x0_ptr + k)
            y0 = tl.load(g_y0_ptr + k)
            w = tl.load(g_w_ptr + k)
            h = tl.load(g_h_ptr + k)
            off = tl.load(g_off_ptr + k)
            c = tl.load(g_rgb_ptr + k)
            gx = cols - x0
            gy = rows - y0
            hit = (gx >= 0) & (gx < w) & (gy >= 0) & (gy < h)
            a = tl.load(atlas_ptr + off + gy * w + gx, mask=hit, other=0).to(tl.int32)
            na = 255 - a
            r = _div255(r * na + (c & 255) * a)
            if not GRAY:
                g = _div255(g * na + ((c >> 8) & 255) * a)
                b = _div255(b * na + ((c >> 16) & 255) * a)
        if GRAY:
            g = r
            b = r

        if MODE == 0:  # MODE_BG: median of the four top-left lumas (the first pixel alone on tiny pages)
            corner = inside & (rows < 2) & (cols < 2)
            lum = _luma(r, g, b)
            n = tl.sum(corner.to(tl.int32))
            s = tl.sum(tl.where(corner, lum, 0))
            hi = tl.max(tl.where(corner, lum, -1))
            lo = tl.min(tl.where(corner, lum, 1 << 20))
            first = tl.sum(tl.where(inside & (rows == 0) & (cols == 0), lum, 0))
            med = tl.where(n == 4, (s - hi - lo).to(tl.float32) * 0.5, first.to(tl.float32))
            tl.store(bgv_ptr + page, med)
        if (MODE == 1) or INK:
            bgv = tl.load(bgv_ptr + page)
            d = _luma(r, g, b).to(tl.float32) - bgv
            ink = inside & ((d > tol) | (d < -tol))
            tl.atomic_max(ink_ptr + 2 * page, tl.max(tl.where(ink, cols + 1, 0)))
            tl.atomic_max(ink_ptr + 2 * page + 1, tl.max(tl.where(ink, rows + 1, 0)))
        if MODE == 2:
            o = tl.load(out_off_ptr + page) + (rows * W + cols).to(tl.int64) * 3
            tl.store(out_ptr + o, r.to(tl.uint8), mask=inside)
            tl.store(out_ptr + o + 1, g.to(tl.uint8), mask=inside)
            tl.store(out_ptr + o + 2, b.to(tl.uint8), mask=inside)
        if (MODE == 3) or (MODE == 4):
            # A tile is one patch row (14 px) of a 2x2 merge block (28 px wide); tiles past the
            # final (cropped) size of the page are not part of the image.
            out_h = tl.load(m + 6)
            out_w = tl.load(m + 7)
            if (ty * TH < out_h) & (tx * TW < out_w):
                by = ty // 2
                my = ty % 2
                mx = lx // 14
                px = lx % 14
                row = tl.load(out_off_ptr + page) + (by * (out_w // 28) + tx) * 4 + my * 2 + mx
                keep = (ly < 14) & (lx < 28)
                if MODE == 3:
                    base = row.to(tl.int64) * 1176 + ly * 14 + px
                    # the table is in the output dtype already (rounded by torch): no cast here
                    vr = tl.load(lut_ptr + r)
                    vg = tl.load(lut_ptr + 256 + g)
                    vb = tl.load(lut_ptr + 512 + b)
                    # columns (channel, t, py, px); the still frame fills both temporal slots
                    tl.store(out_ptr + base, vr, mask=keep)
                    tl.store(out_ptr + base + 196, vr, mask=keep)
                    tl.store(out_ptr + base + 392, vg, mask=keep)
                    tl.store(out_ptr + base + 588, vg, mask=keep)
                    tl.store(out_ptr + base + 784, vb, mask=keep)
                    tl.store(out_ptr + base + 980, vb, mask=keep)
                else:  # columns (channel, py, px) of one frame, raw levels, in 592-byte rows
                    base = row.to(tl.int64) * 592 + ly * 14 + px
                    tl.store(out_ptr + base, r.to(tl.uint8), mask=keep)
                    tl.store(out_ptr + base + 196, g.to(tl.uint8), mask=keep)
                    tl.store(out_ptr + base + 392, b.to(tl.uint8), mask=keep)
                    # pixels (ly 0, px 0-3) zero the row's 4 pad bytes 588-591
                    tl.store(out_ptr + base + 588, tl.zeros([BH, BW], tl.uint8), mask=keep & (ly == 0) & (px < 4))


# what launch() passes besides the mode's switches; Triton's defaults for warps and stages
BLOCK = dict(TH=TILE_H, TW=TILE_W, BH=16, BW=32)
NUM_WARPS, NUM_STAGES = 4, 3


def launch(mode: int, batch, dev: dict, out=None, lut=None, ink: bool = False, tol: float = 5.0) -> None:
    """Runs one mode over every page of a prepared batch (glyph_rt.ops.raster.RasterBatch).

    `dev` holds the batch's device tensors (RasterBatch.to_device); `out` is the flat uint8
    page buffer (MODE_PAGES), the pixel_values tensor (MODE_PIXELS) or the uint8 patches (MODE_PATCHES,
    rows of 592 bytes)."""
    tiles = dev["tiles_per_page_max"] if mode != MODE_BG else 1
    dummy = dev["bgv"]
    for p0 in range(0, batch.num_pages, MAX_GRID_Y):
        n = min(MAX_GRID_Y, batch.num_pages - p0)
        raster_kernel[(tiles, n)](
            out if out is not None else dummy, dev["ink"], dev["bgv"], lut if lut is not None else dummy,
            dev["meta"], dev["out_off"],
            dev["glyph_start"], dev["glyph_items"], dev["g_x0"], dev["g_y0"], dev["g_w"], dev["g_h"],
            dev["g_off"], dev["g_rgb"],
            dev["rect_start"], dev["rect_items"], dev["r_box"], dev["r_rgb"],
            dev["atlas"], p0, float(tol),
            **BLOCK, MODE=mode, INK=bool(ink), GRAY=bool(batch.gray), num_warps=NUM_WARPS, num_stages=NUM_STAGES,
        )


def aot_specs(exhaustive: bool = False) -> list[AotSpec]:
    """Every launch glyph_rt.ops.raster makes: each mode with its output (and table) dtypes, ink
    on or off where the mode takes it, grey or color pages. page0 is 0, or a multiple of 65535."""
    ptrs = dict(out_ptr=None, ink_ptr="*i32", bgv_ptr="*fp32", lut_ptr="*fp32", meta_ptr="*i32", out_off_ptr="*i64")
    for name in ("glyph_start", "glyph_items", "g_x0", "g_y0", "g_w", "g_h", "g_off", "g_rgb", "rect_start",
                 "rect_items", "r_box", "r_rgb"):
        ptrs[name + "_ptr"] = "*i32"
    ptrs["atlas_ptr"] = "*u8"
    # (mode, out_ptr's type, ink): the reductions get the fp32 `bgv` tensor as a placeholder output
    cases = [(MODE_BG, "*fp32", False), (MODE_INK, "*fp32", False), (MODE_PAGES, "*u8", False),
             (MODE_PAGES, "*u8", True), (MODE_PIXELS, "*fp32", False), (MODE_PIXELS, "*bf16", False),
             (MODE_PATCHES, "*u8", False)]
    specs = []
    for mode, out, ink in cases:
        # page0 past the first 65535 pages is not a multiple of 16 (one case per output mode is enough)
        for gray, page0_aligned in ((False, True), (True, True)) + (((False, False),) if mode >= MODE_PAGES else ()):
            sig = {**ptrs, "out_ptr": out, "lut_ptr": out if mode == MODE_PIXELS else "*fp32", "page0": "i32",
                   "tol": "fp32"}
            aligned = tuple(k for k in sig if k.endswith("_ptr")) + (("page0",) if page0_aligned else ())
            specs.append(AotSpec(f"raster mode={mode} out={out} ink={ink} gray={gray} page0_aligned={page0_aligned}",
                                 raster_kernel, sig, dict(**BLOCK, MODE=mode, INK=ink, GRAY=gray), NUM_WARPS,
                                 NUM_STAGES, aligned))
    return specs
