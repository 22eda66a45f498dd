"""Hugging Face integration: drop-in modules on glyph_rt's kernels."""
