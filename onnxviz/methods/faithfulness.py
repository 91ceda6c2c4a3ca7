"""Is a map faithful to the model? Perturbation metrics, and how well maps point at known objects.

* Deletion and insertion (Petsiuk et al., 2018, RISE): remove (or restore) pixels in the order
  the map ranks them and follow the target's score; a faithful map makes it fall fast (deletion,
  low AUC) and rise fast (insertion, high AUC).
* ROAD (Rong et al., 2022): remove the most (MoRF) or least (LeRF) relevant pixels and fill them by
  noisy linear imputation, so the filled region does not itself tell the model where it was.
* The pointing game (Zhang et al., 2016) and energy-based pointing (Wang et al., 2020, Score-CAM):
  does the map's peak, and how much of its mass, fall on the object?

Every perturbed copy of every image goes through the plain forward graph in large batches
(:mod:`.perturb`'s engine, which occlusion and Score-CAM use too: the ranked fill lives there),
so a 50-step curve costs 51 forward passes per image and nothing else.

>>> h = onnxviz.grad_cam(model, x)
>>> onnxviz.deletion(model, x, h.map, target=h.target).auc    # lower is better
>>> onnxviz.insertion(model, x, h.map, target=h.target).auc   # higher is better
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np

from ..errors import OnnxvizError
from ..targets import TargetLike, check_targets, class_scores, objective, target_array
from .occlusion import baseline_batch
from .perturb import BATCH, blurred, image_rng, perturbed_scores, pixel_order, ranked_filler, step_counts
from .results import Curve, Road

Baseline = Union[float, str, np.ndarray]
SCORES = ("prob", "logit")
BLUR_SIGMA, BLUR_RADIUS = 5.0, 5
PERCENTILES = tuple(range(10, 100, 10))
ROAD_NOISE = 0.01


# ---------------------------------------------------------------------------- scoring


class Scorer:
    """Scores of one class per row under perturbation: softmax probability or raw logit, batched."""

    def __init__(self, model, score: str = "prob", output: Optional[str] = None):
        if score not in SCORES:
            raise OnnxvizError(f"score must be 'prob' or 'logit', not {score!r}")
        self.model, self.score = model, score
        # the logits behind a trailing softmax; "prob" is their softmax, the model's own or not
        self.obj = objective(model, output, "logit")

    def all(self, x: np.ndarray, batch_size: Optional[int] = None) -> np.ndarray:
        """(N, classes) scores of a batch."""
        y = self.model.activations(x, [self.obj.tensor], batch_size=batch_size)[self.obj.tensor]
        return self.transform(class_scores(self.obj, y))

    def transform(self, logits: np.ndarray) -> np.ndarray:
        z = np.asarray(logits, np.float64)
        if self.score == "logit":
            return z
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def targets(self, x: np.ndarray, target: TargetLike, batch_size: Optional[int] = None, need_score: bool = True):
        """(class per row, its clean score or None): None or -1 means the predicted class.

        Without ``need_score`` and with every class given, the image itself is not run.
        """
        t = check_targets(self.model, self.obj, target_array(target, len(x)))
        if not need_score and (t >= 0).all():
            return t, None
        clean = self.all(x, batch_size)
        chosen = np.where(t < 0, clean.argmax(axis=1), t)
        if (chosen >= clean.shape[1]).any():
            raise OnnxvizError(f"target {int(chosen.max())} is out of range: the model has {clean.shape[1]} classes")
        return chosen.astype(np.int64), clean[np.arange(len(x)), chosen]

    def runner(self, chosen: np.ndarray):
        def run(batch, row):
            y = self.model.activations(batch, [self.obj.tensor])[self.obj.tensor]
            scores = self.transform(class_scores(self.obj, y))
            if chosen[row].max() >= scores.shape[1]:
                raise OnnxvizError(f"target {int(chosen.max())} is out of range: the model has "
                                   f"{scores.shape[1]} classes")
            return scores[np.arange(len(row)), chosen[row]]

        return run


# ---------------------------------------------------------------------------- deletion / insertion


def deletion(model, x: np.ndarray, maps: np.ndarray, target: TargetLike = None, steps: int = 50,
             baseline: Baseline = 0.0, *, score: str = "prob", output: Optional[str] = None,
             batch_size: int = BATCH, progress: bool = False) -> Curve:
    """Deletion: replace pixels by ``baseline``, most relevant first, ``steps`` equal slices; follow the score.

    ``maps`` (N, H, W) at the input's size from any method (or a user); a position's channels
    move together. ``baseline``: a number in model-input units (0 = the mean image for
    mean/std-normalized inputs), "blur", "mean" or an array like ``x``. Lower AUC is better.

    >>> c = onnxviz.deletion(model, x, onnxviz.grad_cam(model, x).map, steps=50)
    >>> c.scores.shape, c.auc.shape
    ((1, 51), (1,))
    """
    return _curve(model, x, maps, target, steps, baseline, "deletion", score, output, batch_size, progress)


def insertion(model, x: np.ndarray, maps: np.ndarray, target: TargetLike = None, steps: int = 50,
              baseline: Baseline = "blur", *, score: str = "prob", output: Optional[str] = None,
              batch_size: int = BATCH, progress: bool = False) -> Curve:
    """Insertion: start from ``baseline`` (default the image blurred, σ = 5 px, radius 5) and restore
    pixels, most relevant first. Higher AUC is better; see :func:`deletion` for the arguments."""
    return _curve(model, x, maps, target, steps, baseline, "insertion", score, output, batch_size, progress)


def _curve(model, x, maps, target, steps, baseline, metric, score, output, batch_size, progress) -> Curve:
    x = model.check_input(x)
    spec = model.input
    maps = _check_maps(maps, x, spec)
    scorer = Scorer(model, score, output)
    chosen, _ = scorer.targets(x, target, batch_size, need_score=False)  # step 0 or the last is the image
    base = reference(x, spec, baseline)
    counts = step_counts(maps.shape[1] * maps.shape[2], steps)
    start, end = (x, base) if metric == "deletion" else (base, x)
    fill = ranked_filler(start, end, pixel_order(maps), counts, spec)
    scores = perturbed_scores(scorer.runner(chosen), fill, len(x), len(counts), x.shape[1:], x.dtype,
                              batch_size, progress, metric)
    return Curve(scores, counts / counts[-1], chosen, metric, score)


def reference(x: np.ndarray, spec, baseline: Baseline) -> np.ndarray:
    """The deleted/inserted-from image per row: "blur" is Gaussian σ = 5 px truncated at 5 px."""
    if isinstance(baseline, str) and baseline == "blur":
        return blurred(x, spec.spatial_axes, BLUR_SIGMA, truncate=BLUR_RADIUS / BLUR_SIGMA)
    return np.ascontiguousarray(baseline_batch(x, spec.spatial_axes, baseline, BLUR_SIGMA))


def _check_maps(maps, x: np.ndarray, spec) -> np.ndarray:
    maps = np.asarray(maps)
    shape = (len(x), *spec.hw(x))
    if maps.ndim == 2 and len(x) == 1:
        maps = maps[None]
    if maps.shape != shape:
        raise OnnxvizError(f"maps of shape {maps.shape} do not fit {len(x)} images of {shape[1]}x{shape[2]}: "
                           "give one (H, W) map per image at the model's input size (a result's .map)")
    return maps


# ---------------------------------------------------------------------------- ROAD


def neighbour_weights() -> list:
    """(dy, dx, weight) of the 8-neighbourhood: 1/6 for edges, 1/12 for diagonals (Rong et al.)."""
    return [(dy, dx, 1 / 12 if dy and dx else 1 / 6)
            for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def impute(image: np.ndarray, removed: np.ndarray, noise: float = ROAD_NOISE,
           rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Noisy linear imputation of one (C, H, W) image: each removed pixel = the weighted mean of its
    in-bounds neighbours (removed ones included, as unknowns), solved as one sparse linear system,
    plus Gaussian noise of std ``noise`` on the filled values.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    c, h, w = image.shape
    removed = np.asarray(removed, bool)
    ys, xs = np.nonzero(removed)
    n = len(ys)
    out = image.astype(np.float64)
    if n == 0:
        return out.astype(image.dtype)
    if n == h * w:
        raise OnnxvizError("cannot impute an image with every pixel removed")
    var = np.full((h, w), -1, np.int64)
    var[ys, xs] = np.arange(n)
    rows, cols, vals = [np.arange(n)], [np.arange(n)], []
    total = np.zeros(n)
    rhs = np.zeros((n, c))
    for dy, dx, wt in neighbour_weights():
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        i, ny, nx = np.flatnonzero(inside), ny[inside], nx[inside]
        total[i] += wt
        unknown = removed[ny, nx]
        rows.append(i[unknown])
        cols.append(var[ny[unknown], nx[unknown]])
        vals.append(np.full(unknown.sum(), -wt))
        np.add.at(rhs, i[~unknown], wt * out[:, ny[~unknown], nx[~unknown]].T)
    # Σ_j w_ij · v_i − Σ_{removed j} w_ij · v_j = Σ_{kept j} w_ij · x_j
    a = coo_matrix((np.concatenate([total, *vals]), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(n, n)).tocsc()
    solved = spsolve(a, rhs).reshape(n, c)
    if noise:
        rng = rng if rng is not None else np.random.default_rng(0)
        solved = solved + noise * rng.standard_normal(solved.shape)
    out[:, ys, xs] = solved.T
    return out.astype(image.dtype)


def road(model, x: np.ndarray, maps: np.ndarray, target: TargetLike = None,
         percentiles=PERCENTILES, *, noise: float = ROAD_NOISE, seed: int = 0, score: str = "prob",
         output: Optional[str] = None, batch_size: int = BATCH, progress: bool = False) -> Road:
    """ROAD: impute the top p% (MoRF) and bottom p% (LeRF) of pixels by the map, p = 10…90; score changes.

    Imputation: :func:`impute` (noise std ``noise`` in model-input units, seeded by ``seed`` and
    each image's values, so an image's noise does not depend on its batch).

    >>> r = onnxviz.road(model, x, onnxviz.grad_cam(model, x).map)
    >>> r.morf.shape, r.combined.shape
    ((1, 9), (1,))
    """
    x = model.check_input(x)
    spec = model.input
    maps = _check_maps(maps, x, spec)
    pct = np.asarray(percentiles, np.float64)
    if pct.ndim != 1 or len(pct) == 0 or (pct <= 0).any() or (pct >= 100).any():
        raise OnnxvizError(f"percentiles must lie strictly between 0 and 100, not {percentiles!r}")
    scorer = Scorer(model, score, output)
    chosen, before = scorer.targets(x, target, batch_size)
    h, w = spec.hw(x)
    order = pixel_order(maps)
    counts = np.rint(pct / 100 * h * w).astype(np.int64)
    nchw = spec.to_nchw(x)
    k = len(pct)
    # copies per row: MoRF at each percentile, then LeRF at each; imputed up front (the solve is the cost)
    imputed = np.empty((len(x), 2 * k, *x.shape[1:]), x.dtype)
    for r in range(len(x)):
        rng = image_rng(seed, nchw[r])  # the NCHW view: an NHWC twin draws the same noise
        for j, m in enumerate(counts):
            for side, picked in ((0, order[r, :m]), (1, order[r, h * w - m:])):
                removed = np.zeros(h * w, bool)
                removed[picked] = True
                filled = impute(nchw[r], removed.reshape(h, w), noise, rng)
                imputed[r, side * k + j] = spec.from_nchw(filled[None])[0]

    def fill(batch, row, copy):
        batch[:] = imputed[row, copy]

    after = perturbed_scores(scorer.runner(chosen), fill, len(x), 2 * k, x.shape[1:], x.dtype, batch_size,
                             progress, "ROAD")
    change = after - before[:, None]
    return Road(pct, change[:, :k], change[:, k:], before, chosen, score)


# ---------------------------------------------------------------------------- pointing


def box_masks(boxes: np.ndarray, size: tuple) -> np.ndarray:
    """(N, H, W) masks of (x0, y0, x1, y1) pixel boxes, x1/y1 exclusive."""
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise OnnxvizError(f"boxes must be (N, 4) as (x0, y0, x1, y1), not of shape {boxes.shape}")
    h, w = size
    yy, xx = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    return (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)


def _regions(maps: np.ndarray, boxes, masks) -> np.ndarray:
    if (boxes is None) == (masks is None):
        raise OnnxvizError("give either boxes or masks")
    region = box_masks(boxes, maps.shape[1:]) if masks is None else np.asarray(masks, bool)
    if region.shape != maps.shape:
        raise OnnxvizError(f"{len(region)} boxes/masks of {region.shape[1:]} for maps of shape {maps.shape}")
    return region


def pointing_game(maps: np.ndarray, boxes=None, masks=None) -> np.ndarray:
    """(N,) bool: whether each map's maximum (first in raster order on ties) lies in the object."""
    maps = np.asarray(maps)
    region = _regions(maps, boxes, masks)
    peak = maps.reshape(len(maps), -1).argmax(axis=1)
    return region.reshape(len(maps), -1)[np.arange(len(maps)), peak]


def energy_pointing(maps: np.ndarray, boxes=None, masks=None) -> np.ndarray:
    """(N,): the fraction of each map's mass (its positive part) that lies in the object."""
    maps = np.maximum(np.asarray(maps, np.float64), 0)
    region = _regions(maps, boxes, masks)
    total = maps.sum(axis=(1, 2))
    inside = (maps * region).sum(axis=(1, 2))
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)
