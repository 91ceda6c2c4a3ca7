"""One method's map scored by every trust metric: what ``onnxviz evaluate`` and the report share.

>>> ev = evaluate(model, x, "gradcam", metrics=("deletion", "insertion", "sanity"))
>>> ev.deletion.auc.mean(), ev.sanity.verdict()
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..errors import OnnxvizError
from .faithfulness import Curve, Road, deletion, energy_pointing, insertion, pointing_game, road
from ..targets import TargetLike
from .sanity import SanityResult, Similarity, method_function, random_logit_test, sanity_check

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
        raise OnnxvizError(f"unknown metric {unknown[0]!r}: choose from {', '.join(METRICS)}")
    if "pointing" in metrics and not have_regions:
        raise OnnxvizError("the pointing game needs the objects' boxes or masks (--boxes FILE.json)")
    return metrics


def evaluate(model, x: np.ndarray, method, metrics: Sequence[str] = ("deletion", "insertion", "sanity"),
             target: TargetLike = None, *, masks: Optional[np.ndarray] = None, steps: int = 50, score: str = "prob",
             seed: int = 0, batch_size: int = 64, progress: bool = False) -> Evaluation:
    """Compute ``method``'s maps on ``x`` once, then each metric in ``metrics`` on them.

    ``masks`` (N, H, W) bool: the objects, for the pointing game. The randomization test keeps
    the classes of the first maps; the random-logit test comes with it.
    """
    metrics = check_metrics(metrics, masks is not None)
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
        ev.sanity = sanity_check(model, x, method, target=t, seed=seed, original=result, progress=progress)
        ev.random_logit, _, ev.random_class = random_logit_test(model, x, method, seed=seed, original=result)
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
        out["sanity"] = {k: getattr(s, k)[:, i].tolist() for k in ("spearman", "spearman_abs", "ssim", "topk")}
        r = ev.random_logit
        out["random_logit"] = {"class": int(ev.random_class[i]), "spearman": float(r.spearman[i]),
                               "spearman_abs": float(r.spearman_abs[i]), "ssim": float(r.ssim[i]),
                               "topk": float(r.topk[i])}
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
        out["sanity"] = {"order": s.order, "layers": list(s.layers),
                         **{k: getattr(s, k).mean(axis=1).tolist() for k in ("spearman", "spearman_abs", "ssim", "topk")},
                         "final_spearman_abs": s.final, "passes": s.passes(), "verdict": s.verdict()}
        r = ev.random_logit
        out["random_logit"] = {k: float(getattr(r, k).mean()) for k in ("spearman", "spearman_abs", "ssim", "topk")}
    return out
