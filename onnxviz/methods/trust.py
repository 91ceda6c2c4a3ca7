"""One method's map scored by every trust metric: what ``onnxviz evaluate`` and the report share.

``evaluate`` scores a batch; ``image_record`` is one image's JSON-ready numbers and ``run_meta``
what every image of a run shares. ``collect(records, meta)`` rebuilds an ``Evaluation`` from
records alone, so the summary, verdict line and figures come from the same per-image records
whether the images were scored in one batch here or in parts by dataset engines and shards.

>>> ev = evaluate(model, x, "gradcam", metrics=("deletion", "insertion", "sanity"))
>>> ev.deletion.auc.mean(), ev.sanity.verdict()
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..errors import OnnxvizError, OptionError
from ..targets import TargetLike
from .faithfulness import deletion, energy_pointing, insertion, pointing_game, road
from .results import Curve, Road
from .sanity import (SIMILARITIES, SanityResult, Similarity, check_resolution, method_function, random_logit_test,
                     sanity_check)

METRICS = ("deletion", "insertion", "road", "pointing", "sanity")


@dataclass
class Evaluation:
    """A method's result on a batch and its scores; a metric not asked for is None."""

    method: str
    result: object  # Heatmap or Attribution
    deletion: Optional[Curve] = None
    insertion: Optional[Curve] = None
    road: Optional[Road] = None
    pointing: Optional[np.ndarray] = None  # (N,) bool
    energy: Optional[np.ndarray] = None  # (N,) energy-based pointing
    sanity: Optional[SanityResult] = None
    random_logit: Optional[Similarity] = None
    random_class: Optional[np.ndarray] = None


def check_metrics(metrics: Sequence[str], have_regions: bool) -> list:
    metrics = list(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise OptionError(f"unknown metric {unknown[0]!r}: choose from {', '.join(METRICS)}")
    if "pointing" in metrics and not have_regions:
        raise OptionError("the pointing game needs the objects' boxes or masks (--boxes FILE.json)")
    return metrics


def evaluate(model, x: np.ndarray, method, metrics: Sequence[str] = ("deletion", "insertion", "sanity"),
             target: TargetLike = None, *, masks: Optional[np.ndarray] = None, steps: int = 50, score: str = "prob",
             seed: int = 0, batch_size: int = 64, progress: bool = False,
             resolution: str = "native") -> Evaluation:
    """Compute ``method``'s maps on ``x`` once, then each metric in ``metrics`` on them.

    ``masks`` (N, H, W) bool: the objects, for the pointing game. The randomization test keeps
    the classes of the first maps; the random-logit test comes with it. ``resolution``: where
    those two compare CAM maps ("native": the layer's grid; "input": upsampled; see
    :func:`onnxviz.sanity_check`).
    """
    metrics = check_metrics(metrics, masks is not None)
    check_resolution(resolution)  # a mistake in the request: before any map is computed
    name, fn = method_function(method)
    x = model.check_input(x)
    result = fn(model, x, target)
    t = np.asarray(result.target, np.int64)
    ev = Evaluation(name, result)
    common = dict(target=t, score=score, batch_size=batch_size, progress=progress)
    if "deletion" in metrics:
        ev.deletion = deletion(model, x, result.map, steps=steps, **common)
    if "insertion" in metrics:
        ev.insertion = insertion(model, x, result.map, steps=steps, **common)
    if "road" in metrics:
        ev.road = road(model, x, result.map, seed=seed, **common)
    if "pointing" in metrics:
        ev.pointing = pointing_game(result.map, masks=masks)
        ev.energy = energy_pointing(result.map, masks=masks)
    if "sanity" in metrics:
        ev.sanity = sanity_check(model, x, method, target=t, seed=seed, original=result, resolution=resolution,
                                 progress=progress)
        ev.random_logit, _, ev.random_class = random_logit_test(model, x, method, seed=seed, original=result,
                                                                resolution=resolution)
    return ev


def image_record(ev: Evaluation, i: int) -> dict:
    """One image's numbers for one method (JSON-ready)."""
    out: dict = {"target": int(ev.result.target[i])}
    if ev.deletion is not None:
        out["deletion_auc"] = float(ev.deletion.auc[i])
        out["deletion_curve"] = ev.deletion.scores[i].tolist()
    if ev.insertion is not None:
        out["insertion_auc"] = float(ev.insertion.auc[i])
        out["insertion_curve"] = ev.insertion.scores[i].tolist()
    if ev.road is not None:
        out["road"] = {"combined": float(ev.road.combined[i]), "morf": ev.road.morf[i].tolist(),
                       "lerf": ev.road.lerf[i].tolist()}
    if ev.pointing is not None:
        out["pointing"] = bool(ev.pointing[i])
        out["energy_pointing"] = float(ev.energy[i])
    if ev.sanity is not None:
        s = ev.sanity
        out["sanity"] = {k: getattr(s, k)[:, i].tolist() for k in SIMILARITIES}
        r = ev.random_logit
        out["random_logit"] = {"class": int(ev.random_class[i]), **{k: float(getattr(r, k)[i]) for k in SIMILARITIES}}
    return out


def summary(ev: Evaluation) -> dict:
    """Means over the images, the mean curves, the randomization curves and the verdict (JSON-ready)."""
    out: dict = {}
    for key in ("deletion", "insertion"):
        c = getattr(ev, key)
        if c is not None:
            out[key] = {"auc": float(c.auc.mean()), "fractions": c.fractions.tolist(),
                        "mean_curve": c.scores.mean(axis=0).tolist(), "score": c.score}
    if ev.road is not None:
        out["road"] = {"combined": float(ev.road.combined.mean()), "percentiles": ev.road.percentiles.tolist(),
                       "morf": ev.road.morf.mean(axis=0).tolist(), "lerf": ev.road.lerf.mean(axis=0).tolist()}
    if ev.pointing is not None:
        out["pointing"] = {"hit_rate": float(ev.pointing.mean()), "energy": float(ev.energy.mean())}
    if ev.sanity is not None:
        s = ev.sanity
        out["sanity"] = {"order": s.order, "resolution": s.resolution, "layers": list(s.layers),
                         **{k: getattr(s, k).mean(axis=1).tolist() for k in SIMILARITIES},
                         "final_spearman_abs": s.final, "passes": s.passes(), "verdict": s.verdict()}
        r = ev.random_logit
        out["random_logit"] = {k: float(getattr(r, k).mean()) for k in SIMILARITIES}
    return out


def run_meta(ev: Evaluation) -> dict:
    """What every image of a run shares (JSON-ready): the curves' fractions, ROAD's percentiles, the layers."""
    out: dict = {"method": ev.method}
    for key in ("deletion", "insertion"):
        c = getattr(ev, key)
        if c is not None:
            out[key] = {"fractions": c.fractions.tolist(), "score": c.score}
    if ev.road is not None:
        out["road"] = {"percentiles": ev.road.percentiles.tolist(), "score": ev.road.score}
    if ev.sanity is not None:
        out["sanity"] = {"layers": list(ev.sanity.layers), "order": ev.sanity.order,
                         "resolution": ev.sanity.resolution}
    return out


def collect(records: Sequence[dict], meta: dict) -> Evaluation:
    """An ``Evaluation`` (without maps) of the images whose ``image_record``s these are."""
    ev = Evaluation(meta["method"], None)
    target = np.array([r["target"] for r in records], np.int64)
    for key in ("deletion", "insertion"):
        if key in meta:
            scores = np.array([r[f"{key}_curve"] for r in records], np.float64)
            setattr(ev, key, Curve(scores, np.asarray(meta[key]["fractions"], np.float64), target, key,
                                   meta[key]["score"]))
    if "road" in meta:
        morf = np.array([r["road"]["morf"] for r in records], np.float64)
        lerf = np.array([r["road"]["lerf"] for r in records], np.float64)
        ev.road = Road(np.asarray(meta["road"]["percentiles"]), morf, lerf, np.full(len(records), np.nan), target,
                       meta["road"]["score"])
    if records and "pointing" in records[0]:
        ev.pointing = np.array([r["pointing"] for r in records], bool)
        ev.energy = np.array([r["energy_pointing"] for r in records], np.float64)
    if "sanity" in meta:
        layers = meta["sanity"]["layers"]

        def stacked(k):  # (L, N) as SanityResult holds them
            return np.array([r["sanity"][k] for r in records], np.float64).reshape(len(records), len(layers)).T

        empty = np.zeros((len(layers), 0))
        ev.sanity = SanityResult(meta["method"], layers, stacked("spearman"), stacked("spearman_abs"),
                                 stacked("ssim"), stacked("topk"), target, empty, empty, meta["sanity"]["order"],
                                 meta["sanity"].get("resolution", "input"))  # records before it was recorded: "input"
        ev.random_logit = Similarity(*(np.array([r["random_logit"][k] for r in records], np.float64)
                                       for k in SIMILARITIES))
        ev.random_class = np.array([r["random_logit"]["class"] for r in records], np.int64)
    return ev


def verdict_line(method: str, ev: Evaluation) -> str:
    """The one line ``onnxviz evaluate`` prints per method."""
    parts = []
    if ev.deletion is not None:
        parts.append(f"deletion AUC {ev.deletion.auc.mean():.3f}")
    if ev.insertion is not None:
        parts.append(f"insertion AUC {ev.insertion.auc.mean():.3f}")
    if ev.road is not None:
        parts.append(f"ROAD {ev.road.combined.mean():+.3f}")
    if ev.pointing is not None:
        parts.append(f"pointing {ev.pointing.mean():.0%}, energy {ev.energy.mean():.2f}")
    head = f"{method}: " + ", ".join(parts)
    if ev.sanity is not None:
        head += (f"; {ev.sanity.verdict()} (Spearman |map| {ev.sanity.final:.2f} after {len(ev.sanity.layers)} "
                 f"layers; random other class {ev.random_logit.spearman_abs.mean():.2f})")
    return head


# ---------------------------------------------------------------------------- boxes


def parse_boxes(entry, path: str, image: str) -> list:
    """One image's boxes from the --boxes JSON: {"box": [...]}, {"boxes": [[...], ...]}, [...] or [[...], ...]."""
    from pathlib import Path

    if isinstance(entry, dict):
        entry = entry.get("boxes", entry.get("box"))
    if isinstance(entry, list) and len(entry) == 4 and all(isinstance(v, (int, float)) for v in entry):
        entry = [entry]
    ok = isinstance(entry, list) and entry and all(
        isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b) for b in entry)
    if not ok:
        raise OnnxvizError(f"{path}: the boxes of {Path(image).name} must be [x0, y0, x1, y1] or a list of them")
    return entry


def boxes_mask(boxes: Sequence, geom, size: tuple) -> np.ndarray:
    """(H, W) bool: the union of boxes in the original image's pixels, mapped to model input."""
    mask = np.zeros(size, bool)
    for box in boxes:
        mask |= _box_mask(box, geom, size)
    return mask


def _box_mask(box, geom, size: tuple) -> np.ndarray:
    """A box in the original image's pixels, mapped through the resize and crop to model input."""
    (sy, sx), (top, left) = geom.scale, geom.offset
    x0, y0, x1, y1 = box
    h, w = size
    cx0, cx1 = np.clip([x0 * sx - left, x1 * sx - left], 0, w)
    cy0, cy1 = np.clip([y0 * sy - top, y1 * sy - top], 0, h)
    # a pixel belongs to the box when its centre does
    xs, ys = np.arange(w) + 0.5, np.arange(h) + 0.5
    return ((ys >= cy0) & (ys < cy1))[:, None] & ((xs >= cx0) & (xs < cx1))[None, :]
