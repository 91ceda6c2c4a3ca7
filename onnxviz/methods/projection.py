"""2-D maps of a feature space: t-SNE (after PCA to ~50 dims) or PCA, deterministic for a seed.

>>> proj = projection(embed(model, "photos/"), method="tsne", perplexity=30, seed=0)
>>> save_figure(scatter_figure(proj), "tsne.png")
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from ..errors import OnnxvizError
from ..io import atomic_write
from .embed import Embedding

METHODS = ("tsne", "pca")


@dataclass
class Projection:
    """Each image of an embedding placed at a 2-D point; ``params`` are the settings actually used."""

    coords: np.ndarray  # (n, 2)
    method: str
    paths: list
    labels: np.ndarray
    classes: tuple
    layer: str
    params: dict = field(default_factory=dict)

    def label_name(self, i: int) -> str:
        k = int(self.labels[i])
        return self.classes[k] if k >= 0 else ""


def project(features: np.ndarray, method: str = "tsne", perplexity: float = 30.0, seed: int = 0,
            pca_dims: int = 50, threads: int = 1, init: str = "pca") -> tuple[np.ndarray, dict]:
    """(n, 2) coordinates of (n, d) features, and the parameters used.

    t-SNE (scikit-learn, Barnes-Hut) runs on the features reduced by PCA to ``pca_dims``
    dimensions (when there are more), as van der Maaten recommends for speed and noise.
    ``perplexity`` is lowered to (n - 1) / 3 for small sets. ``init``: "pca" (stable global
    layout; the seed then hardly matters) or "random" (drawn from ``seed``). Same input and
    seed, same map.
    ``threads``: OpenMP threads for t-SNE's gradient; 1 by default, since OpenMP's spin-waiting
    made it 15x slower, not faster, on a busy 2-core machine.
    """
    from sklearn.decomposition import PCA

    if method not in METHODS:
        raise OnnxvizError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    if n < 3:
        raise OnnxvizError(f"a 2-D map needs at least 3 images, got {n}")
    if not np.isfinite(x).all():
        raise OnnxvizError("the features contain NaN or infinite values")
    x = x - x.mean(axis=0)
    params: dict = {"method": method, "seed": seed}
    if method == "pca" or x.shape[1] <= 2:
        coords = _pca(x, 2, seed)
        return coords, params
    if x.shape[1] > pca_dims:
        x = PCA(n_components=min(pca_dims, n), random_state=seed, svd_solver="full").fit_transform(x)
        params["pca_dims"] = int(x.shape[1])
    from sklearn.manifold import TSNE

    used = float(min(perplexity, (n - 1) / 3))
    if used <= 0:
        raise OnnxvizError(f"perplexity must be positive, got {perplexity}")
    if init not in ("pca", "random"):
        raise OnnxvizError(f"init {init!r}: expected 'pca' or 'random'")
    params["perplexity"] = used
    params["init"] = init
    tsne = TSNE(n_components=2, perplexity=used, init=init, learning_rate="auto", random_state=seed)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="openmp"):
        coords = tsne.fit_transform(x.astype(np.float32))
    return coords.astype(np.float64), params


def _pca(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    k_eff = min(k, *x.shape)
    coords = PCA(n_components=k_eff, random_state=seed, svd_solver="full").fit_transform(x)
    if k_eff < k:  # fewer dimensions than asked: pad with zeros
        coords = np.pad(coords, ((0, 0), (0, k - k_eff)))
    return coords


def projection(embedding: Embedding, method: str = "tsne", perplexity: float = 30.0, seed: int = 0,
               pca_dims: int = 50, threads: int = 1, init: str = "pca") -> Projection:
    """The 2-D map of an embedding (see ``project``)."""
    coords, params = project(embedding.features, method, perplexity, seed, pca_dims, threads, init)
    return Projection(coords, method, list(embedding.paths), np.asarray(embedding.labels), embedding.classes,
                      embedding.layer, params)


def save_csv(proj: Projection, path: Union[str, Path]) -> Path:
    """``path,label,x,y`` per image."""

    with atomic_write(path, "w") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "label", "x", "y"])
        for i, p in enumerate(proj.paths):
            w.writerow([str(p), proj.label_name(i), f"{proj.coords[i, 0]:.6g}", f"{proj.coords[i, 1]:.6g}"])
    return Path(path)
