"""Matplotlib figures for filters, activations, heatmaps and image strips.

Built on ``Figure`` + the Agg canvas, so no display or pyplot state is needed. Each function
takes arrays and optional axes to draw into, and returns the Figure.

>>> save_figure(heatmap_figure(image, cam, "Grad-CAM", label="tabby cat (0.91)"), "cam.png")
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

# matplotlib is imported inside the functions: it takes about a second, which every command
# (and `--help`) would pay at start-up through `import onnxviz`; annotations stay strings.
from .tiles import filter_grid, grid, grid_shape, normalize01, colorize, overlay


def new_figure(figsize=None) -> Figure:
    """A Figure with an Agg canvas attached (renders and saves without pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _axes(n: int, axes, figsize) -> tuple[Figure, list]:
    if axes is None:
        fig = new_figure(figsize)
        return fig, list(np.atleast_1d(fig.subplots(1, n, squeeze=False)[0]))
    axes = list(np.atleast_1d(axes))
    if len(axes) != n:
        raise ValueError(f"expected {n} axes, got {len(axes)}")
    return axes[0].figure, axes


def _show(ax, image: np.ndarray, title: Optional[str] = None) -> None:
    image = np.asarray(image)
    grey = image.ndim == 2 or image.shape[-1] == 1
    ax.imshow(image[..., 0] if image.ndim == 3 and grey else image, cmap="gray" if grey else None,
              vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)


def filters_figure(weights: np.ndarray, title: Optional[str] = None, *, bgr: bool = False,
                   ax=None, figsize=None) -> Figure:
    """Conv filters (O, I, kh, kw) as tiles: colour for RGB first layers, else one row per filter."""
    fig, (ax,) = _axes(1, ax, figsize)
    _show(ax, filter_grid(weights, bgr=bgr), title)
    return fig


def activations_figure(image: np.ndarray, acts: np.ndarray, channels: Sequence[int],
                       title: Optional[str] = None, *, scale: str = "channel", cmap: str = "viridis",
                       axes=None, figsize=None) -> Figure:
    """The input image beside a grid of (C, h, w) activation ``channels``, each labelled by its number.

    >>> _, chans = activation_grid(acts, top=16); activations_figure(img, acts, chans, "layer3")
    """
    acts = np.asarray(acts, dtype=np.float64)
    channels = [int(c) for c in channels]
    if acts.ndim != 3 or not channels:
        raise ValueError(f"need (C, h, w) activations and some channels, got shape {acts.shape}")
    shown = normalize01(acts[channels], axis=(1, 2) if scale == "channel" else None)
    pad = max(1, acts.shape[1] // 16)
    _, cols = grid_shape(len(channels))
    tiles = grid(colorize(shown, cmap), cols, pad)
    fig, (ax_img, ax_grid) = _axes(2, axes, figsize or (11, 5))
    _show(ax_img, image, "input")
    _show(ax_grid, tiles, title)
    h, w = acts.shape[1:]
    for i, c in enumerate(channels):
        r, k = divmod(i, cols)
        ax_grid.text(k * (w + pad) + 0.5, r * (h + pad) + 0.5, str(c), color="white", fontsize=7,
                     va="top", ha="left", bbox=dict(facecolor="black", alpha=0.5, pad=1, lw=0))
    return fig


def heatmap_figure(image: np.ndarray, map01: np.ndarray, title: Optional[str] = None, *,
                   colorbar: bool = True, label: Optional[str] = None, alpha: float = 0.5,
                   cmap: str = "jet", ax=None, figsize=None) -> Figure:
    """A [0, 1] map over the image with a colour bar; ``label`` (the explained class) joins the title."""
    fig, (ax,) = _axes(1, ax, figsize)
    _show(ax, overlay(image, map01, alpha, cmap), "\n".join(t for t in (title, label) if t))
    if colorbar:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=ax, fraction=0.046, pad=0.04)
    return fig


def strip_figure(images: Sequence[np.ndarray], captions: Optional[Sequence[str]] = None,
                 title: Optional[str] = None, *, axes=None, figsize=None) -> Figure:
    """Images side by side in one row, each with its caption below."""
    if not len(images):
        raise ValueError("strip_figure needs at least one image")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    fig, axs = _axes(len(images), axes, figsize or (2.2 * len(images), 2.6))
    for i, (ax, img) in enumerate(zip(axs, images)):
        _show(ax, img)
        if captions is not None:
            ax.text(0.5, -0.04, captions[i], transform=ax.transAxes, ha="center", va="top", fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
