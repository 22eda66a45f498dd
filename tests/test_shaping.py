"""HarfBuzz shaping of Devanagari and other scripts: glyph clusters, advances, character accounting."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import glyph_rt
from glyph_rt import RenderConfig
from glyph_rt.render import fonts, shaping
from glyph_rt.render.atlas import FontAtlas
from glyph_rt.render.layout import layout_text, text_codepoints

hb = pytest.importorskip("uharfbuzz")
WORD = "हिन्दी क्षत्रिय श्री"  # reordered vowel sign i, conjuncts (n+d, k+ss, t+r, sh+r), ii
CFG = RenderConfig(font_size=24, line_height=30, dpi=72, page_size=(500, 120), snap=0)


@pytest.fixture(scope="module")
def deva_font():
    font = fonts.system_font_for(0x0915)
    if font is None:
        pytest.skip("no installed font has Devanagari (e.g. apt-get install fonts-noto-core)")
    return font


def hb_shape(font, text):
    path, index = fonts.split_face(font)
    f = hb.Font(hb.Face(hb.Blob.from_file_path(path), index))
    buf = hb.Buffer()
    buf.add_str(text)
    buf.guess_segment_properties()
    hb.shape(f, buf, {})
    return [i.codepoint for i in buf.glyph_infos], [p.x_advance for p in buf.glyph_positions], f.face.upem


def test_word_matches_harfbuzz_glyphs_and_advances(deva_font):
    lay, atlas = layout_text(WORD, CFG)
    assert deva_font in atlas.fonts
    keys = {slot: key for key, slot in atlas._clusters.items()}
    src = lay.g_src.tolist()
    for word in WORD.split(" "):
        s = WORD.index(word)
        idx = [k for k, i in enumerate(src) if s <= i < s + len(word)]
        assert len(idx) == len(word)  # one placement per character: the cluster, then zero-width ones
        gids, advs, upem = hb_shape(deva_font, word)
        ours, xs, starts = [], [], []
        for k in idx:
            glyphs = keys[int(lay.g_slot[k])].split(":", 1)[1]
            if glyphs:
                starts.append(len(ours))
                ours += [tuple(map(int, g.split(","))) for g in glyphs.split(";")]
                xs.append(float(lay.g_x[k]))
        assert [g[0] for g in ours] == gids
        assert [g[1] for g in ours] == advs
        assert len(gids) < len(word)  # conjuncts: fewer glyphs than characters
        # clusters are placed at HarfBuzz's pen positions
        pen = np.cumsum([0] + [g[1] for g in ours])
        scale = CFG.font_size / upem
        np.testing.assert_allclose(np.asarray(xs) - xs[0], pen[starts] * scale, atol=1e-3)


def test_every_character_accounted(deva_font):
    text = WORD + "\n" + "ภาษาไทย น้ำ தமிழ் கொ বাংলা ক্ষ " * 20
    p = glyph_rt.render(text, CFG)
    c = p.document.char_counts()
    assert c["placed_chars"] + c["whitespace_chars"] == len(text) and c["unplaced_chars"] == 0
    spans = p.page_spans
    assert spans[0][0] == 0 and spans[-1][1] == len(text.rstrip())
    lay = p.document.layout
    assert sorted(lay.g_src.tolist()) == [i for i, ch in enumerate(text) if not ch.isspace()]


def test_single_glyph_cluster_draws_like_the_character(deva_font):
    """A cluster of one nominal glyph composites to the same bitmaps as that character's own slot."""
    atlas = FontAtlas.get([deva_font], 24, 72)
    atlas.ensure([0x0915])
    face = [f for f in atlas.fonts].index(deva_font)
    gids, advs, _ = hb_shape(deva_font, "\u0915")
    slot = atlas.cluster_slot(face, [(gids[0], advs[0], 0, 0)])
    char = int(atlas.lut[0x0915])
    for ph in range(atlas.phases):
        a, meta = atlas.bitmap(slot, ph)
        b, meta_b = atlas.bitmap(char, ph)
        assert meta == meta_b and np.array_equal(a, b)
    assert atlas.arrays()["advance"][slot] == pytest.approx(atlas.arrays()["advance"][char])


def test_rendered_word_has_ink_where_harfbuzz_puts_it(deva_font):
    p = glyph_rt.render("क्षि", CFG)
    page = p[0].numpy()
    ink = np.flatnonzero((page[..., 0] < 128).any(axis=0))
    assert len(ink) and ink.min() >= 0
    gids, advs, upem = hb_shape(deva_font, "क्षि")
    width = sum(advs) * CFG.font_size / upem
    x0 = CFG.margin_x + CFG.frame_padding
    assert ink.min() >= x0 - 3 and ink.max() <= x0 + width + 3  # the reordered sign stays in the cluster


def test_other_text_is_not_shaped():
    for text in ["Hello, world", "東京 한국어", "العربية", "naïve — ok", ""]:
        assert shaping.shape(text, text_codepoints(text), None) is None


def test_cluster_slots_survive_the_disk_cache(deva_font, tmp_path, monkeypatch):
    monkeypatch.setenv("GLYPH_RT_CACHE", str(tmp_path))
    a = FontAtlas([deva_font], 13, 72)
    gids, advs, _ = hb_shape(deva_font, "क्ष")
    slot = a.cluster_slot(0, [(g, x, 0, 0) for g, x in zip(gids, advs)])
    a.save()
    b = FontAtlas([deva_font], 13, 72)
    assert b._clusters == a._clusters and b.cluster_slot(0, [(g, x, 0, 0) for g, x in zip(gids, advs)]) == slot


def test_document_crosses_to_a_process_that_met_other_clusters(deva_font, tmp_path, monkeypatch):
    """A pickled Document's cluster slots are found again by face and glyphs: a process (a DataLoader's main
    process, say) whose atlas met other clusters first draws the same pixels."""
    import pickle
    from collections import OrderedDict

    monkeypatch.setenv("GLYPH_RT_CACHE", str(tmp_path / "a"))
    monkeypatch.setattr(FontAtlas, "_memory", OrderedDict())
    doc = glyph_rt.Document(WORD, CFG)
    want, sizes = doc.rasterize()
    data = pickle.dumps(doc)
    monkeypatch.setenv("GLYPH_RT_CACHE", str(tmp_path / "b"))
    monkeypatch.setattr(FontAtlas, "_memory", OrderedDict())
    first = glyph_rt.Document("ठीक है कृपया", CFG)
    other = pickle.loads(data)
    assert other.atlas is first.atlas and not np.array_equal(other.layout.g_slot, doc.layout.g_slot)
    got, got_sizes = other.rasterize()
    assert got_sizes == sizes and np.array_equal(got, want)


SHAPED_ALPHABET = ("\u0915\u094d\u0937\u093f\u0930\u0947\u0902\u0901\u093c\u0964\u0967"  # Devanagari
                   "\u0b95\u0bca\u0bcd\u0bbe"  # Tamil
                   "\u0e19\u0e49\u0e33\u0e35\u0e48"  # Thai
                   "\u1019\u103c\u1014\u103a\u102c"  # Myanmar
                   "\u09a4\u09cd\u09b0"  # Bengali
                   "\u200c\u200d a\n\t")


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=SHAPED_ALPHABET, max_size=80))
def test_generated_shaped_text_accounts_every_character(deva_font, text):
    doc = glyph_rt.Document(text, CFG)
    c = doc.char_counts()
    assert c["unplaced_chars"] == 0 and c["stripped_chars"] == 0
    assert c["placed_chars"] + c["whitespace_chars"] == len(text)
    lay = doc.layout
    assert sorted(lay.g_src.tolist()) == [i for i, ch in enumerate(text) if not ch.isspace()]
    if doc.num_pages:
        buf, sizes = doc.rasterize()
        assert len(sizes) == doc.num_pages
