"""Rasterization of a Layout into uint8 RGB pages, cropping and canvas snapping.

Backends: "cpu" (glyph_rt._C.raster_cpu) and "reference" (numpy, the test oracle).
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .atlas import FontAtlas
from .config import NewlineMarkup, RenderConfig, parse_color
from .layout import Layout, part_origin_y
from .pdfnum import pdf_number, pdf_numbers
from .resample import resize_width
from .tokens import MAX_ASPECT, VisionModel, vision_model


INK_TOL = 5  # Glyph's auto-crop tolerance, in grey levels
DRAWN_BYTES = 32 << 20  # pages drawn at full width before the horizontal scale resizes them, at a time


def scales(config: RenderConfig) -> tuple[float, float]:
    """Points -> pixels along x and y of the page as drawn (before the horizontal scale resizes it)."""
    s = config.dpi / 72.0
    return s, s


def crops(config: RenderConfig) -> bool:
    """Whether a page's final size depends on its ink (auto-crop or snapping)."""
    return bool(config.auto_crop_width or config.auto_crop_last_page or config.snap)


def canvas_size(config: RenderConfig) -> tuple[int, int]:
    """(width, height) of the buffer a page is returned in: the page, rounded up to the snap multiple."""
    w, h = config.page_pixels
    m = config.snap
    if m:
        w, h = math.ceil(w / m) * m, math.ceil(h / m) * m
    return w, h


def drawn_canvas(config: RenderConfig) -> tuple[int, int]:
    """(width, height) of the buffer a page is drawn into: the canvas, or with a horizontal scale other than 1
    the page at full width (`config.drawn_pixels`), which `resize_drawn` then resizes as Glyph does."""
    w, h = canvas_size(config)
    return (config.drawn_pixels[0], h) if config.horizontal_scale != 1 else (w, h)


def resize_drawn(drawn: np.ndarray, config: RenderConfig, out: np.ndarray, backend: str = "cpu") -> None:
    """Pages drawn at full width ([n, H, drawn width, 3]) into `out` (the canvas, [n, H, W, 3]): resized to the
    page width as Glyph resizes them (Pillow's bicubic, `resample.resize_width`), the snap columns past it in the
    page's background."""
    w = config.page_pixels[0]
    resize_width(drawn, w, out=out, backend=backend)
    out[:, :, w:] = np.asarray(parse_color(config.page_bg_color, "page_bg_color"), np.uint8)


def canvas_tokens(config: RenderConfig, model: "str | VisionModel") -> int:
    """Visual tokens of a full page of `config` (its canvas, uncropped): the most any of its pages takes."""
    w, h = canvas_size(config)
    return vision_model(model).tokens(h, w)


def palette(config: RenderConfig) -> np.ndarray:
    font = parse_color(config.font_color, "font_color")
    nl = NewlineMarkup.parse(config.newline_markup)
    marker = nl.color or font
    return np.asarray([font, marker], dtype=np.uint8)


PAPER = (255, 255, 255)  # pdftoppm's paper, under the page's background


def paper_edges(config: RenderConfig) -> list[list[int]]:
    """The boxes (px) of a page that Glyph's pages leave as white paper: the last column or row when the page
    is not a whole number of pixels and its background covers less than half of it (poppler fills the
    background rectangle over the pixels whose centres it covers; pdftoppm's page is the size rounded up).
    None on a white page or a snapped canvas (not Glyph's page)."""
    if config.snap or parse_color(config.page_bg_color, "page_bg_color") == PAPER:
        return []
    k = config.dpi / 72
    w_px, h_px = config.drawn_pixels
    filled_w = int(math.floor(config.page_size[0] * k + 0.5))
    filled_h = int(math.floor(config.page_size[1] * k + 0.5))
    out = []
    if filled_w < w_px:
        out.append([filled_w, 0, w_px, h_px])
    if filled_h < h_px:
        out.append([0, filled_h, w_px, h_px])
    return out


def box_pixels(layout: Layout, config: RenderConfig) -> tuple[np.ndarray, np.ndarray]:
    """Where poppler paints each paragraph box: (fill int32 [boxes, 4] x0, y0, x1, y1 px, exclusive ends;
    border int32 [boxes, 4, 4] the top, bottom, left and right sides' boxes).

    reportlab draws a box as `re` (fill, and stroke for a border) in the paragraph's coordinates, translated to its
    bottom-left corner (`cm`); poppler transforms the path's corners in double from the numbers as printed (its CTM
    [k 0 0 -k 0 k*H]) and Splash, adjusting strokes (also a filled rectangle's edges), covers the pixels from each
    edge rounded (floor(v + 0.5)) to the next: a stroke's side from its inner edge to its outer edge (the line
    width's halves off the path, in user space), at least one pixel. In the page as drawn, before the horizontal
    scale resizes it."""
    n = len(layout.b_page)
    fill = np.zeros((n, 4), np.int32)
    border = np.zeros((n, 4, 4), np.int32)
    if not n:
        return fill, border
    _, k = scales(config)
    c = config
    bp, bw = float(c.border_padding), float(c.border_width)
    li, ri = float(c.left_indent + c.hanging_indent), float(c.right_indent)
    avail = (c.page_size[0] - c.margin_x - c.margin_x) - c.frame_padding - c.frame_padding  # Paragraph.wrap's width
    e = pdf_number(c.margin_x + c.frame_padding) * k
    x_r, y_r = pdf_number(li - bp), pdf_number(-bp)
    x1 = x_r + pdf_number(avail - (li + ri) + bp + bp)
    m5 = part_origin_y(layout.b_y, layout.b_h, c)  # each part's `cm`: the CTM's y translation
    y1 = y_r + pdf_numbers(layout.b_h.astype(np.float64) + bp + bp)

    def dx(x) -> np.ndarray:
        return np.floor(k * np.asarray(x, np.float64) + e + 0.5).astype(np.int64) + np.zeros(n, np.int64)

    def dy(y) -> np.ndarray:
        return np.floor(-k * np.asarray(y, np.float64) + m5 + 0.5).astype(np.int64)

    fill[:] = np.stack([dx(x_r), dy(y1), dx(x1), dy(y_r)], axis=1)
    if bw > 0:
        g = 0.5 * pdf_number(bw)

        def side(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return a, np.maximum(b, a + 1)

        (l0, l1), (r0, r1) = side(dx(x_r - g), dx(x_r + g)), side(dx(x1 - g), dx(x1 + g))
        (t0, t1), (b0, b1) = side(dy(y1 + g), dy(y1 - g)), side(dy(y_r + g), dy(y_r - g))
        border[:] = np.stack([np.stack([l0, t0, r1, t1], 1), np.stack([l0, b0, r1, b1], 1),
                              np.stack([l0, t0, l1, b1], 1), np.stack([r0, t0, r1, b1], 1)], axis=1)
    return fill, border


NO_CLIP = np.iinfo(np.int32).max


def run_clips(layout: Layout, config: RenderConfig) -> np.ndarray:
    """int32 [runs]: the pixel row (exclusive) where each run's glyphs stop. reportlab paints each paragraph part's
    background (`para_bg_color`, white by default) before its text, over the descenders of the line above it, so
    in Glyph's pages the last line of a paragraph loses what reaches into the next part's background (and border):
    the run stops at its top row. NO_CLIP where no part follows on the page."""
    nr, nb = len(layout.r_page), len(layout.b_page)
    out = np.full(nr, NO_CLIP, np.int32)
    if not nr or nb < 2:
        return out
    b_page = layout.b_page.astype(np.int64)
    order = np.lexsort((layout.b_y, b_page))  # the engines emit them in this order; the sort makes it certain
    b_page, b_y = b_page[order], layout.b_y[order].astype(np.float64)
    # the part holding each run: the last one on its page whose top is above the run's baseline (a part's last
    # baseline may lie on the next part's top)
    key = (b_page << 32) + np.floor(b_y * 1024).astype(np.int64)
    run_key = (layout.r_page.astype(np.int64) << 32) + np.floor(layout.r_y.astype(np.float64) * 1024).astype(np.int64)
    j = np.searchsorted(key, run_key, side="left") - 1
    nxt = j + 1
    ok = (j >= 0) & (nxt < nb)
    ok[ok] &= (b_page[j[ok]] == layout.r_page[ok]) & (b_page[nxt[ok]] == layout.r_page[ok])
    fill, border = box_pixels(layout, config)
    painted = np.minimum(fill[:, 1], border[:, 0, 1]) if config.border_width > 0 else fill[:, 1]
    out[ok] = np.clip(painted[order][nxt[ok]], -1, NO_CLIP).astype(np.int32)  # its background's or border's top
    return out


def glyph_clips(layout: Layout, config: RenderConfig, lo: int, hi: int, clips: np.ndarray | None = None) -> np.ndarray:
    """int32 [hi - lo]: `run_clips` for the glyphs [lo, hi) (`clips`: the layout's run_clips, when known)."""
    clips = run_clips(layout, config) if clips is None else clips
    r0 = int(np.searchsorted(layout.r_start, lo, side="right")) - 1
    r1 = int(np.searchsorted(layout.r_start, hi, side="left"))
    starts = np.clip(layout.r_start[r0:r1 + 1], lo, hi)
    return np.repeat(clips[r0:r1], np.diff(starts))


def paragraph_rects(layout: Layout, config: RenderConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Filled rectangles (page, [x0,y0,x1,y1] px, rgb) in drawing order: the paper edges of every page
    (`paper_edges`: what the page's background left white), then paragraph backgrounds and borders, which poppler
    paints after the page's background."""
    page_bg = parse_color(config.page_bg_color, "page_bg_color")
    para_bg = parse_color(config.para_bg_color, "para_bg_color")
    border = parse_color(config.para_border_color, "para_border_color")
    bw = config.border_width
    edges = np.asarray(paper_edges(config), np.int32).reshape(-1, 4)
    n_pages = layout.num_pages if len(edges) else 0
    pages = [np.repeat(np.arange(n_pages, dtype=np.int32), len(edges))]
    boxes = [np.tile(edges, (n_pages, 1))]
    colors = [np.tile(np.asarray(PAPER, np.uint8), (n_pages * len(edges), 1))]
    n = len(layout.b_page)
    if n and (para_bg != page_bg or bw > 0):
        fill, sides = box_pixels(layout, config)
        # per box, in order: its background (one of the page's colour still covers the border above it), its border
        per_box = np.concatenate([fill[:, None]] + ([sides] if bw > 0 else []), axis=1)  # [n, 1 or 5, 4]
        m = per_box.shape[1]
        pages.append(np.repeat(layout.b_page.astype(np.int32), m))
        boxes.append(per_box.reshape(-1, 4))
        colors.append(np.tile(np.asarray([para_bg] + [border] * (m - 1), np.uint8), (n, 1)))
    return (np.concatenate(pages).astype(np.int32), np.concatenate(boxes).astype(np.int32).reshape(-1, 4),
            np.concatenate(colors).astype(np.uint8).reshape(-1, 3))


def rasterize(layout: Layout, atlas: FontAtlas, config: RenderConfig, out: np.ndarray, page0: int = 0,
              backend: str = "cpu", ink: np.ndarray | None = None) -> None:
    """Draws pages [page0, page0 + len(out)) into `out` ([n, H, W, 3] uint8, the canvas size).

    `ink` (int32 [n, 2]) receives each page's `ink_extent` (right, bottom), found by the C++
    rasterizer while the page is in cache and only where something was drawn. With a horizontal scale
    other than 1 the pages are drawn at full width and resized (`resize_drawn`), and the ink is found after."""
    if config.horizontal_scale != 1:  # drawn a few pages at a time into one full-width buffer
        W, H = drawn_canvas(config)
        drawn = np.empty((max(1, min(len(out), DRAWN_BYTES // (W * H * 3))), H, W, 3), np.uint8)
        full = replace(config, horizontal_scale=1.0)
        for p in range(0, len(out), len(drawn)):
            part = out[p:p + len(drawn)]
            rasterize(layout, atlas, full, drawn[:len(part)], page0 + p, backend)
            resize_drawn(drawn[:len(part)], config, part, backend)
        if ink is not None and len(out):
            ink[:, 0], ink[:, 1] = ink_extent(out, INK_TOL, backend)
        return
    bg = np.asarray(parse_color(config.page_bg_color, "page_bg_color"), np.uint8)
    rp, rb, rc = paragraph_rects(layout, config)
    on = (rp >= page0) & (rp < page0 + len(out))  # the rasterizer looks at every rectangle for every page
    rp, rb, rc = rp[on], rb[on], rc[on]
    a = atlas.arrays()
    sx, sy = scales(config)
    pal = palette(config)
    if backend == "cpu":
        from .._ext import require_extension

        C = require_extension("the C++ rasterizer")
        # only the placements of these pages travel to the rasterizer
        lo, hi, g_page, g_y = layout.page_glyphs(page0, page0 + len(out))
        C.raster_cpu(out, page0, bg, rp, rb, rc, g_page, layout.g_x[lo:hi], g_y,
                     layout.g_slot[lo:hi], layout.g_color[lo:hi], a["data"], a["offset"], a["width"],
                     a["height"], a["left"], a["top"], atlas.phases, pal, sx, sy, INK_TOL, ink,
                     glyph_clips(layout, config, lo, hi))
    elif backend == "reference":
        raster_reference(out, page0, bg, rp, rb, rc, layout, atlas, pal, sx, sy, run_clips(layout, config))
        if ink is not None:
            ink[:, 0], ink[:, 1] = ink_extent(out, INK_TOL, "reference")
    else:
        raise ValueError(f"raster backend {backend!r} is unknown; use 'cpu' or 'reference'")


def raster_reference(out, page0, bg, rp, rb, rc, layout: Layout, atlas: FontAtlas, pal, sx, sy, clips) -> None:
    """Plain numpy compositing, pixel-identical to the C++ rasterizer (`clips`: the layout's run_clips)."""
    n, H, W, _ = out.shape
    out[...] = bg
    for p, (x0, y0, x1, y1), c in zip(rp.tolist(), rb.tolist(), rc):
        if page0 <= p < page0 + n:
            out[p - page0, max(0, y0):max(0, min(H, y1)), max(0, x0):max(0, min(W, x1))] = c
    P = atlas.phases
    g_page, g_y, g_clip = layout.g_page, layout.g_y, layout._expand(clips)
    for i in range(len(g_page)):
        p = int(g_page[i]) - page0
        if not 0 <= p < n:
            continue
        xf = float(layout.g_x[i]) * sx
        ix = math.floor(xf)
        phase = min(P - 1, int((xf - ix) * P))
        bm, (gw, gh, left, top) = atlas.bitmap(int(layout.g_slot[i]), phase)
        if gw == 0 or gh == 0:
            continue
        x0 = ix + left
        y0 = math.floor(float(g_y[i]) * sy + 0.5) - top
        cx0, cy0 = max(0, -x0), max(0, -y0)
        cx1, cy1 = min(gw, W - x0), min(gh, min(H, int(g_clip[i])) - y0)
        if cx0 >= cx1 or cy0 >= cy1:
            continue
        a = bm[cy0:cy1, cx0:cx1].astype(np.uint32)[..., None]
        dst = out[p, y0 + cy0:y0 + cy1, x0 + cx0:x0 + cx1].astype(np.uint32)
        col = pal[int(layout.g_color[i])].astype(np.uint32)
        blended = (dst * (255 - a) + col * a) // 255  # truncated, as poppler's Splash blends
        out[p, y0 + cy0:y0 + cy1, x0 + cx0:x0 + cx1] = np.where(a > 0, blended, dst).astype(np.uint8)


def luma(rgb) -> np.ndarray:
    """Grey levels of uint8 RGB (PIL's convert("L"): ITU-R 601-2 in 16-bit fixed point)."""
    rgb = np.asarray(rgb, np.uint32)
    return (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16


def visible(rgb, bg) -> np.ndarray:
    """Whether colours `rgb` count as ink on background `bg` for Glyph's auto-crop."""
    return np.abs(luma(rgb).astype(np.int64) - int(luma(bg))) > INK_TOL


def ink_extent(pages: np.ndarray, tol: int = 5, backend: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Per page: (column after the rightmost ink, row after the lowest ink); 0 when blank.

    Ink = luma differing from the median of the top-left 2x2 pixels by more than `tol` (Glyph's rule)."""
    if backend == "cpu":
        from .._ext import require_extension

        return require_extension("ink_extent").ink_extent(pages, tol)
    gray = luma(pages)
    right = np.zeros(len(pages), np.int32)
    bottom = np.zeros(len(pages), np.int32)
    for i, g in enumerate(gray):
        bgv = np.median(g[:2, :2])
        mask = np.abs(g.astype(np.float64) - bgv) > tol
        cols, rows = np.nonzero(mask.any(axis=0))[0], np.nonzero(mask.any(axis=1))[0]
        right[i] = cols[-1] + 1 if cols.size else 0
        bottom[i] = rows[-1] + 1 if rows.size else 0
    return right, bottom


def snap_size(size: int, ink: int, multiple: int, limit: int) -> int:
    """Nearest multiple of `multiple` (as the model's resize would pick); rounds up if that cuts ink."""
    if not multiple:
        return size
    t = max(multiple, round(size / multiple) * multiple)
    if t < ink:
        t = math.ceil(size / multiple) * multiple
    return min(t, limit)


def final_sizes(config: RenderConfig, right: np.ndarray, bottom: np.ndarray, page0: int, num_pages: int,
                canvas: tuple[int, int]) -> list[tuple[int, int]]:
    """(width, height) of each page after Glyph's auto-crop (margins in px, as Glyph) and snapping; a crop never
    leaves a page past MAX_ASPECT:1 (validate() keeps the canvas within it)."""
    W, H = config.page_pixels
    out = []
    for i in range(len(right)):
        w, h = W, H
        r, b = int(right[i]), int(bottom[i])
        # Glyph crops to float bounds, which PIL's crop rounds (round(): half to even)
        if config.auto_crop_width and r > 0:
            w = round(min(W, r + config.margin_x))
        if config.auto_crop_last_page and page0 + i == num_pages - 1 and b > 0:
            h = round(min(H, b - 1 + config.margin_y))
        w = snap_size(w, r, config.snap, canvas[0])
        h = snap_size(h, b, config.snap, canvas[1])
        # a crop to a short line (or one line) keeps the page within the models' aspect limit: widened (taller)
        # with the page's background, where Glyph's page would be refused by the image processor
        if h > MAX_ASPECT * w:
            w = snap_size(-(-h // MAX_ASPECT), -(-h // MAX_ASPECT), config.snap, canvas[0])
        elif w > MAX_ASPECT * h:
            h = snap_size(-(-w // MAX_ASPECT), -(-w // MAX_ASPECT), config.snap, canvas[1])
        out.append((w, h))
    return out
