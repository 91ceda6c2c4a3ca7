"""The per-image section: top predictions, then Grad-CAM & co. for the top class, and activations.

Each method runs once over all the images (batched) and is guarded on its own, so a model
without a CAM head, or with an operator that has no gradient rule, still gets the methods
that do apply, with the reason for the others.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..methods.cam import cam, find_cam_head, grad_cam, guided_grad_cam
from ..methods.features import activations
from ..methods.layers import resolve_layer
from ..methods.occlusion import occlusion
from ..methods.saliency import saliency
from ..render.tiles import activation_grid, overlay
from ..targets import class_scores, is_dense, objective
from .pictures import PANEL, Picture, gradient_image, picture, resized
from .sections import Inputs, NotApplicable, Part, guarded

BATCH = 16
ACTIVATION_TILES = 16


@dataclass(frozen=True)
class Prediction:
    rank: int
    index: int
    label: str
    prob: float
    logit: Optional[float]  # the pre-softmax value, when the model ends in a softmax


@dataclass
class ImageView:
    """One image: what the model saw, its top classes, the maps for the top class, and activations."""

    name: str
    input: Picture
    predictions: list
    panels: list  # Pictures, one per method that applied
    activations: Optional[Picture]
    caption: str


@dataclass
class Explanations:
    layer: Optional[str]
    layer_source: str  # how the layer was chosen
    explained: str  # which score the maps explain
    probabilities: str  # where the probabilities come from
    images: list = field(default_factory=list)
    parts: list = field(default_factory=list)  # Part per method: timing, and why not when it failed
    output: str = ""  # the explained model output
    target: str = "the top class"  # what of it the maps explain

    @property
    def unavailable(self) -> list:
        return [p for p in self.parts if p.status != "ok"]


def explanations(inp: Inputs) -> Explanations:
    if inp.x is None:
        raise NotApplicable("no image could be read" + (
            "; " + "; ".join(f"{Path(p).name}: {r}" for p, r in inp.unreadable[:3]) if inp.unreadable else ""))
    model, x = inp.model, inp.x
    chosen = guarded("layer", resolve_layer, model, inp.layer)
    layer = chosen.value if chosen.status == "ok" else None
    through = guarded("objective", objective, model)
    softmax = through.status == "ok" and through.value.through_softmax
    explained = "pre-softmax logit" if softmax else "output score"
    dense = through.status == "ok" and is_dense(model, through.value)
    source = ("as given (--layer)" if inp.layer else
              "chosen automatically: the deepest tensor at the coarsest resolution (a dense output)" if dense else
              "chosen automatically: the last tensor with spatial extent before the classifier head")
    target = "the predicted class at each position" if dense else "the top class"

    preds, prob_source = predictions(model, x, inp.top, inp.label)  # nothing below works without these

    parts = [guarded(title, fn, model, x, layer) for title, fn in _METHODS]
    acts = guarded("activations", _activations, model, x, layer, chosen)
    parts.append(acts)
    out = Explanations(layer, source, explained, prob_source, parts=parts,
                       output=through.value.output if through.status == "ok" else "", target=target)
    bases = [resized(img, PANEL) for img in inp.shown]
    for i, path in enumerate(inp.paths):
        panels = [p.value(i, bases[i], inp) for p in parts[:-1] if p.status == "ok"]
        act_pic = acts.value(i) if acts.status == "ok" else None
        h, w = inp.shown[i].shape[:2]
        view = ImageView(
            name=Path(path).name,
            input=picture(bases[i], f"model input, {h}×{w}", f"{Path(path).name} as the model sees it"),
            predictions=preds[i],
            panels=panels,
            activations=act_pic,
            caption=_caption(preds[i][0], explained, layer, dense),
        )
        out.images.append(view)
    return out


# ---------------------------------------------------------------------------- predictions


def predictions(model, x: np.ndarray, top: int, label) -> tuple[list, str]:
    """The ``top`` classes of each image with probability (and pre-softmax logit), best first."""
    out = objective(model, None, "prob")
    logit = objective(model, None, "logit")
    names = list(dict.fromkeys([out.tensor, logit.tensor]))
    values = model.activations(x, names, batch_size=BATCH)
    scores = class_scores(out, values[out.tensor]).astype(np.float64)
    probs, source = as_probabilities(scores)
    logits = class_scores(logit, values[logit.tensor]) if logit.through_softmax else None
    k = min(top, scores.shape[1])
    rows = []
    for n in range(len(x)):
        best = np.argsort(-probs[n], kind="stable")[:k]
        rows.append([Prediction(r + 1, int(c), label(int(c)), float(probs[n, c]),
                                None if logits is None else float(logits[n, c])) for r, c in enumerate(best)])
    return rows, source


def as_probabilities(scores: np.ndarray) -> tuple[np.ndarray, str]:
    """(N, classes) scores as probabilities, and what was done to them.

    A softmax output is used as is, log-probabilities are exponentiated, anything else
    (raw logits) goes through a softmax — and the page says which.
    """
    sums = scores.sum(axis=1)
    if (scores >= -1e-6).all() and np.allclose(sums, 1, atol=1e-3):
        return scores, "the model's output (a softmax)"
    if (scores <= 1e-6).all() and np.allclose(np.exp(scores).sum(axis=1), 1, atol=1e-3):
        return np.exp(scores), "exp of the model's output (log-probabilities)"
    z = np.exp(scores - scores.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True), "a softmax of the model's output, which is not a probability"


# ---------------------------------------------------------------------------- methods

def _heatmaps(h, title: str, detail: str):
    """A panel maker for a Heatmap: its map over image i."""
    def panel(i: int, base: np.ndarray, inp: Inputs) -> Picture:
        return picture(overlay(base, h.map[i], alpha=0.5), f"{title} · {detail}", f"{title} map")

    return panel


def _gradients(a, title: str, detail: str):
    """A panel maker for an input-space Attribution: the signed gradient as an image."""
    def panel(i: int, base: np.ndarray, inp: Inputs) -> Picture:
        raw = a.raw[i]
        hwc = np.moveaxis(raw, 0, -1) if inp.model.input.layout == "NCHW" else raw
        if hwc.shape[-1] == 3 and inp.pre.bgr:
            hwc = hwc[..., ::-1]
        return picture(gradient_image(hwc), f"{title} · {detail}", f"{title} map", side=PANEL)

    return panel


def _size(h) -> str:
    return "×".join(str(d) for d in h.raw.shape[1:])


def _grad_cam(model, x, layer):
    h = grad_cam(model, x, layer=layer, batch_size=BATCH)
    return _heatmaps(h, "Grad-CAM", f"{h.layer} ({_size(h)})")


def _guided_grad_cam(model, x, layer):
    a = guided_grad_cam(model, x, layer=layer, batch_size=BATCH)
    return _gradients(a, "Guided Grad-CAM", f"guided backprop × Grad-CAM of {a.layer}")


def _guided_backprop(model, x, layer):
    a = saliency(model, x, method="guided", batch_size=BATCH)
    return _gradients(a, "Guided backprop", "input gradient, guided ReLUs")


def occlusion_window(height: int, width: int) -> tuple[int, int]:
    """An eighth of the shorter side, moved by half a window: 15×15 positions on a square image."""
    window = max(2, round(min(height, width) / 8))
    return window, max(1, window // 2)


def _occlusion(model, x, layer):
    window, stride = occlusion_window(*model.input.hw(x))
    h = occlusion(model, x, window=window, stride=stride, baseline=0.0, batch_size=64)
    return _heatmaps(h, "Occlusion", f"score drop, {window}-px windows, stride {stride}")


def _cam(model, x, layer):
    # the cached lookup cam() itself makes: the head is found once, not walked for again here
    if find_cam_head(model) is None:
        raise NotApplicable("the model has no global-average-pool → fully-connected head, which CAM needs "
                            "(Grad-CAM above works on any layer)")
    h = cam(model, x, batch_size=BATCH)
    return _heatmaps(h, "CAM", f"{h.layer} ({_size(h)})")


_METHODS = (
    ("Grad-CAM", _grad_cam),
    ("Guided Grad-CAM", _guided_grad_cam),
    ("Guided backprop", _guided_backprop),
    ("Occlusion", _occlusion),
    ("CAM", _cam),
)


def _activations(model, x, layer, chosen: Part):
    if layer is None:
        raise NotApplicable(f"no layer to show: {chosen.message}")
    values = activations(model, x, layer).values

    def tiles(i: int) -> Picture:
        grid, channels = activation_grid(values[i], top=ACTIVATION_TILES)
        c, h, w = values[i].shape
        caption = (f"Activations · {layer} ({c}×{h}×{w}): the {len(channels)} most active channels "
                   f"({', '.join(map(str, channels))})")
        return picture(grid, caption, f"activations of {layer}", side=PANEL, smooth=False)

    return tiles


def _caption(best: Prediction, explained: str, layer: Optional[str], dense: bool = False) -> str:
    label = best.label
    score = f"logit {best.logit:.3g}" if best.logit is not None else f"score {best.prob:.3g}"
    if dense:
        text = f"Explaining the predicted class at each position of the output; every map explains its {explained}."
    else:
        text = (f"Explaining the top class, {label!r} (index {best.index}, p = {best.prob:.3f}, {score}); "
                f"every map explains its {explained}.")
    if layer is not None:
        text += f" Grad-CAM layer: {layer}."
    return text
