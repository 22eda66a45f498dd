"""The C++ layout engine against its plain-Python reference (glyph_rt/render/layout_reference.py)."""
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest

import glyph_rt
from glyph_rt import RenderConfig
from glyph_rt.render.atlas import SPACE_SLOT
from glyph_rt.render.layout import layout_params, layout_text, text_codepoints

SAMPLE = (Path(glyph_rt.__file__).parent / "data" / "sample.txt").read_text(encoding="utf-8")[:20000]
INT_ARRAYS = ("g_page", "g_slot", "g_src", "g_color", "l_page", "l_src_start", "l_src_end", "b_page",
              "p_src_start", "p_src_end", "p_line_start")
FLOAT_ARRAYS = ("g_x", "g_y", "l_x", "l_y", "l_width", "b_x", "b_y", "b_w", "b_h")
SCALARS = ("num_pages", "missing", "stripped", "placed", "marker_glyphs", "truncated")
STRIPPED = "\u00ad\u200b"
MARKER = '<font color="#FF0000"> \\n </font>'


def cfg(**kw) -> RenderConfig:
    return RenderConfig(snap=0, **kw)


def assert_same(a, b, skip=()):
    for k in INT_ARRAYS + FLOAT_ARRAYS:
        x, y = getattr(a, k), getattr(b, k)
        assert x.dtype == y.dtype and x.shape == y.shape, (k, x.dtype, y.dtype, x.shape, y.shape)
        if k in INT_ARRAYS:
            assert np.array_equal(x, y), (k, np.nonzero(x != y)[0][:10])
        else:
            assert np.allclose(x, y, rtol=0, atol=1e-4), (k, np.nonzero(~np.isclose(x, y, rtol=0, atol=1e-4))[0][:10])
    for k in SCALARS:
        if k not in skip:
            assert getattr(a, k) == getattr(b, k), (k, getattr(a, k), getattr(b, k))


def check_semantics(text, config, lay, atlas, max_pages=None):
    p = layout_params(config, atlas, text_codepoints(text), max_pages)
    space_w = float(atlas.arrays()["advance"][SPACE_SLOT])
    later_w = p["frame_w"] - p["left_indent"] - p["right_indent"]
    max_w = max(later_w, later_w - p["first_line_indent"])
    line_of = {(page, y): i for i, (page, y) in enumerate(zip(lay.l_page.tolist(), lay.l_y.tolist()))}
    assert len(line_of) == len(lay.l_page)
    glyphs_per_line = np.bincount([line_of[k] for k in zip(lay.g_page.tolist(), lay.g_y.tolist())],
                                  minlength=len(lay.l_page))
    # reportlab's CJK wrap hangs a character that cannot start a line into the margin; its justified lines stretch
    # every space by the share of the kept ones (and may pass the frame)
    cjk = p["wrap"] == 1
    hang = float(atlas.arrays()["advance"].max()) if cjk else 0.0
    for i, (s, e, w) in enumerate(zip(lay.l_src_start.tolist(), lay.l_src_end.tolist(), lay.l_width.tolist())):
        spaces = sum(c.isspace() for c in text[s:e]) + text.count("\n", s, e) + text.count("\r", s, e)
        assert (w <= max_w + 0.05 * space_w * spaces + hang + 1e-3 or glyphs_per_line[i] == 1
                or (cjk and config.alignment == "justify")), (i, w, max_w, text[s:e])
    for page in range(lay.num_pages):
        assert np.all(np.diff(lay.l_y[lay.l_page == page]) > 0)
    assert np.all(np.diff(lay.p_line_start) >= 0)
    assert np.all(np.diff(lay.l_src_start) >= 0) and np.all(np.diff(lay.l_src_end) >= 0)
    spans = [(s, e) for s, e in zip(lay.p_src_start.tolist(), lay.p_src_end.tolist()) if s >= 0]
    assert all(s <= e for s, e in spans)
    # a tab, or a newline marker, broken across two pages belongs to both
    assert all(e0 <= s1 or (e0 == s1 + 1 and text[s1] in "\t\r\n") for (_, e0), (s1, _) in zip(spans, spans[1:]))
    assert lay.placed == np.count_nonzero(lay.g_color == 0)
    assert lay.marker_glyphs == np.count_nonzero(lay.g_color == 1)
    if not lay.truncated:
        assert lay.stripped == sum(text.count(c) for c in STRIPPED)
        drawn = [i for i, c in enumerate(text) if not c.isspace() and c not in STRIPPED]
        assert np.array_equal(lay.g_src[lay.g_color == 0], drawn)


def run_both(text, config, max_pages=None, semantics=True):
    """Lays `text` out with both engines, checks they agree and, optionally, the layout's invariants."""
    a, atlas = layout_text(text, config, backend="cpu", max_pages=max_pages)
    b, _ = layout_text(text, config, backend="reference", max_pages=max_pages)
    assert_same(a, b, skip=("missing",) if a.truncated else ())  # see test_missing_counts_drawn_boxes...
    if semantics:
        check_semantics(text, config, a, atlas, max_pages)
    return a


@pytest.mark.parametrize("alignment", ["left", "center", "right", "justify"])
def test_sample_text_alignments(alignment):
    lay = run_both(SAMPLE, cfg(alignment=alignment))
    assert lay.num_pages >= 2 and lay.placed > 15000
    frame_w = 595 - 2 * 16
    assert lay.l_width.max() <= frame_w + 1e-3  # lines over-long by the shrinkage are squeezed back
    if alignment == "justify":
        assert np.mean(np.isclose(lay.l_width, frame_w, atol=1e-3)) > 0.5


@pytest.mark.parametrize("kw", [
    dict(first_line_indent=30),
    dict(first_line_indent=-12, left_indent=20),
    dict(left_indent=40, right_indent=90),
    dict(hanging_indent=36),
    dict(hanging_indent=20, first_line_indent=10, right_indent=15),
], ids=["first", "negative-first", "left-right", "hanging", "mixed"])
@pytest.mark.parametrize("alignment", ["left", "justify", "right"])
def test_indents(kw, alignment):
    run_both(SAMPLE[:8000], cfg(alignment=alignment, lines_per_paragraph=5, **kw))


@pytest.mark.parametrize("kw", [
    dict(space_before=6.5, space_after=0, lines_per_paragraph=4),
    dict(space_before=0, space_after=7.5, lines_per_paragraph=2),
    dict(space_before=4, space_after=9, lines_per_paragraph=7, line_height=11.3),
    dict(space_before=25, space_after=3, lines_per_paragraph=1, page_size=(300, 200)),
])
@pytest.mark.parametrize("alignment", ["left", "justify"])
def test_paragraph_spacing_and_page_splits(kw, alignment):
    text = "\n".join(SAMPLE[i:i + 700] for i in range(0, 14000, 700))
    lay = run_both(text, cfg(alignment=alignment, **kw))
    paragraphs = math.ceil((text.count("\n") + 1) / kw["lines_per_paragraph"])
    assert lay.num_pages >= 2 and len(lay.b_page) > paragraphs  # some paragraphs are split across pages


@pytest.mark.parametrize("first", [78, 79, 80, 81])
def test_orphan_control(first):
    text = "x\n" * first + "y\n" * 4 + "z"  # a frame holds 81 lines
    lay = run_both(text, cfg(lines_per_paragraph=first))
    on_first_page = {78: 3, 79: 2, 80: 0, 81: 0}[first]  # one line alone is never left at the bottom
    assert lay.b_page.tolist() == [0] + [0] * (on_first_page > 0) + [1]
    assert np.count_nonzero(lay.l_page == 0) == first + on_first_page


def test_split_after_a_forced_break_continues_with_an_empty_line():
    lay = run_both("x\n" * 84 + "x", cfg(lines_per_paragraph=100))  # 85 lines, 81 per frame
    assert lay.l_page.tolist() == [0] * 81 + [1] * 5
    assert lay.l_src_start[81] == lay.l_src_end[81] == lay.l_src_end[80]


def test_max_pages_truncates():
    lay = run_both(SAMPLE, cfg(lines_per_paragraph=4, space_after=5), max_pages=2)
    assert lay.truncated and lay.num_pages == 2


@pytest.mark.parametrize("alignment", ["left", "center", "justify"])
@pytest.mark.parametrize("fli", [0, 40, -20])
def test_long_word_is_split(alignment, fli):
    text = f"A sentence with {'x' * 500} in it, then {'y' * 130}z and {'w' * 1500}.\nNext line {'v' * 90}"
    lay = run_both(text, cfg(alignment=alignment, first_line_indent=fli, left_indent=max(0, -fli)))
    assert len(lay.l_page) >= 6


@pytest.mark.parametrize("wrap", ["word", "cjk"])
@pytest.mark.parametrize("alignment", ["left", "justify"])
def test_runs_of_spaces_and_tabs(wrap, alignment):
    text = "".join(f"w{i}{[' ', '  ', '   ', chr(9), ' ' + chr(9), chr(160), chr(0x2003)][i % 7]}" for i in range(3000))
    text += "\n  indented\n\tTabbed\n" + " " * 300 + "x\n" + "a " * 400
    run_both(text, cfg(alignment=alignment, wrap=wrap, tab_size=3))


@pytest.mark.parametrize("lpp", [1, 3, 30])
def test_empty_lines_and_carriage_returns(lpp):
    text = "a\n\n\nb\r\n\r\nc\rd\r\r\ne\n" * 40 + "\n\nend\n"
    lay = run_both(text, cfg(lines_per_paragraph=lpp, space_before=2, space_after=1))
    source_lines = re.split(r"\r\n|\r|\n", text)
    if lpp == 1:  # an empty paragraph has no line
        assert len(lay.l_page) == sum(map(bool, source_lines))
    else:  # an empty source line inside a paragraph is an empty line
        assert np.any(lay.l_src_start == lay.l_src_end)
    run_both("", cfg())
    run_both("\n", cfg(lines_per_paragraph=lpp))
    run_both("\r\n\r\n", cfg(lines_per_paragraph=lpp))


@pytest.mark.parametrize("alignment", ["left", "justify"])
def test_newline_marker(alignment):
    text = SAMPLE[:6000] + "\n\nshort\nlines\r\nhere\n"
    lay = run_both(text, cfg(newline_markup=MARKER, alignment=alignment))
    source_lines = text.count("\n") + 1
    paragraphs = math.ceil(source_lines / 30)
    assert np.count_nonzero(lay.g_color == 1) == 2 * (source_lines - paragraphs)  # "\\" and "n" per newline
    assert np.all(np.isin(lay.g_src[lay.g_color == 1], [i for i, c in enumerate(text) if c == "\n"]))


@pytest.mark.parametrize("wrap", ["auto", "word", "cjk"])
def test_cjk(wrap):
    mixed = "mixed 中文 text, 中文测试English words 한국어 テスト。"
    text = ("中文测试" * 200 + "\n" + mixed * 40 + "\n") * 3
    run_both(text, cfg(wrap=wrap, alignment="justify"))
    run_both(text, cfg(wrap=wrap, first_line_indent=18, lines_per_paragraph=2))


def test_soft_hyphens_and_zero_width_spaces():
    text = "hyphen\u00adation zero\u200bwidth \u200b \u00ad, long\u00ad" + "q\u00ad" * 300 + " end\n" * 3
    lay = run_both(text, cfg(alignment="justify"))
    assert lay.stripped == text.count("\u00ad") + text.count("\u200b")


def _random_case(rng: random.Random):
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;!?é"
    seps = [" "] * 20 + ["  ", "   ", "\t", " \t", "\n", "\n", "\r\n", "\r", "\n\n", "\xa0", "\u3000", "\u2009"]
    parts = []
    for _ in range(rng.randint(0, 300)):
        r = rng.random()
        if r < 0.03:
            parts.append("x" * rng.randint(20, 120))
        elif r < 0.08:
            parts.append("".join(rng.choice("中文测试字") for _ in range(rng.randint(1, 8))))
        elif r < 0.1:
            parts.append(rng.choice(STRIPPED))
        else:
            parts.append("".join(rng.choice(letters) for _ in range(rng.randint(1, 12))))
        parts.append(rng.choice(seps))
    text = "".join(parts)
    kw = dict(
        page_size=rng.choice([(595, 842), (200, 150), (300, 120), (160, 400)]),
        alignment=rng.choice(["left", "center", "right", "justify"]),
        wrap=rng.choice(["auto", "word", "cjk"]),
        lines_per_paragraph=rng.choice([1, 2, 3, 5, 30]),
        line_height=rng.choice([10, 11.3, 14]),
        space_before=rng.choice([0, 0, 3, 12.5]),
        space_after=rng.choice([0, 0, 2, 7.25]),
        first_line_indent=rng.choice([0, 0, 15, -8]),
        left_indent=rng.choice([0, 0, 10]),
        right_indent=rng.choice([0, 5]),
        hanging_indent=rng.choice([0, 0, 12]),
        tab_size=rng.choice([1, 4]),
    )
    if kw["first_line_indent"] < 0 and kw["left_indent"] == 0:
        kw["left_indent"] = 10
    if rng.random() < 0.2:
        kw["newline_markup"] = MARKER
    max_pages = rng.choice([None] * 8 + [1, 2])
    return text, cfg(**kw), max_pages


def test_random_mix():
    rng = random.Random(0)
    for case in range(300):
        text, config, max_pages = _random_case(rng)
        try:
            run_both(text, config, max_pages)
        except AssertionError as e:
            raise AssertionError(f"case {case}: {text!r:.300} {config}") from e


# ---------------------------------------------------------------------- regressions
def test_src_of_tab_runs_split_across_lines():
    run_both("a" + "\t" * 200 + "b", cfg())


def test_missing_counts_drawn_boxes_when_truncated():
    text, config = "\x01 " * 20000, cfg(lines_per_paragraph=1000)
    a, _ = layout_text(text, config, backend="cpu", max_pages=1)
    b, _ = layout_text(text, config, backend="reference", max_pages=1)
    assert b.missing == np.count_nonzero(b.g_slot == 0) == a.placed
    assert a.missing == b.missing


def test_last_line_not_justified_in_a_frame_lower_than_a_line():
    run_both("aaa bbb", cfg(page_size=(200, 40), alignment="justify"))


def test_frame_of_one_line_after_a_line_break_makes_progress():
    # a frame that holds one line used to get an empty continuation line on every page, forever
    config = cfg(page_size=(595, 45))
    lay = run_both("a\nb\n", config, max_pages=50)
    assert not lay.truncated and lay.placed == 2 and lay.num_pages == 2
    lay = run_both("x\n" * 30 + "y", config, max_pages=200)
    assert not lay.truncated and lay.placed == 31


def test_tabs_are_one_item_each():
    # 64 kept tabs of 16 spaces: widths and justification as 1024 spaces, one item per tab
    text = "a" + "\t" * 64 + "b " * 50
    lay = run_both(text, cfg(tab_size=16, alignment="justify"))
    assert lay.placed == 51


def test_newline_marker_glyphs_are_not_source_characters():
    text = "one\ntwo\nthree"
    lay = run_both(text, cfg(newline_markup=MARKER))
    assert lay.placed == 11 and lay.marker_glyphs == 4 and lay.missing == 0


def test_tabs_do_not_expand_into_items(tmp_path):
    # 2M tabs at tab_size 16 used to become 32M items (~0.5 GB); now one item each
    code = (
        "import resource, glyph_rt\n"
        "c = glyph_rt.RenderConfig(tab_size=16, auto_cjk_fallback=False)\n"
        "glyph_rt.Document('x', c)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "d = glyph_rt.Document('a' + '\\t' * 2_000_000 + 'b', c)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) < 200, f"layout of 2M tabs grew the process by {out.stdout.strip()} MiB"


def test_atlases_in_memory_are_bounded(tmp_path, monkeypatch):
    """A new font size per sample (training's style sampler) does not grow the process: the most recent atlases
    stay in memory, and a document keeps its own."""
    from glyph_rt.render.atlas import FontAtlas

    monkeypatch.setenv("GLYPH_RT_CACHE", str(tmp_path))
    monkeypatch.setattr(FontAtlas, "MEMORY_ATLASES", 2)
    docs = [glyph_rt.Document("bounded", RenderConfig(font_size=10 + i / 4, line_height=30)) for i in range(5)]
    assert len(FontAtlas._memory) <= 2
    again = glyph_rt.Document("bounded", RenderConfig(font_size=10, line_height=30))  # rebuilt from the disk cache
    assert np.array_equal(again.rasterize(0, 1)[0], docs[0].rasterize(0, 1)[0])


def test_pdf_numbers_are_read_back_as_poppler_reads_reportlabs_text():
    from glyph_rt.render.layout import pdf_number

    assert pdf_number(29.7) == 29 + 0.1 * 7 and pdf_number(768.5) == 768.5 and pdf_number(-10.1) == -(10 + 0.1)
    assert pdf_number(842 - (14.4 + 797.9)) == 29 + 0.1 * 7  # reportlab prints 29.7: at most 6 significant digits
    scale = [0.1]
    for _ in range(5):
        scale.append(scale[-1] * 0.1)
    assert pdf_number(0.123456789) == sum(d * s for d, s in zip((1, 2, 3, 4, 5, 7), scale))  # 6 decimals under 1
    assert pdf_number(1234.56789) == ((1234 + 0.1 * 5) + 0.1 * 0.1 * 6) + 0.1 * 0.1 * 0.1 * 8  # 1234.568
    assert pdf_number(1e-8) == 0.0 and pdf_number(2500.0) == 2500.0


def test_baselines_are_on_popplers_pixel_rows():
    """Lines sit where poppler draws them: floor of the device y it computes in double from reportlab's PDF numbers
    (checked against pdftoppm: tests/test_fidelity.py), not on the nearest row."""
    from glyph_rt.render.fonts import BUILTIN_FONTS
    from glyph_rt.render.layout import poppler_baseline_rows

    base = {"font-path": str(BUILTIN_FONTS["sans"]), "alignment": "LEFT", "font-size": 9, "line-height": 10}
    # 72 dpi, margin_y 7.5: the first baseline is 7.5 + 6 + 9 = 22.5 pt down, on row 22 (the nearest would be 23)
    c = RenderConfig.from_glyph_dict({**base, "dpi": 72, "margin-y": 7.5})
    lay, _ = layout_text(SAMPLE[:3000], c)
    assert float(lay.l_y[0]) == 22.0 and np.array_equal(lay.l_y[:3], [22, 32, 42])
    # 144 dpi, margin_y 8.4, leading 10.1: lines 1, 21 and 26 are exactly on rows 68, 472 and 573, but in poppler's
    # arithmetic (29.7 cm, 788.4 Tm, T* by 10.1) the last two come out just below: rows 471 and 572
    c = RenderConfig.from_glyph_dict({**base, "dpi": 144, "margin-y": 8.4, "line-height": 10.1, "font-size": 9.5})
    lay, _ = layout_text(SAMPLE[:6000], c)
    assert round(float(lay.b_h[0]) / 10.1) > 26
    rows = poppler_baseline_rows(lay, c)
    assert rows[[1, 21, 26]].tolist() == [68, 471, 572]
    assert np.array_equal(lay.l_y, (rows / 2.0).astype(np.float32))
    line_y = set(zip(lay.l_page.tolist(), lay.l_y.tolist()))
    assert set(zip(lay.g_page.tolist(), lay.g_y.tolist())) <= line_y and len(line_y) == len(lay.l_y)


def line_texts(text, lay):
    return [text[s:e] for s, e in zip(lay.l_src_start.tolist(), lay.l_src_end.tolist())]


@pytest.mark.parametrize("alignment", ["left", "justify", "center"])
def test_cjk_wrap_backs_latin_runs_off_to_a_space(alignment):
    """reportlab's CJK wrap (Glyph's for any text with an ideograph) ends a line inside a Latin run after the last
    space in the line's second half, and keeps that space on the line; it used to cut the run at any character."""
    text = ("lorem ipsum dolor sit amet " * 12) + "\n中" + ("see https://example.com/a/very/long/path?q=1 " * 6)
    lay = run_both(text, cfg(alignment=alignment, wrap="auto"))
    lines = line_texts(text, lay)
    assert len(lines) > 4 and all(ln.endswith(" ") for ln in lines[:2] + lines[4:-1]), lines


def test_cjk_wrap_collapses_and_strips_spaces_as_reportlabs_cleaner():
    """A run of breaking spaces is one space character, none at the paragraph's ends; kept spaces stay."""
    text = " \t lorem \u2003\t ipsum  dolor\n  sit \n中 "
    lay = run_both(text, cfg(wrap="cjk", tab_size=0))
    assert lay.l_src_start[0] == 3 and lay.l_src_end[-1] == len(text) - 1


@pytest.mark.parametrize("n", range(60, 66))
def test_cjk_wrap_hangs_characters_that_cannot_start_a_line(n):
    """reportlab keeps a character of ALL_CANNOT_START ("。", ")") on the line it would start, in the margin."""
    from glyph_rt.render.layout_reference import CANNOT_START

    text = "中" * n + "。" + "中" * 20 + ")" + "中" * 80
    lay = run_both(text, cfg(wrap="cjk", alignment="justify"))
    assert not [ln for ln in line_texts(text, lay) if ln and ln[0] in CANNOT_START]


def test_cannot_start_is_reportlabs():
    textsplit = pytest.importorskip("reportlab.lib.textsplit")
    from glyph_rt.render.layout_reference import CANNOT_START

    assert CANNOT_START == set(textsplit.ALL_CANNOT_START)


def test_fp_str_is_reportlabs():
    """pdfnum.fp_str prints as reportlab does (the C++ engine's twin is held to it through the layouts)."""
    rl = pytest.importorskip("reportlab.lib.rl_accel")
    rng = np.random.default_rng(0)
    vals = [0.0, 1e-8, 1e-7, 2e-7, 0.5, -0.5, 1.0, 10.0, 100.0, 1000.0, 999.99999, 1e4, 1e6, 602.05078125, -0.10405,
            842 - (14.4 + 797.9), 0.9999999, 1.0000001, 114.73125, -114.73125]
    vals += rng.uniform(-2000, 2000, 3000).tolist() + (rng.uniform(-1, 1, 3000) * 10.0 ** rng.integers(-8, 7, 3000)).tolist()
    from glyph_rt.render.pdfnum import fp_str, pdf_float

    for v in vals:
        assert fp_str(v) == rl.fp_str(v), v
        assert pdf_float(v) == float(rl.fp_str(v)), v


def test_the_engines_pdf_numbers_are_pdfnums():
    """The C++ layout's pdf_number and pdf_float (its own fp_str) equal glyph_rt.render.pdfnum's."""
    from glyph_rt.render.pdfnum import pdf_float, pdf_number

    C = pytest.importorskip("glyph_rt._C")
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.uniform(-2000, 2000, 4000), rng.uniform(-1, 1, 4000) * 10.0 ** rng.integers(-8, 12, 4000),
                        [0.0, 1e-7, 2e-7, -0.5, 0.5, 1.0, 1000.0, 114.73125, -114.73125, 1e300, -1e300]])
    num, flt = C.pdf_numbers(v)
    assert num.tolist() == [pdf_number(x) for x in v.tolist()]
    assert flt.tolist() == [pdf_float(x) for x in v.tolist()]


@pytest.mark.parametrize("alignment", ["left", "center", "right", "justify"])
@pytest.mark.parametrize("dpi,phases", [(72, 4), (96, 4), (110, 2), (144, 8)])
def test_pens_sit_at_the_centre_of_poppler_bins(alignment, dpi, phases):
    """Every left-to-right glyph's pen is the centre of a sub-pixel bin (as poppler draws it), in both engines; the
    horizontal scale, which resizes the drawn page, leaves the layout as it is."""
    c = cfg(alignment=alignment, dpi=dpi, subpixel_phases=phases, first_line_indent=7.3)
    lay = run_both(SAMPLE[:4000], c)
    bins = lay.g_x.astype(np.float64) * (dpi / 72) * phases
    assert np.abs(bins - np.floor(bins) - 0.5).max() < 1e-3
    scaled = run_both(SAMPLE[:4000], cfg(alignment=alignment, dpi=dpi, subpixel_phases=phases, first_line_indent=7.3,
                                         horizontal_scale=0.9))
    assert np.array_equal(scaled.g_x, lay.g_x) and np.array_equal(scaled.l_src_end, lay.l_src_end)


def test_justify_stretches_kept_spaces_too():
    """reportlab writes U+00A0 as code 32, so the PDF's word spacing widens kept spaces as well: a justified
    line's last glyph ends at the frame's right edge (it stopped short by the kept spaces' share). The CJK wrap's
    lines are checked against reportlab in test_fidelity."""
    text = ("lorem  ipsum, dolor. sit   amet " * 8 + "\n") * 3
    c = cfg(alignment="justify")
    lay, atlas = layout_text(text, c)
    run_both(text, c)
    first = lay.g_y == lay.l_y[0]
    right = lay.g_x[first][-1] + atlas.arrays()["advance"][lay.g_slot[first][-1]]
    half_bin = 72 / c.dpi / c.subpixel_phases / 2  # pens are at the centre of poppler's sub-pixel bins
    assert right == pytest.approx(c.margin_x + c.frame_padding + c.text_width, abs=half_bin + 1e-3)


@pytest.mark.parametrize("wrap", ["word", "cjk"])
def test_glyph_whitespace_tabs_and_carriage_returns(wrap):
    """tab_size 0 and cr_newline False (Glyph's configs): a tab or "\\r" is a breaking space like U+000B, on both
    engines; glyph_rt's defaults keep a tab 4 spaces wide and never broken, and end a line at "\\r"."""
    text = ("name\tvalue \t unit\t\tx  \ty\r" * 30 + "lorem\r\nipsum\r") * 3
    as_vt = text.replace("\t", "\x0b").replace("\r\n", "\x0b\n").replace("\r", "\x0b")
    glyph = run_both(text, cfg(wrap=wrap, tab_size=0, cr_newline=False))
    assert_same(glyph, layout_text(as_vt, cfg(wrap=wrap))[0])
    native = run_both(text, cfg(wrap=wrap))
    assert len(native.l_page) > len(glyph.l_page) + 60


def test_a_frame_a_hair_under_two_lines_still_advances():
    """A text height that floating point puts a hair under two lines (19.8 / 9.9 = 1.9999999999999996) holds one
    line: counted so everywhere, the empty line that starts a continuation after a break is not added (it would
    fill every page and the text would never advance). reportlab gives up on such a frame (LayoutError)."""
    c = cfg(page_size=(595, 51.8), margin_y=10, font_size=9, line_height=9.9)
    assert c.text_height / c.line_height < 2
    lay = run_both("a\nb\nc", c, max_pages=50)
    assert not lay.truncated and lay.num_pages == 2 and lay.placed == 3


def test_paragraphs_of_many_pages_continue_after_breaks():
    """A paragraph split after a line break on every page (each continuation starts with an empty line), over
    many pages: both engines agree, and the engine keeps the continuation line out of its line list."""
    c = cfg(page_size=(595, 64), lines_per_paragraph=2000)
    lay = run_both("a\n" * 600, c)
    assert lay.placed == 600 and lay.num_pages > 250


def _cjk_prose(n_lines: int, seed: int = 3) -> str:
    """Source lines of CJK prose (punctuation, digits, Latin words with spaces) of 0 to ~400 characters."""
    rng = random.Random(seed)
    han = "天下大势分久必合学而时习之不亦说乎有朋自远方来研究团队发布框架长文本渲染成图像"
    latin = ["Glyph", "LongBench", "Qwen3-8B", "the quick brown fox", "VLM", "3.14159", "1,200"]
    lines = []
    for _ in range(n_lines):
        parts = []
        for _ in range(rng.choice([0, 3, 12, 40])):
            r = rng.random()
            parts.append(rng.choice(latin) if r < 0.1 else rng.choice("，。、；：？！「」“”（）《》—…") if r < 0.3
                         else "".join(rng.choice(han) for _ in range(rng.randint(1, 9))))
        lines.append("".join(parts))
    return "\n".join(lines)


@pytest.mark.parametrize("alignment", ["left", "justify", "right", "center"])
def test_cjk_wrap_continuations_are_wrapped_again(alignment):
    """reportlab splits a paragraph across pages in CJK wrap with no empty first line on the next page (the break
    stays on the line it ends: the word wrap's empty continuation line added 20 lines to 50K characters of Chinese),
    and wraps the continuation again with a space added at every line end (Paragraph.split, _split_blParaHard): a
    line that filled its width pushes its space onto the next line, which starts a space in and may break anew.
    Both engines agree (tests/test_fidelity.py compares these lines with reportlab's)."""
    c = cfg(wrap="cjk", alignment=alignment, page_size=(300, 140), first_line_indent=9, lines_per_paragraph=30)
    lay = run_both(_cjk_prose(160), c)
    assert lay.num_pages > 20
