"""The dataset section: a t-SNE map with thumbnails, nearest neighbours of each image, top patches.

The folder's features are computed once, in memory (no cache folder is written), at the
input of the final fully-connected layer; the patches use the report's Grad-CAM layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..datasets import scan_folder
from ..images import read_image
from ..methods.embed import embed
from ..methods.layers import resolve_layer
from ..methods.neighbors import nearest_neighbors
from ..methods.patches import top_patches
from ..methods.projection import projection
from ..render.dataset import patches_grid, thumbnail_map
from .pictures import Picture, picture
from .sections import Inputs, NotApplicable, Part, guarded

NEIGHBORS = 6
THUMB = 96
PATCH_CHANNELS = 6
PATCHES = 8
MAP_SIDE = 900
MAP_LIMIT = 800


@dataclass
class NeighborStrip:
    query: str
    pictures: list  # the query first, then its neighbours, nearest first


@dataclass
class ChannelRow:
    channel: int
    selectivity: float
    picture: Picture


@dataclass
class DatasetView:
    folder: str
    images: int
    classes: tuple
    left_out: list  # (path, reason) of image files that could not be used
    embedding_layer: Optional[str] = None
    tsne: Optional[Picture] = None
    legend: list = field(default_factory=list)  # (class name, "#rrggbb")
    neighbors: list = field(default_factory=list)
    patches_layer: Optional[str] = None
    receptive_field: str = ""
    channels: list = field(default_factory=list)
    parts: list = field(default_factory=list)


def dataset_views(inp: Inputs) -> DatasetView:
    if inp.dataset is None:
        raise NotApplicable("no dataset folder was given; --dataset DIR adds a t-SNE map, nearest neighbours "
                            "and the top patches of the most selective channels")
    data = scan_folder(inp.dataset)
    if not len(data):
        raise NotApplicable(f"no image files under {inp.dataset}")
    model = inp.model
    emb = guarded("features", embed, model, data, None, inp.pre, batch_size=32, workers=2)
    view = DatasetView(str(inp.dataset), len(data), data.classes, [])
    if emb.status == "ok":
        e = emb.value
        view.embedding_layer = e.layer
        view.left_out = [(str(s.path), s.reason) for s in e.failures]
        parts = [guarded("t-SNE map", _tsne, e, view), guarded("nearest neighbours", _neighbors, inp, e, view)]
    else:
        why = f"the features could not be computed: {emb.message}"
        parts = [Part("t-SNE map", "skipped", 0.0, message=why), Part("nearest neighbours", "skipped", 0.0, message=why)]
    view.parts = [emb, *parts, guarded("top patches", _patches, inp, data, view)]
    return view


def _tsne(emb, view: DatasetView) -> None:
    import matplotlib
    from matplotlib.colors import to_hex

    proj = projection(emb, "tsne", seed=0)
    canvas, placed = thumbnail_map(proj, size=MAP_SIDE, limit=MAP_LIMIT, seed=0)
    settings = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in proj.params.items() if k != "method")
    view.tsne = picture(canvas, f"t-SNE of {emb.layer} features ({len(proj.paths)} images, {placed} shown; "
                                f"{settings}); each thumbnail framed in its class colour",
                        f"t-SNE map of {view.folder}")
    cmap = matplotlib.colormaps["tab10" if len(proj.classes) <= 10 else "tab20"]
    view.legend = [(name, to_hex(cmap(k % cmap.N))) for k, name in enumerate(proj.classes)]


def _neighbors(inp: Inputs, emb, view: DatasetView) -> None:
    for i, path in enumerate(inp.paths):
        found = nearest_neighbors(inp.model, emb, path, k=NEIGHBORS)
        pics = [picture(inp.shown[i], "query", f"query {Path(path).name}", side=THUMB)]
        for n in found.neighbors:
            try:
                pixels = np.asarray(read_image(n.path).convert("RGB"))
            except Exception:  # deleted since it was embedded: a grey square keeps the strip aligned
                pixels = np.full((THUMB, THUMB, 3), 200, np.uint8)
            label = n.label or n.path.name
            pics.append(picture(pixels, f"#{n.rank} {label} · d {n.distance:.3g}", f"neighbour {n.rank}: {label}",
                                side=THUMB))
        view.neighbors.append(NeighborStrip(Path(path).name, pics))


def _patches(inp: Inputs, data, view: DatasetView) -> None:
    layer = resolve_layer(inp.model, inp.layer)
    result = top_patches(inp.model, data, layer, n_channels=PATCH_CHANNELS, top=PATCHES, pre=inp.pre,
                         batch_size=32, workers=2)
    view.patches_layer = layer
    rf = result.rf
    view.receptive_field = (f"receptive field {rf.size[0]:g}×{rf.size[1]:g} px, "
                            f"stride {rf.jump[0]:g}×{rf.jump[1]:g} px")
    for cp in result.channels:
        grid = patches_grid(cp, tile=64, cols=max(1, len(cp.patches)))
        view.channels.append(ChannelRow(cp.channel, cp.selectivity,
                                        picture(grid, f"channel {cp.channel}", f"top patches of channel {cp.channel}")))
