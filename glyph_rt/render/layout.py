"""Layout front-end: text + RenderConfig -> glyph placements, lines and pages.

The C++ engine (glyph_rt._C.layout) does the work; `layout_reference.py` is the plain-Python
oracle used by the tests. Both return the same `Layout`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import bidi, fonts, shaping
from .atlas import MISSING_SLOT, SPACE_SLOT, FontAtlas
from .config import NewlineMarkup, RenderConfig
from .pdfnum import pdf_number, pdf_numbers

ALIGN_CODES = {"left": 0, "center": 1, "right": 2, "justify": 3}
MAX_PAGES = (1 << 31) - 1  # the engine counts pages in int32


@dataclass
class Layout:
    """Glyph placements (points, y down, baseline), lines and pages of one document.

    Baselines (`l_y`, and the glyphs' `r_y`) are where poppler draws them: on the pixel row edge that it
    rounds each line's baseline to (`poppler_baseline_rows`), in points (row / (dpi / 72)); the paragraph
    boxes (`b_*`, float64) keep reportlab's unrounded layout.

    Per glyph only what differs between glyphs is kept (11 bytes; 13 with 65,536 atlas slots or more);
    its page and baseline are stored once per run of glyphs sharing them (a line) and expanded for a
    page range by `page_glyphs` (the `g_page` / `g_y` properties expand them all)."""

    num_pages: int
    g_x: np.ndarray  # float32 [G] pen x; at horizontal scale 1 the centre of the sub-pixel bin (of subpixel_phases
    # per pixel) poppler draws it in, up to a bin off for lines the bidi pass puts in another order
    g_slot: np.ndarray  # uint16 [G] atlas slot (int32 when the atlas has 65,536 slots or more)
    g_src: np.ndarray  # int32 [G] index of the character in the text
    g_color: np.ndarray  # uint8 [G] 0 font color, 1 newline-marker color
    r_start: np.ndarray  # int64 [R + 1] first glyph of each run of glyphs on one page and baseline
    r_page: np.ndarray  # int32 [R] page of the run (non-decreasing)
    r_y: np.ndarray  # float32 [R] baseline y of the run
    l_page: np.ndarray
    l_x: np.ndarray
    l_y: np.ndarray
    l_width: np.ndarray
    l_src_start: np.ndarray
    l_src_end: np.ndarray
    b_page: np.ndarray  # paragraph boxes (backgrounds and borders), points, float64
    b_x: np.ndarray
    b_y: np.ndarray
    b_w: np.ndarray
    b_h: np.ndarray
    p_src_start: np.ndarray  # character span of each page
    p_src_end: np.ndarray
    p_line_start: np.ndarray
    missing: int  # characters drawn as replacement boxes
    stripped: int  # soft hyphens / zero-width spaces removed, as Glyph's renderer does
    placed: int  # source characters placed on pages (boxes included; newline-marker glyphs not)
    marker_glyphs: int  # glyphs drawn for visible newline markers (not source characters)
    truncated: bool  # stopped at max_pages

    @classmethod
    def from_dict(cls, d: dict) -> "Layout":
        """From the layout engines' output, whose glyph arrays are all per glyph (g_page, g_y included)."""
        d = dict(d)
        page, y = d.pop("g_page"), d.pop("g_y")
        slot = d["g_slot"]
        d["g_slot"] = slot.astype(np.uint16) if not len(slot) or slot.max() < 1 << 16 else slot.astype(np.int32)
        lay = cls(num_pages=int(d.pop("pages")), r_start=None, r_page=None, r_y=None, **d)
        lay.set_rows(page, y)
        return lay

    def set_rows(self, g_page: np.ndarray, g_y: np.ndarray) -> None:
        """Sets every glyph's page and baseline y (pages non-decreasing), stored as runs."""
        g_page, g_y = np.asarray(g_page), np.asarray(g_y, np.float32)
        n = len(self.g_x)
        if g_page.shape != (n,) or g_y.shape != (n,) or (n and np.any(np.diff(g_page) < 0)):
            raise ValueError(f"g_page and g_y must be [{n}] with pages in order, got {g_page.shape} {g_y.shape}")
        change = np.flatnonzero((g_page[1:] != g_page[:-1]) | (g_y[1:] != g_y[:-1])) + 1
        self.r_start = np.concatenate([[0], change, [n]]).astype(np.int64) if n else np.zeros(1, np.int64)
        self.r_page = g_page[self.r_start[:-1]].astype(np.int32)
        self.r_y = g_y[self.r_start[:-1]]

    def page_glyphs(self, page0: int, page1: int) -> tuple[int, int, np.ndarray, np.ndarray]:
        """(lo, hi, page, y): the glyphs [lo, hi) of pages [page0, page1), with each one's page (int32) and
        baseline y (float32)."""
        r0, r1 = np.searchsorted(self.r_page, [page0, page1])
        counts = np.diff(self.r_start[r0:r1 + 1])
        return (int(self.r_start[r0]), int(self.r_start[r1]), np.repeat(self.r_page[r0:r1], counts),
                np.repeat(self.r_y[r0:r1], counts))

    @property
    def g_page(self) -> np.ndarray:
        """int32 [G] page of each glyph (expanded from the runs; read-only: use set_rows to change it)."""
        return self._expand(self.r_page)

    @property
    def g_y(self) -> np.ndarray:
        """float32 [G] baseline y of each glyph (expanded from the runs; read-only: use set_rows)."""
        return self._expand(self.r_y)

    def _expand(self, per_run: np.ndarray) -> np.ndarray:
        out = np.repeat(per_run, np.diff(self.r_start))
        out.flags.writeable = False
        return out

    def run_lines(self) -> np.ndarray:
        """int64 [R]: the line each run of glyphs is drawn on, the one on its page at its baseline."""
        n, nr = len(self.l_page), len(self.r_y)
        if not nr:
            return np.zeros(0, np.int64)
        page = np.concatenate([self.l_page, self.r_page])
        y = np.concatenate([self.l_y, self.r_y])
        order = np.lexsort((np.arange(n + nr) >= n, y, page))  # each line just before its runs
        line = np.maximum.accumulate(np.where(order < n, order, -1))
        runs = order >= n
        of_run = np.empty(nr, np.int64)
        of_run[order[runs] - n] = line[runs]
        if (of_run < 0).any() or not (np.array_equal(self.l_page[of_run], self.r_page)
                                      and np.array_equal(self.l_y[of_run], self.r_y)):
            raise RuntimeError("layout: a run of glyphs is on no line")
        return of_run

    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))


def has_glyph_cjk(cps: np.ndarray) -> bool:
    """Glyph's switch to reportlab's per-character (CJK) wrapping: any U+4E00..U+9FFF in the text."""
    return bool(np.count_nonzero((cps - np.uint32(0x4E00)) < np.uint32(0x5200)))


def layout_params(config: RenderConfig, atlas: FontAtlas, cps: np.ndarray, max_pages: int | None = None) -> dict:
    c = config
    wrap = c.wrap
    if wrap == "auto":
        wrap = "cjk" if has_glyph_cjk(cps) else "word"
    nl = NewlineMarkup.parse(c.newline_markup)
    frame_x, left_indent = c.margin_x + c.frame_padding, c.left_indent + c.hanging_indent
    return {
        "frame_x": frame_x,
        "frame_y": c.margin_y + c.frame_padding,
        "frame_w": c.page_size[0] - 2 * (c.margin_x + c.frame_padding),
        "frame_h": c.page_size[1] - 2 * (c.margin_y + c.frame_padding),
        "left_indent": left_indent,
        "right_indent": c.right_indent,
        "first_line_indent": c.first_line_indent - c.hanging_indent,
        "leading": c.line_height,
        "ascent": c.font_size,  # reportlab: first baseline one font size below the top
        "space_before": c.space_before,
        "space_after": c.space_after,
        "space_shrink": 0.05,
        "align": ALIGN_CODES[c.alignment],
        "wrap": 1 if wrap == "cjk" else 0,
        "lines_per_paragraph": c.lines_per_paragraph,
        "newline_marker": 0 if nl.is_break else 1,
        "tab_size": max(c.tab_size, 1),  # tab_size 0: no tab reaches the engine (glyph_whitespace)
        "max_pages": max_pages if max_pages is not None else (1 << 30),
        # x as poppler draws reportlab's PDF (its printed numbers, its sub-pixel bins); Glyph draws other
        # horizontal scales by resizing whole pages, which no pen position reproduces
        "pdf_scale": c.dpi / 72.0,
        "pdf_phases": atlas.phases,
        "pdf_frame_x": pdf_number(frame_x),
        "pdf_left_indent": pdf_number(left_indent),
        "pdf_font_size": pdf_number(c.font_size),
        "font_size": c.font_size,
        # reportlab's frame width, in its order of operations (SimpleDocTemplate, Frame's paddings)
        "pdf_avail_width": (c.page_size[0] - c.margin_x - c.margin_x) - c.frame_padding - c.frame_padding,
    }


def glyph_whitespace(cps: np.ndarray, config: RenderConfig, text: str | None = None) -> np.ndarray:
    """`cps` with each tab (tab_size 0) and "\\r" (cr_newline False) as U+000B, a breaking space to the engines:
    as Glyph's renderer has them (reportlab collapses them with the spaces around them), not kept spaces or line
    ends. One codepoint for one, so source indices stay; `cps` itself when nothing changes. `text`, when given,
    is the str whose codepoints `cps` are: a text without tabs or "\\r" is returned untouched without a pass over
    the array (np.isin over 500K codepoints cost ~5% of their layout)."""
    codes = ([9] if config.tab_size == 0 else []) + ([13] if not config.cr_newline else [])
    if text is not None:
        codes = [c for c in codes if chr(c) in text]
    if not codes:
        return cps
    mask = cps == codes[0]
    for c in codes[1:]:
        mask |= cps == c
    if not mask.any():
        return cps
    return np.where(mask, np.uint32(0x0B), cps).astype(cps.dtype, copy=False)


def text_codepoints(text: str) -> np.ndarray:
    """UTF-32 codepoints of a str (lone surrogates kept as themselves)."""
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)


def atlas_for(config: RenderConfig) -> FontAtlas:
    """The atlas a page of `config` is drawn with: at full width (the horizontal scale resizes the drawn page)."""
    return FontAtlas.get(fonts.resolve_fonts(config), config.font_size, config.dpi, 1.0, config.subpixel_phases)


def _fill_atlas(atlas: FontAtlas, cps: np.ndarray, extra: np.ndarray, backend: str) -> dict:
    """Adds the glyphs of `cps` and `extra` to the atlas; returns its arrays (a consistent snapshot)."""
    with atlas.lock:
        if backend == "cpu":
            from .._ext import require_extension

            new = require_extension("the C++ layout engine").unknown_codepoints(cps, atlas.lut)
        else:
            new = np.unique(cps)
        if len(extra):
            new = np.union1d(new, extra)
        atlas.ensure(new)
        a = atlas.arrays()
        atlas.save()
    return a


def _with_system_fallbacks(atlas: FontAtlas, cps: np.ndarray) -> FontAtlas:
    """The atlas with installed fonts (found by coverage) added for characters its fonts lack."""
    if not atlas.missing_codepoints:
        return atlas
    lut = atlas.lut
    missing = np.unique(cps[lut[cps] == MISSING_SLOT])
    extra = fonts.system_fallbacks(missing.tolist(), exclude=atlas.fonts) if len(missing) else []
    if not extra:
        return atlas
    return FontAtlas.get(atlas.fonts + extra, atlas.size_pt, atlas.dpi, atlas.h_scale, atlas.phases)


def layout_text(text: str, config: RenderConfig, atlas: FontAtlas | None = None, backend: str = "cpu",
                max_pages: int | None = None) -> tuple[Layout, FontAtlas]:
    """Lays out `text`; returns the layout and the atlas its slots refer to.

    Characters the configured fonts lack are drawn from installed fonts that have them (when
    `config.auto_cjk_fallback`), so the returned atlas may hold more fonts than the one passed in.
    Arabic is shaped before line breaking; lines of right-to-left paragraphs are put in visual
    order after it (see `bidi`). Devanagari, Thai and other scripts that need it are shaped by
    HarfBuzz into glyph clusters (see `shaping`).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__} (decode bytes first)")
    if backend not in ("cpu", "reference"):
        raise ValueError(f"layout backend {backend!r} is unknown; use 'cpu' or 'reference'")
    if max_pages is not None and (isinstance(max_pages, bool) or not isinstance(max_pages, int)
                                  or not 1 <= max_pages <= MAX_PAGES):
        raise ValueError(f"max_pages: {max_pages!r} must be an integer in 1..{MAX_PAGES} (or None: no limit)")
    atlas = atlas or atlas_for(config)
    nl = NewlineMarkup.parse(config.newline_markup)
    cps = text_codepoints(text)
    marker = text_codepoints(nl.text).astype(np.int32) if not nl.is_break else np.zeros(0, np.int32)
    rtl = not text.isascii() and bidi.has_rtl(cps) and bidi.available()
    draw = bidi.shape(text, cps) if rtl else cps
    extra = np.union1d(marker, bidi.mirror_codepoints(cps)) if rtl else marker
    if draw is not cps:
        extra = np.union1d(extra, cps)
    a = _fill_atlas(atlas, draw, extra, backend)
    if config.auto_cjk_fallback:
        wider = _with_system_fallbacks(atlas, cps)
        if wider is not atlas:
            atlas = wider
            a = _fill_atlas(atlas, draw, extra, backend)
    if draw is not cps:
        draw = bidi.unshape_missing(draw, cps, atlas.lut, MISSING_SLOT)
    lut = atlas.lut
    shaped = shaping.shape(text, draw, atlas)
    if shaped is not None:  # clusters of shaped scripts as slots, through codepoints past the table
        draw, lut = shaped
        with atlas.lock:
            a = atlas.arrays()
            atlas.save()
    params = layout_params(config, atlas, cps, max_pages)
    draw = glyph_whitespace(draw, config, text if draw is cps else None)
    # outside the lock: other threads may add slots, never change the ones this text uses
    if backend == "cpu":
        from .._ext import require_extension

        C = require_extension("the C++ layout engine")
        d = C.layout(draw, lut, a["advance"], a["missing"], SPACE_SLOT, MISSING_SLOT, params, marker, a["width_1000"])
    else:
        from .layout_reference import layout_reference

        d = layout_reference(draw, lut, a["advance"], a["missing"], SPACE_SLOT, MISSING_SLOT, params, marker,
                             a["width_1000"])
    lay = Layout.from_dict(d)
    snap_baselines(lay, config)
    if rtl:
        def slot_of(ch: str):
            slot = int(atlas.lut[ord(ch)])
            return slot if slot > MISSING_SLOT else None

        bidi.reorder_lines(text, cps, lay, a["advance"], slot_of)
    return lay, atlas

# ----------------------------------------------------------------- baselines as poppler draws them
def part_origin_y(b_y: np.ndarray, b_h: np.ndarray, config: RenderConfig) -> np.ndarray:
    """float64 [parts]: the device y of each paragraph part's origin, its bottom-left corner, as poppler computes
    it: the page CTM [k 0 0 -k 0 k*H] (k = dpi / 72, H the MediaBox top) times reportlab's `1 0 0 1 x y cm`, y as
    printed (GfxState::concatCTM)."""
    k, page_h = config.dpi / 72.0, float(config.page_size[1])
    top, h = np.asarray(b_y, np.float64), np.asarray(b_h, np.float64)
    return k * pdf_number(page_h) - pdf_numbers(page_h - (top + h)) * k


def poppler_baseline_rows(lay: Layout, config: RenderConfig) -> np.ndarray:
    """int64 [lines]: the pixel row at whose top edge poppler puts each line's baseline.

    reportlab draws each paragraph part (a box) translated to its bottom-left corner (`1 0 0 1 x y cm`),
    its first baseline one font size below the part's top (`1 0 0 1 0 h-size Tm`) and each later line
    one leading down (`T*`); poppler (pdftoppm: GfxState's CTM [k 0 0 -k 0 k*H], k = dpi / 72, H the
    MediaBox top) turns the baseline into a device y in double (GfxState::concatCTM, Gfx::opTextNextLine,
    GfxState::textTransform, Splash::transform) and Splash::fillChar draws the glyph bitmap with its origin
    at row floor(y): SplashFTFont renders glyphs with no vertical sub-pixel offset (only x gets
    splashFontFraction phases). The same numbers, in the same order of operations, give the same rows,
    also where the exact baseline falls on a row edge and rounding error decides."""
    n = len(lay.l_page)
    if not n:
        return np.zeros(0, np.int64)
    k = config.dpi / 72.0
    lead, size = float(config.line_height), float(config.font_size)
    leading = pdf_number(lead)
    b_h = lay.b_h.astype(np.float64)
    counts = np.rint(b_h / lead).astype(np.int64)
    if int(counts.sum()) != n:  # every line is in one box, boxes in line order (the engines' output)
        raise RuntimeError(f"layout: {int(counts.sum())} lines in paragraph boxes, {n} lines")
    line_y = [0.0]  # the text line matrix's y after each T*: 0 - leading - leading ...
    for _ in range(int(counts.max(initial=1)) - 1):
        line_y.append(line_y[-1] - leading)
    # per box, then per line, in numpy: the same IEEE double operations as poppler's
    m5 = part_origin_y(lay.b_y, lay.b_h, config)
    ty = pdf_numbers(b_h - size)
    box = np.repeat(np.arange(len(counts)), counts)
    j = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.floor(m5[box] - (np.asarray(line_y)[j] + ty[box]) * k).astype(np.int64)


def snap_baselines(lay: Layout, config: RenderConfig) -> None:
    """Moves every line's baseline (`l_y`, and its glyphs') onto poppler's pixel row (`poppler_baseline_rows`)."""
    n = len(lay.l_page)
    if not n:
        return
    y = (poppler_baseline_rows(lay, config) / (config.dpi / 72.0)).astype(np.float32)
    lay.r_y = y[lay.run_lines()]
    lay.l_y = y
