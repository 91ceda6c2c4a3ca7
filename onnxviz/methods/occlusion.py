"""Occlusion (Zeiler & Fergus, 2014), on the batched perturbation engine of :mod:`.perturb`.

Every occluded copy of every image goes through the plain forward graph in large batches,
built in one reused buffer; the drop of the target score is spread back over the pixels
each window covers.
"""
from __future__ import annotations

import logging
from typing import Optional, Union

import numpy as np

from ..errors import OnnxvizError
from ..targets import TargetLike, chosen_targets, class_scores, general, objective, rows, seed_array
from .layers import layer_axes, resolve_layer
from .perturb import BATCH, blurred, head_runner, perturbed_scores, segments
from .results import Heatmap, explains, scaled, upsampled


def window_starts(n: int, window: int, stride: int) -> np.ndarray:
    """Window origins along an axis of length n: every ``stride``, plus one flush with the end."""
    window = min(window, n)
    starts = list(range(0, n - window + 1, stride))
    if starts[-1] + window < n:
        starts.append(n - window)
    return np.asarray(starts)


def coverage(starts: np.ndarray, window: int, n: int) -> np.ndarray:
    """(windows, n) indicator: which pixels each window covers."""
    idx = np.arange(n)
    return ((idx >= starts[:, None]) & (idx < starts[:, None] + min(window, n))).astype(np.float64)


def _pair(v, what: str) -> tuple[int, int]:
    v = tuple(int(a) for a in np.atleast_1d(v))
    if len(v) == 1:
        v = v * 2
    if len(v) != 2 or min(v) < 1:
        raise OnnxvizError(f"{what} must be a positive int or (height, width), not {v}")
    return v


def baseline_batch(x: np.ndarray, hw_axes: tuple, baseline, sigma: float) -> np.ndarray:
    """The values that replace occluded pixels, one item per row, in the batch's layout."""
    hw_axes = tuple(hw_axes)
    if isinstance(baseline, str):
        if baseline == "blur":
            return blurred(x, hw_axes, sigma)
        if baseline == "mean":
            return np.broadcast_to(x.mean(axis=hw_axes, keepdims=True), x.shape).astype(x.dtype)
        raise OnnxvizError(f"baseline {baseline!r}: expected a number, 'blur', 'mean' or an array")
    b = np.asarray(baseline, dtype=x.dtype)
    try:
        return np.broadcast_to(b, x.shape) if b.ndim != x.ndim - 1 else np.broadcast_to(b[None], x.shape)
    except ValueError:
        raise OnnxvizError(f"baseline of shape {b.shape} does not fit images of shape {x.shape[1:]}") from None


def occlusion(model, x: np.ndarray, target: TargetLike = None, window=32, stride=16,
              baseline: Union[float, str, np.ndarray] = 0.0, *, layer: Optional[str] = None,
              top_k: Optional[int] = None, output: Optional[str] = None, score: str = "logit",
              sigma: Optional[float] = None, batch_size: int = BATCH, progress: bool = False) -> Heatmap:
    """Mean drop of the target score over the occluding windows covering each pixel.

    ``raw[n, i, j]`` = mean over windows w covering (i, j) of ``score(x) − score(x with w replaced
    by baseline)``. ``window``/``stride`` are pixels (an int or (height, width)); ``baseline`` a value
    in the model's input space (0 is the mean image for mean/std-normalized inputs), "blur"
    (Gaussian, ``sigma`` default window/4), "mean" (each image's channel means) or an array.
    With ``layer``, windows slide over that tensor's positions instead and only the head after it
    is re-run: ``raw`` is then at the layer's resolution.

    >>> h = onnxviz.occlusion(model, x, window=16, stride=8)
    >>> h.raw.shape == (len(x), *model.input.hw(x))
    True
    """
    obj = objective(model, output, score)
    x, t, image = rows(model, x, obj, target, top_k)
    spec = model.input
    if layer is None:
        values = x
        clean = model.activations(x, [obj.tensor], batch_size=batch_size)[obj.tensor]
        hw_axes = spec.spatial_axes

        def forward(batch, row):
            return model.activations(batch, [obj.tensor])[obj.tensor]
    else:
        layer = resolve_layer(model, layer)
        _, *hw_axes = layer_axes(model, layer)
        got = model.activations(x, [layer, obj.tensor], batch_size=batch_size)
        values, clean = got[layer], got[obj.tensor]
        forward = head_runner(model, x, layer, obj)
    if general(t):  # Σ seed·y with the seed fixed at the clean output
        seeds, chosen = seed_array(obj, clean, t, spec.hw(x))
        before = np.sum(seeds * clean, axis=tuple(range(1, clean.ndim)))

        def score_of(y, row):
            return np.sum(y * seeds[row], axis=tuple(range(1, y.ndim)))
    else:
        chosen, before = chosen_targets(obj, clean, t)

        def score_of(y, row):
            return class_scores(obj, y)[np.arange(len(row)), chosen[row]]
    windows = _Windows(values, hw_axes, window, stride)
    base = baseline_batch(values, hw_axes, baseline, sigma or max(windows.size) / 4)

    def run(batch, row):
        return score_of(forward(batch, row), row)

    after = perturbed_scores(run, windows.filler(values, base), len(x), windows.count, values.shape[1:],
                             values.dtype, batch_size, progress, "occlusion")
    raw = windows.spread(before[:, None] - after)
    shape = spec.hw(x)
    return Heatmap(raw=raw, map=scaled(raw) if layer is None else upsampled(raw, shape), target=chosen,
                   score=before.astype(np.float32), method="occlusion", layer=layer, image=image,
                   explains=explains(obj, score, t))


class _Windows:
    """The grid of occluding windows over two spatial axes of a batch."""

    def __init__(self, values: np.ndarray, hw_axes, window, stride):
        self.axes = tuple(hw_axes)
        self.shape = tuple(values.shape[a] for a in self.axes)
        (wh, ww), (sh, sw) = _pair(window, "window"), _pair(stride, "stride")
        self.starts = (window_starts(self.shape[0], wh, sh), window_starts(self.shape[1], ww, sw))
        self.size = (min(wh, self.shape[0]), min(ww, self.shape[1]))
        for axis, (win, step, n) in enumerate(zip(self.size, (sh, sw), self.shape)):
            if step > win and n > win:
                # positions between windows would be covered by none: their map value is undefined
                raise OnnxvizError(
                    f"occlusion stride {step} is larger than the window {win} along "
                    f"{'height' if axis == 0 else 'width'}: pixels between windows would never be "
                    "occluded; use a stride (--stride) no larger than the window (--window)")
        self.count = len(self.starts[0]) * len(self.starts[1])
        if wh >= self.shape[0] and ww >= self.shape[1]:
            # one window hides everything: every position gets the same drop, the map is flat
            logging.getLogger("onnxviz").warning(
                "occlusion window %dx%d is not smaller than the %dx%d input: it hides the whole "
                "image, so the map is flat (all zero once scaled); use a smaller --window",
                wh, ww, *self.shape)

    def region(self, k: int) -> list:
        """Index of window k in one item (batch axis dropped)."""
        ys, xs = self.starts
        y0, x0 = ys[k // len(xs)], xs[k % len(xs)]
        at = [slice(None)] * 3
        at[self.axes[0] - 1] = slice(y0, y0 + self.size[0])
        at[self.axes[1] - 1] = slice(x0, x0 + self.size[1])
        return tuple(at)

    def filler(self, values: np.ndarray, base: np.ndarray):
        def fill(batch, row, copy):
            for r, a, b in segments(row):
                batch[a:b] = values[r]
                for j, k in enumerate(copy[a:b], start=a):
                    at = self.region(k)
                    batch[j][at] = base[r][at]

        return fill

    def spread(self, drops: np.ndarray) -> np.ndarray:
        """(N, windows) score drops -> (N, h, w): per position the mean over the windows covering it."""
        ry = coverage(self.starts[0], self.size[0], self.shape[0])
        rx = coverage(self.starts[1], self.size[1], self.shape[1])
        grid = drops.reshape(len(drops), len(ry), len(rx))
        total = np.einsum("py,npq,qx->nyx", ry, grid, rx)
        count = ry.sum(axis=0)[:, None] * rx.sum(axis=0)[None, :]
        return (total / count).astype(np.float32)
