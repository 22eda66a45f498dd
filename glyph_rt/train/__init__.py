"""Training data: the style sampler (more to come: tasks, loader, trainer). Imports render/ and ops/ only."""
from .styles import StyleSampler, sample_styles

__all__ = ["StyleSampler", "sample_styles"]
