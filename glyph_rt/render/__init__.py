"""Text -> pages: configuration, fonts and atlases, layout, rasterization, token accounting."""
