"""Scripts beyond Latin: the CJK extra, installed fonts found by coverage, install hints, Arabic
shaping and right-to-left reordering. Real fonts and real text; a system font that is absent
skips its case."""
import sys
import unicodedata

import numpy as np
import pytest

from glyph_rt.render import bidi, fonts
from glyph_rt.render.atlas import MISSING_SLOT
from glyph_rt.render.config import RenderConfig
from glyph_rt.render.layout import layout_text
from glyph_rt.render.pages import Document

CFG = RenderConfig(font_size=12, line_height=14, page_size=(300, 200))
SAMPLES = {  # script: (text, a character no bundled font has)
    "Chinese": ("光学压缩把长文本渲染成图像。", 0x5149),
    "Japanese": ("ひらがなとカタカナ、漢字。", 0x3072),
    "Korean": ("한국어 문장을 그립니다.", 0xD55C),
    "Devanagari": ("नमस्ते दुनिया", 0x0928),
    "Thai": ("สวัสดีชาวโลก", 0x0E2A),
}


@pytest.fixture
def no_system_fonts(monkeypatch):
    """Only the bundled fonts and the PyPI CJK extra: what a machine without font packages has."""
    monkeypatch.delenv(fonts.CJK_ENV, raising=False)
    monkeypatch.setattr(fonts, "system_fonts", lambda: ())
    fonts.find_cjk_font.cache_clear()
    yield
    fonts.find_cjk_font.cache_clear()


def layout(text, config=CFG, backend="cpu"):
    return layout_text(text, config, backend=backend)


# ----------------------------------------------------------------- fonts
@pytest.mark.parametrize("script", ["Chinese", "Japanese", "Korean"])
def test_cjk_extra_draws_cjk_with_no_system_font(no_system_fonts, script):
    pytest.importorskip("noto_cjk_sans_otc", reason="the glyph_rt[cjk] extra is not installed")
    path = fonts.bundled_cjk_font()
    import freetype

    assert freetype.Face(*fonts.split_face(path)).family_name == b"Noto Sans CJK SC"  # Glyph's Chinese forms
    assert fonts.resolve_fonts(CFG)[-1] == path
    lay, atlas = layout(SAMPLES[script][0])
    assert lay.missing == 0 and atlas.fonts[-1] == path


def test_split_face():
    assert fonts.split_face("/x/a.ttc#2") == ("/x/a.ttc", 2)
    assert fonts.split_face("/x/a.ttf") == ("/x/a.ttf", 0)
    assert fonts.split_face("/x/a#b.ttf") == ("/x/a#b.ttf", 0)


def test_cjk_font_env_override(monkeypatch, tmp_path):
    serif = str(fonts.BUILTIN_FONTS["serif"])
    monkeypatch.setenv(fonts.CJK_ENV, serif)
    fonts.find_cjk_font.cache_clear()
    try:
        assert fonts.resolve_fonts(CFG)[-1] == serif
        monkeypatch.setenv(fonts.CJK_ENV, str(tmp_path / "nope.ttf"))
        fonts.find_cjk_font.cache_clear()
        with pytest.raises(ValueError, match="GLYPH_RT_CJK_FONT.*not a font file"):
            fonts.resolve_fonts(CFG)
    finally:
        fonts.find_cjk_font.cache_clear()


@pytest.mark.parametrize("script", list(SAMPLES))
def test_installed_fonts_found_by_coverage(monkeypatch, script):
    text, probe = SAMPLES[script]
    monkeypatch.setattr(fonts, "bundled_cjk_font", lambda: None)  # the system's own fonts only
    monkeypatch.delenv(fonts.CJK_ENV, raising=False)
    fonts.find_cjk_font.cache_clear()
    try:
        found = fonts.system_font_for(probe)
        if found is None:
            pytest.skip(f"no installed font has U+{probe:04X} ({script}): "
                        f"{fonts.install_hint(fonts.script_of(chr(probe)))}")
        lay, atlas = layout(text)
        assert lay.missing == 0
        assert found in atlas.fonts or any(f in dict(fonts.system_fonts()) for f in atlas.fonts[1:])
        assert lay.placed == sum(not c.isspace() for c in text)
    finally:
        fonts.find_cjk_font.cache_clear()


def test_system_fallbacks_pick_one_font_per_script():
    if fonts.system_font_for(0x0928) is None:
        pytest.skip("no installed Devanagari font")
    text = SAMPLES["Devanagari"][0]
    chosen = fonts.system_fallbacks([ord(c) for c in text if not c.isspace()])
    assert len(chosen) == 1 and "Devanagari" in chosen[0]
    assert fonts.system_fallbacks([0x01, 0x0378]) == []  # control / unassigned: never looked up


def test_missing_glyphs_say_what_to_install():
    cfg = RenderConfig(**{**CFG.to_dict(), "auto_cjk_fallback": False})  # bundled DejaVu only
    doc = Document("Hi नमस्ते 中文 😀 दुनिया", cfg)
    s = doc.summary([(1, 1)], tokenizer=None)
    miss = s["missing_glyphs"]
    assert miss["count"] == doc.layout.missing > 0
    install = miss["install"]
    assert "fonts-noto-core" in install["Devanagari"]
    assert "glyph_rt[cjk]" in install["CJK"] and "fonts-noto-cjk" in install["CJK"]
    from glyph_rt.cli import human_summary

    s.update(input="x", seconds={"layout": 0.0, "raster": 0.0})
    text = human_summary(s)
    assert "Devanagari: a font with Devanagari" in text and "glyph_rt[cjk]" in text
    assert len(miss["chars"]) > 8 and f"and {len(miss['chars']) - 8} more)" in text  # not the first 8 as if all


def test_script_names():
    assert fonts.script_of("क") == "Devanagari"
    assert fonts.script_of("中") == fonts.script_of("한") == fonts.script_of("カ") == "CJK"
    assert fonts.script_of("ส") == "Thai"
    assert fonts.script_of("😀") == "Emoji"
    # invisible controls, symbols and digits are no script to install a font for
    assert fonts.script_of("\u2067") == fonts.script_of("\u061c") == fonts.script_of("\U000E0041") == "Format"
    assert fonts.script_of("\U0001D11E") == fonts.script_of("\u2bff") == "Symbols"
    assert fonts.script_of("\u0661") == "Arabic" and fonts.script_of("\x07") == "Other"
    for c in "\u201c\u2014\u00b2\u2460\U0001D7CE\U0001D400":  # quote, em dash, superscript 2, ①, 𝟎, 𝐀
        assert fonts.script_of(c) == "Symbols", hex(ord(c))
    for c in "\u2f00\u31c0\u2ff0\u3000\u3001":  # CJK radicals, strokes and punctuation: the CJK font has them
        assert fonts.script_of(c) == "CJK", hex(ord(c))
    assert fonts.script_of("\u0964") == "Devanagari"  # the danda, Devanagari punctuation
    assert "leave them out" in fonts.install_hint("Format")


# ----------------------------------------------------------------- right to left
def _has(mod):
    try:
        __import__(mod)
    except ImportError:
        return False
    return True


needs_rtl = pytest.mark.skipif(not (_has("bidi") and _has("arabic_reshaper")),
                                    reason="the glyph_rt[scripts] extra is not installed")


def line_glyphs(lay, text):
    """(source index, x) of every glyph, and the characters that drew them."""
    return [(int(s), float(x), text[int(s)]) for s, x in zip(lay.g_src, lay.g_x)]


def glyphs_of_line(lay, li):
    """Mask of the glyphs drawn on line li: on its page, at its baseline (source spans of lines may overlap)."""
    return (lay.g_page == lay.l_page[li]) & (lay.g_y == lay.l_y[li])


@needs_rtl
@pytest.mark.parametrize("text", ["שלום עולם", "مرحبا بالعالم"])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_rtl_line_is_drawn_right_to_left(text, backend):
    lay, _ = layout(text, backend=backend)
    assert lay.missing == 0
    assert lay.placed == sum(not c.isspace() for c in text)
    xs = [x for s, x, c in line_glyphs(lay, text) if unicodedata.category(c) != "Mn"]
    assert xs == sorted(xs, reverse=True), "logical order must run right to left on the page"
    # the line keeps its place: starts at the line's x, glyph arrays and spans stay in source order
    assert lay.g_x.min() == pytest.approx(lay.l_x[0], abs=1e-4)
    assert (np.diff(lay.g_src) >= 0).all()
    assert (lay.l_src_start[0], lay.l_src_end[0]) == (0, len(text))


@needs_rtl
def test_mixed_line_keeps_latin_runs_left_to_right():
    text = "abc שלום עולם def 123"
    lay, _ = layout(text)
    x = {text[s]: x for s, x, _ in line_glyphs(lay, text)}
    pos = {i: float(xx) for i, xx in zip(lay.g_src.tolist(), lay.g_x)}
    assert x["a"] < x["b"] < x["c"] < pos[4] and pos[4] > pos[7]  # LTR paragraph: abc, then Hebrew reversed
    assert pos[9] < pos[4]  # the second Hebrew word is left of the first
    assert max(pos[i] for i in range(4, 13) if i in pos) < x["d"] < x["e"] < x["f"] < x["1"] < x["2"]


@needs_rtl
def test_rtl_paragraph_with_latin_and_mirrored_brackets():
    text = "مرحبا (English) عليكم"
    lay, atlas = layout(text)
    pos = {i: float(xx) for i, xx in zip(lay.g_src.tolist(), lay.g_x)}
    src = lay.g_src.tolist()
    assert pos[0] > pos[7] > pos[text.index("ع")]  # RTL paragraph: first word rightmost
    e = text.index("E")
    assert pos[e] < pos[e + 1] < pos[e + 6]  # the English run reads left to right inside it
    open_slot = int(lay.g_slot[src.index(text.index("("))])
    assert open_slot == int(atlas.lut[ord(")")]), "'(' in a right-to-left run is drawn mirrored"


@needs_rtl
def test_arabic_contextual_forms_and_lam_alef():
    cps = np.frombuffer("بسم لا".encode("utf-32-le"), np.uint32)
    draw = bidi.shape("بسم لا", cps)
    assert len(draw) == len(cps)
    assert draw.tolist() == [0xFE91, 0xFEB4, 0xFEE2, 0x20, 0xFEFB, bidi.ZWNJ]  # initial, medial, final, ligature
    lay, atlas = layout("بسم لا")
    assert lay.missing == 0 and lay.placed == 5  # the alef is placed as the ligature's zero-width second half
    assert int(lay.g_slot[0]) == int(atlas.lut[0xFE91])


@needs_rtl
def test_missing_presentation_form_falls_back_to_the_letter():
    cps = np.array([0x0628, 0x0644, 0x0627], np.uint32)
    lut = np.full(0x110000, 5, np.int32)
    lut[0xFEFB] = MISSING_SLOT
    draw = bidi.unshape_missing(np.array([0xFE91, 0xFEFB, bidi.ZWNJ], np.uint32), cps, lut, MISSING_SLOT)
    assert draw.tolist() == [0xFE91, 0x0644, 0x0627]
    lut[0xFEFB], lut[bidi.ZWNJ] = 5, MISSING_SLOT
    draw = bidi.unshape_missing(np.array([0xFE91, 0xFEFB, bidi.ZWNJ], np.uint32), cps, lut, MISSING_SLOT)
    assert draw.tolist() == [0xFE91, 0x0644, 0x0627]


@needs_rtl
def test_justified_rtl_lines_fill_their_width():
    text = " ".join(["שלום עולם זה טקסט בעברית"] * 8)
    cfg = RenderConfig(**{**CFG.to_dict(), "alignment": "justify"})
    lay, atlas = layout(text, cfg)
    adv = atlas.arrays()["advance"].astype(np.float32)
    bin_ = 72 / cfg.dpi / cfg.subpixel_phases  # pens are binned as poppler's; visual order moves them by cells
    assert len(lay.l_x) > 2
    for li in range(len(lay.l_x) - 1):  # every line but the paragraph's last is justified
        g = (lay.g_src >= lay.l_src_start[li]) & (lay.g_src < lay.l_src_end[li])
        right = (lay.g_x[g] + adv[lay.g_slot[g]]).max()
        assert lay.g_x[g].min() == pytest.approx(lay.l_x[li], abs=bin_)
        assert right == pytest.approx(lay.l_x[li] + lay.l_width[li], abs=bin_)
    assert lay.placed == sum(not c.isspace() for c in text)


@needs_rtl
def test_latin_lines_unchanged_beside_rtl():
    latin = "The quick brown fox jumps over the lazy dog. " * 6
    alone, _ = layout(latin)
    mixed, _ = layout(latin + "\nשלום עולם\n" + latin)
    n = len(alone.g_x)
    np.testing.assert_array_equal(mixed.g_x[:n], alone.g_x)
    np.testing.assert_array_equal(mixed.g_slot[:n], alone.g_slot)
    np.testing.assert_array_equal(mixed.g_x[-n:], alone.g_x)
    np.testing.assert_array_equal(mixed.g_slot[-n:], alone.g_slot)


@needs_rtl
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_bidi_isolates_are_laid_out_and_counted(backend):
    """LRI, RLI, FSI and PDI (python-bidi's algorithm knows only the embeddings) isolate their content as UAX #9
    says: the initiator and PDI sit outside it, the content is reordered on its own."""
    cfg = RenderConfig(**{**CFG.to_dict(), "page_size": (400, 200)})
    for text, want in [
        ("\u05e9 a\u2066x\u2069", [5, 4, 3, 2, 0]),  # RTL paragraph: PDI x LRI a shin
        ("abc \u2067x", [0, 1, 2, 4, 5]),  # an unmatched RLI in LTR text
        ("Hello \u2066\u05e9\u05dc\u05d5\u05dd\u2069 world", [0, 1, 2, 3, 4, 6, 10, 9, 8, 7, 11, 13, 14, 15, 16, 17]),
        ("\u2067abc\u2069 \u05e9\u05dc", [7, 6, 4, 1, 2, 3, 0]),  # the base direction skips the isolate: RTL
        ("\u2068\u05e9\u05dc\u2069 ab", [0, 2, 1, 3, 5, 6]),  # FSI of Hebrew opens right-to-left
        ("\u05e9 \u2069x", [3, 2, 0]),  # an unmatched PDI is a neutral (here between R and L: RTL)
    ]:
        d = Document(text, cfg, backend=backend)
        c = d.char_counts()
        assert c["placed_chars"] + c["whitespace_chars"] == len(text) and c["unplaced_chars"] == 0, text
        assert [i for _, i in sorted(zip(d.layout.g_x.tolist(), d.layout.g_src.tolist()))] == want, text
    deep = "\u2067" * 500 + "\u05e9a" + "\u2069" * 500  # nested past the level limit
    assert Document(deep, CFG, backend=backend).char_counts()["unplaced_chars"] == 0


@needs_rtl
def test_cli_renders_a_hebrew_isolate(tmp_path):
    import json

    from glyph_rt.cli import main

    text = "Hello \u2066\u05e9\u05dc\u05d5\u05dd\u2069 world"
    (tmp_path / "in.txt").write_text(text, encoding="utf-8")
    assert main(["render", str(tmp_path / "in.txt"), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["characters"] == len(text) and s["unplaced_chars"] == 0
    assert s["placed_chars"] + s["stripped_chars"] + s["whitespace_chars"] == len(text)
    lay = Document(text).layout
    pos = dict(zip(lay.g_src.tolist(), lay.g_x.tolist()))
    assert pos[6] < pos[10] < pos[9] < pos[8] < pos[7] < pos[11] < pos[13]  # the Hebrew reads right to left


def test_without_the_scripts_extra_rtl_stays_logical_and_warns(monkeypatch):
    monkeypatch.setitem(sys.modules, "arabic_reshaper", None)
    bidi.available.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"glyph_rt\[scripts\]"):
            lay, _ = layout("שלום")
        assert (np.diff(lay.g_x) > 0).all() and lay.placed == 4
    finally:
        bidi.available.cache_clear()


@needs_rtl
def test_bidi_layouts_keep_every_character_and_stay_in_their_lines():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    alphabet = list("ab Z1.(") + list("שלוםמַ") + list("لامرحبَ") + ["\n", "\r\n", "  "]
    alphabet += list("\u2066\u2067\u2068\u2069\u202b\u202c")  # isolates and embeddings

    @hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
    @hypothesis.given(parts=st.lists(st.sampled_from(alphabet), max_size=60),
                      align=st.sampled_from(["left", "justify", "right"]), marker=st.booleans(),
                      wrap=st.sampled_from(["word", "cjk"]))
    def check(parts, align, marker, wrap):
        text = "".join(parts)
        cfg = RenderConfig(**{**CFG.to_dict(), "alignment": align, "page_size": (120, 200), "wrap": wrap,
                              "newline_markup": "<font color=\"#FF0000\"> \\n </font>" if marker else "<br/>"})
        a, atlas = layout(text, cfg)
        b, _ = layout(text, cfg, backend="reference")
        np.testing.assert_array_equal(a.g_x, b.g_x)
        np.testing.assert_array_equal(a.g_slot, b.g_slot)
        assert (np.diff(a.g_src) >= 0).all()
        drawn = {i for i, c in enumerate(text) if not c.isspace()} - {i for i, c in enumerate(text) if c in "\r\n"}
        assert drawn <= set(a.g_src.tolist())  # every visible character is placed
        adv = atlas.arrays()["advance"].astype(np.float32)
        tol = 72 / cfg.dpi / cfg.subpixel_phases + 1e-3  # pens are binned as poppler's; visual order moves cells
        on_line = np.zeros(len(a.g_x), np.int64)
        for li in range(len(a.l_x)):
            g = glyphs_of_line(a, li)  # not by source span: a newline marker's may overlap the next line's
            on_line += g
            if g.any():
                assert a.g_x[g].min() >= a.l_x[li] - tol
                assert (a.g_x[g] + adv[a.g_slot[g]]).max() <= a.l_x[li] + max(a.l_width[li], 0) + tol
        assert (on_line == 1).all()  # every glyph is on one line

    check()


@needs_rtl
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_rtl_newline_marker_wrapped_to_the_next_line_keeps_glyphs_in_their_lines(backend):
    """A visible newline marker whose space ends a full right-to-left line draws its glyphs on the next line: the
    two lines' source spans overlap (the marker's glyphs carry the newline's index), and reordering the first
    line must not move the second line's glyphs."""
    cfg = RenderConfig(page_size=(150, 200), wrap="cjk", newline_markup='<font color="#FF0000"> \\n </font>',
                       auto_cjk_fallback=False, auto_crop_width=False)
    text = "אבגדהוזחטיכלמנסעפצקרשת\nאבגד"
    lay, atlas = layout(text, cfg, backend=backend)
    assert len(lay.l_x) == 2 and lay.l_src_end[0] > lay.l_src_start[1], "the case: overlapping line spans"
    nl = text.index("\n")
    assert set(lay.g_src[lay.g_color == 1].tolist()) == {nl} and (lay.g_y[lay.g_color == 1] == lay.l_y[1]).all()
    adv = atlas.arrays()["advance"].astype(np.float32)
    bin_ = 72 / cfg.dpi / cfg.subpixel_phases + 1e-3  # pens are binned as poppler's; visual order moves cells
    for li in range(2):
        g = glyphs_of_line(lay, li)
        assert g.any()
        assert lay.g_x[g].min() >= lay.l_x[li] - bin_
        assert (lay.g_x[g] + adv[lay.g_slot[g]]).max() <= lay.l_x[li] + lay.l_width[li] + bin_, f"line {li}"
        letters = g & (lay.g_color == 0)
        assert (np.diff(lay.g_x[letters]) < 0).all(), f"line {li} reads right to left"


def _visual_order_by_insertion(recs, s, e, text):
    """What `bidi._visual_order` returns, as it once computed it: each character bidi rule X9 removes inserted in
    turn right after its predecessor (quadratic in their number)."""
    from bidi import algorithm as A

    line = [dict(r) for r in recs]
    A.reorder_resolved_levels({"chars": line, "base_level": line[0]["base"] if line else 0}, False)
    order = [r["i"] for r in line]
    for i in range(s, e):
        if i not in order:
            order.insert(order.index(i - 1) + 1 if i - 1 in order else 0, i)
    return order


@needs_rtl
def test_characters_bidi_removes_follow_their_predecessor_in_linear_time():
    """ZWJ, BOM, soft hyphen, controls and the embeddings (X9 removes them from the algorithm's records) go right
    after the character before them; hundreds of thousands of them take well under a second (it was quadratic:
    33 s for 32,000)."""
    for text in ["\u200d\u200dאב" + "\u200d" * 4 + "c\u202bd\u202c", "א\ufeff\u00adב c\u202ad\u202c\u200d",
                 "\u202bab\u202c\u05e9\u200d\u05dc\u0007 (x)\u200d", "\u200dabc\u200d", "ab\u2067\u200dש\u2069\u200d"]:
        recs = bidi._resolve(text, 0, len(text))
        for s, e in [(0, len(text)), (1, len(text)), (2, len(text) - 1), (3, 5)]:
            sub = [r for r in recs if s <= r["i"] < e]
            assert bidi._visual_order(sub, s, e, text)[0] == _visual_order_by_insertion(sub, s, e, text), (text, s, e)
    n = 200_000
    text = "\u05d0" + "\u200d" * n + "\u05d1"
    recs = bidi._resolve(text, 0, len(text))
    assert bidi._visual_order(recs, 0, len(text), text)[0] == [n + 1, *range(n + 1)]
    small, big = Document("\u05d0\u200d\u200d\u200d\u05d1", CFG).layout, Document(text, CFG).layout
    assert big.placed == n + 2 and len(big.g_x) == n + 2 and len(big.l_x) == 1
    assert big.g_x[-1] < big.g_x[0]  # right to left, the ZWJs after (left of) the first letter
    np.testing.assert_array_equal(big.g_x[[0, 1, 2, -1]], small.g_x[[0, 1, 2, -1]])  # placed as three ZWJs are
    assert (big.g_x[3:-1] == small.g_x[3]).all()
