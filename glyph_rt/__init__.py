"""glyph_rt: a GPU runtime for visual-text compression (Glyph).

    >>> import glyph_rt
    >>> pages = glyph_rt.render("some long text ...", glyph_rt.RenderConfig())
    >>> pages[0].shape, pages.summary()["visual_tokens"]
    >>> inputs = glyph_rt.render_inputs(["text one", "text two"], model="glm4v")  # on the GPU if there is one
    >>> inputs.pixel_values.shape, inputs.image_grid_thw

Names are imported on first use, so `import glyph_rt` (and the command line) does not pay for
torch until something needs it.
"""
import importlib

# `glyph_rt.render` names the function, not the subpackage: load the (light) subpackage now, so
# that importing its modules later does not set the attribute, and let __getattr__ supply it.
from . import render  # noqa: E402
del render

__version__ = "0.1.0"

_EXPORTS = {
    "backends": "._ext", "has_extension": "._ext",
    "ConfigError": ".render.config", "RenderConfig": ".render.config", "PRESETS": ".render.config",
    "ModelInputs": ".render.gpu", "render_inputs": ".render.gpu",
    "Document": ".render.pages", "Pages": ".render.pages", "render": ".render.pages",
    "TextTokenizer": ".render.tokens", "visual_tokens": ".render.tokens",
}
__all__ = ["render", "render_inputs", "ModelInputs", "RenderConfig", "ConfigError", "PRESETS", "Document", "Pages",
           "TextTokenizer", "visual_tokens", "backends", "has_extension", "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'glyph_rt' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
