"""Training data: the style sampler, the tasks, collation (and the loader). Imports models/, render/ and ops/ only."""
from .styles import StyleSampler, sample_styles

__all__ = ["StyleSampler", "sample_styles"]
