"""Gradient saliency and its relatives, all on the input.

* vanilla (Simonyan et al., 2014): ∂score/∂x.
* deconvnet and guided backprop (Springenberg et al., 2015): the same backward pass with the
  ReLU rule swapped (the "deconvnet" / "guided" rule sets).
* SmoothGrad (Smilkov et al., 2017): the mean gradient over noisy copies.
* Integrated Gradients (Sundararajan et al., 2017): ``(x − x') ⊙ ∫₀¹ ∂score/∂x(x' + α(x − x')) dα``,
  Gauss–Legendre nodes, all path points in batched gradient runs.

``raw`` keeps the shape and layout of ``x``; ``map`` is max over channels of ``|raw|`` in [0, 1].

>>> s = onnxviz.saliency(model, x, method="guided")
>>> s.raw.shape == x.shape
True
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Union

import numpy as np

from ..errors import OnnxvizError, OptionError
from ..targets import TargetLike, general, objective, rows, seed_array, target_scores
from .perturb import blurred
from .results import Attribution, channel_map, explains

TITLES = {"vanilla": "gradient saliency", "deconvnet": "deconvnet", "guided": "guided backprop",
          "smoothgrad": "SmoothGrad", "integrated": "Integrated Gradients"}
METHODS = tuple(TITLES)
_RULES = {"vanilla": "standard", "deconvnet": "deconvnet", "guided": "guided"}


def saliency(model, x: np.ndarray, target: TargetLike = None, method: str = "vanilla", *,
             top_k: Optional[int] = None, output: Optional[str] = None, score: str = "logit",
             samples: int = 25, noise: float = 0.15, steps: int = 32,
             baseline: Union[str, float, np.ndarray] = "zero", sigma: Optional[float] = None,
             seed: int = 0, batch_size: Optional[int] = None, progress: bool = False,
             grad: str = "graph") -> Attribution:
    """Input attribution by ``method``: "vanilla", "deconvnet", "guided", "smoothgrad" or "integrated".

    SmoothGrad: ``samples`` copies with Gaussian noise of std ``noise`` × (max − min) of each image.
    Integrated Gradients: ``steps`` path points from ``baseline``: "zero" (0 in the model's input
    space), "blur" (Gaussian, ``sigma`` default size/20 pixels), a number or an array like one image.

    >>> s = onnxviz.saliency(model, x, target=[3, 1], method="smoothgrad", samples=16)
    """
    if method not in METHODS:
        raise OptionError(f"unknown saliency method {method!r}: choose from {', '.join(METHODS)}")
    obj = objective(model, output, score)
    xr, t, image = rows(model, x, obj, target, top_k)
    common = dict(output=obj.output, score=score, class_axis=obj.class_axis, batch_size=batch_size,
                  progress=progress, grad=grad)
    if method in _RULES:
        g = model.gradients(xr, target=t, wrt=["input"], rules=_RULES[method], checked=True, **common)
        raw, chosen, value = g["input"], g.target, g.score
    else:
        chosen = value = None

        def fixed() -> np.ndarray:
            # the explained entries are fixed at the clean image, not re-chosen on each noisy or path copy
            nonlocal chosen, value
            y = model.activations(xr, [obj.tensor], batch_size=batch_size)[obj.tensor]
            hw = model.input.hw(xr)
            chosen, value = target_scores(obj, y, t, hw)
            return seed_array(obj, y, t, hw)[0].astype(np.float32) if general(t) else chosen

        if method == "smoothgrad":
            raw = _smoothgrad(model, xr, fixed, samples, noise, seed, common)
        else:
            raw = _integrated(model, xr, fixed, steps, baseline, sigma, common)
    raw = np.asarray(raw, dtype=xr.dtype)
    return Attribution(raw=raw, map=channel_map(raw, model.input), target=np.asarray(chosen, np.int64),
                       score=np.asarray(value, np.float32), method=method, image=image,
                       explains=explains(obj, score, t))


def _smoothgrad(model, x, targets, samples: int, noise: float, seed: int, common) -> np.ndarray:
    if samples < 1:
        raise OnnxvizError(f"samples must be at least 1, not {samples}")
    rng = np.random.default_rng(seed)
    spread = ((x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3))).astype(np.float64) * noise).astype(np.float32)
    spec = model.input

    def points(image: np.ndarray, _step: np.ndarray) -> np.ndarray:
        # Rows come in (image, sample) order, so drawing chunk by chunk gives the noise one draw
        # of all rows would: the same maps for any batch size. Drawn in NCHW: the same for any layout.
        # float32 draws: half the time of float64 ones, and the points are cast to float32 anyway
        draws = rng.standard_normal(spec.to_nchw(x[image]).shape, dtype=np.float32)
        draws *= spread[image, None, None, None]
        noisy = x[image]  # a copy, in the model's layout
        np.add(noisy, spec.from_nchw(draws), out=noisy, casting="same_kind")
        return noisy

    weights = np.full(samples, 1.0 / samples)
    return _weighted_gradients(model, x, targets, points, weights, common)


def ig_baseline(x: np.ndarray, spec, baseline, sigma: Optional[float]) -> np.ndarray:
    """The Integrated Gradients starting point, one per image, in the model's layout."""
    if isinstance(baseline, str):
        if baseline == "zero":
            return np.zeros_like(x)
        if baseline == "blur":
            return blurred(x, spec.spatial_axes, sigma or max(spec.hw(x)) / 20)
        raise OnnxvizError(f"baseline {baseline!r}: expected 'zero', 'blur', a number or an array")
    b = np.asarray(baseline, dtype=x.dtype)
    try:
        return np.ascontiguousarray(np.broadcast_to(b, x.shape))
    except ValueError:
        raise OnnxvizError(f"baseline of shape {b.shape} does not fit the batch of shape {x.shape}") from None


def _integrated(model, x, targets, steps: int, baseline, sigma, common) -> np.ndarray:
    if steps < 1:
        raise OnnxvizError(f"steps must be at least 1, not {steps}")
    base = ig_baseline(x, model.input, baseline, sigma).astype(np.float64)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas, weights = (nodes + 1) / 2, weights / 2  # from [-1, 1] to [0, 1]
    delta = x.astype(np.float64) - base

    def points(image: np.ndarray, step: np.ndarray) -> np.ndarray:
        return base[image] + alphas[step, None, None, None] * delta[image]

    return delta * _weighted_gradients(model, x, targets, points, weights, common)


def _weighted_gradients(model, x, targets, points, weights: np.ndarray, common) -> np.ndarray:
    """Σ_s weights[s] · ∂score/∂x at ``points(image, step)``, per image, in float64, for the
    targets per image that ``targets()`` returns (called once the first points are under way:
    the clean forward it runs overlaps them).

    The (image, step) rows run ``batch_size`` at a time (default: as many as there are images),
    so peak memory is that of one gradient run of ``batch_size`` images whatever the number of
    steps or samples: ResNet-50 IG with 32 steps needed 5.1 GB for 4 images in one run.
    A worker thread makes the next chunk's points (SmoothGrad's normal draws: 18 ms per
    8 images at 224x224, half a MobileNetV2 forward) while onnxruntime runs this one.
    """
    n, steps = len(x), len(weights)
    chunk = max(1, common.get("batch_size") or n)
    total = np.zeros(x.shape, np.float64)

    def make(start: int):
        row = np.arange(start, min(start + chunk, n * steps))
        image, step = row // steps, row % steps
        return image, step, points(image, step).astype(x.dtype, copy=False)

    starts = range(0, n * steps, chunk)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxviz-points") as pool:
        pending = [pool.submit(make, s) for s in starts[:1]]
        target = np.asarray(targets())
        for k in range(len(starts)):
            image, step, batch = pending.pop().result()
            # in order on one thread: the draws do not depend on the chunking
            pending += [pool.submit(make, s) for s in starts[k + 1:k + 2]]
            g = model.gradients(batch, target=target[image], wrt=["input"], **{**common, "batch_size": None})
            grads = g["input"]
            # rows come grouped by image: one float64 contraction per image (einsum casts in
            # buffers; a float64 copy of the chunk and a boolean gather cost 6x more)
            bounds = [0, *(np.flatnonzero(np.diff(image)) + 1), len(image)]
            for a, b in zip(bounds[:-1], bounds[1:]):
                total[image[a]] += np.einsum("s,s...->...", weights[step[a:b]], grads[a:b])
    return total
