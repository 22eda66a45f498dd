import numpy as np
import pytest
import torch

import glyph_rt
from glyph_rt import RenderConfig
from glyph_rt.render.textio import sample_text

TEXT = sample_text()[:6000]


def test_render_api_and_summary():
    pages = glyph_rt.render(TEXT, RenderConfig())
    assert len(pages) >= 1
    for img, (w, h) in zip(pages, pages.sizes):
        assert img.dtype == torch.uint8 and tuple(img.shape) == (h, w, 3)
        assert w % 28 == 0 and h % 28 == 0  # default canvas snapping
    s = pages.summary()
    assert s["pages"] == len(pages) and s["text_tokens"] > 0
    assert s["visual_tokens"]["glm4v"] == sum(w * h // 784 for w, h in pages.sizes)
    assert s["compression_ratio"]["glm4v"] == pytest.approx(s["text_tokens"] / s["visual_tokens"]["glm4v"], rel=1e-3)
    assert s["missing_glyphs"]["count"] == 0


@pytest.mark.parametrize("preset", sorted(glyph_rt.PRESETS))
def test_cpu_and_reference_rasterizers_are_pixel_identical(preset):
    cfg = RenderConfig.preset(preset)
    text = "Tab\there,  two spaces.\n" + TEXT[:1500] + "\nÜber naïve café — “quotes” 中文 \u0301x \uE000"
    a = glyph_rt.render(text, cfg, backend="cpu")
    b = glyph_rt.render(text, cfg, backend="reference")
    assert a.sizes == b.sizes
    assert torch.equal(a.buffer, b.buffer)


def test_glyph_preset_page_sizes_and_crop():
    pages = glyph_rt.render(TEXT, RenderConfig.preset("glyph"))
    W, H = 595, 842
    for i, (w, h) in enumerate(pages.sizes):
        assert w <= W
        assert h == H or i == len(pages) - 1
    assert pages.sizes[-1][1] < H  # the last page is cropped


def test_crop_rounds_fractional_margins_as_pil():
    """Glyph crops to (ink + margin) in float pixels, which PIL's crop rounds half to even."""
    from glyph_rt.render.raster import final_sizes

    cfg = RenderConfig(margin_x=10.5, margin_y=9.5, snap=0)
    right, bottom = np.array([575, 576, 580, 580]), np.array([400, 400, 401, 402])
    sizes = final_sizes(cfg, right, bottom, 0, 4, (595, 842))
    assert sizes == [(586, 842), (586, 842), (590, 842), (590, 410)]  # 585.5, 586.5 -> 586; 401 + 9.5 -> 410
    cfg = RenderConfig(margin_x=12.7, margin_y=9.3, snap=0)
    assert final_sizes(cfg, np.array([577]), np.array([444]), 0, 1, (595, 842)) == [(590, 452)]  # 589.7, 452.3
    # the crop never passes the page
    assert final_sizes(cfg, np.array([590]), np.array([840]), 0, 1, (595, 842)) == [(595, 842)]


def test_no_crop_no_snap_gives_full_pages():
    cfg = RenderConfig(auto_crop_width=False, auto_crop_last_page=False, snap=0, dpi=96)
    pages = glyph_rt.render(TEXT, cfg)
    assert set(pages.sizes) == {(794, 1123)}


def test_colors_backgrounds_and_borders():
    cfg = RenderConfig(page_bg_color="#102030", para_bg_color="#405060", border_width=2, border_padding=3,
                       para_border_color="#FF0000", font_color="#FFFF00", snap=0, auto_crop_width=False,
                       auto_crop_last_page=False)
    img = glyph_rt.render("hello world\n" * 5, cfg)[0].numpy()
    colors = {tuple(c) for c in img.reshape(-1, 3)[::7]}
    assert (0x10, 0x20, 0x30) in colors and (0x40, 0x50, 0x60) in colors and (255, 0, 0) in colors
    assert img[..., 0].max() == 255 and (img[..., 2] < 0x60).any()  # yellow text blended in


def test_horizontal_scale_narrows_the_page():
    cfg = RenderConfig(horizontal_scale=0.8, snap=0, auto_crop_width=False)
    assert glyph_rt.render(TEXT[:500], cfg).sizes[0][0] == int(595 * 0.8)


def test_page_spans_cover_the_text_in_order():
    text = TEXT * 3
    doc = glyph_rt.Document(text, RenderConfig())
    spans = doc.page_spans()
    assert spans[0][0] == 0 and spans[-1][1] == len(text.rstrip())
    for (a, b), (c, d) in zip(spans, spans[1:]):
        assert a < b <= c < d
    for page, s, e in doc.line_spans()[:50]:
        assert text[s:e] == text[s:e].strip()


def test_a_page_without_lines_has_an_empty_span_not_the_layouts_placeholder():
    """Whitespace alone (or a zero-width space) lays out to a page with no line: its span was (-1, -1)."""
    for text in (" ", "\u200b", "\u3000"):
        doc = glyph_rt.Document(text, RenderConfig())
        assert doc.num_pages == 1 and doc.page_spans() == [(0, 0)], text
    assert glyph_rt.Document("\t", RenderConfig.preset("glyph")).page_spans() == [(0, 0)]
    doc = glyph_rt.Document(" ", RenderConfig(), max_pages=1)
    assert doc.held_end(1) >= 0 and doc.char_counts()["whitespace_chars"] == 1


def test_visual_tokens_refuse_sizes_that_are_no_page():
    for bad in ([(0, 0)], [(-28, 28)], [(28.5, 28)], [(28,)]):
        with pytest.raises(ValueError, match=r"sizes\[0\]: .* is no page size"):
            glyph_rt.visual_tokens(bad)
    assert glyph_rt.visual_tokens([(np.int64(588), 840)]) == [630]


def test_a_document_keeps_its_own_config():
    cfg = RenderConfig()
    doc = glyph_rt.Document("hello", cfg)
    cfg.dpi = 144  # the caller's object changes after the layout
    assert doc.config.dpi == 72 and doc.summary([(10, 10)], tokenizer=None)["config"]["dpi"] == 72


def test_subpixel_phases_must_be_a_whole_number():
    with pytest.raises(ValueError, match="subpixel_phases: 4.0 must be 1, 2, 4 or 8"):
        RenderConfig(subpixel_phases=4.0).validate()


def test_missing_glyphs_are_drawn_and_counted():
    text = "abc \U000F0000\U000F0001 def \U000F0000"  # private-use plane: no font has these
    pages = glyph_rt.render(text, RenderConfig(auto_cjk_fallback=False))
    s = pages.summary(tokenizer=None)
    assert s["missing_glyphs"]["count"] == 3
    assert s["missing_glyphs"]["chars"] == {"\U000F0000": 2, "\U000F0001": 1}


def test_fallback_font_covers_what_the_main_font_lacks():
    from glyph_rt.render.fonts import BUILTIN_FONTS

    # DejaVu Sans Mono lacks Arabic presentation forms that DejaVu Sans has
    ch = "\uFEF5"
    cfg = RenderConfig(font_family="mono")
    s = glyph_rt.render("x" + ch, cfg).summary(tokenizer=None)
    assert s["missing_glyphs"]["count"] == 0
    assert str(BUILTIN_FONTS["sans"]) in glyph_rt.render.__globals__["Document"]("x", cfg).atlas.fonts


def test_atlas_disk_cache_roundtrip(tmp_path, monkeypatch):
    from glyph_rt.render.atlas import FontAtlas
    from glyph_rt.render.fonts import BUILTIN_FONTS

    monkeypatch.setenv("GLYPH_RT_CACHE", str(tmp_path))
    fonts = [str(BUILTIN_FONTS["serif"])]
    a = FontAtlas(fonts, 11, 96, 0.9, 4)
    a.ensure([ord(c) for c in "Hello"])
    a.save()
    b = FontAtlas(fonts, 11, 96, 0.9, 4)
    assert b.num_slots == a.num_slots
    for k, v in a.arrays().items():
        np.testing.assert_array_equal(v, b.arrays()[k])


def test_atlas_files_of_earlier_versions_are_removed(tmp_path, monkeypatch):
    from glyph_rt.render import atlas as A
    from glyph_rt.render.fonts import BUILTIN_FONTS

    d = tmp_path / "atlas"
    d.mkdir()
    old, later, other = d / "atlas-v1-abc.npz", d / f"atlas-v{A.ATLAS_VERSION + 1}-abc.npz", d / "notes.txt"
    for f in (old, later, other):
        f.write_bytes(b"x")
    monkeypatch.setenv("GLYPH_RT_CACHE", str(tmp_path))
    monkeypatch.setattr(A, "_pruned", set())
    a = A.FontAtlas([str(BUILTIN_FONTS["mono"])], 10.5, 90, 1.0, 4)
    a.ensure([ord("Q")])
    a.save()
    assert not old.exists() and later.exists() and other.exists()
    assert list(d.glob(f"atlas-v{A.ATLAS_VERSION}-*.npz"))


def test_document_with_cluster_slots_crosses_to_a_process_that_met_other_clusters(tmp_path, monkeypatch):
    """Shaped clusters (HarfBuzz) have no codepoint: a pickled Document carries each one's face and glyphs, so
    a process whose atlas numbered clusters in another order draws the same pixels. Built here from the
    bundled font's glyphs, which any machine has (tests/test_shaping.py does it with a shaped script)."""
    import pickle
    from collections import OrderedDict

    from glyph_rt.render.atlas import FontAtlas
    from glyph_rt.render.layout import atlas_for

    cfg = RenderConfig(font_size=24, line_height=30, page_size=(300, 120), snap=0)
    monkeypatch.setenv("GLYPH_RT_CACHE", str(tmp_path / "a"))
    monkeypatch.setattr(FontAtlas, "_memory", OrderedDict())
    doc = glyph_rt.Document("ab cd", cfg)
    atlas = doc.atlas
    gid = {c: atlas._faces[0].get_char_index(ord(c)) for c in "fixyz"}
    fi = atlas.cluster_slot(0, [(gid["f"], 700, 0, 0), (gid["i"], 600, 0, 300)])  # a two-glyph cluster
    empty = atlas.cluster_slot(0, [])  # a character merged into the cluster before it
    lay = doc.layout
    src = lay.g_src.tolist()
    lay.g_slot[src.index(0)], lay.g_slot[src.index(1)], lay.g_slot[src.index(4)] = fi, empty, fi
    want, sizes = doc.rasterize()
    data = pickle.dumps(doc)
    # "another process": an empty atlas cache that met other clusters first
    monkeypatch.setenv("GLYPH_RT_CACHE", str(tmp_path / "b"))
    monkeypatch.setattr(FontAtlas, "_memory", OrderedDict())
    other_atlas = atlas_for(cfg)
    other_atlas.ensure([ord(c) for c in "zyxwvu"])
    for c in "xyz":
        other_atlas.cluster_slot(0, [(gid[c], 500, 0, 0)])
    other = pickle.loads(data)
    assert other.atlas is other_atlas and int(other.layout.g_slot[src.index(0)]) != fi
    assert other.layout.g_slot[src.index(0)] == other.layout.g_slot[src.index(4)]
    got, got_sizes = other.rasterize()
    assert got_sizes == sizes and np.array_equal(got, want)


def test_unavailable_device_is_a_clear_error():
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            glyph_rt.render("x", device="cuda")
    with pytest.raises(ValueError, match="backend"):
        glyph_rt.render("x", backend="vulkan")


def test_memory_guard():
    with pytest.raises(MemoryError, match="iter_chunks"):
        glyph_rt.render(TEXT, max_bytes=1000)


def test_package_imports_without_extension(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['glyph_rt._C'] = None\n"
        "import warnings; warnings.simplefilter('ignore')\n"
        "import glyph_rt\n"
        "b = glyph_rt.backends(); assert not b['cpu']['available'] and b['reference']['available']\n"
        "p = glyph_rt.render('hello world'); assert p.document.backend == 'reference' and len(p) == 1\n"
        "print('ok')\n"
    )
    env = {**__import__("os").environ, "GLYPH_RT_CACHE": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_render_past_the_default_limit_stops_before_allocating_pages():
    import tracemalloc

    text = "a\n" * 250_000  # ~3,000 pages: about 4.5 GiB of pages, over the default 4 GiB
    tracemalloc.start()
    try:
        with pytest.raises(MemoryError, match=r"GiB.*Document\(\.\.\.\)\.iter_chunks\(\) or `glyph-rt render`"):
            glyph_rt.render(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 << 20  # the check ran on the page count and sizes, before any page buffer


def test_layout_arrays_are_compact_and_account_for_every_character():
    text = sample_text()[:200_000]
    doc = glyph_rt.Document(text, RenderConfig())
    lay = doc.layout
    assert lay.nbytes() / len(text) < 10.5  # was 17.8 bytes per character with per-glyph pages and baselines
    assert lay.g_slot.dtype == np.uint16 and lay.g_src.dtype == np.int32
    # every drawn character is a glyph that knows its source index, page and line
    drawn = [i for i, c in enumerate(text) if not c.isspace()]
    assert lay.placed == len(lay.g_src) and np.array_equal(np.sort(lay.g_src), drawn)
    page, y = lay.g_page, lay.g_y
    line = {(p, v) for p, v in zip(lay.l_page.tolist(), lay.l_y.tolist())}
    assert {(p, v) for p, v in zip(page.tolist(), y.tolist())} <= line
    lo, hi, p2, y2 = lay.page_glyphs(2, 5)
    assert np.array_equal(p2, page[lo:hi]) and np.array_equal(y2, y[lo:hi]) and set(p2.tolist()) == {2, 3, 4}
    with pytest.raises(ValueError, match="read-only"):
        lay.g_y[0] = 1.0  # a change must go through set_rows, never be lost in a temporary
    with pytest.raises(ValueError, match="pages in order"):
        lay.set_rows(page[::-1], y)


def test_save_replaces_an_earlier_runs_pages(tmp_path):
    out = tmp_path / "o"
    first = glyph_rt.render(TEXT * 3).save(out, tokenizer=None)
    (out / "page_cover.png").write_bytes(b"not ours")
    paths = glyph_rt.render("short text").save(out, tokenizer=None)
    assert len(first) > 1 and paths == [str(out / "page_001.png")]
    assert sorted(p.name for p in out.iterdir()) == ["page_001.png", "page_cover.png", "summary.json"]
    s = __import__("json").loads((out / "summary.json").read_text())
    assert s["pages"] == 1 and s["complete"] is True


def test_max_pages_ratio_counts_the_text_on_the_pages():
    from glyph_rt.render.tokens import get_tokenizer

    text = sample_text()
    pages = glyph_rt.render(text, max_pages=1)
    s = pages.summary()
    end = pages.page_spans[-1][1]
    assert s["truncated"] and s["text_tokens_chars"] == end < len(text)
    assert s["text_tokens"] == get_tokenizer().count(text[:end])
    whole = glyph_rt.render(text).summary()["compression_ratio"]["glm4v"]
    assert abs(s["compression_ratio"]["glm4v"] - whole) < 0.5  # was 21x against 2.5x: all text, one page
    # everything past the page is unplaced, whitespace included
    assert s["placed_chars"] == sum(not c.isspace() for c in text[:end])
    assert s["whitespace_chars"] == sum(c.isspace() for c in text[:end])
    assert s["unplaced_chars"] == len(text) - end


def test_summary_of_a_stopped_run_counts_the_text_its_pages_hold(tmp_path, monkeypatch):
    import json

    from glyph_rt.render import output
    from glyph_rt.render.tokens import get_tokenizer

    write = output.write_png

    def fail_at_page_3(path, *a, **k):
        if path.name == "page_003.png":
            raise OSError(28, "No space left on device")
        return write(path, *a, **k)

    text = sample_text()[:25000]
    pages = glyph_rt.render(text, RenderConfig())
    assert len(pages) > 3
    monkeypatch.setattr(output, "write_png", fail_at_page_3)
    with pytest.raises(OSError):
        pages.save(tmp_path)
    s = json.loads((tmp_path / "summary.json").read_text())
    end = pages.page_spans[1][1]
    assert s["complete"] is False and s["pages"] == 2
    assert s["text_tokens_chars"] == end < len(text) and s["unplaced_chars"] > 0
    # with a tokenizer, the tokens of the text on the first two pages
    s = pages.document.summary(pages.sizes[:2], pages=2)
    assert s["text_tokens_chars"] == end and s["text_tokens"] == get_tokenizer().count(text[:end])
    assert pages.document.summary(pages.sizes, tokenizer=None)["text_tokens_chars"] == len(text)


def test_summary_of_a_page_the_models_refuse(tmp_path):
    import json

    from glyph_rt.render.output import PageWriter

    doc = glyph_rt.Document("hi", RenderConfig())
    s = doc.summary([(28, 28), (28, 28 * 250)], tokenizer=None)
    assert s["visual_tokens"] == {"glm4v": None, "qwen2_5_vl": None} and s["compression_ratio"]["glm4v"] is None
    assert s["visual_tokens_per_page"]["glm4v"] == [glyph_rt.visual_tokens([(28, 28)], "glm4v")[0], None]
    assert s["visual_tokens_error"]["glm4v"].startswith("page 2 (28x7000 px): page aspect ratio 250")
    # the output directory still gets its summary
    buf = np.full((1, 28 * 250, 28, 3), 255, np.uint8)
    with PageWriter(tmp_path, doc) as w:
        w.write_pages([(0, buf, [(28, 28 * 250)])])
        w.finish(w.summary(None, complete=True))
    got = json.loads((tmp_path / "summary.json").read_text())
    assert got["pages"] == 1 and got["visual_tokens"]["qwen2_5_vl"] is None and got["visual_tokens_error"]


def test_summary_names_the_device_and_rasterizer():
    from conftest import TEST_DEVICE

    s = glyph_rt.render("hello", RenderConfig()).summary(tokenizer=None)
    assert s["device"] == "cpu" and s["backend"] == s["layout_backend"] in ("cpu", "reference")
    # Triton's kernel: on the GPU, or in Triton's interpreter on the CPU
    s = glyph_rt.render("hello", device=TEST_DEVICE, backend="triton").summary(tokenizer=None)
    assert s["device"].startswith(TEST_DEVICE) and s["backend"] == "triton" and s["layout_backend"] != "triton"
    if TEST_DEVICE != "cpu":  # streamed chunks (`glyph-rt render --device cuda`)
        doc = glyph_rt.Document("hello", RenderConfig())
        sizes = [x for _, _, chunk in doc.iter_chunks(device=TEST_DEVICE, backend="triton") for x in chunk]
        s = doc.summary(sizes, tokenizer=None)
        assert s["device"].startswith("cuda") and s["backend"] == "triton"


def test_fractional_pixel_font_size_is_a_scaled_whole_pixel_face(tmp_path, monkeypatch):
    """poppler (SplashFTFont) sets FreeType to splashRound(size in px) and scales by the rest through
    FT_Set_Transform, truncated to 16.16: 9 pt at 100 dpi is a 13 px face at 12.5 / 13; whole sizes are unscaled."""
    from glyph_rt.render.atlas import FontAtlas, poppler_font_scale
    from glyph_rt.render.fonts import BUILTIN_FONTS

    assert poppler_font_scale(9, 100) == (13, 63015, 63015)
    assert poppler_font_scale(11.5, 72) == (12, 62805, 62805)
    assert poppler_font_scale(10, 96) == (13, 67216, 67216)
    for size, dpi in ((9, 72), (9, 96), (10, 144), (9, 120)):
        assert poppler_font_scale(size, dpi)[1:] == (65536, 65536)
    assert poppler_font_scale(9, 100, 0.5)[1] == int(0.5 * (12.5 / 13) * 65536)
    monkeypatch.setenv("GLYPH_RT_CACHE", str(tmp_path))
    atlas = FontAtlas([str(BUILTIN_FONTS["sans"])], 9, 100)
    assert atlas._faces[0].size.y_ppem == 13
    assert abs(atlas.size_px - 12.5) < 1e-12


def test_large_glyphs_are_drawn_at_whole_pixels_as_poppler(tmp_path, monkeypatch):
    """poppler (SplashFont::getGlyph) draws a font without sub-pixel x phases once its glyph box, the font's
    bounding box at the size with each corner truncated plus 3 rows, is over 50 rows: DejaVu Sans at 28 px is 49
    rows (4 phases), at 30 px 52 (every phase is phase 0's bitmap)."""
    import numpy as np

    from glyph_rt.render.atlas import FontAtlas, poppler_glyph_rows
    from glyph_rt.render.fonts import BUILTIN_FONTS

    monkeypatch.setenv("GLYPH_RT_CACHE", str(tmp_path))
    font = str(BUILTIN_FONTS["sans"])
    small, large = FontAtlas([font], 14, 144), FontAtlas([font], 15, 144)
    assert poppler_glyph_rows(small._faces[0], 28.0) == 49 and poppler_glyph_rows(large._faces[0], 30.0) == 52
    for atlas, phased in ((small, True), (large, False)):
        atlas.ensure([ord("e")])
        bitmaps = [atlas.bitmap(atlas.lut[ord("e")], ph) for ph in range(4)]
        same = all(np.array_equal(b[0], bitmaps[0][0]) and b[1] == bitmaps[0][1] for b in bitmaps)
        assert same != phased


def test_paper_edges_where_the_background_covers_under_half_a_pixel():
    """pdftoppm's page is the size rounded up; poppler fills the background over the pixels whose centres it
    covers, so the last column or row stays white paper when under half of it is page."""
    from glyph_rt import RenderConfig
    from glyph_rt.render.raster import paper_edges

    grey = {"page_bg_color": "#F5F5F5", "snap": 0}
    assert paper_edges(RenderConfig(dpi=84, **grey)) == [[694, 0, 695, 983], [0, 982, 695, 983]]
    assert paper_edges(RenderConfig(dpi=96, **grey)) == [[793, 0, 794, 1123]]  # 1122.67 rows: the last filled
    assert paper_edges(RenderConfig(dpi=90, **grey)) == []  # 743.75 x 1052.5: half a pixel is filled
    assert paper_edges(RenderConfig(dpi=84, page_bg_color="#FFFFFF", snap=0)) == []
    assert paper_edges(RenderConfig(dpi=84, page_bg_color="#F5F5F5")) == []  # a snapped canvas: not Glyph's page
