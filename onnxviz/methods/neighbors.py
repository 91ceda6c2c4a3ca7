"""Nearest neighbours in a layer's feature space (scikit-learn's NearestNeighbors, brute force).

>>> emb = embed(model, "photos/", cache="feats/")
>>> nn = nearest_neighbors(model, emb, "query.jpg", k=8, metric="cosine")
>>> [(n.path.name, round(n.distance, 3)) for n in nn.neighbors]
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import OnnxvizError
from .embed import Embedding, image_features

METRICS = ("cosine", "euclidean")


@dataclass(frozen=True)
class Neighbor:
    """One image of the embedded folder near the query."""

    rank: int  # 1 = nearest
    index: int  # row of the embedding
    path: Path
    label: str  # "" when the image has no class folder
    distance: float


@dataclass
class Neighbors:
    """The ``k`` images nearest to ``query`` at ``layer``, nearest first."""

    query: Optional[Path]
    layer: str
    metric: str
    neighbors: list

    def to_json(self) -> list:
        return [{"rank": n.rank, "path": str(n.path), "label": n.label, "distance": n.distance}
                for n in self.neighbors]


def _check_metric(metric: str):
    if metric not in METRICS:
        raise OnnxvizError(f"metric {metric!r}: expected one of {', '.join(METRICS)}")


def _index(features: np.ndarray, metric: str, k: int):
    from sklearn.neighbors import NearestNeighbors

    _check_metric(metric)
    n = len(features)
    if n == 0:
        raise OnnxvizError("the embedding holds no images")
    if k < 1:
        raise OnnxvizError(f"k must be at least 1, got {k}")
    return NearestNeighbors(n_neighbors=min(k, n), metric=metric, algorithm="brute").fit(features)


def neighbors_of(embedding: Embedding, query: np.ndarray, k: int = 8, metric: str = "cosine",
                 query_path: Optional[Union[str, Path]] = None) -> Neighbors:
    """The ``k`` rows of ``embedding`` nearest to one feature vector ``query`` (shape (D,))."""
    query = np.asarray(query, dtype=np.float32).reshape(1, -1)
    if query.shape[1] != embedding.features.shape[1]:
        raise OnnxvizError(f"the query has {query.shape[1]} features, the embedding {embedding.features.shape[1]}")
    distances, indices = _index(embedding.features, metric, k).kneighbors(query)
    found = [Neighbor(r + 1, int(i), Path(embedding.paths[i]), embedding.label_name(i), float(max(d, 0.0)))
             for r, (i, d) in enumerate(zip(indices[0], distances[0]))]
    return Neighbors(Path(query_path) if query_path is not None else None, embedding.layer, metric, found)


def nearest_neighbors(model, embedding: Embedding, query: Union[str, Path], k: int = 8,
                      metric: str = "cosine") -> Neighbors:
    """The ``k`` images of ``embedding`` nearest to the image file ``query``, at the embedding's layer.

    The query goes through the same preprocessing and pooling as the embedded images; when it
    is one of them, it comes back first at distance ~0.
    """
    _check_metric(metric)
    q = image_features(model, [query], embedding.layer, embedding.pool, embedding.pre)[0]
    return neighbors_of(embedding, q, k, metric, query_path=query)


def knn_predict(embedding: Embedding, k: int = 5, metric: str = "cosine") -> np.ndarray:
    """Leave-one-out k-NN label of every labelled image (majority of its k nearest others; ties go
    to the label of the nearer neighbour). Images without a label are neither voters nor voted on."""
    labelled = np.flatnonzero(embedding.labels >= 0)
    if len(labelled) < 2:
        raise OnnxvizError("k-NN classification needs at least 2 labelled images (images in class sub-folders)")
    feats, labels = embedding.features[labelled], embedding.labels[labelled]
    _, idx = _index(feats, metric, k + 1).kneighbors(feats)
    out = np.empty(len(labelled), np.int64)
    for row, (self_i, near) in enumerate(zip(range(len(labelled)), idx)):
        near = [j for j in near if j != self_i][:k]
        votes = labels[near]
        counts = np.bincount(votes)
        best = np.flatnonzero(counts == counts.max())
        out[row] = next(v for v in votes if v in best)  # the nearest among the tied labels
    return out


def knn_accuracy(embedding: Embedding, k: int = 5, metric: str = "cosine") -> float:
    """Share of labelled images whose leave-one-out k-NN label (``knn_predict``) is their own."""
    labelled = embedding.labels[embedding.labels >= 0]
    return float((knn_predict(embedding, k, metric) == labelled).mean())
