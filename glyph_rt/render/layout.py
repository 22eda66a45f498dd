"""Layout front-end: text + RenderConfig -> glyph placements, lines and pages.

The C++ engine (glyph_rt._C.layout) does the work; `layout_reference.py` is the plain-Python
oracle used by the tests. Both return the same `Layout`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .atlas import MISSING_SLOT, SPACE_SLOT, FontAtlas
from .config import NewlineMarkup, RenderConfig
from .fonts import resolve_fonts

ALIGN_CODES = {"left": 0, "center": 1, "right": 2, "justify": 3}
MAX_PAGES = (1 << 31) - 1  # the engine counts pages in int32


@dataclass
class Layout:
    """Glyph placements (points, y down, baseline), lines and pages of one document."""

    num_pages: int
    g_page: np.ndarray  # int32 [G]
    g_x: np.ndarray  # float32 [G] pen x
    g_y: np.ndarray  # float32 [G] baseline y
    g_slot: np.ndarray  # int32 [G] atlas slot
    g_src: np.ndarray  # int32 [G] index of the character in the text
    g_color: np.ndarray  # uint8 [G] 0 font color, 1 newline-marker color
    l_page: np.ndarray
    l_x: np.ndarray
    l_y: np.ndarray
    l_width: np.ndarray
    l_src_start: np.ndarray
    l_src_end: np.ndarray
    b_page: np.ndarray  # paragraph boxes (backgrounds and borders), points
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
        d = dict(d)
        return cls(num_pages=int(d.pop("pages")), **d)


def has_glyph_cjk(cps: np.ndarray) -> bool:
    """Glyph's switch to reportlab's per-character (CJK) wrapping: any U+4E00..U+9FFF in the text."""
    return bool(np.count_nonzero((cps - np.uint32(0x4E00)) < np.uint32(0x5200)))


def layout_params(config: RenderConfig, atlas: FontAtlas, cps: np.ndarray, max_pages: int | None = None) -> dict:
    c = config
    wrap = c.wrap
    if wrap == "auto":
        wrap = "cjk" if has_glyph_cjk(cps) else "word"
    nl = NewlineMarkup.parse(c.newline_markup)
    return {
        "frame_x": c.margin_x + c.frame_padding,
        "frame_y": c.margin_y + c.frame_padding,
        "frame_w": c.page_size[0] - 2 * (c.margin_x + c.frame_padding),
        "frame_h": c.page_size[1] - 2 * (c.margin_y + c.frame_padding),
        "left_indent": c.left_indent + c.hanging_indent,
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
        "tab_size": c.tab_size,
        "max_pages": max_pages if max_pages is not None else (1 << 30),
    }


def text_codepoints(text: str) -> np.ndarray:
    """UTF-32 codepoints of a str (lone surrogates kept as themselves)."""
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)


def atlas_for(config: RenderConfig) -> FontAtlas:
    return FontAtlas.get(resolve_fonts(config), config.font_size, config.dpi, config.horizontal_scale,
                         config.subpixel_phases)


def layout_text(text: str, config: RenderConfig, atlas: FontAtlas | None = None, backend: str = "cpu",
                max_pages: int | None = None) -> tuple[Layout, FontAtlas]:
    """Lays out `text`; returns the layout and the atlas its slots refer to."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__} (decode bytes first)")
    if max_pages is not None and (isinstance(max_pages, bool) or not isinstance(max_pages, int)
                                  or not 1 <= max_pages <= MAX_PAGES):
        raise ValueError(f"max_pages: {max_pages!r} must be an integer in 1..{MAX_PAGES} (or None: no limit)")
    atlas = atlas or atlas_for(config)
    nl = NewlineMarkup.parse(config.newline_markup)
    cps = text_codepoints(text)
    marker = text_codepoints(nl.text).astype(np.int32) if not nl.is_break else np.zeros(0, np.int32)
    params = layout_params(config, atlas, cps, max_pages)
    if backend == "cpu":
        from .._ext import require_extension

        C = require_extension("the C++ layout engine")
        with atlas.lock:
            new = C.unknown_codepoints(cps, atlas.lut)
            if len(marker):
                new = np.union1d(new, marker)
            atlas.ensure(new)
            a = atlas.arrays()
            atlas.save()
        # outside the lock: other threads may add slots, never change the ones this text uses
        d = C.layout(cps, atlas.lut, a["advance"], a["missing"], SPACE_SLOT, MISSING_SLOT, params, marker)
    elif backend == "reference":
        from .layout_reference import layout_reference

        with atlas.lock:
            atlas.ensure(np.union1d(np.unique(cps), marker))
            a = atlas.arrays()
            atlas.save()
        d = layout_reference(cps, atlas.lut, a["advance"], a["missing"], SPACE_SLOT, MISSING_SLOT, params, marker)
    else:
        raise ValueError(f"layout backend {backend!r} is unknown; use 'cpu' or 'reference'")
    return Layout.from_dict(d), atlas
