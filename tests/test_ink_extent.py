"""The auto-crop extent found while drawing equals a full scan of the finished pages, and the C++
scan never reads outside its buffer, whatever the page size."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from glyph_rt.render.config import RenderConfig
from glyph_rt.render.pages import Document
from glyph_rt.render.raster import INK_TOL, ink_extent, rasterize

PROSE = "The quick brown fox jumps over the lazy dog. " * 300
CODE = "def f(x):\n    return x + 1\n\n" * 200  # right edge mid-page


@pytest.mark.parametrize("text, config", [
    (PROSE, RenderConfig()),
    (CODE, RenderConfig()),
    (CODE, RenderConfig.preset("dark_mode")),
    (PROSE, RenderConfig.preset("web_style")),
    (PROSE, RenderConfig(para_bg_color="#EEEEEE", border_width=1.0, para_border_color="#000000", margin_x=0,
                         margin_y=0)),  # a paragraph box covers the top-left pixels
    (PROSE, RenderConfig(font_color="#FFFFFF", page_bg_color="#FFFFFF")),  # no ink at all
])
def test_extent_while_drawing_equals_a_full_scan(text, config):
    doc = Document(text, config)
    W, H = doc.canvas
    buf = np.empty((doc.num_pages, H, W, 3), np.uint8)
    ink = np.full((doc.num_pages, 2), -1, np.int32)
    rasterize(doc.layout, doc.atlas, doc.config, buf, 0, "cpu", ink=ink)
    ref = np.stack(ink_extent(buf, INK_TOL, "reference"), axis=1)
    full = np.stack(ink_extent(buf, INK_TOL, "cpu"), axis=1)
    assert (ink == ref).all() and (full == ref).all()
    assert doc.rasterize()[1] == Document(text, config, backend="reference").rasterize()[1]


@pytest.mark.parametrize("H, W", [(1, 1), (1, 5), (5, 1), (2, 2), (3, 7), (7, 3)])
def test_small_pages_match_the_reference(H, W):
    rng = np.random.default_rng(H * 31 + W)
    for _ in range(20):
        pages = rng.choice(np.array([0, 128, 255], np.uint8), size=(3, H, W, 3))
        cpu = np.stack(ink_extent(pages, INK_TOL, "cpu"), axis=1)
        ref = np.stack(ink_extent(pages, INK_TOL, "reference"), axis=1)
        assert (cpu == ref).all()


def test_empty_pages_give_zero():
    for shape in [(2, 0, 5, 3), (2, 5, 0, 3), (2, 0, 0, 3), (0, 4, 4, 3)]:
        r, b = ink_extent(np.zeros(shape, np.uint8), INK_TOL, "cpu")
        assert r.tolist() == b.tolist() == [0] * shape[0]


GUARD = textwrap.dedent("""
    import ctypes, mmap, sys
    import numpy as np
    from glyph_rt.render.raster import ink_extent
    size = mmap.PAGESIZE
    mem = mmap.mmap(-1, 2 * size)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    libc = ctypes.CDLL(None)
    assert libc.mprotect(ctypes.c_void_p(addr + size), size, 0) == 0  # the next page faults on any read
    for H, W in [(1, 5), (5, 1), (1, 1), (0, 4), (4, 0), (2, 3)]:
        n = H * W * 3
        pages = np.frombuffer(mem, np.uint8, count=n, offset=size - n).reshape(1, H, W, 3)
        print(H, W, [int(v[0]) for v in ink_extent(pages, 5, "cpu")], flush=True)
""")


def test_scan_never_reads_past_the_buffer():
    """Each page ends right before a page the process may not read: a read past it kills the process."""
    r = subprocess.run([sys.executable, "-c", GUARD], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert len(r.stdout.splitlines()) == 6
