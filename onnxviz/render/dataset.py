"""Pictures of the dataset views: neighbour strips, 2-D maps (scatter, thumbnails), top-patch grids.

They take the typed results of :mod:`onnxviz.methods.neighbors`, ``.projection`` and ``.patches``
and return a Figure or a uint8 RGB array; matplotlib and PIL load on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from ..images import read_image
from .tiles import grid, grid_shape

if TYPE_CHECKING:  # the result types only; rendering never imports the methods
    from ..methods.neighbors import Neighbors
    from ..methods.patches import ChannelPatches, Patches
    from ..methods.projection import Projection

METHOD_NAMES = {"tsne": "t-SNE", "pca": "PCA"}


# ---------------------------------------------------------------------------- nearest neighbours

def neighbors_figure(result: Neighbors, images: Sequence[np.ndarray], query_image: np.ndarray,
                     title: Optional[str] = None):
    """The query beside its neighbours (uint8 images, nearest first), each captioned with rank,
    distance and label."""
    from .figures import strip_figure

    captions = ["query"] + [f"#{n.rank}  d={n.distance:.3g}\n{n.label or n.path.name}" for n in result.neighbors]
    title = title or f"{len(result.neighbors)} nearest at {result.layer} ({result.metric})"
    return strip_figure([query_image, *images], captions, title)


# ---------------------------------------------------------------------------- 2-D maps

def scatter_figure(proj: Projection, title: Optional[str] = None, point_size: Optional[float] = None):
    """The map as a scatter plot, one colour per class (grey for unlabelled images)."""
    from .figures import new_figure
    import matplotlib

    fig = new_figure((8, 7))
    ax = fig.add_subplot()
    size = point_size or float(np.clip(2000 / max(len(proj.paths), 1), 4, 40))
    cmap = matplotlib.colormaps["tab10" if len(proj.classes) <= 10 else "tab20"]
    unlabelled = proj.labels < 0
    if unlabelled.any():
        ax.scatter(*proj.coords[unlabelled].T, s=size, c="0.6", label="(no label)", linewidths=0)
    for k, name in enumerate(proj.classes):
        sel = proj.labels == k
        if sel.any():
            ax.scatter(*proj.coords[sel].T, s=size, color=cmap(k % cmap.N), label=name, linewidths=0)
    if len(proj.classes) and len(proj.classes) <= 30:
        ax.legend(loc="best", fontsize=8, markerscale=max(1.0, 30 / size) ** 0.5, frameon=True)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{_name(proj)} of {proj.layer} ({len(proj.paths)} images)")
    return fig


def thumbnail_map(proj: Projection, size: int = 2000, thumb: Optional[int] = None, limit: int = 1500,
                  seed: int = 0, background: int = 255) -> tuple[np.ndarray, int]:
    """Thumbnails of the images pasted at their map positions: (uint8 (size, size, 3), images placed).

    At most ``limit`` images (a seeded random choice) are read, one at a time; unreadable ones
    are left out. Each thumbnail (``thumb`` px on its longer side; default from the image count)
    gets a border in its class colour.
    """
    import matplotlib
    from PIL import Image


    n = len(proj.paths)
    order = np.arange(n)
    if n > limit:
        order = np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
    thumb = thumb or int(np.clip(0.8 * size / np.sqrt(len(order)), 24, 96))
    lo, hi = proj.coords.min(axis=0), proj.coords.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    inner = size - thumb - 4
    cmap = matplotlib.colormaps["tab10" if len(proj.classes) <= 10 else "tab20"]
    canvas = Image.new("RGB", (size, size), (background,) * 3)
    placed = 0
    for i in order:
        try:
            im = read_image(proj.paths[i]).convert("RGB")
        except Exception:
            continue
        scale = thumb / max(im.width, im.height)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
        k = int(proj.labels[i])
        colour = tuple(int(255 * c) for c in cmap(k % cmap.N)[:3]) if k >= 0 else (150, 150, 150)
        framed = Image.new("RGB", (im.width + 4, im.height + 4), colour)
        framed.paste(im, (2, 2))
        x, y = (proj.coords[i] - lo) / span * inner
        canvas.paste(framed, (int(x), int(inner - y)))  # y up, as in the scatter
        placed += 1
    return np.asarray(canvas), placed


def _name(proj: Projection) -> str:
    return METHOD_NAMES[proj.method]


# ---------------------------------------------------------------------------- top patches

def _tile(crop: Optional[np.ndarray], tile: int) -> np.ndarray:
    """A crop fitted into a grey tile x tile square (pixels repeated when enlarging, so they stay honest)."""
    from PIL import Image

    out = Image.new("RGB", (tile, tile), (128, 128, 128))
    if crop is not None and crop.size:
        im = Image.fromarray(crop)
        scale = tile / max(im.width, im.height)
        new = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        im = im.resize(new, Image.NEAREST if scale >= 1 else Image.BILINEAR)
        out.paste(im, ((tile - new[0]) // 2, (tile - new[1]) // 2))
    return np.asarray(out)


def patches_grid(cp: ChannelPatches, tile: int = 64, cols: Optional[int] = None, pad: int = 2) -> np.ndarray:
    """A channel's patches as one uint8 picture, each tile captioned with its activation value."""
    from PIL import Image, ImageDraw

    caption = 12
    tiles = []
    for p in cp.patches:
        t = Image.new("RGB", (tile, tile + caption), (255, 255, 255))
        t.paste(Image.fromarray(_tile(p.image, tile)), (0, 0))
        ImageDraw.Draw(t).text((2, tile), f"{p.value:.3g}", fill=(0, 0, 0))
        tiles.append(np.asarray(t))
    if not tiles:
        return np.full((tile + caption, tile, 3), 255, np.uint8)
    return grid(np.stack(tiles), cols or grid_shape(len(tiles), min(len(tiles), 8))[1], pad)


def patches_overview(result: Patches, tile: int = 48, pad: int = 2) -> np.ndarray:
    """One row per chosen channel (its label on the left, then its patches): uint8 RGB."""
    from PIL import Image, ImageDraw

    rows = [patches_grid(cp, tile, cols=max(1, len(cp.patches)), pad=pad) for cp in result.channels]
    label_w = 90
    width = label_w + max(r.shape[1] for r in rows)
    height = sum(r.shape[0] for r in rows) + pad * (len(rows) - 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = 0
    for cp, row in zip(result.channels, rows):
        canvas.paste(Image.fromarray(row), (label_w, y))
        draw.text((2, y + 2), f"channel {cp.channel}\nsel {cp.selectivity:.2f}", fill=(0, 0, 0))
        y += row.shape[0] + pad
    return np.asarray(canvas)
