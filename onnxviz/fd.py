"""Finite differences: the fallback when a gradient rule is missing, and the referee of the graph.

All perturbed copies go through onnxruntime in batches. For a tensor inside the model only
the *head* after it is re-run (the whole model when residual paths bypass the tensor).
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from .errors import OnnxvizError
from .graph.surgery import expose, head
from .targets import Objective, normalize, objective, seed_array

log = logging.getLogger("onnxviz")
COSTLY = 20_000  # perturbed runs above which a warning is given


class _Scorer:
    """score(target) of the objective tensor as a function of tensor ``at`` (the input or a layer)."""

    def __init__(self, model, x: np.ndarray, obj: Objective, at: str, batch_size: int):
        self.model, self.obj, self.batch_size = model, obj, batch_size
        self.x = model.check_input(x)
        h, w = model.input.hw(self.x)
        self.at = at

        def build():
            proto = model.specialized(h, w)
            if at == model.input.name:
                return expose(proto, [obj.tensor], keep_outputs=False), False
            return head(proto, at, [obj.tensor])

        self.graph, self.needs_image = model.derived(f"fd:{at}:{obj.tensor}:{h}x{w}", build)

    def base(self) -> tuple:
        """The tensor's value and the objective tensor at the unperturbed input."""
        if self.at == self.model.input.name:
            values = self.model.activations(self.x, [self.obj.tensor])
            return self.x, values[self.obj.tensor]
        values = self.model.activations(self.x, [self.at, self.obj.tensor])
        return values[self.at], values[self.obj.tensor]

    def scores(self, i: int, values: np.ndarray, onehot: np.ndarray, progress: bool = False) -> np.ndarray:
        """Objective of image i for a stack of perturbed values of the tensor (first axis: copies)."""
        feeds = {self.at: values.astype(self.x.dtype, copy=False)}
        if self.needs_image:
            feeds[self.model.input.name] = np.repeat(self.x[i:i + 1], len(values), axis=0)
        if self.model.other_inputs:
            feeds.update({k: _row(v, i, len(self.x), len(values))
                          for k, v in self.model.extra_feeds(len(self.x), self.graph).items()})
        out = self.model.run_graph(self.graph, feeds, outputs=[self.obj.tensor], batch_size=self.batch_size,
                                   progress=progress, desc="finite differences")[self.obj.tensor]
        return np.sum(out.astype(np.float64) * onehot, axis=tuple(range(1, out.ndim)))


def _row(value: np.ndarray, i: int, n: int, copies: int) -> np.ndarray:
    """Image i's value of a fed input, for ``copies`` perturbed copies of that image."""
    if n > 1 and value.ndim and value.shape[0] == n:
        return np.repeat(value[i:i + 1], copies, axis=0)
    return np.repeat(value, copies, axis=0) if value.ndim and value.shape[0] == 1 and copies > 1 else value


def gradient_fd(model, x: np.ndarray, target=None, wrt: str = "input", output: Optional[str] = None,
                score: str = "logit", eps: float = 1e-2, batch_size: int = 64, progress: bool = False):
    """Central differences of the target score w.r.t. every element of one tensor: 2 runs per element."""
    obj = objective(model, output, score)
    at = model.input.name if wrt == "input" else wrt
    scorer = _Scorer(model, x, obj, at, batch_size)
    a, y = scorer.base()
    seeds, chosen = seed_array(obj, y, normalize(model, obj, target, len(y)), model.input.hw(scorer.x))
    per_image = int(np.prod(a.shape[1:]))
    if 2 * per_image * len(a) > COSTLY:
        log.warning("finite differences need %d runs of the model; this may take a while", 2 * per_image * len(a))
    grad = np.zeros(a.shape, np.float64)
    for i in range(len(a)):
        steps = np.eye(per_image, dtype=np.float64).reshape((per_image, *a.shape[1:])) * eps
        stack = np.concatenate([a[i] + steps, a[i] - steps])
        s = scorer.scores(i, stack, seeds[i:i + 1], progress)
        grad[i] = ((s[:per_image] - s[per_image:]) / (2 * eps)).reshape(a.shape[1:])
    return grad.astype(a.dtype), chosen


def channel_gradient_sums(model, x: np.ndarray, layer: str, target=None, output: Optional[str] = None,
                          score: str = "logit", eps: float = 1e-3, central: bool = True,
                          channel_axis: int = 1, batch_size: int = 64, progress: bool = False):
    """Σ_ij ∂y/∂A_kij for every channel k of ``layer``, by shifting a whole channel by ε.

    K+1 head runs per image (forward differences) or 2K (central, the default: exact for
    piecewise-linear heads when no ReLU kink is crossed). Grad-CAM's weights are these sums
    divided by the number of positions.
    """
    obj = objective(model, output, score)
    scorer = _Scorer(model, x, obj, layer, batch_size)
    a, y = scorer.base()
    if a.ndim < 3:
        raise OnnxvizError(f"layer {layer!r} has shape {a.shape}: expected channels and spatial axes")
    seeds, chosen = seed_array(obj, y, normalize(model, obj, target, len(y)), model.input.hw(scorer.x))
    k = a.shape[channel_axis]
    sums = np.zeros((len(a), k), np.float64)
    for i in range(len(a)):
        shift = np.zeros((k, *a.shape[1:]), a.dtype)
        np.moveaxis(shift, channel_axis, 1)[np.arange(k), np.arange(k)] = eps  # copy j shifts channel j
        if central:
            s = scorer.scores(i, np.concatenate([a[i] + shift, a[i] - shift]), seeds[i:i + 1], progress)
            sums[i] = (s[:k] - s[k:]) / (2 * eps)
        else:
            s = scorer.scores(i, np.concatenate([a[i:i + 1], a[i] + shift]), seeds[i:i + 1], progress)
            sums[i] = (s[1:] - s[0]) / eps
    return sums, chosen
