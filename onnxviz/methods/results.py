"""Typed results of the attribution methods: what a map is, at which resolution, for which class."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..finite import check_finite
from ..render.tiles import colorize, overlay, upsample


class _Picture:
    """``overlay`` and ``save`` for a result with a [0, 1] ``map`` (N, H, W) per row."""

    def overlay(self, image: Optional[np.ndarray] = None, index: int = 0, alpha: float = 0.5,
                cmap: str = "jet") -> np.ndarray:
        """Row ``index``'s map as uint8 RGB (H, W, 3): blended over ``image`` (a PIL image such as
        ``onnxviz.read_image(path)`` or uint8 (H, W[, C]), any size: the map is resized to it), or
        alone, colourized.

        >>> rgb = heat.overlay(onnxviz.read_image("cat.png"))
        """
        if not -len(self.map) <= index < len(self.map):
            raise IndexError(f"index {index} out of range: this result has {len(self.map)} rows")
        m = self.map[index]
        if image is None:
            return colorize(m, cmap)
        return overlay(np.asarray(image), m, alpha, cmap)

    def save(self, path, image: Optional[np.ndarray] = None, index: int = 0, alpha: float = 0.5,
             cmap: str = "jet"):
        """Write row ``index`` as a PNG: ``overlay(image)``, or the colourized map without an image;
        a path ending in ``.npy`` saves the unnormalized ``raw`` row instead. Atomic; returns the path.

        >>> heat.save("cam.png", image=onnxviz.read_image("cat.png"))
        """
        from pathlib import Path

        from ..io import save_npy, save_png

        if str(path).lower().endswith(".npy"):
            return save_npy(np.asarray(self.raw[index]), path)
        return save_png(self.overlay(image, index, alpha, cmap), Path(path))


@dataclass(frozen=True)
class Heatmap(_Picture):
    """One map per row: CAM family (``raw`` at the layer's resolution) or occlusion (at the input's).

    ``raw`` (N, h, w) unnormalized, in image orientation whatever the layer layout;
    ``map`` (N, H, W) upsampled to the input size and min-max scaled to [0, 1] per row;
    ``target`` the class explained per row, ``score`` its score (pre-softmax logit by default);
    ``image`` the batch index each row explains (rows repeat an image with ``top_k``);
    ``weights`` the channel weights (N, K), or per-position weights (N, K, h, w) for Layer-CAM;
    ``explains`` what was explained: {"output", "tensor", "score", "target"} (see :func:`explains`).
    """

    raw: np.ndarray
    map: np.ndarray
    target: np.ndarray
    score: np.ndarray
    method: str
    layer: Optional[str] = None
    image: Optional[np.ndarray] = None
    weights: Optional[np.ndarray] = None
    explains: Optional[dict] = None

    def __len__(self) -> int:
        return len(self.raw)

    def __post_init__(self):
        _check(self)


@dataclass(frozen=True)
class Attribution(_Picture):
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
    explains: Optional[dict] = None

    def __len__(self) -> int:
        return len(self.raw)

    def __post_init__(self):
        _check(self)


def _check(result) -> None:
    """A map computed from NaN or inf is no result: fail naming the method, the row and the array."""
    for field in ("raw", "score"):
        value = np.asarray(getattr(result, field))
        bad = ~np.isfinite(value) if value.dtype.kind == "f" else np.zeros(value.shape, bool)
        if bad.any():
            row = int(np.argwhere(bad)[0][0]) if value.ndim else 0
            image = int(result.image[row]) if result.image is not None and value.ndim else row
            check_finite(value[row] if value.ndim else value,
                         f"the {result.method} {'map' if field == 'raw' else 'score'} of image {image}")


def explains(obj, score: str, target) -> dict:
    """What a result explains: the model output, the differentiated tensor, the score kind, the target."""
    from ..targets import describe

    return {"output": obj.output, "tensor": obj.tensor, "score": score, "target": describe(target)}


def scaled(maps: np.ndarray) -> np.ndarray:
    """Min-max scale each (h, w) map of (N, h, w) to [0, 1] in float32; a constant map becomes all zeros.

    The minimum is subtracted in the maps' precision (float32 at least), the rest runs in float32
    in place: the maps equal ``normalize01`` in float64 within float32 rounding, without its
    (N, H, W) float64 temporaries (5 ms for 8 maps at 224x224; now 0.6 ms).
    """
    a = np.asarray(maps)
    shifted = np.subtract(a, a.min(axis=(1, 2), keepdims=True), dtype=np.result_type(a.dtype, np.float32))
    shifted = shifted.astype(np.float32, copy=False)
    span = shifted.max(axis=(1, 2), keepdims=True)
    return np.divide(shifted, span, out=shifted, where=span > 0)  # a constant map is all 0 already


def upsampled(raw: np.ndarray, size: tuple) -> np.ndarray:
    """(N, h, w) -> (N, H, W) bilinear with half-pixel centres, scaled to [0, 1] per map.

    Resized in float32 after subtracting each map's minimum, which commutes with the resize (its
    weights are convex): rounding errors stay relative to the map's range, not its offset, and a
    constant map becomes exactly 0.
    """
    raw = np.asarray(raw)
    low = np.subtract(raw, raw.min(axis=(1, 2), keepdims=True), dtype=np.result_type(raw.dtype, np.float32))
    return scaled(upsample(low, tuple(size), dtype=np.float32))


def channel_map(raw: np.ndarray, spec) -> np.ndarray:
    """(N, H, W) from an input-space attribution: max over channels of |raw|, scaled to [0, 1] per image."""
    # one np.maximum per channel plane: numpy's max along a short last axis (NHWC, C = 3) took
    # 19 ms for 8 images at 224x224, the planes take 1 ms in either layout
    planes = np.moveaxis(np.asarray(raw), spec.channel_axis, 0)
    peak = np.abs(planes[0])
    for plane in planes[1:]:
        np.maximum(peak, np.abs(plane), out=peak)
    return scaled(peak)


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
