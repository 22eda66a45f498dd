"""GPU rasterizers (Triton, CUDA) against the C++ CPU rasterizer, the oracle: identical pixels.

Without a GPU the Triton kernel runs in Triton's interpreter on CPU tensors (set up by
conftest.py), so pages are tiny, and the CUDA kernel's per-pixel code runs on the host
("cuda_host"); the CUDA kernel itself runs in the tests marked `gpu`.
"""
from collections import OrderedDict

import numpy as np
import pytest
import torch

import glyph_rt
from glyph_rt import RenderConfig
from glyph_rt.ops.raster import TILE_H, TILE_W, AtlasStore, RasterBatch, bin_boxes, check_backend
from glyph_rt.render.atlas import FontAtlas
from glyph_rt.render.gpu import draw_pages
from glyph_rt.render.raster import NO_CLIP, run_clips

from conftest import TEST_DEVICE as TRITON_DEVICE  # cuda on a GPU unless --device cpu
# (backend, device) pairs that run everywhere
KERNELS = [("triton", TRITON_DEVICE), ("cuda_host", "cpu")]
TEXT = "The quick brown fox jumps over the lazy dog; sphinx of black quartz, judge my vow. " * 3

# Different page sizes, dpi (sub-pixel phases), colors, backgrounds, borders and a visible
# newline marker with its own color: one launch draws them all.
CONFIGS = [
    RenderConfig(page_size=(120, 80), margin_x=8, margin_y=8),
    RenderConfig(page_size=(100, 70), dpi=96, margin_x=6, margin_y=6, font_size=8, line_height=9,
                 page_bg_color="#fdf6e3", font_color="#073642", para_bg_color="#eee8d5",
                 para_border_color="#cb4b16", border_width=1, border_padding=2, alignment="justify"),
    # 75.3 x 50.3 px on a grey background: Glyph's page keeps its last column and row white (paper_edges)
    RenderConfig(page_size=(90.4, 60.4), dpi=60, margin_x=5, margin_y=5, font_family="serif",
                 page_bg_color="#f0f0f0", newline_markup="<font color='#ff0000'>\\n</font>", snap=0),
    # Glyph's horizontal scale: drawn at full width, then resized (Pillow's bicubic) and cropped
    RenderConfig(page_size=(110, 70), margin_x=6, margin_y=6, horizontal_scale=0.8, para_bg_color="#f8f8f8",
                 auto_crop_last_page=True),
]


def assert_same_as_cpu(docs, drawn):
    for doc, (buf, sizes) in zip(docs, drawn):
        ref, ref_sizes = doc.rasterize()
        assert sizes == ref_sizes
        got = buf.cpu().numpy()
        assert got.shape == ref.shape
        diff = np.argwhere(got != ref)
        assert len(diff) == 0, f"{len(diff)} pixels differ, first at {diff[0].tolist()}"


@pytest.fixture(scope="module")
def docs():
    texts = [TEXT[:200], TEXT[:150] + "\nsecond line\n\nthird", "line one\nline two\n" + TEXT[:120], TEXT[:170]]
    return [glyph_rt.Document(t, c) for t, c in zip(texts, CONFIGS)]


@pytest.mark.parametrize("backend,device", KERNELS)
def test_kernels_draw_a_mixed_batch_identical_to_cpu(docs, backend, device):
    assert all(d.num_pages >= 1 for d in docs) and sum(d.num_pages for d in docs) >= 4
    assert_same_as_cpu(docs, draw_pages(docs, device, backend))
    assert docs[-1].config.page_pixels[0] < docs[-1].config.drawn_pixels[0]  # the scaled one was resized


def test_triton_page_ranges_and_render_api(docs):
    d = docs[0]
    (buf, sizes), = draw_pages([d], TRITON_DEVICE, "triton", ranges=[(1, 2)])
    ref, ref_sizes = d.rasterize(1, 2)
    assert sizes == ref_sizes and np.array_equal(buf.cpu().numpy(), ref)
    pages = glyph_rt.render(TEXT[:120], CONFIGS[0], device=TRITON_DEVICE, backend="triton")
    cpu = glyph_rt.render(TEXT[:120], CONFIGS[0])
    assert pages.sizes == cpu.sizes and all(torch.equal(a.cpu(), b) for a, b in zip(pages, cpu))
    assert pages.buffer.device.type == TRITON_DEVICE


@pytest.mark.parametrize("backend,device", KERNELS)
def test_glyphs_larger_than_a_tile_and_placements_off_the_page(backend, device):
    cfg = RenderConfig(page_size=(90, 70), font_size=40, line_height=42, margin_x=2, margin_y=2, snap=0,
                       auto_crop_width=False, auto_crop_last_page=False)
    doc = glyph_rt.Document("Wg", cfg)
    a = doc.atlas.arrays()
    assert a["width"].max() > TILE_W and a["height"].max() > TILE_H
    lay = doc.layout
    # push glyphs across every edge of the page, and one onto a page that does not exist
    lay.g_x[:] = np.asarray([-20.0, 70.0], np.float32)[: len(lay.g_x)]
    lay.set_rows(lay.g_page, np.asarray([10.0, 95.0], np.float32)[: len(lay.g_x)])
    assert_same_as_cpu([doc], draw_pages([doc], device, backend))
    page = lay.g_page.copy()
    page[-1] = 5
    lay.set_rows(page, lay.g_y)
    assert_same_as_cpu([doc], draw_pages([doc], device, backend))


def test_scaled_pages_skip_the_ink_pass_of_the_drawn_page(docs, monkeypatch):
    """A scaled document's crop comes from its resized pages: no ink pass over the drawn ones."""
    from glyph_rt.ops import raster as ops_raster
    from glyph_rt.render import gpu

    modes = []
    real = ops_raster.raster_tiles
    monkeypatch.setattr(gpu, "raster_tiles", lambda backend, mode, *a, **k: (modes.append(mode), real(
        backend, mode, *a, **k))[1])
    scaled = docs[-1]
    assert scaled.config.horizontal_scale != 1 and scaled.config.snap
    assert_same_as_cpu([scaled], draw_pages([scaled], "cpu", "cuda_host"))
    assert modes == [ops_raster.MODE_PAGES]
    modes.clear()
    assert_same_as_cpu(docs, draw_pages(docs, "cpu", "cuda_host"))  # a mixed batch: the others' ink is found
    assert ops_raster.MODE_BG in modes


@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize("scale", [1.0, 0.7])
def test_zero_pages(backend, device, scale):
    doc = glyph_rt.Document("", RenderConfig(horizontal_scale=scale))
    assert doc.num_pages == 0
    (buf, sizes), = draw_pages([doc], device, backend)
    assert buf.shape[0] == 0 and sizes == []
    d = glyph_rt.Document("some text", RenderConfig(horizontal_scale=scale))
    (buf, sizes), = draw_pages([d], device, backend, ranges=[(1, 1)])
    assert buf.shape[0] == 0 and sizes == []


def brute_force_bins(page, boxes, hw, num_tiles, tiles_x, tile_base):
    bins = [[] for _ in range(num_tiles)]
    for i, (p, (x0, y0, x1, y1)) in enumerate(zip(page, boxes)):
        if not 0 <= p < len(hw):
            continue
        H, W = hw[p]
        for y in range(max(0, y0), min(H, y1)):
            for x in range(max(0, x0), min(W, x1)):
                t = tile_base[p] + (y // TILE_H) * tiles_x[p] + x // TILE_W
                if not bins[t] or bins[t][-1] != i:
                    bins[t].append(i)
    return bins


def test_bin_boxes_matches_brute_force():
    rng = np.random.default_rng(0)
    hw = np.asarray([[50, 70], [33, 29]])
    tiles_x = -(-hw[:, 1] // TILE_W)
    tiles = tiles_x * -(-hw[:, 0] // TILE_H)
    tile_base = np.concatenate([[0], np.cumsum(tiles)[:-1]])
    n = 300
    page = rng.integers(-1, 3, n)
    x0, y0 = rng.integers(-30, 80, n), rng.integers(-30, 60, n)
    boxes = np.stack([x0, y0, x0 + rng.integers(0, 40, n), y0 + rng.integers(0, 40, n)], 1)
    t = lambda a: torch.from_numpy(np.asarray(a))  # noqa: E731
    items, start = bin_boxes(t(page), *(t(boxes[:, k]) for k in range(4)), t(hw),
                             t(np.stack([tiles_x, tile_base], 1)), int(tiles.sum()))
    want = brute_force_bins(page, boxes, hw, int(tiles.sum()), tiles_x, tile_base)
    # the item lists, tile by tile, in drawing order
    got = [items[start[i]:start[i + 1]].tolist() for i in range(int(tiles.sum()))]
    assert got == [sorted(b) for b in want]


def test_atlas_is_uploaded_once_and_grows_by_new_bitmaps_only(tmp_path, monkeypatch):
    monkeypatch.setenv("GLYPH_RT_CACHE", str(tmp_path))  # a fresh atlas, not one grown by earlier runs
    store = AtlasStore("cpu")
    doc = glyph_rt.Document("abc", RenderConfig(font_size=11.25, line_height=13))
    store.meta(doc.atlas)
    first = store.uploaded_bytes
    assert first > 0
    store.meta(doc.atlas)
    assert store.uploaded_bytes == first  # reused
    before = len(doc.atlas.arrays()["width"])
    glyph_rt.Document("xyz€", RenderConfig(font_size=11.25, line_height=13))  # same atlas, new characters
    a = doc.atlas.arrays()
    assert len(a["width"]) > before
    meta = store.meta(doc.atlas)
    new_bytes = int((a["width"][before:].astype(np.int64) * a["height"][before:]).sum())
    assert store.uploaded_bytes == first + new_bytes
    # every bitmap reads back from the store exactly
    data = store.data.numpy()
    for g in range(len(meta)):
        w, h, _, _, off = meta[g].tolist()
        src = a["data"][a["offset"][g]:a["offset"][g] + w * h]
        assert np.array_equal(data[off:off + w * h], src)




def test_atlas_store_is_shared_by_threads(tmp_path, monkeypatch):
    """A server renders requests on several threads into one store: every atlas's bitmaps read back exactly."""
    import sys
    import threading

    monkeypatch.setenv("GLYPH_RT_CACHE", str(tmp_path))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for trial in range(5):
            store = AtlasStore("cpu")
            docs = [glyph_rt.Document("abcdefg" + chr(0x41 + trial) * 3, RenderConfig(font_size=8 + i, line_height=20))
                    for i in range(6)]
            metas, errors, go = {}, [], threading.Barrier(len(docs))

            def upload(d):
                go.wait()
                try:
                    metas[id(d)] = store.meta(d.atlas)
                except Exception as e:  # noqa: BLE001 - collected and asserted on
                    errors.append(e)

            threads = [threading.Thread(target=upload, args=(d,)) for d in docs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors
            data = store.data.numpy()
            for d in docs:
                a = d.atlas.arrays()
                for g, (w, h, _, _, off) in enumerate(metas[id(d)].tolist()):
                    src = a["data"][a["offset"][g]:a["offset"][g] + w * h]
                    assert np.array_equal(data[off:off + w * h], src)
    finally:
        sys.setswitchinterval(interval)
def test_backend_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown"):
        glyph_rt.render("x", device=TRITON_DEVICE, backend="metal")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            glyph_rt.render("x", device="cuda")
        with pytest.raises(ValueError, match="CUDA device"):
            check_backend("cuda", torch.device("cpu"))
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            glyph_rt.render("x", device="cpu", backend="triton")


def test_batch_rejects_bad_ranges(docs):
    with pytest.raises(IndexError, match="outside"):
        RasterBatch([docs[0]], [(0, docs[0].num_pages + 1)])


@pytest.mark.gpu
def test_cuda_draws_a_mixed_batch_identical_to_cpu(docs):
    assert_same_as_cpu(docs, draw_pages(docs, "cuda", "cuda"))


@pytest.mark.gpu
def test_cuda_and_triton_agree_on_a_long_document():
    from glyph_rt.render.textio import sample_text

    docs = [glyph_rt.Document(sample_text()[:150_000], RenderConfig.preset(p)) for p in ("glyph", "dark_mode")]
    a = draw_pages(docs, "cuda", "cuda")
    b = draw_pages(docs, "cuda", "triton")
    for (x, sx), (y, sy) in zip(a, b):
        assert sx == sy and torch.equal(x, y)
    assert_same_as_cpu(docs, a)



def test_atlas_store_starts_afresh_past_its_budget(tmp_path, monkeypatch):
    """Training draws a new font size almost every sample: the store stays within its budget, and what a launch
    reads (its metadata and the data they index) is always its own atlases' bitmaps."""
    monkeypatch.setenv("GLYPH_RT_CACHE", str(tmp_path))
    monkeypatch.setattr(FontAtlas, "_memory", OrderedDict())  # atlases of earlier tests hold more glyphs
    docs = [glyph_rt.Document("The quick brown fox", RenderConfig(font_size=10 + i, line_height=30)) for i in range(6)]
    sizes = [len(d.atlas.arrays()["data"]) for d in docs]
    store = AtlasStore("cpu", budget=2 * max(sizes) + 1)
    for i, d in enumerate(docs):
        (meta,), data = store.metas([d.atlas])
        a = d.atlas.arrays()
        for g, (w, h, _, _, off) in enumerate(meta.tolist()):
            assert np.array_equal(data.numpy()[off:off + w * h], a["data"][a["offset"][g]:a["offset"][g] + w * h])
        assert store.used <= store.budget
    assert store.resets >= 2
    (m0, m1), _ = store.metas([docs[0].atlas, docs[0].atlas])  # the same atlas twice: uploaded once
    assert m0 is m1


@pytest.mark.parametrize("backend,device", KERNELS)
def test_descenders_cut_at_the_next_paragraph_as_the_cpu_cuts_them(backend, device):
    """Two-line paragraphs of descenders on a coloured paragraph background: every backend stops a paragraph's
    last line at the next paragraph's background (`run_clips`), as the C++ and the numpy rasterizers do."""
    cfg = RenderConfig(page_size=(150, 90), margin_x=6, margin_y=6, font_size=8, line_height=8,
                       lines_per_paragraph=2, para_bg_color="#eeeeee", snap=0)
    doc = glyph_rt.Document("\n".join(["gypsy jumpy quay"] * 8), cfg)
    clips = run_clips(doc.layout, cfg)
    assert (clips < NO_CLIP).sum() >= 3  # paragraph boundaries on the page
    ref, ref_sizes = glyph_rt.Document(doc.text, cfg, backend="reference").rasterize()
    cpu, cpu_sizes = doc.rasterize()
    assert cpu_sizes == ref_sizes and np.array_equal(cpu, ref)
    assert_same_as_cpu([doc], draw_pages([doc], device, backend))
