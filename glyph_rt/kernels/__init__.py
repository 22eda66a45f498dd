"""Triton kernels of glyph_rt, one file per op (installed as glyph_rt.kernels)."""
