"""Hugging Face integration: GLM-4.1V / Qwen2.5-VL on glyph_rt's kernels."""
from importlib import metadata

from .._ext import release

TRANSFORMERS_MIN = (5, 21)  # logits_to_keep as a boolean mask (SFT's and GRPO's loss), mm_encoder_outputs (GRPO)


def _check_transformers() -> None:
    """An ImportError that names the version to install, rather than a shape error deep in a forward."""
    need = ".".join(map(str, TRANSFORMERS_MIN))
    try:
        found = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        raise ImportError(f"glyph_rt.models needs transformers>={need}: pip install 'glyph_rt[models]'") from None
    if release(found) < TRANSFORMERS_MIN:
        raise ImportError(f"glyph_rt.models needs transformers>={need}, found {found}: "
                          f"pip install -U 'transformers>={need}'")


_check_transformers()

from .glyph_model import Answer, GlyphModel  # noqa: E402
from .kv_cache import GlyphCache, cache_kwarg  # noqa: E402
from .patch_embed import PatchEmbed  # noqa: E402
from .patching import MODELS, Patch, apply_glyph_kernels  # noqa: E402

__all__ = ["GlyphModel", "Answer", "GlyphCache", "cache_kwarg", "PatchEmbed", "apply_glyph_kernels", "Patch", "MODELS"]
