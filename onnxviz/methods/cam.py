"""Class activation maps: one template, ``ReLU(Σ_k w_k · A^k)``; each method supplies only the weights.

* CAM (Zhou et al., 2016): ``w_k`` = the fully-connected weight of class c behind global pooling.
* Grad-CAM (Selvaraju et al., 2017): ``w_k`` = mean over positions of ∂y^c/∂A^k.
* Grad-CAM++ (Chattopadhay et al., 2018): positive gradients weighted by the second/third-order terms.
* Score-CAM (Wang et al., 2020): ``w_k`` = p(c) of the head re-run on A masked by normalized A^k.
* Layer-CAM (Jiang et al., 2021): per-position weights ReLU(∂y^c/∂A^k_ij).
* Guided Grad-CAM: guided backprop × the upsampled Grad-CAM map.

Gradient methods take ONE run of the gradient graph, which returns the activations, the
gradients, the chosen target and its score together.

>>> h = onnxviz.grad_cam(model, x)            # default layer: the last spatial tensor before the head
>>> h.layer, h.raw.shape, h.map.shape
('relu_4', (1, 8, 8), (1, 64, 64))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..errors import OnnxvizError
from ..graph.analysis import cam_head
from ..render.tiles import normalize01
from ..targets import Objective, TargetLike, class_scores, general, objective, rows, seed_array, target_scores
from .layers import from_nchw, layer_axes, resolve_layer, to_nchw
from .perturb import BATCH, head_runner, perturbed_scores, segments
from .results import Attribution, Heatmap, channel_map, explains, upsampled
from .saliency import saliency

EPS = 1e-7


@dataclass
class Context:
    """What a weighting function may ask for: one batch of rows, its targets, and one layer."""

    model: object
    x: np.ndarray
    target: object  # class per row (-1 = predicted class), or a general target for every row
    layer: str
    axes: tuple  # (channel, height, width) axes of the layer tensor
    obj: Objective
    score: str = "logit"
    batch_size: Optional[int] = None
    progress: bool = False
    grad: str = "graph"

    def gradients(self, rules: str = "standard"):
        """(A, dy/dA) as (N, K, h, w), target and score: one run of the gradient graph."""
        g = self.model.gradients(self.x, target=self.target, wrt=[self.layer], rules=rules,
                                 output=self.obj.output, score=self.score, class_axis=self.obj.class_axis,
                                 batch_size=self.batch_size, progress=self.progress, grad=self.grad,
                                 checked=True)  # the rows passed check_input in rows()
        acts = to_nchw(g.activations[self.layer], self.axes)
        return acts, to_nchw(g[self.layer], self.axes), g.target, g.score

    def forward(self):
        """(A as (N, K, h, w), objective tensor, target, score): one forward run."""
        values = self.model.activations(self.x, [self.layer, self.obj.tensor], batch_size=self.batch_size)
        y = values[self.obj.tensor]
        chosen, score = target_scores(self.obj, y, self.target, self.model.input.hw(self.x))
        return to_nchw(values[self.layer], self.axes), y, chosen, score


@dataclass
class Weights:
    """A method's answer: activations (N, K, h, w), weights (N, K) or (N, K, h, w), target, score."""

    acts: np.ndarray
    weights: np.ndarray
    target: np.ndarray
    score: np.ndarray


Weigher = Callable[[Context], Weights]


def class_activation_map(model, x, weigh: Weigher, method: str, target: TargetLike = None,
                         layer: Optional[str] = None, top_k: Optional[int] = None, output: Optional[str] = None,
                         score: str = "logit", batch_size: Optional[int] = None,
                         progress: bool = False, grad: str = "graph") -> Heatmap:
    """The CAM template: resolve rows and layer, get the method's weights, fuse, upsample."""
    obj = objective(model, output, score)
    xr, t, image = rows(model, x, obj, target, top_k)
    layer = resolve_layer(model, layer)
    ctx = Context(model, xr, t, layer, layer_axes(model, layer), obj, score, batch_size, progress, grad)
    w = weigh(ctx)
    weights = np.asarray(w.weights, np.float64)
    fused = np.einsum("nk,nkhw->nhw" if weights.ndim == 2 else "nkhw,nkhw->nhw", weights, w.acts)
    raw = np.maximum(fused, 0).astype(np.float32)
    return Heatmap(raw=raw, map=upsampled(raw, model.input.hw(xr)), target=np.asarray(w.target, np.int64),
                   score=np.asarray(w.score, np.float32), method=method, layer=layer, image=image,
                   weights=w.weights, explains=explains(obj, score, t))


# ---------------------------------------------------------------------------- weights


def gradcam_weights(ctx: Context) -> Weights:
    acts, grads, target, score = ctx.gradients()
    return Weights(acts, grads.mean(axis=(2, 3), dtype=np.float64), target, score)


def gradcam_pp_weights(ctx: Context) -> Weights:
    """α = g² / (2g² + Σ_ij A · g³), w = Σ_ij α · ReLU(g) (the exponential-score closed form)."""
    acts, grads, target, score = ctx.gradients()
    g = grads.astype(np.float64)
    g2, g3 = g * g, g * g * g
    denom = 2 * g2 + acts.sum(axis=(2, 3), dtype=np.float64)[:, :, None, None] * g3
    alpha = np.where(g != 0, g2 / np.where(denom != 0, denom, EPS), 0.0)
    return Weights(acts, (alpha * np.maximum(g, 0)).sum(axis=(2, 3)), target, score)


def layercam_weights(ctx: Context) -> Weights:
    acts, grads, target, score = ctx.gradients()
    return Weights(acts, np.maximum(grads, 0), target, score)


def scorecam_weights(ctx: Context) -> Weights:
    """p(c) of the head after the layer, fed A ⊙ normalize(A^k) for every channel k (batched)."""
    acts, y, target, score = ctx.forward()
    forward = head_runner(ctx.model, ctx.x, ctx.layer, ctx.obj)
    masks = normalize01(acts, axis=(2, 3))  # (N, K, h, w)
    n, k = acts.shape[:2]

    def fill(batch, row, copy):
        view = to_nchw(batch, ctx.axes)
        for r, a, b in segments(row):
            np.multiply(acts[r][None], masks[r, copy[a:b]][:, None], out=view[a:b], casting="unsafe")

    if general(ctx.target):  # no single class to take a softmax over: the explained score itself
        seeds, _ = seed_array(ctx.obj, y, ctx.target, ctx.model.input.hw(ctx.x))  # fixed at the clean output

        def run(batch, row):
            return np.sum(forward(batch, row) * seeds[row], axis=tuple(range(1, seeds.ndim)))
    else:
        def run(batch, row):
            return _softmax(class_scores(ctx.obj, forward(batch, row)))[np.arange(len(row)), target[row]]

    shape = from_nchw(acts[:1], ctx.axes).shape[1:]
    weights = perturbed_scores(run, fill, n, k, shape, acts.dtype, ctx.batch_size or BATCH, ctx.progress,
                               "Score-CAM")
    return Weights(acts, weights, target, score)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _cam_weights(head_):
    def weigh(ctx: Context) -> Weights:
        acts, _, target, score = ctx.forward()
        return Weights(acts, np.asarray(head_.weight, np.float64)[target], target, score)

    return weigh


# ---------------------------------------------------------------------------- public API


def grad_cam(model, x, target: TargetLike = None, layer: Optional[str] = None, **options) -> Heatmap:
    """Grad-CAM: ``ReLU(Σ_k α_k A^k)``, α_k = mean over positions of ∂y^c/∂A^k; one gradient run.

    ``target``: class per image (default the predicted one); ``layer``: any ONNX tensor name
    (default the last spatial tensor feeding the head; ``.layer`` says which). Options:
    ``top_k``, ``output``, ``score`` ("logit" or "prob"), ``batch_size``, ``progress``.

    >>> h = onnxviz.grad_cam(model, x, target=3)
    >>> h.raw.shape, h.map.shape   # (N, h, w) at the layer, (N, H, W) in [0, 1]
    """
    return class_activation_map(model, x, gradcam_weights, "gradcam", target, layer, **options)


def grad_cam_pp(model, x, target: TargetLike = None, layer: Optional[str] = None, **options) -> Heatmap:
    """Grad-CAM++: channel weights Σ_ij α_ij ReLU(∂y^c/∂A^k_ij); see :func:`grad_cam` for options."""
    return class_activation_map(model, x, gradcam_pp_weights, "gradcam++", target, layer, **options)


def layer_cam(model, x, target: TargetLike = None, layer: Optional[str] = None, **options) -> Heatmap:
    """Layer-CAM: ``ReLU(Σ_k ReLU(∂y^c/∂A^k) ⊙ A^k)``, position by position; see :func:`grad_cam`."""
    return class_activation_map(model, x, layercam_weights, "layercam", target, layer, **options)


def score_cam(model, x, target: TargetLike = None, layer: Optional[str] = None, **options) -> Heatmap:
    """Score-CAM: w_k = softmax probability of class c when the head after ``layer`` sees A ⊙ norm(A^k).

    No gradients: K head-only runs per image (the part of the graph after the layer), batched.
    """
    return class_activation_map(model, x, scorecam_weights, "scorecam", target, layer, **options)


def find_cam_head(model, output: Optional[str] = None):
    """The model's GAP → fully-connected head (:func:`~onnxviz.graph.analysis.cam_head`) or None,
    found once per model."""
    spec = model.input
    return model.derived(("cam_head", output), lambda: cam_head(model.proto, spec.name, spec.layout, output=output,
                                                                  shapes=model.shapes_at()))


def cam(model, x, target: TargetLike = None, layer: Optional[str] = None, output: Optional[str] = None,
        **options) -> Heatmap:
    """CAM: ``ReLU(Σ_k w^c_k A^k)`` for a global-average-pool → fully-connected head (read from the graph).

    The layer is the tensor the head pools. On a GAP+FC network, CAM's raw map is Grad-CAM's
    times h·w. A model without such a head raises an error pointing to :func:`grad_cam`.
    """
    head_ = find_cam_head(model, output)
    if head_ is None:
        raise OnnxvizError(
            "CAM needs a global-average-pool → fully-connected (Gemm, MatMul or 1x1 Conv) head before the "
            "output, and this model has none; use Grad-CAM (onnxviz.grad_cam / --method gradcam), which "
            "works on any layer of any model")
    if layer is not None and layer != head_.feature:
        raise OnnxvizError(f"CAM is defined on the tensor its head pools, {head_.feature!r}, not {layer!r}; "
                           "use Grad-CAM for other layers")
    if options.pop("score", "logit") != "logit":
        raise OnnxvizError("CAM explains the logits its head computes; use Grad-CAM for score='prob'")
    return class_activation_map(model, x, _cam_weights(head_), "cam", target, head_.feature,
                                output=head_.output, **options)


def guided_grad_cam(model, x, target: TargetLike = None, layer: Optional[str] = None, **options) -> Attribution:
    """Guided Grad-CAM: guided backprop (input gradient with guided ReLUs) × the upsampled Grad-CAM map.

    ``raw`` has the shape and layout of ``x``; the Grad-CAM map multiplies every channel.
    """
    h = grad_cam(model, x, target, layer, **options)

    # the rows of h already hold one image per (image, class): explain exactly those classes
    # (a general target, which top_k excludes, is the same for every row: pass it as given)
    # x passed check_input in grad_cam, and saliency checks (and casts) these rows again: no third pass
    rows_x = np.asarray(x)[h.image]
    top_k = options.pop("top_k", None)
    g = saliency(model, rows_x, target=h.target if top_k is not None or target is None else target, method="guided",
                 **options)
    spec = model.input
    cam_ = np.expand_dims(h.map, spec.channel_axis)
    raw = (g.raw * cam_).astype(g.raw.dtype)
    return Attribution(raw=raw, map=channel_map(raw, spec), target=h.target, score=h.score,
                       method="guided-gradcam", layer=h.layer, image=h.image, explains=h.explains)


# The CAM family, one row each: CLI/API name -> (function, title for figures and messages).
# A new variant is a function above (its channel weights on the shared template) plus one row here.
VARIANTS = {
    "gradcam": (grad_cam, "Grad-CAM"),
    "cam": (cam, "CAM"),
    "gradcam++": (grad_cam_pp, "Grad-CAM++"),
    "scorecam": (score_cam, "Score-CAM"),
    "layercam": (layer_cam, "Layer-CAM"),
    "guided-gradcam": (guided_grad_cam, "Guided Grad-CAM"),
}
METHODS = {name: fn for name, (fn, _) in VARIANTS.items()}
TITLES = {name: title for name, (_, title) in VARIANTS.items()}
