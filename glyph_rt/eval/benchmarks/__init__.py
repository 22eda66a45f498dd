"""Benchmarks: one module per family, each turning data into glyph_rt.eval.Item lists with its metric."""
