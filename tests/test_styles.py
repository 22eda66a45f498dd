"""Style sampler: frequencies match the YAML, exclusion rules hold and are counted, samples are
reproducible per index, the YAML round-trips with clear errors, and `glyph-rt styles` writes its files."""
import json
import math
import shutil
import sys
from collections import Counter

import pytest
import yaml

from glyph_rt.cli import main
from glyph_rt.render.config import PAPER_SIZES, RenderConfig
from glyph_rt.render.fonts import BUILTIN_FONTS
from glyph_rt.train import StyleSampler, sample_styles
from glyph_rt.train.styles import (RULES, StyleConfigError, build_font_pool, check_rules, contrast_ratio,
                                   font_class, is_italic, load_params)

N_FREQ = 10_000


def sampler_with(tmp_path, seed=0, **overrides) -> StyleSampler:
    path = tmp_path / "styles.yaml"
    path.write_text(yaml.safe_dump(overrides), encoding="utf-8")
    return StyleSampler.from_file(path, seed=seed)


def close(count: int, n: int, p: float) -> bool:
    """`count` of `n` is within 5 binomial standard deviations (plus 0.5%) of probability p."""
    return abs(count / n - p) <= 5 * math.sqrt(p * (1 - p) / n) + 0.005


@pytest.fixture(scope="module")
def draws():
    s = StyleSampler(seed=123)
    return s, [s.draw(i) for i in range(N_FREQ)]


def weights(d: dict) -> dict:
    total = sum(d.values())
    return {k: v / total for k, v in d.items()}


# ----------------------------------------------------------------- frequencies
@pytest.mark.parametrize("factor,node", [
    ("dpi", lambda P: {k: m["weight"] for k, m in P["dpi"].items()}),
    ("page", lambda P: {k: m["weight"] for k, m in P["page_size"].items()}),
    ("theme", lambda P: {k: m["weight"] for k, m in P["colors"].items()}),
    ("alignment", lambda P: P["alignment"]["values"]),
    ("margins", lambda P: P["margins"]["patterns"]),
    ("indent", lambda P: {k: m["weight"] for k, m in P["indent"].items()}),
    ("space_before", lambda P: {k: m["weight"] for k, m in P["spacing"].items()}),
    ("space_after", lambda P: {k: m["weight"] for k, m in P["spacing"].items()}),
    ("h_scale", lambda P: {float(k): v for k, v in P["h_scale"]["values"].items()}),
])
def test_mode_frequencies_match_the_yaml(draws, factor, node):
    s, ds = draws
    expected = weights(node(s.params))
    counts = Counter(ch[factor] for _, ch in ds)
    assert set(counts) <= set(expected)
    for k, p in expected.items():
        assert close(counts[k], N_FREQ, p), (factor, k, counts[k] / N_FREQ, p)


def test_paper_and_probability_frequencies(draws):
    s, ds = draws
    P = s.params
    papers = Counter(ch["paper"] for _, ch in ds if ch["page"] == "paper")
    n = sum(papers.values())
    for k, p in weights({k.upper(): v for k, v in P["page_size"]["paper"]["values"].items()}).items():
        assert close(papers[k], n, p), (k, papers[k] / n, p)
    assert close(sum(ch["border"] for _, ch in ds), N_FREQ, P["borders"]["probability"])
    assert close(sum(ch["newline_marker"] for _, ch in ds), N_FREQ, P["newline_markup"]["probability"])
    assert close(sum(c.auto_crop_width for c, _ in ds), N_FREQ, P["auto_crop"]["width"])
    assert close(sum(c.auto_crop_last_page for c, _ in ds), N_FREQ, P["auto_crop"]["last_page"])


def test_values_stay_inside_their_modes(draws):
    s, ds = draws
    P = s.params
    lo_m, hi_m = P["margins"]["range"]
    for c, ch in ds:
        m = P["dpi"][ch["dpi"]]
        assert (m["range"][0] <= c.dpi <= m["range"][1]) if "range" in m else c.dpi in m["values"]
        if ch["page"] == "paper":
            assert tuple(c.page_size) == pytest.approx(PAPER_SIZES[ch["paper"]], abs=0.01)
        elif ch["page"] == "aspect":
            assert ch["aspect"] == pytest.approx(min(map(float, P["page_size"]["aspect"]["values"]),
                                                     key=lambda r: abs(r - ch["aspect"])), abs=2e-3)
        assert P["font_size"]["range"][0] <= c.font_size <= P["font_size"]["range"][1]
        d_lo, d_hi = P["line_height_delta"]["range"]
        assert d_lo - 1e-9 <= c.line_height - c.font_size <= d_hi + 1e-9  # line height tied to size + delta
        assert lo_m <= c.margin_x <= hi_m and lo_m <= c.margin_y <= hi_m
        assert {"all_equal": c.margin_x == c.margin_y, "vertical_larger": c.margin_y >= c.margin_x,
                "horizontal_larger": c.margin_x >= c.margin_y}[ch["margins"]]
        em = c.font_size
        if ch["indent"] == "none":
            assert c.first_line_indent == c.left_indent == c.right_indent == c.hanging_indent == 0
        elif ch["indent"] == "first_line":
            assert 1.0 * em - 0.01 <= c.first_line_indent <= 2.5 * em + 0.01
        elif ch["indent"] == "block":
            assert c.left_indent > 0 and c.right_indent > 0
        else:
            assert c.hanging_indent > 0
        assert 0.75 <= c.horizontal_scale <= 1.0
        assert (c.border_width > 0) == ch["border"]
        assert (c.newline_markup != "<br/>") == ch["newline_marker"]
        if P["colors"][ch["theme"]].get("family"):
            assert ch["family"] == P["colors"][ch["theme"]]["family"]


def test_sizes_on_a_grid_stay_inside_a_range_whose_ends_are_off_it():
    """A range whose ends are off its grid (a `step`, or the fixed 0.5 of margins, spacing and border padding and
    0.25 of border widths): draws land on the grid points inside it, not the nearest ones outside; a range that
    holds no grid point is drawn unsnapped within it (not a border drawn at width 0). Ranges whose ends are on
    the grid (the defaults') reach both ends as before."""
    p = load_params()
    p["font_size"] = {"range": [7.2, 13.9], "step": 0.5}
    p["line_height_delta"] = {"range": [0.1, 1.3], "step": 0.5}
    p["margins"]["range"] = [10.2, 10.4]
    p["spacing"] = {"small": {"weight": 1, "range": [1.1, 2.2]}}
    p["borders"] = {"probability": 1.0, "width": [0.1, 0.2], "padding": [2.2, 3.3]}
    s = StyleSampler(p, seed=0)
    cs = [s.draw(i)[0] for i in range(400)]
    assert {c.font_size for c in cs} == {7.5 + 0.5 * k for k in range(13)}  # 7.5 .. 13.5: every point inside
    assert {round(c.line_height - c.font_size, 4) for c in cs} == {0.5, 1.0}
    assert all(10.2 <= c.margin_x <= 10.4 and 10.2 <= c.margin_y <= 10.4 for c in cs)
    assert {c.space_before for c in cs} | {c.space_after for c in cs} == {1.5, 2.0}
    assert all(0.1 <= c.border_width <= 0.2 for c in cs) and {c.border_padding for c in cs} == {2.5, 3.0}
    default = StyleSampler(seed=0)
    sizes = {default.draw(i)[0].font_size for i in range(400)}
    assert min(sizes) == 7.0 and max(sizes) == 14.0 and all(x * 2 == int(x * 2) for x in sizes)


def test_italics_are_chosen_at_the_configured_rate(draws):
    s, ds = draws
    with_italic = [ch for _, ch in ds if s.pool.fonts.get((ch["family"], True))]
    assert close(sum(ch["italic"] for ch in with_italic), len(with_italic), s.params["fonts"]["italic"])
    for _, ch in ds:
        assert is_italic(ch["font"]) == ch["italic"]


# ----------------------------------------------------------------- exclusion rules
def test_accepted_samples_break_no_rule():
    s = StyleSampler(seed=7)
    rules = s.params["rules"]
    samples = s.samples(range(300))
    for smp in samples:
        c = smp.config
        assert check_rules(c, rules) is None
        c.validate()
        assert c.line_height >= c.font_size
        assert min(contrast_ratio(c.font_color, c.page_bg_color),
                   contrast_ratio(c.font_color, c.para_bg_color)) >= rules["min_contrast"]
        assert c.font_size * c.dpi / 72 >= rules["min_glyph_px"]
        assert smp.attempts == len(smp.rejected) + 1
    assert sum(s.rejections.values()) == sum(len(x.rejected) for x in samples) > 0
    assert set(s.rejections) == set(RULES)


def base_config(**kw) -> RenderConfig:
    return RenderConfig(**{"page_size": "A4", "dpi": 96, "font_size": 10, "line_height": 12, **kw})


@pytest.mark.parametrize("rule,kw", [
    ("line_height_below_font_size", {"line_height": 9}),
    ("no_text_area", {"margin_x": 295}),
    ("no_text_area", {"margin_y": 420}),
    ("page_over_pixel_limit", {"page_size": (20000, 20000)}),
    ("invalid_config", {"font_path": "no-such-font.ttf"}),
    ("low_contrast", {"font_color": "#BBBBBB"}),
    ("low_contrast", {"para_bg_color": "#111111"}),
    ("glyphs_too_small", {"dpi": 45, "font_size": 7, "line_height": 8}),
    ("over_model_pixel_budget", {"dpi": 300}),
])
def test_each_rule_names_what_it_rejects(rule, kw):
    assert rule in RULES
    assert check_rules(base_config(), load_params()["rules"]) is None
    assert check_rules(base_config(**kw), load_params()["rules"]) == rule


def test_the_pixel_budget_is_the_checkpoints_when_given():
    from glyph_rt.render.tokens import VISION_MODELS

    rules = load_params()["rules"]
    small = VISION_MODELS["glm4v"].with_limits(None, 2 * 28 * 28 * 300)  # a checkpoint's tighter limit
    assert check_rules(base_config(), rules) is None
    assert check_rules(base_config(), rules, small) == "over_model_pixel_budget"
    sampler = StyleSampler(seed=0, vision=small)
    draws = sampler.samples(range(20))
    assert all(check_rules(d.config, rules, small) is None for d in draws)
    plain = StyleSampler(seed=0)
    plain.samples(range(20))
    assert sampler.rejections["over_model_pixel_budget"] > plain.rejections["over_model_pixel_budget"]


@pytest.mark.parametrize("rule,overrides", [
    ("line_height_below_font_size", {"line_height_delta": {"range": [-2, 2]}}),
    ("low_contrast", {"colors": {"presets": {"weight": 0}, "light_web": {"weight": 0}, "light_code": {"weight": 0},
                                 "dark_document": {"weight": 0}, "dark_web": {"weight": 0}, "dark_code": {"weight": 0},
                                 "light_document": {"weight": 1, "triplets": [["#FFFFFF", "#FFFFFF", "#CCCCCC"],
                                                                              ["#FFFFFF", "#FFFFFF", "#000000"]]}}}),
    ("glyphs_too_small", {"dpi": {"lowest": {"weight": 1}, "low": {"weight": 0}, "medium": {"weight": 0},
                                  "normal": {"weight": 0}, "high": {"weight": 0}}, "font_size": {"range": [5, 9]}}),
    ("no_text_area", {"margins": {"range": [150, 300]}}),
])
def test_rejections_are_counted_and_redrawn(tmp_path, rule, overrides):
    s = sampler_with(tmp_path, **overrides)
    samples = s.samples(range(60))
    assert s.rejections[rule] > 0
    assert s.rejections[rule] == sum(x.rejected.count(rule) for x in samples)
    assert all(check_rules(x.config, s.params["rules"]) is None for x in samples)
    # a redraw is deterministic: another sampler gives the same accepted draw after the same rejections
    again = sampler_with(tmp_path, **overrides).sample(samples[-1].index)
    assert again.to_dict() == samples[-1].to_dict()


def test_a_sample_that_can_never_pass_names_the_rule(tmp_path):
    s = sampler_with(tmp_path, line_height_delta={"range": [-3, -1]}, rules={"max_attempts": 5})
    with pytest.raises(StyleConfigError, match=r"rules\.max_attempts.*line_height_below_font_size"):
        s.sample(0)
    assert s.rejections["line_height_below_font_size"] == 5


def test_contrast_ratio_is_wcags():
    assert contrast_ratio("#000000", "#FFFFFF") == pytest.approx(21.0)
    assert contrast_ratio("#777777", "#FFFFFF") == pytest.approx(4.48, abs=0.01)
    assert contrast_ratio("#123456", "#123456") == pytest.approx(1.0)


# ----------------------------------------------------------------- reproducibility
def test_sample_i_does_not_depend_on_workers_or_order():
    single = [x.to_dict() for x in StyleSampler(seed=5).samples(range(200))]
    # two workers, each drawing every other index, in reverse order
    a, b = StyleSampler(seed=5), StyleSampler(seed=5)
    split = {x.index: x.to_dict() for x in a.samples(range(199, -1, -2))}
    split.update({x.index: x.to_dict() for x in b.samples(range(0, 200, 2))})
    assert [split[i] for i in range(200)] == single
    assert [c.to_dict() for c in sample_styles(10, seed=5, start=190)] == [d["config"] for d in single[190:]]
    assert [x.to_dict() for x in StyleSampler(seed=6).samples(range(20))] != single[:20]


def test_the_stream_of_an_index_is_pinned():
    """Seeded from a string (SHA-512), not hash(): the same in every process, rank and PYTHONHASHSEED."""
    assert StyleSampler(seed=0).rng(0, 0).random() == 0.3777724112850599
    assert StyleSampler(seed=1).rng(5, 2).random() == 0.2664525348190141


# ----------------------------------------------------------------- YAML
def test_yaml_round_trip(tmp_path):
    s = StyleSampler(seed=3)
    s.save(tmp_path / "copy.yaml")
    t = StyleSampler.from_file(tmp_path / "copy.yaml", seed=3)
    assert t.params == s.params
    assert [x.to_dict() for x in t.samples(range(30))] == [x.to_dict() for x in s.samples(range(30))]


def test_a_partial_file_overrides_only_its_keys(tmp_path):
    s = sampler_with(tmp_path, alignment={"values": {"center": 1}}, dpi={"tiny": {"weight": 5, "values": [200]}})
    assert s.params["alignment"]["values"] == {"center": 1}  # value maps are replaced whole
    assert s.params["margins"] == load_params()["margins"]
    draws = [s.draw(i) for i in range(200)]
    assert {c.alignment for c, _ in draws} == {"center"}
    assert any(ch["dpi"] == "tiny" and c.dpi == 200 for c, ch in draws)


@pytest.mark.parametrize("overrides,match", [
    ({"fontz": 1}, r"unknown key 'fontz'; known here: dpi, page_size"),
    ({"margins": {"rang": [1, 2]}}, r"unknown key 'margins\.rang'"),
    ({"rules": {"min_contrat": 3}}, r"unknown key 'rules\.min_contrat'"),
    ({"alignment": {"values": {"left": -1}}}, r"alignment\.values: weights must be >= 0"),
    ({"page_size": {"paper": {"values": {"A9": 1}}}}, r"page_size\.paper\.values: unknown paper"),
    ({"colors": {"presets": {"names": ["neon"]}}}, r"colors\.presets\.names: preset: 'neon' is unknown"),
    ({"fonts": "DejaVu"}, r"'fonts' must be a mapping like the default's \(bundled, system"),
    ({"colors": {"light_web": {"triplets": [["#FFF", "#FFF", "blurple"]]}}}, r"colors\.light_web\.triplets"),
    ({"margins": {"range": [40, 10]}}, r"margins\.range: min 40.0 is above max 10.0"),
    ({"dpi": {"odd": {"weight": 1}}}, r"dpi\.odd: give either 'range' or 'values'"),
    ({"dpi": {"normal": {"range": [72, 96]}}}, r"unknown key 'dpi\.normal\.range'; known here: weight, values"),
    ({"indent": {"sideways": {"weight": 1}}}, r"unknown key 'indent\.sideways'"),
    ({"fonts": {"families": {"comic": 1}}}, r"fonts\.families: unknown class"),
    ({"borders": {"probability": 1.5}}, r"borders\.probability: 1\.5 must be a probability"),
    ({"rules": {"model": "gpt"}}, r"rules\.model: 'gpt'"),
    ({"fonts": {"bold": 0.5}}, r"fonts\.bold: 0\.5 must be true or false"),
])
def test_bad_keys_and_values_are_named(tmp_path, overrides, match):
    with pytest.raises(StyleConfigError, match=match):
        sampler_with(tmp_path, **overrides)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(StyleConfigError, match="does not exist"):
        StyleSampler.from_file(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("dpi: [unclosed\n", encoding="utf-8")
    with pytest.raises(StyleConfigError, match="bad.yaml.*not valid YAML"):
        StyleSampler.from_file(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n", encoding="utf-8")
    with pytest.raises(StyleConfigError, match="must be a mapping"):
        StyleSampler.from_file(tmp_path / "list.yaml")


# ----------------------------------------------------------------- font pool
def test_font_name_heuristics():
    assert font_class("DejaVuSansMono") == "mono" and font_class("DejaVuSerif") == "serif"
    assert font_class("DejaVuSans") == "sans" and font_class("PressStart2P-Regular") == "pixel"
    assert font_class("LiberationSerif-Italic") == "serif" and font_class("NotoSans-Regular") == "sans"
    assert is_italic("DejaVuSerif-Italic.ttf") and is_italic("FreeSansOblique.ttf") and is_italic("Foo-It.otf")
    assert not is_italic("DejaVuSans.ttf") and not is_italic("Digital.ttf")


def test_user_fonts_join_the_pool_deduplicated(tmp_path):
    d = tmp_path / "fonts"
    d.mkdir()
    shutil.copy(BUILTIN_FONTS["sans"], d / "DejaVuSans.ttf")  # a duplicate of a bundled font
    shutil.copy(BUILTIN_FONTS["mono"], d / "TinyPixel-Regular.ttf")
    shutil.copy(BUILTIN_FONTS["serif"], d / "MySerif-Italic.ttf")
    pool = build_font_pool(True, False, str(d))
    assert pool.sources == {"bundled": 3, "user_dir": 2}
    assert pool.fonts[("pixel", False)] == (str(d / "TinyPixel-Regular.ttf"),)
    assert pool.fonts[("serif", True)] == (str(d / "MySerif-Italic.ttf"),)
    s = sampler_with(tmp_path, fonts={"system": False, "user_dir": "fonts", "families": {"pixel": 1}})
    smp = s.sample(0)
    assert smp.choices["family"] == "pixel" and smp.config.font_path == str(d / "TinyPixel-Regular.ttf")
    with pytest.raises(StyleConfigError, match="fonts.user_dir: .* is not a directory"):
        build_font_pool(True, False, str(tmp_path / "nope"))


def test_a_pool_without_system_fonts_uses_the_bundled_families(tmp_path):
    s = sampler_with(tmp_path, fonts={"system": False})
    assert s.pool.classes() == ["sans", "serif", "mono"]
    configs = [s(i) for i in range(50)]
    assert all(c.font_path is None and c.font_family in ("sans", "serif", "mono") for c in configs)


# ----------------------------------------------------------------- CLI
def test_cli_writes_its_files(tmp_path, capsys):
    out = tmp_path / "styles"
    assert main(["styles", "--n", "4", "--seed", "0", "--out", str(out)]) == 0
    lines = (out / "styles.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["index"] for x in lines] == [0, 1, 2, 3]
    assert [json.loads(x)["config"] for x in lines] == [c.to_dict() for c in sample_styles(4, seed=0)]
    report = json.loads((out / "rejections.json").read_text(encoding="utf-8"))
    assert set(report["rejections"]) == set(RULES) and report["samples"] == 4
    assert report["draws"] == 4 + sum(report["rejections"].values())
    from PIL import Image

    assert Image.open(out / "contact_sheet.png").size[0] >= 2 * 200
    pytest.importorskip("matplotlib")
    assert Image.open(out / "distributions.png").size[0] > 0
    assert "wrote" in capsys.readouterr().out


def test_cli_without_matplotlib_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "styles"
    assert main(["styles", "--n", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped distributions.png" in err and "pip install 'glyph_rt[plots]'" in err
    assert (out / "contact_sheet.png").is_file() and not (out / "distributions.png").exists()


def test_cli_bad_config_is_named(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text("dpi:\n  normal: {weigth: 1}\n", encoding="utf-8")
    assert main(["styles", "--n", "1", "--config", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "dpi.normal.weigth" in capsys.readouterr().err
    assert main(["styles", "--n", "0", "--out", str(tmp_path / "o")]) == 2


def test_the_style_report_writes_each_file_whole(tmp_path, monkeypatch):
    """A report that fails while saving its contact sheet leaves the files written before it whole and no sheet (or
    temporary file) at all."""
    from PIL import Image

    from glyph_rt.train.style_report import write_report

    def broken_save(self, fp, *a, **k):
        open(fp, "wb").write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_report(StyleSampler(seed=0), 3, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rejections.json", "styles.jsonl"]
    assert len((tmp_path / "styles.jsonl").read_text().splitlines()) == 3
