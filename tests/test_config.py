import json

import pytest

import glyph_rt
from glyph_rt import ConfigError, RenderConfig
from glyph_rt.render.config import GLYPH_CONFIG_EN, PAPER_SIZES, PRESETS, NewlineMarkup, parse_color


def test_defaults_are_glyphs_english_config():
    c = RenderConfig().validate()
    assert c.page_size == (595.0, 842.0) and c.dpi == 72 and c.margin_x == 10 and c.margin_y == 10
    assert c.font_size == 9 and c.line_height == 10 and c.alignment == "left"
    assert c.page_pixels == (595, 842)


def test_glyph_json_roundtrip(tmp_path):
    font = str(tmp_path / "f.ttf")
    import shutil

    from glyph_rt.render.fonts import BUILTIN_FONTS

    shutil.copy(BUILTIN_FONTS["sans"], font)
    d = {**GLYPH_CONFIG_EN, "font-path": "f.ttf"}
    (tmp_path / "cfg.json").write_text(json.dumps(d))
    c = RenderConfig.load(tmp_path / "cfg.json").validate()
    assert c.font_path == font and c.snap == 0 and c.alignment == "left"
    assert c.auto_crop_width and c.auto_crop_last_page
    out = c.to_glyph_dict()
    assert out["page-size"] == "595,842" and out["alignment"] == "LEFT" and out["font-color"] == "#000000"
    back = RenderConfig.from_glyph_dict(out)
    assert back.to_dict() == c.to_dict()


def test_own_json_roundtrip(tmp_path):
    c = RenderConfig.preset("web_style")
    c.save(tmp_path / "c.json")
    assert RenderConfig.load(tmp_path / "c.json").to_dict() == c.to_dict()


def test_relative_font_paths_survive_save_and_load(tmp_path, monkeypatch):
    """A font path relative to the working directory is saved so that load (which reads relative paths against
    the file's folder) finds the same file, from any directory, in both formats."""
    import shutil

    from glyph_rt.render.fonts import BUILTIN_FONTS

    (tmp_path / "fonts").mkdir()
    (tmp_path / "configs").mkdir()
    shutil.copy(BUILTIN_FONTS["sans"], tmp_path / "fonts" / "a.ttf")
    shutil.copy(BUILTIN_FONTS["serif"], tmp_path / "fonts" / "b.ttf")
    monkeypatch.chdir(tmp_path)
    c = RenderConfig(font_path="fonts/a.ttf", fallback_fonts=["fonts/b.ttf"]).validate()
    c.save("configs/own.json")
    c.save("configs/glyph.json", glyph_format=True)
    monkeypatch.chdir(tmp_path / "fonts")
    own = RenderConfig.load(tmp_path / "configs" / "own.json").validate()
    assert own.font_path == str(tmp_path / "fonts" / "a.ttf")
    assert own.fallback_fonts == [str(tmp_path / "fonts" / "b.ttf")]
    glyph = RenderConfig.load(tmp_path / "configs" / "glyph.json").validate()
    assert glyph.font_path == str(tmp_path / "fonts" / "a.ttf")


def test_glyph_renderer_defaults_for_missing_keys():
    c = RenderConfig.from_glyph_dict({"dpi": 96})
    assert c.alignment == "justify" and c.margin_x == 20 and c.line_height == 10
    assert c.page_size == PAPER_SIZES["A4"]


@pytest.mark.parametrize("value,expected", [
    ("A4", PAPER_SIZES["A4"]), ("letter", (612.0, 792.0)), ("595,842", (595.0, 842.0)),
    ((300, 400), (300.0, 400.0)), ("aspect:1.5@400", (400.0, 600.0)),
])
def test_page_sizes(value, expected):
    assert RenderConfig(page_size=value).page_size == pytest.approx(expected)


def test_all_named_paper_sizes():
    for name in ("A4", "Letter", "Legal", "A5", "B5", "A3", "B4", "Tabloid"):
        RenderConfig(page_size=name).validate()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate(name):
    RenderConfig.preset(name).validate()


@pytest.mark.parametrize("kw,field", [
    ({"line_height": 8, "font_size": 9}, "line_height"),
    ({"dpi": 5}, "dpi"),
    ({"dpi": 5000}, "dpi"),
    ({"margin_x": 290}, "margin_x"),
    ({"left_indent": 300, "right_indent": 300}, "margin_x/indents"),
    ({"margin_y": 415}, "margin_y"),
    ({"font_color": "#12345"}, "font_color"),
    ({"page_bg_color": "blurple"}, "page_bg_color"),
    ({"alignment": "middle"}, "alignment"),
    ({"font_path": "/no/such/font.ttf"}, "font_path"),
    ({"horizontal_scale": 0}, "horizontal_scale"),
    ({"font_size": -1}, "font_size"),
    ({"newline_markup": "<b></b>"}, "newline_markup"),
])
def test_validate_names_the_field(kw, field):
    with pytest.raises(ConfigError) as e:
        RenderConfig(**kw).validate()
    assert field in str(e.value)


def test_unreadable_font_file(tmp_path):
    bad = tmp_path / "bad.ttf"
    bad.write_bytes(b"not a font at all")
    with pytest.raises(ConfigError, match="font_path"):
        RenderConfig(font_path=str(bad)).validate()


def test_unknown_keys():
    with pytest.raises(ConfigError, match="fontsize"):
        RenderConfig.from_dict({"fontsize": 9})
    with pytest.raises(ConfigError, match="font-sise"):
        RenderConfig.from_dict({"font-sise": 9})


def test_colors_and_markup():
    assert parse_color("#fff") == (255, 255, 255)
    assert parse_color("0x102030") == (16, 32, 48)
    nl = NewlineMarkup.parse('<font color="#FF0000"> \\n </font>')
    assert not nl.is_break and nl.text == " \\n " and nl.color == (255, 0, 0)
    assert NewlineMarkup.parse("<br/>").is_break


@pytest.mark.parametrize("kw,field", [
    # canvases too small to hold a glyph
    ({"page_size": (5, 20), "margin_x": 0, "margin_y": 0, "frame_padding": 0, "font_size": 1, "line_height": 1,
      "dpi": 30, "horizontal_scale": 0.1}, "page_size/dpi/horizontal_scale"),
    ({"page_size": (100, 1), "margin_x": 0, "margin_y": 0, "frame_padding": 0, "font_size": 1, "line_height": 1,
      "snap": 0}, "page_size/dpi/horizontal_scale"),
    ({"font_size": 1, "line_height": 1, "dpi": 30}, "font_size/dpi"),
    # the first line may not start off the page
    ({"first_line_indent": -1e6}, "first_line_indent"),
    ({"first_line_indent": -17, "margin_x": 10}, "first_line_indent"),
    # values that used to end in a traceback
    ({"page_size": "1e308,1e308"}, "page_size/dpi"),
    # a page is drawn at full width before the horizontal scale resizes it: 17,000 px drawn, 8,500 px resized
    ({"page_size": (17000, 800), "horizontal_scale": 0.5}, "page_size/dpi"),
    ({"page_size": (8000, 800), "horizontal_scale": 2.1}, "page_size/dpi/horizontal_scale"),
    ({"border_width": 1e300}, "border_width"),
    ({"space_after": 1e300}, "space_after"),
    ({"lines_per_paragraph": 2**31}, "lines_per_paragraph"),
    ({"lines_per_paragraph": True}, "lines_per_paragraph"),
    ({"snap": True}, "snap"),
    ({"subpixel_phases": True}, "subpixel_phases"),
    ({"auto_crop_width": "false"}, "auto_crop_width"),
    ({"auto_crop_last_page": 1}, "auto_crop_last_page"),
    ({"auto_cjk_fallback": "no"}, "auto_cjk_fallback"),
    # one glyph of the atlas at font 200 / dpi 600 / 8 phases takes ~50 MiB
    ({"font_size": 200, "line_height": 200, "dpi": 600, "page_size": (1000, 1000), "subpixel_phases": 8},
     "font_size/dpi/subpixel_phases"),
])
def test_validate_rejects_with_the_field(kw, field):
    with pytest.raises(ConfigError) as e:
        RenderConfig(**kw).validate()
    assert str(e.value).startswith(field + ":"), str(e.value)


@pytest.mark.parametrize("kw,field", [
    ({"page_size": ("a", "b")}, "page_size"),
    ({"page_size": (None, 3)}, "page_size"),
    ({"newline_markup": 5}, "newline_markup"),
    ({"fallback_fonts": "abc"}, "fallback_fonts"),
    ({"fallback_fonts": 3}, "fallback_fonts"),
])
def test_constructor_rejects_with_the_field(kw, field):
    with pytest.raises(ConfigError) as e:
        RenderConfig(**kw).validate()
    assert str(e.value).startswith(field + ":"), str(e.value)


def test_outdent_into_the_margin_is_allowed():
    RenderConfig(first_line_indent=-16, margin_x=10).validate()  # frame_padding 6: starts at x = 0


def test_config_file_with_fallback_fonts_as_one_string(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"fallback_fonts": "abc.ttf"}')
    with pytest.raises(ConfigError, match="fallback_fonts: .* give a list"):
        RenderConfig.load(p)


def test_config_file_with_invalid_utf8_names_the_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_bytes(b'{"font_color": "\xff\xfe"}')
    with pytest.raises(ConfigError, match="bad.json.*UTF-8"):
        RenderConfig.load(p)


def test_newline_marker_as_glyph_writes_it_or_with_a_real_newline(tmp_path):
    # Glyph's configs spell the visible marker "\\n" (a backslash and an n); a JSON "\n" is a real newline
    glyph_spelling = '{"newline-markup": "<font color=\\"#FF0000\\"> \\\\n </font>"}'
    json_newline = '{"newline_markup": "<font color=\\"#FF0000\\"> \\n </font>"}'
    for i, text in enumerate((glyph_spelling, json_newline)):
        p = tmp_path / f"c{i}.json"
        p.write_text(text)
        nl = NewlineMarkup.parse(RenderConfig.load(p).validate().newline_markup)
        assert not nl.is_break and nl.text == " \\n " and nl.color == (255, 0, 0), text
    assert NewlineMarkup.parse("<i>&#10;</i>").text == "\\n"
    # both draw the same marker glyphs
    docs = [glyph_rt.Document("ab\ncd", RenderConfig(newline_markup=m)) for m in (" \\n ", " \n ")]
    assert docs[0].layout.marker_glyphs == docs[1].layout.marker_glyphs == 2


@pytest.mark.parametrize("value", ["aspect:1..4", "aspect:1.4@.", "aspect:.", "aspect:1.4@1.2.3"])
def test_malformed_aspect_page_size_is_named(value):
    with pytest.raises(ConfigError, match=r"^page_size: .* is not 'aspect:R' .*'aspect:R@W'"):
        RenderConfig(page_size=value)


def test_config_file_with_a_bom(tmp_path):
    p = tmp_path / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf" + b'{"dpi": 96}')
    assert RenderConfig.load(p).dpi == 96


def test_a_canvas_past_the_models_aspect_limit_is_refused():
    kw = {"page_size": "2500,10", "margin_x": 0, "margin_y": 0, "frame_padding": 0, "snap": 0}  # 2500 x 10 px
    with pytest.raises(ConfigError, match=r"^page_size/dpi/horizontal_scale: a page is 2500x10 px .*200:1"):
        RenderConfig(**kw).validate()


@pytest.mark.parametrize("kw", [
    {"page_size": "595,12000"}, {"page_size": "aspect:20"}, {"page_size": "595,12000", "snap": 0},
    {"page_size": "6000,842", "auto_crop_width": False}, {"page_size": "6000,842", "snap": 0},
    # snapping to the nearest multiple makes the uncropped page 28 x 5796 px
    {"page_size": "41,5800", "margin_x": 2, "margin_y": 2, "auto_crop_width": False, "auto_crop_last_page": False},
])
def test_crops_and_snapping_keep_every_page_within_the_models_aspect_limit(kw):
    """Glyph's crop of a page of short lines (or of one line) can pass the 200:1 the models' processors accept;
    such a page is widened (made taller) with its background instead, on every path."""
    cfg = RenderConfig(**kw).validate()
    for text in ("Hi", "Hi\n" * 3000, "x " * 400):
        pages = glyph_rt.render(text, cfg)
        assert all(max(w, h) <= 200 * min(w, h) for w, h in pages.sizes), (kw, text[:4], pages.sizes)
        assert all(v is not None for v in pages.summary(tokenizer=None)["visual_tokens"].values())


def test_a_crop_to_short_lines_is_widened_to_the_limit_only():
    cfg = RenderConfig(page_size="595,12000", snap=0).validate()
    w, h = glyph_rt.render("Hi\n" * 3000, cfg).sizes[0]
    assert (w, h) == (60, 12000)  # "Hi" and the margin alone would be narrower: 12000 / 200
    assert glyph_rt.render("Hi\n" * 3000, RenderConfig(page_size="595,842", snap=0)).sizes[0][0] < 60  # untouched


def test_glyph_configs_take_glyphs_whitespace():
    """Glyph's renderer has a tab and a "\\r" as breaking whitespace: a Glyph config and the glyph preset say so
    (tab_size 0, cr_newline False); glyph_rt's own configs keep a tab 4 kept spaces wide and "\\r" a line end.
    Glyph's format has no key for them: a config written in it reads back with Glyph's whitespace."""
    for c in (RenderConfig.from_glyph_dict(GLYPH_CONFIG_EN), RenderConfig.from_glyph_dict({}), RenderConfig.preset("glyph")):
        assert (c.tab_size, c.cr_newline) == (0, False)
        c.validate()
    native = RenderConfig()
    assert (native.tab_size, native.cr_newline) == (4, True)
    back = RenderConfig.from_glyph_dict(native.to_glyph_dict())
    assert "tab_size" not in str(native.to_glyph_dict()) and (back.tab_size, back.cr_newline) == (0, False)
    assert RenderConfig.from_dict(RenderConfig(tab_size=0, cr_newline=False).to_dict()).cr_newline is False
    for bad in ({"tab_size": -1}, {"tab_size": 17}, {"cr_newline": 1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            RenderConfig(**bad).validate()
