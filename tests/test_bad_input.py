"""Bad input: nothing crashes or hangs, and every non-whitespace character is placed or counted."""
import collections

import numpy as np
import pytest

import glyph_rt
from glyph_rt import RenderConfig
from glyph_rt.render.textio import decode_text

CFG = RenderConfig(auto_cjk_fallback=False)
STRIPPED = "\xad\u200b"


def check_accounting(doc):
    text = doc.text
    ink = [i for i, c in enumerate(text) if not c.isspace() and c not in STRIPPED]
    lay = doc.layout
    source = lay.g_color == 0  # newline-marker glyphs are not source characters
    assert lay.placed == len(ink)
    assert sorted(lay.g_src[source].tolist()) == ink  # each exactly once
    assert lay.stripped == sum(text.count(c) for c in STRIPPED)
    boxes = collections.Counter(text[i] for i in lay.g_src[(lay.g_slot == 0) & source].tolist())
    assert doc.missing_chars() == dict(boxes) and lay.missing == sum(boxes.values())


def render_all(text, cfg=CFG):
    doc = glyph_rt.Document(text, cfg)
    n = 0
    for _, buf, sizes in doc.iter_chunks(64):
        n += len(sizes)
        assert buf.dtype == np.uint8
    assert n == doc.num_pages
    check_accounting(doc)
    return doc


def test_empty_text():
    doc = render_all("")
    assert doc.num_pages == 0
    pages = glyph_rt.render("", CFG)
    assert len(pages) == 0 and pages.summary()["visual_tokens"]["glm4v"] == 0


@pytest.mark.parametrize("text", [" ", "\n", "   \t  \n\n\r\n  ", "\u3000\u2003\xa0"])
def test_whitespace_only(text):
    doc = render_all(text)
    assert doc.layout.placed == 0 and doc.num_pages == 1


def test_ten_megabyte_single_line():
    words = "lorem ipsum dolor sit amet consectetur adipiscing elit "
    text = words * (10_000_000 // len(words))
    doc = render_all(text)
    assert doc.num_pages > 900


def test_one_enormous_word():
    doc = render_all("x" * 200_000)
    assert doc.layout.l_page.size > 100


def test_invalid_utf8():
    data = b"good \xff\xfe bad \xc3( end"
    with pytest.raises(ValueError, match="invalid UTF-8 at byte 5"):
        decode_text(data, "f.txt")
    text, n = decode_text(data, "f.txt", errors="replace")
    assert n == 3 and text.count("\ufffd") == 3
    render_all(text)
    # the offset is the file's, the BOM's 3 bytes included
    with pytest.raises(ValueError, match="invalid UTF-8 at byte 8 "):
        decode_text(b"\xef\xbb\xbf" + data, "f.txt")


def test_replacements_are_counted_per_call_across_threads():
    """Concurrent decodes (loader threads) each count their own replacements."""
    import sys
    import threading

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads switch within a decode of thousands of replacements
    try:
        for _ in range(5):
            barrier, got = threading.Barrier(8), {}

            def decode(n):
                data = b"ok \xff" * (500 * n)
                barrier.wait()
                got[n] = [decode_text(data, errors="replace")[1] for _ in range(10)]

            threads = [threading.Thread(target=decode, args=(n,)) for n in range(1, 9)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert got == {n: [500 * n] * 10 for n in range(1, 9)}
    finally:
        sys.setswitchinterval(interval)
    assert decode_text(b"\xc3(", errors="replace") == ("\ufffd(", 1)


def test_control_characters_are_boxes():
    doc = render_all("bell\x07 null\x00 esc\x1b del\x7f c1\x9b end")
    assert doc.missing_chars() == {"\x07": 1, "\x00": 1, "\x1b": 1, "\x7f": 1, "\x9b": 1}


def test_emoji_rtl_and_combining_marks():
    text = "emoji 😀👍🏽 rtl שלום עולם مرحبا combining e\u0301 a\u0308 zalgo Z\u0351\u0352\u0353 flags 🇫🇷"
    doc = render_all(text)
    assert "👍" in doc.missing_chars()  # the bundled fonts have few emoji: the rest are boxed and counted
    assert "ש" not in doc.missing_chars()


def test_characters_no_font_has():
    doc = render_all("\U0010FFFD\U000E0001\uFFFF\ud800 x")
    assert set(doc.missing_chars()) >= {"\U0010FFFD", "\uFFFF", "\ud800"}


def test_soft_hyphens_and_zero_width_spaces_are_counted():
    doc = render_all("co\xadop\u200beration " * 10)
    assert doc.layout.stripped == 20
    s = doc.summary(sizes=[], tokenizer=None)
    assert s["stripped_chars"] == 20


def test_many_newlines():
    render_all("\n" * 5000 + "end")


def test_max_pages_truncates_and_says_so():
    doc = glyph_rt.Document("word " * 200_000, CFG, max_pages=2)
    assert doc.num_pages == 2 and doc.layout.truncated
    assert doc.summary(sizes=[], tokenizer=None)["truncated"]


def test_counts_of_the_first_pages_end_at_the_last_of_them():
    text = "word soft\xadhyphen\n" * 20_000
    doc = glyph_rt.Document(text, CFG)
    assert doc.num_pages > 3
    end = doc.page_spans()[2][1]
    c = doc.char_counts(3)  # what a run stopped after page 3 left on disk
    assert c["placed_chars"] == sum(not ch.isspace() and ch not in STRIPPED for ch in text[:end])
    assert c["stripped_chars"] == text[:end].count("\xad")
    assert c["whitespace_chars"] == sum(ch.isspace() for ch in text[:end])
    assert c["unplaced_chars"] == len(text) - end
    assert doc.char_counts(doc.num_pages) == doc.char_counts()  # all pages: the whole text
    assert doc.char_counts(0)["unplaced_chars"] == len(text)
    assert doc.summary([], tokenizer=None, pages=0)["placed_chars"] == 0


def test_non_str_input():
    with pytest.raises(TypeError, match="str"):
        glyph_rt.render(b"bytes")


# ---------------------------------------------------------------------- atlas cache and threads
def test_corrupted_atlas_cache_is_rebuilt(tmp_path, monkeypatch):
    # an unchecked slot from a damaged cache file used to crash the interpreter (segfault)
    from glyph_rt.render import atlas as A
    from glyph_rt.render.layout import atlas_for

    monkeypatch.setenv("GLYPH_RT_CACHE", str(tmp_path))
    cfg = RenderConfig(font_size=9.25, line_height=11, auto_cjk_fallback=False)
    text = "The quick brown fox jumps over the lazy dog. 0123456789"

    def fresh():
        for k in [k for k, a in A.FontAtlas._memory.items() if a.size_pt == 9.25]:
            del A.FontAtlas._memory[k]
        return glyph_rt.render(text, cfg)

    good = fresh()
    path = atlas_for(cfg)._path()
    assert path.name.startswith(f"atlas-v{A.ATLAS_VERSION}-"), path.name
    orig = path.read_bytes()

    def rewrite(**change):
        with np.load(path) as f:
            z = {k: f[k] for k in A._CACHED}
        z.update(change)
        np.savez(path, checksum=np.frombuffer(A._checksum(z), np.uint8), **z)

    with np.load(path) as f:
        slots, offset, data = f["slots"], f["offset"], f["data"]
    cases = {
        "slot past the end": lambda: rewrite(slots=np.full_like(slots, 1 << 20)),
        "negative slot": lambda: rewrite(slots=np.full_like(slots, -5)),
        "offset past the data": lambda: rewrite(offset=offset + (1 << 40)),
        "short data": lambda: rewrite(data=data[:10]),
        "flipped bytes": lambda: path.write_bytes(orig[:200] + bytes(b ^ 0xFF for b in orig[200:400]) + orig[400:]),
        "truncated": lambda: path.write_bytes(orig[: len(orig) // 2]),
        "garbage": lambda: path.write_bytes(b"\x00" * 1000),
    }
    for name, corrupt in cases.items():
        path.write_bytes(orig)
        corrupt()
        pages = fresh()
        assert np.array_equal(pages.buffer.numpy(), good.buffer.numpy()), name
        assert pages.summary(tokenizer=None)["placed_chars"] == good.summary(tokenizer=None)["placed_chars"], name
        assert path.read_bytes() != b"\x00" * 1000  # rebuilt and saved again


def test_layout_rejects_slots_outside_the_atlas():
    from glyph_rt._ext import require_extension
    from glyph_rt.render.layout import text_codepoints

    C = require_extension("test")
    lut = np.full(0x110000, -1, np.int32)
    lut[ord("a")] = 7  # only 2 slots
    adv, miss = np.ones(2), np.zeros(2, np.uint8)
    with pytest.raises(IndexError, match="slot 7"):
        C.layout(text_codepoints("a"), lut, adv, miss, 1, 0, {}, np.zeros(0, np.int32))
    with pytest.raises(ValueError, match="inconsistent"):
        C.layout(text_codepoints("a"), lut, adv, miss, 5, 0, {}, np.zeros(0, np.int32))
    with pytest.raises(ValueError, match="tab_size"):
        C.layout(text_codepoints("a"), lut, adv, miss, 1, 0, {"tab_size": 0}, np.zeros(0, np.int32))


def test_raster_rejects_non_finite_placements():
    from glyph_rt._ext import require_extension

    C = require_extension("test")
    out = np.zeros((1, 8, 8, 3), np.uint8)
    i32, u8 = np.zeros(1, np.int32), np.zeros(1, np.uint8)
    z4 = np.zeros(4, np.int32)
    for x in (np.nan, 1e30):
        with pytest.raises(ValueError, match="position"):
            C.raster_cpu(out, 0, np.zeros(3, np.uint8), np.zeros(0, np.int32), np.zeros(0, np.int32),
                         np.zeros(0, np.uint8), i32, np.asarray([x], np.float32), np.zeros(1, np.float32), i32, u8,
                         np.zeros(1, np.uint8), np.zeros(4, np.int64), z4, z4, z4, z4, 4,
                         np.zeros(6, np.uint8), 1.0, 1.0)
    args = (0, np.zeros(3, np.uint8), np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.uint8),
            np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32),
            np.zeros(0, np.uint8), np.zeros(1, np.uint8), np.zeros(4, np.int64), z4, z4, z4, z4, 4,
            np.zeros(6, np.uint8), 1.0, 1.0)
    strided = np.zeros((1, 8, 16, 3), np.uint8)[:, :, ::2]  # a converted copy would get the pixels, then be dropped
    with pytest.raises(ValueError, match="out must be a C-contiguous uint8 array"):
        C.raster_cpu(strided, *args)
    with pytest.raises(ValueError, match="ink must be a C-contiguous int32"):
        C.raster_cpu(out, *args, ink=np.zeros((1, 2), np.int64))
    C.raster_cpu(out, *args, ink=np.zeros((1, 2), np.int32))


def test_threads_growing_one_atlas_while_others_rasterize(tmp_path, monkeypatch):
    import sys
    import threading

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("GLYPH_RT_CACHE", str(blocker / "cache"))  # not writable: nothing is saved
    cfg = RenderConfig(font_size=9.75, line_height=11, auto_cjk_fallback=False, auto_crop_width=False, snap=0)
    # every document brings characters the atlas has not seen: ensure() appends while others draw
    letters = [chr(c) for c in range(0x100, 0x24F)] + [chr(c) for c in range(0x370, 0x3FF)] + \
        [chr(c) for c in range(0x400, 0x4FF)]
    errors = []

    def work(k):
        try:
            for j in range(6):
                i = (k * 6 + j) * 6
                render_all(" ".join(letters[i:i + 6] * 3) + " abc", cfg)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    old = sys.getswitchinterval()
    sys.setswitchinterval(5e-3)
    try:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors[:3]


def test_arrays_is_a_consistent_snapshot_while_another_thread_grows_the_atlas(monkeypatch):
    import threading
    import time

    from glyph_rt.render.atlas import FontAtlas
    from glyph_rt.render.layout import atlas_for

    atlas = atlas_for(RenderConfig(font_size=9.5, line_height=11, auto_cjk_fallback=False))
    render_one = FontAtlas._render

    def slow_render(self, face_idx, gid):
        time.sleep(0.002)  # a glyph takes a while: arrays() in another thread overlaps the growth
        return render_one(self, face_idx, gid)

    monkeypatch.setattr(FontAtlas, "_render", slow_render)
    grower = threading.Thread(target=atlas.ensure, args=(np.arange(0x400, 0x480),))
    grower.start()
    seen = 0
    while grower.is_alive() or not seen:
        atlas._arrays = None  # as right after another ensure(): the next arrays() builds
        a = atlas.arrays()
        n = len(a["advance"]) * atlas.phases
        assert len(a["offset"]) == len(a["width"]) == len(a["height"]) == n
        assert a["offset"][-1] + int(a["width"][-1]) * int(a["height"][-1]) == len(a["data"])
        seen += 1
    grower.join()


# ---------------------------------------------------------------------- API arguments
def test_render_inputs_checks_max_bytes_before_drawing(monkeypatch):
    import torch

    from glyph_rt.render import gpu

    def draw(*a, **k):
        raise AssertionError("a batch was drawn before max_bytes was checked")

    monkeypatch.setattr(gpu, "inputs_of_batch", draw)
    text = "word " * 3000  # several A4 pages: ~1.5 MB of float32 pixel_values each
    with pytest.raises(MemoryError, match="max_bytes=0.000977 GiB; pass fewer texts per call, use dtype=torch.bf"):
        glyph_rt.render_inputs(text, CFG, device="cpu", backend="cpu", max_bytes=1 << 20)
    with pytest.raises(MemoryError, match="GiB; pass fewer texts per call, or raise max_bytes"):  # bf16 already
        glyph_rt.render_inputs(text, CFG, device="cpu", backend="cpu", max_bytes=1 << 20, dtype=torch.bfloat16)


@pytest.mark.parametrize("kw,match", [
    ({"batch_pages": "3"}, "batch_pages"),
    ({"batch_pages": 0}, "batch_pages"),
    ({"workers": 2.5}, "workers"),
    ({"max_bytes": -1}, "max_bytes"),
    ({"max_pages": 2**31}, "max_pages"),
    ({"max_pages": "9"}, "max_pages"),
])
def test_render_inputs_arguments_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        glyph_rt.render_inputs("some text", CFG, device="cpu", backend="cpu", **kw)


def test_dict_config_is_named():
    with pytest.raises(TypeError, match="config: expected a RenderConfig, got dict"):
        glyph_rt.render_inputs("x", {"dpi": 72}, device="cpu", backend="cpu")
    with pytest.raises(TypeError, match="config: expected a RenderConfig, got dict"):
        glyph_rt.Document("x", {"dpi": 72})


@pytest.mark.parametrize("chunk", [-1, 0, "2", 1.5])
def test_iter_chunks_size_is_checked(chunk):
    doc = glyph_rt.Document("x", CFG)
    with pytest.raises(ValueError, match="chunk"):
        next(doc.iter_chunks(chunk))


def test_max_pages_past_int32_is_named():
    with pytest.raises(ValueError, match="max_pages"):
        glyph_rt.Document("x", CFG, max_pages=2**31)


def test_newline_marker_accounting_adds_up():
    # the README's marker: "\\n" drawn in red for every newline; its glyphs are not source characters
    marker = '<font color="#FF0000"> \\n </font>'
    for markup in (marker, "<font color=red>¶</font>", "\u2028NL\u2028", "<i>\x01</i>"):
        text = "ab\ncd\n\nef"
        doc = render_all(text, RenderConfig(auto_cjk_fallback=False, newline_markup=markup))
        s = doc.summary(sizes=[], tokenizer=None)
        assert s["placed_chars"] == 6 and s["missing_glyphs"]["count"] == 0, (markup, s)
        assert "\n" not in s["missing_glyphs"]["chars"]
        assert s["placed_chars"] + s["stripped_chars"] + s["whitespace_chars"] + s["unplaced_chars"] == len(text)
        assert s["newline_marker_glyphs"] == doc.layout.marker_glyphs > 0


# ---------------------------------------------------------------------- damaged checkpoints, generate()
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from glyph_rt.models.tiny import tiny_glm4v_checkpoint

    return tiny_glm4v_checkpoint(tmp_path_factory.mktemp("glm4v"))


def _damaged(checkpoint, tmp_path, damage):
    import shutil

    d = tmp_path / "ckpt"
    shutil.copytree(checkpoint, d)
    damage(d)
    return d


def _shard_index(d):
    import json

    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model.safetensors"}}))


def _template(d):
    (d / "chat_template.jinja").write_text("{% for m in messages %}{{ m['role'] }")
    cfg = d / "tokenizer_config.json"
    import json

    c = json.loads(cfg.read_text())
    c.pop("chat_template", None)
    cfg.write_text(json.dumps(c))


def _image_token(d):
    import json

    cfg = json.loads((d / "config.json").read_text())
    cfg["image_token_id"] = 10**6
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("damage,match", [
    (lambda d: (d / "tokenizer.json").write_text('{"model": '), "tokenizer.json"),
    (lambda d: (d / "preprocessor_config.json").write_bytes(b"\xff{"), "preprocessor_config.json"),
    (lambda d: (d / "tokenizer_config.json").write_text("{nope"), "tokenizer_config.json"),
    (lambda d: (d / "config.json").write_text("[1, 2"), "config.json"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"),
     "model.safetensors"),
    (lambda d: (_shard_index(d), (d / "model.safetensors.index.json").write_text("{")), "index.json"),
    (_template, "chat_template.jinja"),
    (_image_token, "image_token_id 1000000 is outside the vocabulary"),
], ids=["tokenizer", "preprocessor", "tokenizer_config", "config", "safetensors", "index", "template", "image_token"])
def test_damaged_checkpoint_names_the_file(checkpoint, tmp_path, damage, match):
    from glyph_rt.models.glyph_model import GlyphModel

    d = _damaged(checkpoint, tmp_path, damage)
    with pytest.raises(ValueError, match=match):
        GlyphModel.from_pretrained(d, render_config=CFG, device="cpu")


def test_generate_arguments_are_named(checkpoint):
    from glyph_rt.models.glyph_model import GlyphModel

    m = GlyphModel.from_pretrained(checkpoint, render_config=CFG, device="cpu")
    with pytest.raises(ValueError, match="contexts\\[0\\]: .* empty"):
        m.generate("", "What?", max_new_tokens=2)
    with pytest.raises(ValueError, match="questions\\[0\\]: contains the image token"):
        m.generate("Some text.", f"What is {m.image_token}?", max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens: -3"):
        m.generate("Some text.", "What?", max_new_tokens=-3)


def test_atlas_total_size_is_bounded(monkeypatch):
    from glyph_rt.render import atlas as A
    from glyph_rt.render.layout import atlas_for

    atlas = atlas_for(RenderConfig(font_size=9.6, line_height=11, auto_cjk_fallback=False))
    monkeypatch.setattr(A, "MAX_ATLAS_BYTES", atlas._nbytes + 50)
    with pytest.raises(MemoryError, match="glyph atlas: U\\+.*lower font_size, dpi or subpixel_phases"):
        atlas.ensure(np.arange(0x391, 0x3AA))  # Greek capitals: DejaVu draws them
    a = atlas.arrays()  # what was added before the limit stays consistent
    assert len(a["offset"]) == len(a["advance"]) * atlas.phases


def test_render_inputs_drops_the_queued_layouts_after_an_error(monkeypatch):
    """A bad first text (or a MemoryError) used to wait for every other text's layout before it was raised."""
    import threading

    from glyph_rt.render import gpu

    calls, lock = [], threading.Lock()
    real = gpu.Document

    def counted(text, *a, **k):
        with lock:
            calls.append(text)
        return real(text, *a, **k)

    monkeypatch.setattr(gpu, "Document", counted)
    with pytest.raises(TypeError, match="text must be str"):
        gpu.render_inputs([None] + ["Some text to lay out. " * 200] * 40, device="cpu", workers=2)
    assert len(calls) < 10
