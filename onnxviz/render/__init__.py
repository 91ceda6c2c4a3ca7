"""Rendering: numpy tiles and overlays (``tiles``) and matplotlib figures (``figures``)."""
from .figures import activations_figure, filters_figure, heatmap_figure, new_figure, strip_figure
from .tiles import (activation_grid, colorize, filter_grid, grid, normalize01, overlay,
                    rank_channels, upsample)

__all__ = [
    "activation_grid", "activations_figure", "colorize", "filter_grid", "filters_figure", "grid",
    "heatmap_figure", "new_figure", "normalize01", "overlay", "rank_channels", "strip_figure",
    "upsample",
]
