"""glyph_rt against Glyph's own pipeline (reportlab -> PDF -> pdftoppm) on ~30K chars of prose.

Optional: skipped unless reportlab, pdf2image and poppler's pdftoppm are all available.
Targets: same page count, same page pixel sizes, >= 98% identical lines, visual tokens within 2%.
"""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import official  # noqa: E402

pytestmark = pytest.mark.skipif(
    not official.available(),
    reason=f"Glyph's reference pipeline is unavailable ({official.unavailable_reason() or 'unknown'}); "
    "install reportlab, pdf2image and poppler-utils to run the fidelity test",
)

CHARS = 30_000


@pytest.fixture(scope="module")
def result():
    from bench import fidelity

    return fidelity.run(str(fidelity.DEFAULT_FONT), CHARS, verbose=False)


def test_same_page_count(result):
    assert result["pages"]["equal"], f"pages: official {result['pages']['official']}, glyph_rt {result['pages']['glyph_rt']}"


def test_same_page_sizes(result):
    ps = result["page_sizes"]
    assert ps["equal"], (
        f"page sizes differ on pages {ps['pages_differing']}: official {ps['official']}, glyph_rt {ps['glyph_rt']}"
    )


def test_identical_lines(result):
    ln = result["lines"]
    assert ln["identical_lines_pct"] >= 98.0, (
        f"{ln['identical_lines_pct']:.2f}% identical lines (official {ln['official']}, glyph_rt {ln['glyph_rt']}); "
        f"first difference: {ln['first_difference']}"
    )


def test_visual_tokens_within_2pct(result):
    v = result["visual_tokens_glm4v"]
    assert abs(v["rel_diff_pct"]) <= 2.0, f"visual tokens (glm4v): official {v['official']}, glyph_rt {v['glyph_rt']}"


def test_every_page_is_the_official_pixels(result):
    px = result["pixels"]
    assert px["pages_compared"] == result["pages"]["official"] and px["pages_identical"] == px["pages_compared"], px


def page_diffs(over: dict, chars: int) -> list:
    """|official - glyph_rt| per page (int16 [H, W, 3]) of the bundled prose's first `chars` characters, drawn
    with Glyph's English config and `over` ("font-path": a built-in family, sans by default); the page sizes
    must be equal."""
    import numpy as np

    import glyph_rt
    from glyph_rt import RenderConfig
    from glyph_rt.render.config import GLYPH_CONFIG_EN
    from glyph_rt.render.fonts import BUILTIN_FONTS
    from glyph_rt.render.textio import sample_text

    over = dict(over)
    font = str(BUILTIN_FONTS[over.pop("font-path", "sans")])
    cfg = {**GLYPH_CONFIG_EN, "font-path": font, **over}
    text = sample_text()[:chars]
    images, _ = official.render_official(text, cfg, font_path=font)
    pages = glyph_rt.render(text, RenderConfig.from_glyph_dict(cfg))
    assert pages.sizes == [im.size for im in images]
    return [np.abs(np.asarray(im.convert("RGB"), np.int16) - pages[i].numpy().astype(np.int16))
            for i, im in enumerate(images)]


def assert_official_pixels(text: str, over: dict) -> None:
    """`text` drawn with Glyph's English config, the bundled sans and `over`: every page the official one."""
    import numpy as np

    import glyph_rt
    from glyph_rt import RenderConfig
    from glyph_rt.render.config import GLYPH_CONFIG_EN
    from glyph_rt.render.fonts import BUILTIN_FONTS

    cfg = {**GLYPH_CONFIG_EN, "font-path": str(BUILTIN_FONTS["sans"]), **over}
    images, _ = official.render_official(text, cfg, font_path=cfg["font-path"])
    pages = glyph_rt.render(text, RenderConfig.from_glyph_dict(cfg))
    assert pages.sizes == [im.size for im in images]
    for i, im in enumerate(images):
        assert np.array_equal(np.asarray(im.convert("RGB")), pages[i].numpy()), f"page {i} differs"


def ink_rows(img) -> list[int]:
    """Rows holding ink by Glyph's auto-crop rule (luma more than 5 levels off the top-left background)."""
    import numpy as np

    gray = np.asarray(img.convert("L"), np.float64) if hasattr(img, "convert") else img
    return np.nonzero((np.abs(gray - np.median(gray[:2, :2])) > 5).any(axis=1))[0].tolist()


@pytest.mark.parametrize("margins,dpi", [((12.7, 9.3), 72), ((10.5, 8.4), 72), ((9.5, 10.2), 72), ((10, 7.5), 72),
                                         ((10, 12.25), 96), ((10, 8.4), 100), ((10, 9.3), 120), ((10, 7.5), 144),
                                         ((10, 8.4), 144)])
def test_fractional_margins_crop_to_the_official_sizes(margins, dpi):
    """Glyph's auto-crop adds the margins in float pixels and PIL's crop rounds the box: the same page sizes,
    at any dpi and margin, and ink on the same rows: every baseline on poppler's pixel row (floor of its device y,
    computed as poppler does from the numbers reportlab writes), also where margin_y puts it at or past half a row."""
    import numpy as np

    import glyph_rt
    from glyph_rt import RenderConfig
    from glyph_rt.render.config import GLYPH_CONFIG_EN
    from glyph_rt.render.fonts import BUILTIN_FONTS
    from glyph_rt.render.textio import sample_text

    font = str(BUILTIN_FONTS["sans"])
    cfg = {**GLYPH_CONFIG_EN, "margin-x": margins[0], "margin-y": margins[1], "dpi": dpi, "font-path": font}
    for text in (sample_text()[:1500], sample_text()[3000:3900]):
        images, _ = official.render_official(text, cfg, font_path=font)
        pages = glyph_rt.render(text, RenderConfig.from_glyph_dict(cfg))
        assert pages.sizes == [im.size for im in images]
        for i, im in enumerate(images):
            ours = pages[i].numpy().astype(np.int64)
            luma = (ours[..., 0] * 19595 + ours[..., 1] * 38470 + ours[..., 2] * 7471 + 0x8000) >> 16
            assert ink_rows(luma.astype(np.float64)) == ink_rows(im), f"page {i}: ink on other rows than poppler's"


@pytest.mark.parametrize("font_size,dpi", [(9, 100), (11.5, 72), (10, 96), (11.5, 120), (15, 144), (20, 120)])
def test_fractional_pixel_font_sizes_drawn_as_poppler(font_size, dpi):
    """A font size that is not a whole number of pixels (9 pt at 100 dpi: 12.5 px) is drawn as poppler's
    SplashFTFont draws it: a face of the rounded pixel size (13) through a 12.5 / 13 transform. Drawn at the
    exact size instead, about a fifth of a grey level differs on average (mean abs diff 0.2-0.4). Large glyphs
    (30 and 33.3 px) are drawn at whole pixels, as poppler draws them: with sub-pixel phases, 6 grey levels."""
    for i, d in enumerate(page_diffs({"font-size": font_size, "line-height": font_size + 1, "dpi": dpi}, 1500)):
        assert d.mean() < 0.03, f"page {i}: mean abs diff {d.mean():.4f} from poppler's page"


@pytest.mark.parametrize("over", [
    {"font-color": "#222222", "font-size": 11.0, "line-height": 12, "alignment": "JUSTIFY", "left-indent": 5},
    {"font-color": "#3B2F7A", "page-bg-color": "#F5F5F5", "para-bg-color": "#F5F5F5", "dpi": 96},
    {"font-color": "#E6E6E6", "page-bg-color": "#1E1E1E", "para-bg-color": "#1E1E1E", "dpi": 84,
     "auto-crop-width": False},
    {"page-bg-color": "#F5F5F5", "para-bg-color": "#F5F5F5", "dpi": 110, "font-path": "serif"},
])
def test_colours_and_backgrounds_are_the_official_pixels(over):
    """Coloured text blends as poppler's Splash blends it (a truncating division: rounding left 1 grey level off
    in a fifth of the ink), and a page that is not a whole number of pixels keeps the official white paper in its
    last column or row wherever the background covers less than half of it, which Glyph's auto-crop then counts
    as ink (a cropped page used to be up to 555 px shorter than the official one)."""
    for i, d in enumerate(page_diffs(over, 2500)):
        assert (d.max(-1) > 0).mean() < 2e-4, f"page {i}: {(d.max(-1) > 0).sum()} pixels differ from poppler's page"


def official_and_ours(text: str, over: dict):
    """(official lines, glyph_rt lines, official pages, glyph_rt pages, glyph_rt document) of `text` drawn with
    Glyph's English config, DejaVu Sans and `over`. glyph_rt draws CJK characters DejaVu lacks as DejaVu's .notdef
    (no CJK fallback font), as reportlab lays them out and poppler draws them."""
    import dataclasses

    import numpy as np

    import glyph_rt
    from glyph_rt import RenderConfig
    from glyph_rt.render.config import GLYPH_CONFIG_EN
    from glyph_rt.render.fonts import BUILTIN_FONTS

    font = str(BUILTIN_FONTS["sans"])
    cfg = {**GLYPH_CONFIG_EN, "font-path": font, **over}
    ref = official.render_official_full(text, cfg, font_path=font)
    pages = glyph_rt.render(text, dataclasses.replace(RenderConfig.from_glyph_dict(cfg), auto_cjk_fallback=False))
    words = lambda s: " ".join(s.replace("\xa0", " ").split())  # noqa: E731  (reportlab's lines are cleaned)
    ref_lines = [(ln.page, words(ln.text)) for ln in ref.lines]
    our_lines = [(p, words(text[s:e])) for p, s, e in pages.document.line_spans()]
    ref_px = [np.asarray(im.convert("RGB"), np.int16) for im in ref.images]
    our_px = [pages[i].numpy().astype(np.int16) for i in range(len(pages))]
    return ref_lines, our_lines, ref_px, our_px, pages.document


GLYPH_WS_TEXTS = {
    "tabs": "def f(x):\n\tif x:\n\t\treturn 1\n\treturn 0\nname\tvalue\tunit\nalpha\t1\tkg\nx \t y  \tz\t\t w\n",
    "cr": ("lorem ipsum dolor sit amet " * 3 + "\r") * 4 + "a\rb \r c\r\n\rd",
}


@pytest.mark.parametrize("name", GLYPH_WS_TEXTS)
def test_tabs_and_carriage_returns_are_glyphs_whitespace(name):
    """Glyph's preprocess keeps a tab and a "\\r" as they are (it only splits on "\\n" and writes runs of spaces as
    &nbsp;), and reportlab collapses them with the spaces around them into one breaking space: a Glyph config
    (tab_size 0, cr_newline False) draws the same lines and pixels; with tabs kept 4 spaces wide, pages were wider,
    and a lone "\\r" broke the line."""
    import numpy as np

    text = GLYPH_WS_TEXTS[name]
    ref_lines, our_lines, ref_px, our_px, _ = official_and_ours(text, {})
    assert our_lines == ref_lines
    assert [a.shape for a in our_px] == [a.shape for a in ref_px]
    assert all(np.array_equal(a, b) for a, b in zip(our_px, ref_px))


CJK_WRAP_TEXTS = {  # Glyph wraps the whole text the CJK way once it holds an ideograph
    "words": ("lorem ipsum dolor sit amet " * 12) + "\n中",
    "urls": ("see https://example.com/a/very/long/path?with=query&and=more " * 6) + "\n中",
    "one_line": "中 " + "lorem ipsum dolor sit amet, " * 12,  # one frag: textsplit.dumbSplit
    "kept_spaces": ("lorem  ipsum, dolor. sit   amet " * 8 + "\n") * 3 + "中",
    "hanging_stop": "".join("x" * n + ". tail words here\n" for n in range(100, 120)) + "中",
    "spaces_at_breaks": " lorem ipsum\n  dolor sit\n\n amet \n 中 ",
}


@pytest.mark.parametrize("align", ["LEFT", "JUSTIFY", "CENTER", "RIGHT"])
@pytest.mark.parametrize("name", CJK_WRAP_TEXTS)
def test_cjk_wrap_keeps_latin_words_as_reportlab(name, align):
    """reportlab's CJK wrap (cjkFragSplit / dumbSplit) backs a Latin run off to its last space in the line's second
    half ("ipsum d|olor" was cut anywhere), keeps spaces at line ends, hangs a character that cannot start a line
    (".") into the margin, and stretches a justified line's spaces by the share of its kept ones: the same lines, page
    sizes and pixels, the CJK character DejaVu lacks included (its .notdef, at glyph 0's advance; glyph_rt's
    600/1000 em box used to move the pens after it, and the cropped pages' sizes)."""
    text = CJK_WRAP_TEXTS[name]
    ref_lines, our_lines, ref_px, our_px, _ = official_and_ours(text, {"alignment": align})
    assert our_lines == ref_lines
    assert [a.shape for a in our_px] == [a.shape for a in ref_px]
    for i, (a, b) in enumerate(zip(our_px, ref_px)):
        differ = int((a != b).any(-1).sum())
        assert differ == 0, f"page {i}: {differ} pixels differ"


@pytest.mark.parametrize("n", range(101, 107))
def test_cjk_wrap_hangs_what_cannot_start_a_line(n):
    """reportlab keeps a character of ALL_CANNOT_START ("。") on the line it would start, in the margin."""
    text = "中" * n + "。" + "中" * 100 + "，" + "中" * 30
    ref_lines, our_lines, *_ = official_and_ours(text, {})
    assert our_lines == ref_lines


@pytest.mark.parametrize("over", [{}, {"dpi": 96},
                                  {"page-bg-color": "#F5F5F5", "para-bg-color": "#E8E8E8", "dpi": 110,
                                   "font-color": "#3B2F7A"}])
def test_descenders_under_the_next_paragraphs_background_are_cut(over):
    """reportlab paints each paragraph's background before its text, over the descenders of the line above it
    (Glyph joins 30 source lines into a paragraph): the official pages lose them, and so do glyph_rt's
    (`run_clips`). These pages are then the official ones pixel for pixel; drawn whole, 68-90 pixels differed."""
    assert_official_pixels("\n".join(f"line {i}: jumpy gypsy quay pygmy" for i in range(75)), over)


@pytest.mark.parametrize("over", [
    {},
    {"alignment": "CENTER", "dpi": 96},
    {"alignment": "RIGHT", "first-line-indent": 11.1, "right-indent": 5.3},
    {"alignment": "JUSTIFY", "first-line-indent": 9.7, "left-indent": 3.3, "dpi": 120, "font-size": 10.3,
     "line-height": 12.2},
    {"alignment": "CENTER", "first-line-indent": -19.36, "left-indent": 19.36, "dpi": 57, "font-size": 10,
     "line-height": 12.5, "font-path": "serif"},
    {"border-width": 1.0, "border-padding": 6.5, "para-border-color": "#767676", "page-bg-color": "#121212",
     "para-bg-color": "#121212", "font-color": "#DADADA", "dpi": 91, "space-before": 2, "space-after": 1,
     "page-size": "595.28,841.89", "margin-x": 15, "margin-y": 15, "font-size": 12, "line-height": 12.5,
     "first-line-indent": 20.89},
    {"border-width": 1.75, "border-padding": 4, "para-border-color": "#8D9094", "para-bg-color": "#F6F8FA",
     "dpi": 96, "alignment": "JUSTIFY"},
])
def test_pages_are_the_official_pixels(over):
    """Every glyph lands in poppler's sub-pixel bin: x is summed as poppler sums reportlab's printed numbers
    (its widths, word spacing and line moves, which reportlab merges and reads back), from reportlab's own line
    widths. With pens summed exactly, 27-142 pixels of the first page differed in three of these configs (and
    63 over the default config's first 30K characters, 4,438 right-aligned at 96 dpi). Paragraph boxes are painted
    where poppler paints them: the rectangle's corners transformed from the printed numbers, each edge rounded as
    Splash's stroke adjustment rounds it, a border's side from its inner edge to its outer edge (drawn round(width)
    wide, the 1 pt border at 91 dpi lost a column; rounded from unprinted numbers, a row at a half-pixel tie), and
    a background of the page's colour still covers the border above it (713 pixels of page 2)."""
    for i, d in enumerate(page_diffs(over, 12000)):
        assert not d.any(), f"page {i}: {int(d.max(-1).astype(bool).sum())} pixels differ from poppler's page"


@pytest.mark.parametrize("over", [
    {"horizontal-scale": 0.8},
    {"horizontal-scale": 0.75, "page-bg-color": "#F5F5F5", "para-bg-color": "#FFFFFF", "dpi": 96},
    {"horizontal-scale": 0.9, "alignment": "JUSTIFY", "auto-crop-width": False, "border-width": 1.0,
     "border-padding": 3, "para-border-color": "#767676"},
    {"horizontal-scale": 1.25, "dpi": 60},
])
def test_horizontal_scale_is_the_official_resize(over):
    """Glyph resizes each page to int(width * scale) with Pillow's bicubic, then crops: glyph_rt draws the page at
    full width and resizes it with Pillow's integers (`render/resample.py`). Drawing narrower glyphs instead, the
    pages were 1.5-8.6 grey levels off on average, and a cropped width could be a pixel off."""
    for i, d in enumerate(page_diffs(over, 6000)):
        assert not d.any(), f"page {i}: {int(d.max(-1).astype(bool).sum())} pixels differ from the official page"


def test_zero_width_no_break_spaces_and_unmoved_bidi_lines_keep_poppler_x():
    """U+FEFF is not right-to-left (its block is, its code point is not), and where the bidi pass leaves a line's
    order as it is, it leaves every x as it is: before, such lines were placed again from exact advances, off
    poppler's sub-pixel bins (6,300-6,800 pixels)."""
    import random

    from glyph_rt.render.textio import sample_text

    rng = random.Random(0)
    text = "".join(("\ufeff " if c == " " and rng.random() < 0.15 else c) for c in sample_text()[:6000])
    assert_official_pixels(text, {"alignment": "CENTER"})


def test_random_styles_are_the_official_pixels():
    """`bench/fidelity.py --styles N`: random styles of the paper's space through both pipelines."""
    from bench import fidelity

    res = fidelity.run_styles(3, 1500, seed=7, verbose=False)
    assert len(res["styles"]) == 3 and res["identical"] == 3, res["styles"]


def test_a_part_ending_a_page_after_a_break_ends_on_its_last_line():
    """A paragraph split right after a line break: reportlab breaks its first part again without that break, so the
    part's last line is its last line, not a forced one, and an over-long last line is squeezed (word spacing)
    also when justified. Each source line here is 2 pt over the frame, within the spaces' shrinkage."""
    line = "sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua " \
           "lorem ipsum dolor sit"
    assert_official_pixels("\n".join([line] * 100), {"alignment": "JUSTIFY"})


# ------------------------------------------------------------------ Chinese prose (Glyph's CJK wrap)
ZH_TEXT = (  # natural Chinese prose: CJK punctuation, digits, Latin words, an ideographic space, empty lines
    "第一章　缘起\n"
    "\n"
    "天下大势，分久必合，合久必分。周末七国分争，并入于秦；及秦灭之后，楚、汉分争，又并入于汉。汉朝自"
    "高祖斩白蛇而起义，一统天下，后来光武中兴，传至献帝，遂分为三国。推其致乱之由，殆始于桓、灵二帝。\n"
    "\n"
    "学而时习之，不亦说乎？有朋自远方来，不亦乐乎？人不知而不愠，不亦君子乎？《论语》开篇这三句话，流"
    "传了两千多年，至今仍被人们反复引用。孔子说：“温故而知新，可以为师矣。”又说：“学而不思则罔，思"
    "而不学则殆。”\n"
    "\n"
    "2023年，研究团队发布了一个名为Glyph的框架，它把长文本渲染成图像，再交给视觉语言模型（V"
    "LM）去读。实验表明，在LongBench和MRCR等基准上，压缩比可以达到3到4倍，而准确率与"
    "Qwen3-8B等同规模的纯文本模型相当。\n"
    "\n"
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少？——这首孟浩然的《春晓》，几乎每个中国孩子都会背"
    "诵。\n"
    "\n"
    "「你今天去哪儿了？」她问。\n"
    "「我去了图书馆，借了三本书：一本小说、一本历史、一本关于Python编程的教材。」\n"
    "「真的吗？那太好了！」\n"
    "\n"
    "北京时间3月15日上午10点，第12届国际会议在上海开幕，来自45个国家和地区的1,200余名代"
    "表参加了会议。会议主题为“人工智能与可持续发展”，议程包括主旨演讲、分组讨论、圆桌对话等环节……\n"
    "\n"
    "关关雎鸠，在河之洲。窈窕淑女，君子好逑。参差荇菜，左右流之。窈窕淑女，寤寐求之。求之不得，寤寐思"
    "服。悠哉悠哉，辗转反侧。\n"
    "\n"
    "道可道，非常道；名可名，非常名。无名天地之始，有名万物之母。故常无欲，以观其妙；常有欲，以观其徼"
    "。此两者同出而异名，同谓之玄。玄之又玄，众妙之门。\n"
    "\n"
    "他说：“这个问题很复杂，需要从经济、社会、文化三个方面来分析。”然后他停顿了一下，又补充道：“当"
    "然，technology也是一个不可忽视的因素。”\n"
    "\n"
    "在数学中，圆周率π约等于3.14159，它是圆的周长与直径之比。自然常数e约等于2.71828。"
    "这两个数都是无理数，也是超越数。\n"
    "\n"
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。\n"
    "\n"
    "子曰：“三人行，必有我师焉。择其善者而从之，其不善者而改之。”\n"
    "\n"
    "会议结束后，代表们参观了浦东新区、外滩和豫园；许多人表示，这次访问让他们对中国的发展有了更直观的"
    "认识。一位来自德国的学者说：“Das ist sehr beeindruckend——这里的变化"
    "真是太快了！”\n"
)
ZH_LONG_LINES = "\n".join(  # the same prose in source lines of ~800 characters, some with English words
    "".join(p + ("The quick brown fox jumps over the lazy dog, and Glyph renders it. " if j % 3 == 0 else "")
            for j, p in enumerate([q for q in ZH_TEXT.split("\n") if q][k:k + 9])) for k in range(12)) + "\n"
ZH_TEXTS = {"short_lines": ZH_TEXT, "long_lines": ZH_LONG_LINES}
WQY = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"  # Debian/Ubuntu: apt-get install fonts-wqy-microhei


def cjk_truetype_font() -> str | None:
    """WenQuanYi Micro Hei (a TrueType collection; face 0 is what reportlab's TTFont reads), or None. Noto Sans CJK
    (glyph_rt[cjk]) cannot be the font of this comparison: reportlab refuses its CFF outlines."""
    import shutil
    import subprocess

    if Path(WQY).is_file():
        return WQY
    if shutil.which("fc-list"):
        out = subprocess.run(["fc-list", "-f", "%{file}\n", "WenQuanYi Micro Hei"], capture_output=True, text=True)
        files = [f for f in out.stdout.split() if f.endswith(".ttc") and Path(f).is_file()]
        return files[0] if files else None
    return None


def zh_text(name: str, chars: int) -> str:
    base = ZH_TEXTS[name]
    return (base * (chars // len(base) + 1))[:chars]


@pytest.mark.parametrize("align", ["LEFT", "JUSTIFY", "RIGHT"])
@pytest.mark.parametrize("name", ZH_TEXTS)
def test_chinese_lines_are_reportlabs(name, align):
    """Chinese prose wrapped the CJK way over pages (DejaVu Sans, no fallback font: the ideographs are DejaVu's
    .notdef in both, 1229/2048 em wide): the same characters on every line, the same pages and pixels. A paragraph
    split across pages continues with no empty first line, and its continuation is wrapped again with a space added
    at each line end, as reportlab's Paragraph.split does (20 extra empty lines in 50K characters before; a filled
    line pushes its space onto the next line, which may then break anew). Lines are compared without their spaces:
    reportlab's hold the added ones. glyph_rt's missing glyph was a box 600/1000 em wide: 60 of them on a line
    ended it 0.04 pt off reportlab's, and "long_lines" broke 7 lines elsewhere (and the taller .notdef gave the
    cropped last page another height)."""
    import dataclasses

    import numpy as np

    import glyph_rt
    from bench.fidelity import words_of
    from glyph_rt import RenderConfig
    from glyph_rt.render.config import GLYPH_CONFIG_EN
    from glyph_rt.render.fonts import BUILTIN_FONTS

    text = zh_text(name, 20000)
    font = str(BUILTIN_FONTS["sans"])
    cfg = {**GLYPH_CONFIG_EN, "font-path": font, "alignment": align}
    ref = official.render_official_full(text, cfg, font_path=font)
    pages = glyph_rt.render(text, dataclasses.replace(RenderConfig.from_glyph_dict(cfg), auto_cjk_fallback=False))
    ref_lines = [(ln.page, words_of(ln.text, cjk=True)) for ln in ref.lines]
    our_lines = [(p, words_of(text[s:e], cjk=True)) for p, s, e in pages.document.line_spans()]
    assert len(ref.images) == len(pages) > 2
    assert our_lines == ref_lines
    assert pages.sizes == [im.size for im in ref.images]
    for i, im in enumerate(ref.images):
        assert np.array_equal(np.asarray(im.convert("RGB")), pages[i].numpy()), f"page {i} differs"


@pytest.mark.parametrize("over", [{}, {"alignment": "JUSTIFY"}, {"alignment": "RIGHT"},
                                  {"dpi": 96, "font-size": 10, "line-height": 12, "first-line-indent": 18}])
@pytest.mark.parametrize("name", ZH_TEXTS)
def test_chinese_with_a_cjk_font_is_the_official_pixels(name, over):
    """Chinese prose with a real CJK TrueType font (WenQuanYi Micro Hei) in both pipelines, at Glyph's settings
    and a few others: every line, page size and pixel is the official one (metrics, advances, hinting-free glyphs
    and the CJK wrap's page splits). Skipped without the font: apt-get install fonts-wqy-microhei."""
    from bench import fidelity

    font = cjk_truetype_font()
    if font is None:
        pytest.skip("no CJK TrueType font: apt-get install fonts-wqy-microhei (WenQuanYi Micro Hei); "
                    "reportlab cannot read glyph_rt[cjk]'s Noto Sans CJK (CFF outlines)")
    r = fidelity.run(font, 0, text=zh_text(name, 20000), verbose=False, over=over)
    assert r["cjk_wrap"] and r["pages"]["equal"] and r["page_sizes"]["equal"], (r["pages"], r["page_sizes"])
    assert r["lines"]["positional_identical_pct"] == 100.0, r["lines"]["first_difference"]
    px = r["pixels"]
    assert px["pages_compared"] == r["pages"]["official"] > 2 and px["pages_identical"] == px["pages_compared"], px
