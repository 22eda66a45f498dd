"""Bad input at the limits: int64 overflow in the pixel_values / raster targets, numbers past float's range in
a config, an over-long newline marker, a bitmap-only font. Each is refused with a clear ValueError (ConfigError
for the config) naming the argument, never a crash, an OverflowError or a raw FreeType exception."""
import json

import numpy as np
import pytest
import torch

import glyph_rt
from glyph_rt import ConfigError, RenderConfig

CFG = RenderConfig(auto_cjk_fallback=False)
I64_MAX = 2**63 - 1


# ---------------------------------------------------------------------- pixel_values / raster targets
@pytest.mark.parametrize("first_row", [I64_MAX - 1, I64_MAX - 3, 2**62, -1])
def test_write_pixel_values_cpu_refuses_first_rows_whose_end_wraps_past_int64(first_row):
    from glyph_rt.ops.pixel_values import normalize_lut, write_pixel_values_cpu

    out = torch.zeros(4, 1176)  # a 28x28 page is 4 rows: first_row + 4 wrapped negative and passed the check
    with pytest.raises(ValueError, match="rows of page 0 .*lie outside out"):
        write_pixel_values_cpu(np.zeros((1, 28, 28, 3), np.uint8), np.array([[28, 28]]), np.array([first_row]),
                               normalize_lut(), out)
    assert not out.any()


def test_pixel_values_extension_checks_hw_before_narrowing_it():
    from glyph_rt._ext import require_extension
    from glyph_rt.ops.pixel_values import normalize_lut, write_pixel_values_cpu

    pages, lut, out = np.zeros((1, 28, 28, 3), np.uint8), normalize_lut(), torch.zeros(4, 1176)
    for hw in ([[2**32 + 28, 28]], [[28, 2**32 + 28]]):  # an int32 cast made these 28x28
        with pytest.raises(ValueError, match="hw"):
            write_pixel_values_cpu(pages, np.array(hw), np.array([0]), lut, out)
        with pytest.raises(ValueError, match="hw of page 0"):  # the extension itself, given int64 sizes
            require_extension("test").pixel_values_cpu(pages, np.array(hw, np.int64), np.array([0]), lut.numpy(),
                                                       out.numpy())
    for first in ([2**64], [1.5], ["x"]):
        with pytest.raises(ValueError, match="first_row must be integers within int64"):
            write_pixel_values_cpu(pages, np.array([[28, 28]]), first, lut, out)
    assert not out.any()
    write_pixel_values_cpu(pages, np.array([[28, 28]]), np.array([0]), lut, out)  # the good call still works
    assert out.any()


@pytest.fixture(scope="module")
def batch():
    from glyph_rt.ops.raster import RasterBatch

    doc = glyph_rt.Document("hello", CFG)
    b = RasterBatch([doc])
    return doc, b


def test_set_image_targets_refuses_a_first_row_whose_end_wraps_past_int64(batch):
    from glyph_rt.ops.pixel_values import normalize_lut
    from glyph_rt.ops.raster import MODE_PIXELS, raster_tiles, set_image_targets

    doc, b = batch
    dev = b.to_device("cpu")
    with pytest.raises(ValueError, match="set_image_targets: page 0's first_row .* passes int64"):
        set_image_targets(dev, np.array([[28, 28]]), np.array([I64_MAX - 1]))  # out_rows was 0: any out passed
    for hw, first in (([[2**64, 28]], [0]), ([[28, 28]], [2**64])):
        with pytest.raises(ValueError, match="set_image_targets: (hw|first_row) must be integers within int64"):
            set_image_targets(dev, np.array(hw, dtype=object), np.array(first, dtype=object))
    with pytest.raises(ValueError, match="call set_image_targets first"):  # nothing was set by the refusals
        raster_tiles("cuda_host", MODE_PIXELS, b, dev, out=torch.empty(4, 1176), lut=normalize_lut())
    set_image_targets(dev, np.array([[28, 28]]), np.array([0]))
    assert dev["out_rows"] == 4


def test_set_page_targets_refuses_an_offset_whose_end_wraps_past_int64(batch):
    from glyph_rt.ops.raster import MODE_PAGES, raster_tiles, set_page_targets

    doc, b = batch
    dev = b.to_device("cpu")
    W, H = doc.canvas
    with pytest.raises(ValueError, match="set_page_targets: page 0's offset .* passes int64"):
        set_page_targets(dev, np.array([I64_MAX - 1000]))  # its bytes were max(wrapped, 0) = 0: any out passed
    with pytest.raises(ValueError, match="call set_page_targets first"):
        raster_tiles("cuda_host", MODE_PAGES, b, dev, out=torch.empty(W * H * 3, dtype=torch.uint8))
    assert set_page_targets(dev, np.array([0])) == W * H * 3


# ---------------------------------------------------------------------- config numbers past float's range
HUGE = 10**400  # float(HUGE) raises OverflowError


@pytest.mark.parametrize("name", ["dpi", "font_size", "line_height", "margin_x", "margin_y", "space_before",
                                  "space_after", "left_indent", "right_indent", "hanging_indent", "border_width",
                                  "border_padding", "frame_padding", "horizontal_scale"])
@pytest.mark.parametrize("sign", [1, -1])
def test_integers_past_float_range_are_the_configs_error(name, sign):
    with pytest.raises(ConfigError, match=f"^{name}: .*integer of about 401 digits"):
        RenderConfig(**{name: sign * HUGE}).validate()


def test_huge_integers_in_other_fields_are_the_configs_error():
    with pytest.raises(ConfigError, match="^first_line_indent: a negative integer"):
        RenderConfig(first_line_indent=-HUGE).validate()
    with pytest.raises(ConfigError, match="^first_line_indent: an integer"):
        RenderConfig(first_line_indent=HUGE).validate()
    for size in ((HUGE, 842), (595, -HUGE)):
        with pytest.raises(ConfigError, match="^page_size: .*integer of about 401 digits"):
            RenderConfig(page_size=size)
    # past Python's 4300-digit str() limit: the message must not try to print the number
    for name in ("lines_per_paragraph", "tab_size", "snap", "subpixel_phases", "dpi"):
        with pytest.raises(ConfigError, match=f"^{name}: an integer of about 5001 digits"):
            RenderConfig(**{name: 10**5000}).validate()
    with pytest.raises(ConfigError, match="^font_size: "):  # Glyph's keys: line-height from font-size + 1
        RenderConfig.from_dict({"font-size": HUGE})
    with pytest.raises(ConfigError, match="^font_size: "):
        CFG.with_glyph_overrides({"font-size": HUGE})


def test_cli_names_the_field_of_a_huge_integer_in_a_json_config(tmp_path, capsys):
    from glyph_rt.cli import main

    text = tmp_path / "t.txt"
    text.write_text("hello")
    for key, field in (("dpi", "dpi"), ("font-size", "font_size"), ("margin_x", "margin_x")):
        cfg = tmp_path / "c.json"
        cfg.write_text('{"%s": 1%s}' % (key, "0" * 400))
        assert json.loads(cfg.read_text())[key] == HUGE
        assert main(["render", str(text), "--config", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"glyph-rt: error: {field}: an integer of about 401 digits" in err and "Traceback" not in err


# ---------------------------------------------------------------------- newline_markup length
def test_newline_markup_length_is_limited():
    from glyph_rt.render.config import MAX_NEWLINE_MARKER_CHARS, MAX_NEWLINE_MARKUP_CHARS

    with pytest.raises(ConfigError, match=f"^newline_markup: .*over the limit of {MAX_NEWLINE_MARKUP_CHARS} "
                                          r"characters"):
        RenderConfig(newline_markup="X" * 10**6, lines_per_paragraph=1000).validate()
    with pytest.raises(ConfigError, match=f"^newline_markup: its visible marker text is 65 characters, over the "
                                          f"limit of {MAX_NEWLINE_MARKER_CHARS}"):
        RenderConfig(newline_markup='<font color="#FF0000">' + "X" * 65 + "</font>").validate()
    with pytest.raises(ConfigError, match="^newline_markup: .*over the limit"):  # the layout parses it too
        glyph_rt.Document("a\nb", RenderConfig(auto_cjk_fallback=False, newline_markup="X" * 10**6))
    # Glyph's markers, the training styles' markers and one at the limit still work
    for markup in ("<br/>", '<font color="#FF0000"> \\n </font>', '<font color="#FF0000">\n</font>', " ¶ ",
                   " &lt;br&gt; ", "<b>" + "X" * MAX_NEWLINE_MARKER_CHARS + "</b>"):
        RenderConfig(newline_markup=markup).validate()
    doc = glyph_rt.Document("a\nb", RenderConfig(auto_cjk_fallback=False, newline_markup="Y" * 64))
    assert doc.layout.marker_glyphs == 64


# ---------------------------------------------------------------------- unusable fonts
def make_bitmap_only_font(path):
    """An sfnt with one EBLC/EBDT strike (10 ppem) and no glyf table: FreeType opens it, but it has no outlines
    (is_scalable False, units_per_EM 0)."""
    pytest.importorskip("fontTools")
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen
    from fontTools.ttLib import TTFont

    glyphs = [".notdef", "space", "A"]
    fb = FontBuilder(1000, isTTF=True)
    fb.setupGlyphOrder(glyphs)
    fb.setupCharacterMap({0x20: "space", 0x41: "A", 0x48: "A", 0x65: "A"})
    empty = TTGlyphPen(None).glyph()
    fb.setupGlyf({g: empty for g in glyphs})
    fb.setupHorizontalMetrics({g: (600, 0) for g in glyphs})
    fb.setupHorizontalHeader(ascent=800, descent=-200)
    fb.setupNameTable({"familyName": "Bm", "styleName": "Regular"})
    fb.setupOS2()
    fb.setupPost()
    base = path.with_suffix(".base.ttf")
    fb.save(str(base))
    line = ('<sbitLineMetrics direction="{}"><ascender value="8"/><descender value="-2"/><widthMax value="3"/>'
            '<caretSlopeNumerator value="0"/><caretSlopeDenominator value="0"/><caretOffset value="0"/>'
            '<minOriginSB value="0"/><minAdvanceSB value="0"/><maxBeforeBL value="0"/><minAfterBL value="0"/>'
            '<pad1 value="0"/><pad2 value="0"/></sbitLineMetrics>')
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<ttFont sfntVersion="\\x00\\x01\\x00\\x00" ttLibVersion="4.0">
  <EBDT><header version="2.0"/><strikedata index="0"><ebdt_bitmap_format_1 name="A">
    <SmallGlyphMetrics><height value="2"/><width value="2"/><BearingX value="0"/><BearingY value="2"/>
    <Advance value="3"/></SmallGlyphMetrics><rawimagedata>ff ff</rawimagedata>
  </ebdt_bitmap_format_1></strikedata></EBDT>
  <EBLC><header version="2.0"/><strike index="0"><bitmapSizeTable>{line.format("hori")}{line.format("vert")}
    <colorRef value="0"/><startGlyphIndex value="2"/><endGlyphIndex value="2"/><ppemX value="10"/>
    <ppemY value="10"/><bitDepth value="1"/><flags value="1"/></bitmapSizeTable>
    <eblc_index_sub_table_1 imageFormat="1" firstGlyphIndex="2" lastGlyphIndex="2"><glyphLoc name="A"/>
    </eblc_index_sub_table_1></strike></EBLC>
</ttFont>"""
    ttx = path.with_suffix(".ttx")
    ttx.write_text(xml)
    f = TTFont(str(base))
    f.importXML(str(ttx))
    del f["glyf"], f["loca"]
    f["maxp"].tableVersion = 0x00005000
    f.save(str(path))
    return str(path)


def test_a_bitmap_only_font_is_the_configs_error(tmp_path):
    font = make_bitmap_only_font(tmp_path / "bitmaponly.ttf")
    # 9 pt: no 9 px strike (FreeType's set_pixel_sizes raised); 10 pt: the strike's size (units_per_EM 0 divided)
    for size in (9, 10):
        cfg = RenderConfig(auto_cjk_fallback=False, font_path=font, font_size=size, line_height=12)
        with pytest.raises(ConfigError, match=r"^font_path: .*bitmaponly\.ttf' cannot be used as a font: it has "
                                              r"no scalable outlines"):
            glyph_rt.Document("HeA A", cfg)
    cfg = RenderConfig(auto_cjk_fallback=False, fallback_fonts=[font])
    with pytest.raises(ConfigError, match=r"^fallback_fonts: .*bitmaponly\.ttf' cannot be used as a font"):
        glyph_rt.Document("\u4e00", cfg)


def test_a_font_freetype_cannot_open_is_the_configs_error(tmp_path):
    bad = tmp_path / "bad.ttf"
    bad.write_bytes(b"\x00\x01\x00\x00" + bytes(range(256)) * 8)  # a TrueType header, then nothing of a font
    with pytest.raises(ConfigError, match=r"^font_path: .*bad\.ttf' cannot be opened as a font"):
        glyph_rt.Document("x", RenderConfig(auto_cjk_fallback=False, font_path=str(bad)))
    with pytest.raises(ConfigError, match=r"^fallback_fonts: .*bad\.ttf' cannot be opened as a font"):
        glyph_rt.Document("x", RenderConfig(auto_cjk_fallback=False, fallback_fonts=[str(bad)]))
