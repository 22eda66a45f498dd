"""glyph_rt: a GPU runtime for visual-text compression (Glyph).

    >>> import glyph_rt
    >>> pages = glyph_rt.render("some long text ...", glyph_rt.RenderConfig())
    >>> pages[0].shape, pages.summary()["visual_tokens"]
    >>> inputs = glyph_rt.render_inputs(["text one", "text two"], model="glm4v")  # on the GPU if there is one
    >>> inputs.pixel_values.shape, inputs.image_grid_thw
"""
from ._ext import backends, has_extension
from .render.config import ConfigError, RenderConfig, PRESETS
from .render.gpu import ModelInputs, render_inputs
from .render.pages import Document, Pages, render
from .render.tokens import TextTokenizer, visual_tokens

__version__ = "0.1.0"
__all__ = ["render", "render_inputs", "ModelInputs", "RenderConfig", "ConfigError", "PRESETS", "Document", "Pages",
           "TextTokenizer", "visual_tokens", "backends", "has_extension", "__version__"]
