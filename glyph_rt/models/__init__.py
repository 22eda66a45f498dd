"""Hugging Face integration: GLM-4.1V / Qwen2.5-VL on glyph_rt's kernels."""
from .glyph_model import Answer, GlyphModel
from .kv_cache import GlyphCache, cache_kwarg
from .patch_embed import PatchEmbed
from .patching import MODELS, Patch, apply_glyph_kernels

__all__ = ["GlyphModel", "Answer", "GlyphCache", "cache_kwarg", "PatchEmbed", "apply_glyph_kernels", "Patch", "MODELS"]
