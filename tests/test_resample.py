"""Glyph's horizontal scale: Pillow's bicubic width resize, byte for byte, in C++, numpy and torch."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import glyph_rt
from glyph_rt import RenderConfig
from glyph_rt.ops import resize as device_resize
from glyph_rt.render.raster import ink_extent
from glyph_rt.render.resample import resize_width, resized_extent


def pillow(img: np.ndarray, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, img.shape[0])))


def page_like(rng, h: int, w: int) -> np.ndarray:
    """Mostly background with some dark, some coloured pixels (the taps' negative lobes clip at 0 and 255)."""
    img = np.full((h, w, 3), 255, np.uint8)
    ink = rng.random((h, w)) < 0.3
    img[ink] = rng.integers(0, 256, (int(ink.sum()), 3), dtype=np.uint8)
    return img


@settings(max_examples=60, deadline=None)
@given(w=st.integers(1, 400), h=st.integers(1, 4), scale=st.floats(0.1, 4.0), seed=st.integers(0, 2**31))
def test_every_backend_is_pillows_bicubic(w, h, scale, seed):
    img = page_like(np.random.default_rng(seed), h, w)
    out_w = max(1, int(w * scale))
    ref = pillow(img, out_w)
    assert np.array_equal(resize_width(img, out_w), ref)
    assert np.array_equal(resize_width(img, out_w, backend="reference"), ref)
    assert np.array_equal(device_resize.resize_width(torch.from_numpy(img)[None], out_w)[0].numpy(), ref)


def test_pages_resize_into_a_wider_canvas_and_bad_arguments_are_refused():
    rng = np.random.default_rng(0)
    pages = np.stack([page_like(rng, 5, 60) for _ in range(3)])
    out = np.zeros((3, 5, 56, 3), np.uint8)
    resize_width(pages, 48, out=out)
    for p in range(3):
        assert np.array_equal(out[p, :, :48], pillow(pages[p], 48))
    assert not out[:, :, 48:].any()  # the columns past the page are left to the caller
    with pytest.raises(ValueError, match="out must be"):
        resize_width(pages, 48, out=np.zeros((3, 5, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        resize_width(pages.astype(np.float32), 48)
    with pytest.raises(ValueError, match="at least 1"):
        resize_width(pages, 0)
    with pytest.raises(ValueError, match="unknown"):
        resize_width(pages, 48, backend="gpu")


def test_device_ink_extent_is_glyphs_crop_rule():
    rng = np.random.default_rng(1)
    pages = np.full((4, 30, 40, 3), 240, np.uint8)
    pages[0, 3:9, 5:17] = 10
    pages[1, 20, 39] = 233  # 7 grey levels off: ink
    pages[2, 25, 30] = 236  # 4 levels: not ink
    pages[3] = page_like(rng, 30, 40)
    right, bottom = ink_extent(pages, 5, "reference")
    got = device_resize.ink_extent(torch.from_numpy(pages), 5).numpy()
    assert got[:, 0].tolist() == right.tolist() and got[:, 1].tolist() == bottom.tolist()
    assert got[:3].tolist() == [[17, 9], [40, 21], [0, 0]]


def test_resized_extent_bounds_where_ink_shows():
    rng = np.random.default_rng(2)
    for w, out_w in [(300, 240), (595, 446), (120, 150)]:
        for right in [0, 1, 57, w - 3, w]:
            img = np.full((1, w, 3), 255, np.uint8)
            img[0, :right] = rng.integers(0, 256, (right, 3), dtype=np.uint8)
            got = pillow(img, out_w)
            changed = np.nonzero((got != 255).any(-1)[0])[0]
            bound = int(resized_extent(np.asarray([right]), w, out_w)[0])
            assert (changed[-1] + 1 if len(changed) else 0) <= bound <= out_w
            assert bound == 0 if right == 0 else bound >= right * out_w // w


def test_scaled_pages_are_drawn_a_few_at_a_time(monkeypatch):
    """The full-width buffer holds DRAWN_BYTES of pages, whatever the range: the pages are the same."""
    from glyph_rt.render import raster

    doc = glyph_rt.Document("The quick brown fox jumps over the lazy dog.\n" * 60,
                            RenderConfig(page_size=(160, 120), margin_x=8, margin_y=8, horizontal_scale=0.8))
    assert doc.num_pages >= 5
    whole, sizes = doc.rasterize()
    W, H = raster.drawn_canvas(doc.config)
    monkeypatch.setattr(raster, "DRAWN_BYTES", 2 * W * H * 3)
    sliced, sliced_sizes = doc.rasterize()
    assert sliced_sizes == sizes and np.array_equal(sliced, whole)


def test_device_ops_work_a_few_pages_at_a_time(monkeypatch):
    pages = torch.from_numpy(np.stack([page_like(np.random.default_rng(i), 9, 31) for i in range(5)]))
    whole, ink = device_resize.resize_width(pages, 24), device_resize.ink_extent(pages)
    monkeypatch.setattr(device_resize, "STEP_BYTES", 2 * 9 * 31 * 3)
    assert torch.equal(device_resize.resize_width(pages, 24), whole)
    assert torch.equal(device_resize.ink_extent(pages), ink)
    empty = pages[:0]
    assert device_resize.resize_width(empty, 24).shape == (0, 9, 24, 3)
    assert device_resize.ink_extent(empty).shape == (0, 2)


@pytest.mark.parametrize("scale", [0.75, 0.9, 1.3])
def test_scaled_documents_are_the_full_width_page_resized(scale):
    text = "The quick brown fox jumps over the lazy dog; sphinx of black quartz, judge my vow.\n" * 6
    base = dict(page_size=(180, 140), margin_x=9, margin_y=9, page_bg_color="#f4f4f4", para_bg_color="#ffffff",
                border_width=1, border_padding=2, snap=0, auto_crop_width=True, auto_crop_last_page=True)
    full = glyph_rt.Document(text, RenderConfig(**{**base, "auto_crop_width": False, "auto_crop_last_page": False}))
    scaled = glyph_rt.Document(text, RenderConfig(**base, horizontal_scale=scale))
    assert scaled.num_pages == full.num_pages >= 2  # the layout does not depend on the scale
    drawn, _ = full.rasterize()
    pages, sizes = scaled.rasterize()
    w = scaled.config.page_pixels[0]
    for p, (pw, ph) in enumerate(sizes):
        resized = pillow(drawn[p], w)
        assert np.array_equal(pages[p, :, :w], resized)
        right, bottom = ink_extent(resized[None], 5, "reference")
        assert pw == min(w, round(int(right[0]) + base["margin_x"]))
    ref, ref_sizes = glyph_rt.Document(text, scaled.config, backend="reference").rasterize()
    assert ref_sizes == sizes and np.array_equal(ref, pages)
