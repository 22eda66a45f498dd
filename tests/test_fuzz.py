"""Property-based fuzzing of RenderConfig x text with hypothesis.

For every config that validate() accepts: layout terminates within a page bound, every glyph
lands on a page that exists and inside it, every page is drawn at its stated size, and each
character of the input is placed, stripped or whitespace, exactly once. Every config it
rejects is answered with a ConfigError that names a field.

The default run is bounded for CI (fixed seed). The long mode is for a nightly run:
    GLYPH_RT_FUZZ_EXAMPLES=10000 python -m pytest tests/test_fuzz.py
and tools/sanitize.sh runs this file against an ASan/UBSan build of the extension.
"""
import dataclasses
import math
import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import glyph_rt
from glyph_rt import RenderConfig
from glyph_rt.render.config import ConfigError

EXAMPLES = int(os.environ.get("GLYPH_RT_FUZZ_EXAMPLES", "0") or 0)
LONG = EXAMPLES > 0
FUZZ = settings(
    max_examples=EXAMPLES or 40,
    deadline=None,
    database=None,
    derandomize=not LONG,  # CI: the same examples every run; long mode: new ones each night
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
FIELDS = [f.name for f in dataclasses.fields(RenderConfig)]
STRIPPED = "\xad\u200b"
RASTER_PIXELS = 4_000_000  # draw the pages when a canvas is at most this many pixels (keeps CI fast)

# characters that stress the layout: breaking and non-breaking spaces, tabs, CR/LF, removed
# characters, CJK (per-character wrapping), combining marks, RTL, emoji, private use, a lone surrogate
ATTACK = list("ab Z.-\n\n\t\r\xa0\u3000\u2003\u2028\x0b\x0c\x1c\x85") + [
    "\xad", "\u200b", "\u4e2d", "\u3042", "\ud55c", "\u0628", "\u05d0", "\u0301", "\U0001F600", "\ue000",
    "\ufffd", "\ud800", "W" * 40, "\u4e00" * 30, "word " * 20, "\n" * 5, "\t" * 9,
]
texts = st.lists(st.one_of(st.sampled_from(ATTACK), st.characters(max_codepoint=0x2FFFF)), max_size=120).map("".join)


def sized(lo, hi, edges=()):
    return st.one_of(st.sampled_from(list(edges) or [lo, hi]), st.floats(lo, hi, allow_nan=False))


@st.composite
def configs(draw):
    """Mostly values in the paper's ranges and their edges, with some far outside them."""
    font = draw(sized(1, 200, (1, 5, 9, 72)))
    kw = dict(
        page_size=draw(st.one_of(
            st.sampled_from(["A4", "A5", "letter", "595,842", "595,45", (100, 1), (5, 20), "aspect:0.05", "aspect:20"]),
            st.tuples(sized(0.5, 3000, (1, 20, 45, 595)), sized(0.5, 3000, (1, 20, 45, 842))),
        )),
        dpi=draw(sized(30, 600, (30, 45, 72, 96, 300, 600))),
        margin_x=draw(sized(0, 120, (0, 10, 40))),
        margin_y=draw(sized(0, 120, (0, 10, 40))),
        font_family=draw(st.sampled_from(["sans", "serif", "mono"])),
        font_size=font,
        line_height=font + draw(sized(0, 20, (0, 0.01, 1, 3))),
        horizontal_scale=draw(sized(0.1, 4.0, (0.1, 0.75, 1.0))),
        alignment=draw(st.sampled_from(["left", "justify", "right", "center"])),
        first_line_indent=draw(sized(-50, 200, (0, 9, 30))),
        left_indent=draw(sized(0, 200, (0, 20))),
        right_indent=draw(sized(0, 200, (0, 20))),
        hanging_indent=draw(sized(0, 100, (0, 18))),
        space_before=draw(sized(0, 2000, (0, 6, 1000))),
        space_after=draw(sized(0, 2000, (0, 6, 1000))),
        lines_per_paragraph=draw(st.integers(1, 60)),
        newline_markup=draw(st.sampled_from(["<br/>", '<font color="#FF0000"> \\n </font>', "\u21b5", "<b>|</b>"])),
        wrap=draw(st.sampled_from(["auto", "word", "cjk"])),
        tab_size=draw(st.integers(1, 16)),
        font_color=draw(st.sampled_from(["#000000", "#123", "white"])),
        page_bg_color=draw(st.sampled_from(["#FFFFFF", "#1E1E1E"])),
        para_bg_color=draw(st.sampled_from(["#FFFFFF", "#F0E68C"])),
        para_border_color=draw(st.sampled_from(["#FFFFFF", "#000080"])),
        border_width=draw(sized(0, 20, (0, 1))),
        border_padding=draw(sized(0, 40, (0, 4))),
        auto_crop_width=draw(st.booleans()),
        auto_crop_last_page=draw(st.booleans()),
        snap=draw(st.sampled_from([0, 1, 14, 28, 56])),
        frame_padding=draw(sized(0, 20, (0, 6))),
        subpixel_phases=draw(st.sampled_from([1, 2, 4, 8])),
    )
    if draw(st.integers(0, 9)) == 0:  # now and then one field far out of range
        name = draw(st.sampled_from(["dpi", "font_size", "margin_x", "first_line_indent", "space_before",
                                     "border_width", "horizontal_scale"]))
        kw[name] = draw(st.sampled_from([0, -1, 1e300, -1e6, math.inf, math.nan, 1e-9]))
    return kw


def make(kw):
    """The validated config, or None after checking the rejection names a field."""
    try:
        return RenderConfig(**kw).validate()
    except ConfigError as e:
        msg = str(e)
        assert any(name in msg for name in FIELDS) or "indent" in msg, f"rejection names no field: {msg!r}"
        return None


def ink_indices(text):
    return [i for i, c in enumerate(text) if not c.isspace() and c not in STRIPPED]


def check_document(text, cfg):
    # a page holds at least one line and a line at least one unit: pages <= lines <= chars + breaks + 1
    bound = len(text) + text.count("\n") + 2
    doc = glyph_rt.Document(text, cfg, max_pages=bound + 1)
    lay = doc.layout
    assert not lay.truncated and doc.num_pages <= bound, f"{doc.num_pages} pages for {len(text)} characters"

    src = lay.g_src[lay.g_color == 0]  # glyphs of the newline marker have color 1 and no source character
    ink = ink_indices(text)
    assert sorted(src.tolist()) == ink, "a character was dropped, duplicated or invented"
    assert lay.placed == len(ink) and lay.stripped == sum(text.count(c) for c in STRIPPED)
    assert lay.placed + lay.stripped + sum(c.isspace() for c in text) == len(text)

    if lay.g_page.size:
        assert 0 <= lay.g_page.min() and lay.g_page.max() < doc.num_pages
        w, h = cfg.page_size
        assert lay.g_x.min() >= -1e-3 and lay.g_x.max() <= w + 1e-3, "a glyph starts off the page"
        assert lay.g_y.min() > 0 and lay.g_y.max() <= h + 1e-3, "a baseline lies off the page"
    spans = doc.page_spans() if callable(getattr(doc, "page_spans", None)) else None
    if spans:
        starts = [s for s, _ in spans if s >= 0]
        assert starts == sorted(starts), "page spans out of source order"

    W, H = cfg.page_pixels
    if W * H <= RASTER_PIXELS and doc.num_pages <= 16:
        seen = 0
        for first, buf, sizes in doc.iter_chunks(4):
            assert first == seen and buf.dtype == np.uint8
            for i, (pw, ph) in enumerate(sizes):
                assert 0 < pw <= max(W, 1) + cfg.snap and 0 < ph <= H + cfg.snap
                assert buf[i].shape[-1] == 3
            seen += len(sizes)
        assert seen == doc.num_pages


@FUZZ
@given(kw=configs(), text=texts)
def test_every_accepted_config_terminates_in_bounds_and_accounts_for_every_character(kw, text):
    cfg = make(kw)
    if cfg is not None:
        check_document(text, cfg)


GARBAGE = [None, "", "abc", "false", "1e400", -1, 0, 2**31, 2**63, 1e300, -1e300, math.nan, math.inf,
           [], {}, [1, 2, 3], (1,), b"\xff", True]


@FUZZ
@given(name=st.sampled_from(FIELDS), value=st.sampled_from(GARBAGE))
def test_a_bad_value_in_any_field_is_a_config_error_that_names_it(name, value):
    try:
        cfg = RenderConfig(**{name: value}).validate()
    except ConfigError as e:
        msg = str(e)
        assert name in msg or name.rsplit("_", 1)[-1] in msg or (name == "line_height" and "font_size" in msg), msg
        return
    # accepted: it must then render like any other accepted config
    check_document("Hello world.\nA second line.\n", cfg)
