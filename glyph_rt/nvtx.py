"""NVTX ranges around glyph_rt's stages, so Nsight Systems / Nsight Compute can see them.

Ranges go through the `nvtx` package when it is installed, else through torch.cuda.nvtx
when CUDA is available; otherwise they cost nothing. Names: glyph_rt.layout,
glyph_rt.upload, glyph_rt.bin, glyph_rt.raster.<mode>, glyph_rt.pixel_values.
"""
from __future__ import annotations

import contextlib
import functools


@functools.lru_cache(maxsize=1)
def _backend():
    try:
        import nvtx

        return nvtx.push_range, nvtx.pop_range
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.nvtx.range_push, torch.cuda.nvtx.range_pop
    except Exception:  # a CPU-only torch has no NVTX bindings
        pass
    return None


@contextlib.contextmanager
def nvtx_range(name: str):
    b = _backend()
    if b is None:
        yield
        return
    b[0](name)
    try:
        yield
    finally:
        b[1]()
