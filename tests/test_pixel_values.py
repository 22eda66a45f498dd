"""Model input straight from text: render_inputs against the Hugging Face image processors."""
import numpy as np
import pytest
import torch
from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

import glyph_rt
from glyph_rt import RenderConfig, render_inputs
from glyph_rt.ops.pixel_values import pixel_values_from_pages

from conftest import TEST_DEVICE as TRITON_DEVICE  # cuda on a GPU unless --device cpu
PROCESSORS = {"glm4v": Glm4vImageProcessorPil, "qwen2_5_vl": Qwen2VLImageProcessorPil}
TEXTS = ["The quick brown fox jumps over the lazy dog. " * 5, "Pack my box with five dozen liquor jugs.\n" * 3]
CONFIGS = [RenderConfig(page_size=(120, 90), margin_x=8, margin_y=8),
           RenderConfig(page_size=(100, 80), dpi=96, margin_x=6, margin_y=6, font_size=8, line_height=9,
                        page_bg_color="#002b36", font_color="#93a1a1", para_bg_color="#073642")]


def hf_inputs(texts, configs, model):
    """The reference: pages drawn by the C++ CPU rasterizer, fed to the HF processor as PIL images."""
    images = []
    for t, c in zip(texts, configs):
        p = glyph_rt.render(t, c)
        images += [p.to_pil(i) for i in range(len(p))]
    out = PROCESSORS[model]()(images, return_tensors="np")
    return out["pixel_values"], out["image_grid_thw"]


@pytest.mark.parametrize("model", sorted(PROCESSORS))
def test_fused_pixel_values_equal_the_hf_processor_exactly(model):
    mi = render_inputs(TEXTS, CONFIGS, model=model, device=TRITON_DEVICE, backend="triton")
    pv, grid = hf_inputs(TEXTS, CONFIGS, model)
    assert np.array_equal(mi.image_grid_thw.cpu().numpy(), grid)
    assert mi.pixel_values.dtype == torch.float32
    ours = mi.pixel_values.cpu().numpy()
    # the first text's last page is a 56x28 strip, which both models upscale: the one page of
    # the batch that goes through the resize path
    assert mi.fused_pages == len(grid) - 1
    assert np.array_equal(ours, pv)  # bit for bit
    assert mi.images_per_text == [len(glyph_rt.render(t, c)) for t, c in zip(TEXTS, CONFIGS)]
    assert mi.visual_tokens == [sum(glyph_rt.visual_tokens(glyph_rt.render(t, c).sizes, model))
                                for t, c in zip(TEXTS, CONFIGS)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_kernel_code_writes_the_same_pixel_values(dtype):
    # the CUDA kernel's per-pixel code and pixel_values indexing, run on the host
    from glyph_rt.ops.pixel_values import normalize_lut
    from glyph_rt.render.gpu import inputs_of_batch

    docs = [glyph_rt.Document(t, c) for t, c in zip(TEXTS, CONFIGS)]
    pv, grid, fused = inputs_of_batch([(d, 0, d.num_pages) for d in docs], "cpu", "cuda_host", "glm4v", dtype,
                                      normalize_lut("cpu", dtype))
    ref, ref_grid = hf_inputs(TEXTS, CONFIGS, "glm4v")
    assert fused == len(ref_grid) - 1 and np.array_equal(grid.numpy(), ref_grid)
    assert torch.equal(pv, torch.from_numpy(ref).to(dtype))


def test_the_cuda_kernel_refuses_arguments_its_raw_pointers_would_misuse():
    from glyph_rt.ops.pixel_values import ROW, normalize_lut, uint8_rows
    from glyph_rt.ops.raster import MODE_PAGES, MODE_PATCHES, MODE_PIXELS, RasterBatch, raster_tiles, \
        set_image_targets, set_page_targets

    d = glyph_rt.Document(TEXTS[0], CONFIGS[0])
    batch = RasterBatch([d], [(0, 1)])
    dev = batch.to_device("cpu")
    h, w = d.rasterize(0, 1)[1][0][::-1]
    h, w = h // 28 * 28, w // 28 * 28
    rows = h // 14 * w // 14
    with pytest.raises(ValueError, match="call set_image_targets first"):  # the kernel would write the canvas size
        raster_tiles("cuda_host", MODE_PATCHES, batch, dev, out=uint8_rows(1))
    W, H = d.canvas
    for bad in ([[h + 14, w]], [[h, w - 1]], [[H // 28 * 28 + 28, w]]):  # off the 28 grid, or past the canvas
        with pytest.raises(ValueError, match="not multiples of 28 within its"):
            set_image_targets(dev, np.array(bad), np.array([0]))
    with pytest.raises(ValueError, match="call set_page_targets first"):
        raster_tiles("cuda_host", MODE_PAGES, batch, dev, out=torch.empty(W * H * 3, dtype=torch.uint8))
    need = set_page_targets(dev, np.array([0]))
    assert need == W * H * 3
    for out in (torch.empty(need - 1, dtype=torch.uint8), torch.empty(need, dtype=torch.int16),
                torch.empty(2 * need, dtype=torch.uint8)[::2]):
        with pytest.raises(ValueError, match=f"contiguous uint8 `out` of at least {need} bytes"):
            raster_tiles("cuda_host", MODE_PAGES, batch, dev, out=out)
    set_image_targets(dev, np.array([[h, w]]), np.array([0]))
    lut = normalize_lut("cpu", torch.float32)
    cases = [(MODE_PIXELS, torch.empty(rows - 1, ROW), lut, "the pages need"),
             (MODE_PIXELS, torch.empty(rows, ROW, dtype=torch.bfloat16), lut, "lut in out's dtype"),
             (MODE_PIXELS, torch.empty(rows, ROW + 4)[:, :ROW], lut, "rows 1176 elements apart"),
             (MODE_PATCHES, torch.empty(rows, 588, dtype=torch.uint8), None, "rows 592 elements apart")]
    for mode, out, lt, why in cases:
        with pytest.raises(ValueError, match=why):
            raster_tiles("cuda_host", mode, batch, dev, out=out, lut=lt)
    raster_tiles("cuda_host", MODE_PATCHES, batch, dev, out=uint8_rows(rows))  # the padded rows it writes


def test_bf16_is_the_rounded_fp32_and_batches_split_cleanly():
    a = render_inputs(TEXTS, CONFIGS, device=TRITON_DEVICE, backend="triton")
    b = render_inputs(TEXTS, CONFIGS, device=TRITON_DEVICE, backend="triton", dtype=torch.bfloat16, batch_pages=1)
    assert b.pixel_values.dtype == torch.bfloat16
    assert torch.equal(b.pixel_values, a.pixel_values.to(torch.bfloat16))
    assert torch.equal(a.image_grid_thw, b.image_grid_thw) and a.images_per_text == b.images_per_text
    c = render_inputs(TEXTS, CONFIGS, device="cpu", backend="cpu")  # drawn on the CPU, rows written by C++
    assert c.fused_pages == a.fused_pages and torch.equal(c.pixel_values, a.pixel_values.cpu())


def test_pages_that_need_a_resize_equal_hf_too():
    cfg = RenderConfig.preset("glyph")  # Glyph's own canvas: 595 px wide, not a multiple of 28
    text = TEXTS[0] * 20
    mi = render_inputs(text, cfg, device="cpu", backend="cpu")
    pv, grid = hf_inputs([text], [cfg], "glm4v")
    assert mi.fused_pages == 0
    assert np.array_equal(mi.image_grid_thw.cpu().numpy(), grid)
    assert np.array_equal(mi.pixel_values.cpu().numpy(), pv)


def test_empty_inputs_and_bad_arguments():
    mi = render_inputs([], device="cpu", backend="cpu")
    assert mi.pixel_values.shape == (0, 1176) and mi.image_grid_thw.shape == (0, 3)
    mi = render_inputs(["", "x"], RenderConfig(page_size=(100, 80)), device=TRITON_DEVICE, backend="triton")
    assert mi.images_per_text == [0, 1] and mi.image_grid_thw.shape == (1, 3)
    with pytest.raises(ValueError, match="model"):
        render_inputs("x", model="llava", device="cpu", backend="cpu")
    with pytest.raises(ValueError, match="dtype"):
        render_inputs("x", dtype=torch.float16, device="cpu", backend="cpu")
    with pytest.raises(ValueError, match="2 configs for 1 texts"):
        render_inputs(["x"], [RenderConfig(), RenderConfig()], device="cpu", backend="cpu")
    with pytest.raises(MemoryError, match="max_bytes"):
        render_inputs(TEXTS, CONFIGS, device="cpu", backend="cpu", batch_pages=1, max_bytes=100_000)
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        pixel_values_from_pages([torch.zeros(28, 28, 3)])


def test_nvtx_ranges_cover_the_stages(monkeypatch):
    import glyph_rt.nvtx as nv

    names = []
    monkeypatch.setattr(nv, "_backend", lambda: (names.append, lambda: None))
    render_inputs(TEXTS[1], CONFIGS[0], device=TRITON_DEVICE, backend="triton")
    for stage in ("glyph_rt.layout", "glyph_rt.upload", "glyph_rt.bin", "glyph_rt.raster.bg",
                  "glyph_rt.raster.ink", "glyph_rt.raster.pixels", "glyph_rt.pixel_values"):
        assert stage in names


@pytest.mark.gpu
@pytest.mark.parametrize("model", sorted(PROCESSORS))
def test_cuda_fused_pixel_values_equal_the_hf_processor(model):
    from glyph_rt.render.textio import sample_text

    texts = [sample_text()[:20_000], sample_text()[20_000:30_000]]
    configs = [RenderConfig(), RenderConfig.preset("dark_mode")]
    mi = render_inputs(texts, configs, model=model, device="cuda", backend="cuda")
    pv, grid = hf_inputs(texts, configs, model)
    assert mi.fused_pages == len(grid) and np.array_equal(mi.image_grid_thw.cpu().numpy(), grid)
    assert np.array_equal(mi.pixel_values.cpu().numpy(), pv)
    tri = render_inputs(texts, configs, model=model, device="cuda", backend="triton", dtype=torch.bfloat16)
    assert torch.equal(tri.pixel_values, mi.pixel_values.to(torch.bfloat16))


def test_parallel_layout_gives_the_same_inputs():
    # several threads grow one fresh atlas (new characters in every text) while laying out
    texts = [f"{chr(0x400 + 7 * i)}{chr(0x401 + 7 * i)} text number {i} " * 30 for i in range(8)]
    cfg = RenderConfig(page_size=(120, 90), font_size=8.75, line_height=10)
    one = render_inputs(texts, cfg, device="cpu", backend="cpu", workers=1, batch_pages=3)
    many = render_inputs(texts, cfg, device="cpu", backend="cpu", workers=4, batch_pages=3)
    assert torch.equal(one.pixel_values, many.pixel_values) and one.images_per_text == many.images_per_text


@pytest.mark.parametrize("backend", ["triton", "cuda_host", "cpu"])
def test_uint8_patches_are_the_raw_levels_of_pixel_values(backend):
    from glyph_rt.ops.patch_embed import expand_uint8
    from glyph_rt.render.gpu import inputs_of_batch

    docs = [glyph_rt.Document(t, c) for t, c in zip(TEXTS, CONFIGS)]
    items = [(d, 0, d.num_pages) for d in docs]
    device = TRITON_DEVICE if backend == "triton" else "cpu"
    u8, grid, fused = inputs_of_batch(items, device, backend, "glm4v", torch.uint8, None)
    pv, ref_grid = hf_inputs(TEXTS, CONFIGS, "glm4v")
    assert u8.dtype == torch.uint8 and u8.shape == (len(pv), 588)
    assert np.array_equal(grid.cpu().numpy(), ref_grid)
    assert fused == len(ref_grid) - 1  # one page is resized by Pillow
    assert torch.equal(expand_uint8(u8.cpu()), torch.from_numpy(pv))


# odd page sizes: a snapped canvas (pages written by C++, cropped widths and a short last page, some
# resized), and one without snapping (every page resized by Pillow)
ODD = [RenderConfig(page_size=(123, 97), margin_x=7, margin_y=9, dpi=101),
       RenderConfig(page_size=(131, 89), margin_x=5, margin_y=5, snap=0, auto_crop_width=False)]


@pytest.mark.parametrize("model", sorted(PROCESSORS))
def test_cpu_cpp_path_equals_the_hf_processor_exactly(model):
    texts = TEXTS + [TEXTS[0] * 3, TEXTS[1] * 4]
    configs = CONFIGS + ODD
    mi = render_inputs(texts, configs, model=model, device="cpu", backend="cpu")
    pv, grid = hf_inputs(texts, configs, model)
    assert np.array_equal(mi.image_grid_thw.numpy(), grid)
    assert np.array_equal(mi.pixel_values.numpy(), pv)  # bit for bit
    assert 0 < mi.fused_pages < len(grid)  # both the C++ rows and the Pillow resize path ran
    bf = render_inputs(texts, configs, model=model, device="cpu", backend="cpu", dtype=torch.bfloat16, batch_pages=3)
    assert bf.pixel_values.dtype == torch.bfloat16
    assert torch.equal(bf.pixel_values, mi.pixel_values.to(torch.bfloat16))
    assert torch.equal(bf.image_grid_thw, mi.image_grid_thw) and bf.fused_pages == mi.fused_pages


def test_scaled_pages_in_a_mixed_batch_equal_the_hf_processor():
    """Pages with a horizontal scale are drawn at full width and resized on the device, beside fused ones."""
    scaled = RenderConfig(page_size=(120, 90), margin_x=8, margin_y=8, horizontal_scale=0.8, auto_crop_last_page=True)
    texts = [TEXTS[0], TEXTS[1], TEXTS[0][:90]]
    configs = [CONFIGS[0], scaled, scaled]
    pv, grid = hf_inputs(texts, configs, "glm4v")
    for device, backend in [(TRITON_DEVICE, "triton"), ("cpu", "cpu")]:
        mi = render_inputs(texts, configs, model="glm4v", device=device, backend=backend)
        assert np.array_equal(mi.image_grid_thw.cpu().numpy(), grid)
        assert np.array_equal(mi.pixel_values.cpu().numpy(), pv)
        raw = render_inputs(texts, configs, model="glm4v", device=device, backend=backend, dtype=torch.uint8)
        assert raw.pixel_values.shape == (len(pv), 588) and torch.equal(raw.image_grid_thw, mi.image_grid_thw)


def test_cpu_path_grows_its_output_for_pages_the_model_upscales():
    # cropped 84x56 pages take more rows once upscaled (48) than the 140x56 canvas (40) the output was sized for
    from glyph_rt.ops.pixel_values import target_size

    cfg, text = RenderConfig(page_size=(140, 56), margin_x=4, margin_y=4), "abcdefghijk\n" * 7
    W, H = glyph_rt.Document(text, cfg).canvas
    mi = render_inputs(text, cfg, device="cpu", backend="cpu")
    pv, grid = hf_inputs([text], [cfg], "glm4v")
    assert len(pv) > len(grid) * np.prod(target_size(H, W)) // 196
    assert np.array_equal(mi.image_grid_thw.numpy(), grid) and np.array_equal(mi.pixel_values.numpy(), pv)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_write_pixel_values_cpu_equals_the_torch_path_on_every_level(dtype):
    from glyph_rt.ops.pixel_values import normalize_lut, write_pixel_values_cpu

    rng = np.random.default_rng(0)
    pages = rng.integers(0, 256, size=(3, 150, 125, 3), dtype=np.uint8)  # every level of every channel
    hw = np.asarray([[140, 112], [0, 0], [112, 112]])  # sizes the models take as they are; page 1 is skipped
    rows = hw[:, 0] // 14 * hw[:, 1] // 14
    first = np.asarray([5, 0, 5 + rows[0]])
    lut = normalize_lut("cpu", dtype)
    out = torch.full((5 + rows.sum(), 1176), 7.0, dtype=dtype)
    write_pixel_values_cpu(pages, hw, first, lut, out)
    ref, _ = pixel_values_from_pages([torch.from_numpy(pages[0, :140, :112]), torch.from_numpy(pages[2, :112, :112])],
                                     dtype=dtype)
    assert torch.equal(out[5:], ref)
    assert torch.all(out[:5] == 7.0)  # nothing written outside the pages' rows


def test_write_pixel_values_cpu_writes_padded_uint8_patches():
    from glyph_rt.ops.pixel_values import ROW_U8_STRIDE, normalize_lut, padded_rows, write_pixel_values_cpu

    rng = np.random.default_rng(1)
    pages = rng.integers(0, 256, size=(3, 150, 125, 3), dtype=np.uint8)
    hw = np.asarray([[140, 112], [0, 0], [112, 84]])
    rows = hw[:, 0] // 14 * hw[:, 1] // 14
    first = np.asarray([3, 0, 3 + rows[0]])
    out = torch.full((3 + rows.sum(), ROW_U8_STRIDE), 7, dtype=torch.uint8)
    write_pixel_values_cpu(pages, hw, first, None, out)
    ref, _ = pixel_values_from_pages([torch.from_numpy(pages[0, :140, :112]), torch.from_numpy(pages[2, :112, :84])],
                                     dtype=torch.uint8)
    assert torch.equal(out[3:], padded_rows(ref))  # the levels, and zeros in the 4 pad bytes
    assert torch.all(out[:3] == 7)
    with pytest.raises(ValueError, match="no lut"):
        write_pixel_values_cpu(pages, hw, first, normalize_lut(), out)
    with pytest.raises(ValueError, match=r"\[N, 592\]"):
        write_pixel_values_cpu(pages, hw, first, None, out[:, :588].contiguous())


def test_write_pixel_values_cpu_rejects_bad_arguments():
    from glyph_rt.ops.pixel_values import normalize_lut, write_pixel_values_cpu

    pages = np.zeros((1, 56, 56, 3), np.uint8)
    lut, out = normalize_lut(), torch.empty(16, 1176)
    first = np.zeros(1, np.int64)
    with pytest.raises(ValueError, match="not a multiple of 28"):
        write_pixel_values_cpu(pages, np.asarray([[56, 42]]), first, lut, out)
    with pytest.raises(ValueError, match="not a multiple of 28 inside the page buffer"):
        write_pixel_values_cpu(pages, np.asarray([[84, 56]]), first, lut, out)
    with pytest.raises(ValueError, match="lie outside out"):
        write_pixel_values_cpu(pages, np.asarray([[56, 56]]), np.asarray([1]), lut, out)
    with pytest.raises(ValueError, match="lut of its dtype"):
        write_pixel_values_cpu(pages, np.asarray([[56, 56]]), first, lut, out.to(torch.bfloat16))
    with pytest.raises(ValueError, match="contiguous"):
        write_pixel_values_cpu(pages, np.asarray([[56, 56]]), first, lut, torch.empty(1176, 16).t())


def test_document_rasterize_reuses_a_buffer():
    doc = glyph_rt.Document(TEXTS[0] * 2, CONFIGS[0])
    W, H = doc.canvas
    scratch = np.empty((4, H, W, 3), np.uint8)
    buf, sizes = doc.rasterize(0, 2, out=scratch)
    ref, ref_sizes = doc.rasterize(0, 2)
    assert np.shares_memory(buf, scratch) and np.array_equal(buf, ref) and sizes == ref_sizes
    with pytest.raises(ValueError, match=r"out: need a C-contiguous uint8 \[>=2"):
        doc.rasterize(0, 2, out=scratch[:1])
