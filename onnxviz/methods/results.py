"""Typed results of the attribution methods: what a map is, at which resolution, for which class."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..render.tiles import normalize01, upsample


@dataclass(frozen=True)
class Heatmap:
    """One map per row: CAM family (``raw`` at the layer's resolution) or occlusion (at the input's).

    ``raw`` (N, h, w) unnormalized, in image orientation whatever the layer layout;
    ``map`` (N, H, W) upsampled to the input size and min-max scaled to [0, 1] per row;
    ``target`` the class explained per row, ``score`` its score (pre-softmax logit by default);
    ``image`` the batch index each row explains (rows repeat an image with ``top_k``);
    ``weights`` the channel weights (N, K), or per-position weights (N, K, h, w) for Layer-CAM.
    """

    raw: np.ndarray
    map: np.ndarray
    target: np.ndarray
    score: np.ndarray
    method: str
    layer: Optional[str] = None
    image: Optional[np.ndarray] = None
    weights: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.raw)


@dataclass(frozen=True)
class Attribution:
    """Input-space attribution (saliency family, Guided Grad-CAM).

    ``raw`` has exactly the shape and layout of the batch ``x``; ``map`` (N, H, W) is the
    maximum over channels of ``|raw|``, scaled to [0, 1] per row.
    """

    raw: np.ndarray
    map: np.ndarray
    target: np.ndarray
    score: np.ndarray
    method: str
    layer: Optional[str] = None
    image: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.raw)


def scaled(maps: np.ndarray) -> np.ndarray:
    """Min-max scale each (h, w) map of (N, h, w) to [0, 1]; a constant map becomes all zeros."""
    return normalize01(maps, axis=(1, 2)).astype(np.float32)


def upsampled(raw: np.ndarray, size: tuple) -> np.ndarray:
    """(N, h, w) -> (N, H, W) bilinear with half-pixel centres, scaled to [0, 1] per map."""
    return scaled(upsample(raw, tuple(size)))


def channel_map(raw: np.ndarray, spec) -> np.ndarray:
    """(N, H, W) from an input-space attribution: max over channels of |raw|, scaled to [0, 1] per image."""
    return scaled(np.abs(raw).max(axis=spec.channel_axis))


@dataclass(frozen=True)
class Curve:
    """The target's score as pixels are deleted or inserted in the map's order.

    ``scores`` (N, steps + 1): the score after 0, 1, … steps; ``fractions`` (steps + 1,): the
    fraction of pixel positions changed at each step; ``target`` the class per image;
    ``auc`` (N,): the area under each curve over [0, 1] (trapezoid rule).
    """

    scores: np.ndarray
    fractions: np.ndarray
    target: np.ndarray
    metric: str
    score: str = "prob"

    @property
    def auc(self) -> np.ndarray:
        return trapezoid(self.scores, self.fractions)

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class Road:
    """ROAD: score changes (after − before) when the top (MoRF) or bottom (LeRF) p% of pixels are imputed.

    ``morf``, ``lerf`` (N, percentiles); ``combined`` (N,): the mean over percentiles of
    (LeRF − MoRF) / 2 — higher is better: removing what the map calls relevant hurts more than
    removing what it calls irrelevant.
    """

    percentiles: np.ndarray
    morf: np.ndarray
    lerf: np.ndarray
    before: np.ndarray  # (N,) the score of the untouched image
    target: np.ndarray
    score: str = "prob"

    @property
    def combined(self) -> np.ndarray:
        return ((self.lerf - self.morf) / 2).mean(axis=1)


def trapezoid(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """∫ y dx along the last axis by the trapezoid rule (numpy renamed trapz, so written out)."""
    y = np.asarray(y, np.float64)
    dx = np.diff(np.asarray(x, np.float64))
    return ((y[..., 1:] + y[..., :-1]) / 2 * dx).sum(axis=-1)
