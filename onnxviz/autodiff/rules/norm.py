"""Backward rules for normalization layers.

Standardizing over axes A, x̂ = (x - mean_A x) / sqrt(var_A x + eps), has the closed-form
vector-Jacobian product

    dx = inv · (g - mean_A g - x̂ · mean_A(g · x̂)),   inv = 1 / sqrt(var_A x + eps),

which serves InstanceNormalization, LayerNormalization, MeanVarianceNormalization and
BatchNormalization in training mode (batch statistics). The statistics are recomputed in
the input's type rather than read from LayerNormalization's optional Mean/InvStdDev
outputs, whose type follows ``stash_type``, not the input's.

Inference-mode BatchNormalization is affine per channel: dx = dy · scale / sqrt(var + eps).
Parameters that depend on the input (rare) get their gradients too.
"""
from __future__ import annotations

import numpy as np

from ...errors import OnnxvizError
from ...graph.emitter import Emitter
from ..ruleset import Node
from .elementwise import scale_channels


def _rank(e: Emitter, node: Node) -> int:
    rank = e.rank(node.inputs[0])
    if rank is None:
        raise OnnxvizError(f"{node.op} node {node.name!r}: the input rank must be known for its gradient")
    return rank


def _refuse_extra_outputs(node: Node, dys):
    if any(d is not None for d in dys[1:]):
        raise OnnxvizError(
            f"{node.op} node {node.name!r}: gradients through its statistics outputs are not supported"
        )


def _mean(e: Emitter, t: str, axes) -> str:
    return e.reduce_op("ReduceMean", t, axes, keepdims=True)


def _standardize(e: Emitter, x: str, axes, eps: float):
    """(x̂, inv) of x standardized over ``axes`` (biased variance), statistics kept as size-1 dims."""
    xc = e.op("Sub", x, _mean(e, x, axes))
    var = _mean(e, e.op("Mul", xc, xc), axes)
    inv = e.op("Reciprocal", e.op("Sqrt", e.op("Add", var, e.scalar(eps, like=x))))
    return e.op("Mul", xc, inv), inv


def _standardize_backward(e: Emitter, g: str, xhat: str, inv: str, axes) -> str:
    """dx = inv · (g - mean g - x̂ · mean(g · x̂)) over ``axes``."""
    centered = e.op("Sub", g, _mean(e, g, axes))
    return e.op("Mul", inv, e.op("Sub", centered, e.op("Mul", xhat, _mean(e, e.op("Mul", g, xhat), axes))))


def _sum_to(e: Emitter, g: str, axes, param: str) -> str:
    """Σ g over ``axes``, shaped like the parameter ``param``."""
    return e.reshape_like(e.reduce_sum(g, axes, keepdims=False), param)


# ---- batch normalization ----------------------------------------------------------
def batch_normalization(e: Emitter, node: Node, dys):
    """Inference: y = scale · (x - mean) / sqrt(var + eps) + B per channel (axis 1).

    Training mode (``training_mode=1``, or before opset 14 the 5-output form) normalizes with
    the batch's statistics over every axis but 1: the standardization VJP applies.
    Before opset 9, ``spatial=0`` gives per-activation parameters shaped [C, D1, ...].
    """
    _refuse_extra_outputs(node, dys)
    rank = _rank(e, node)
    x, scale, bias, mean, var = node.inputs
    dy = dys[0]
    eps = node.attr("epsilon", 1e-5)
    per_channel = node.opset >= 9 or node.attr("spatial", 1) == 1
    other_axes = [0] + list(range(2, rank)) if per_channel else [0]

    def bcast(p):  # [C] -> [C, 1, ...] so that it lines up with axis 1
        return e.unsqueeze(p, list(range(1, rank - 1))) if per_channel and rank > 2 else p

    training = node.attr("training_mode", 0) == 1 or (node.opset < 14 and len([o for o in node.outputs if o]) > 1)
    grads = [None] * 5
    if training:
        xhat, inv = _standardize(e, x, other_axes, eps)
        if node.needs[0]:
            grads[0] = _standardize_backward(e, e.op("Mul", dy, bcast(scale)), xhat, inv, other_axes)
        if node.needs[1]:
            grads[1] = _sum_to(e, e.op("Mul", dy, xhat), other_axes, scale)
        if node.needs[2]:
            grads[2] = _sum_to(e, dy, other_axes, bias)
        return grads  # the running mean and variance do not reach Y

    known = [e.value(p) for p in (scale, var)]
    if node.needs[0] and per_channel and rank > 2 and all(v is not None for v in known) and not any(node.needs[1:]):
        # constant parameters (the usual case): the per-channel factor folded now, applied by
        # a Conv that onnxruntime keeps in its blocked layout
        dtype = e.dtype(x)
        v_scale, v_var = (np.asarray(v, dtype).reshape(-1) for v in known)
        factor = v_scale * (dtype.type(1) / np.sqrt(v_var + dtype.type(eps)))
        grads[0] = scale_channels(e, dy, factor, like=x)
        return grads
    inv = e.op("Reciprocal", e.op("Sqrt", e.op("Add", bcast(var), e.scalar(eps, like=x))))
    scaled = e.op("Mul", dy, e.op("Mul", bcast(scale), inv))  # dL/d(x - mean)
    if node.needs[0]:
        grads[0] = scaled
    if node.needs[3]:
        grads[3] = e.op("Neg", _sum_to(e, scaled, other_axes, mean))
    if node.needs[1] or node.needs[4]:
        xhat = e.op("Mul", e.op("Sub", x, bcast(mean)), inv)
        if node.needs[1]:
            grads[1] = _sum_to(e, e.op("Mul", dy, xhat), other_axes, scale)
        if node.needs[4]:  # d/dvar of (var + eps)^(-1/2) = -inv³/2
            dvar = e.op("Mul", e.op("Mul", scaled, xhat), e.op("Mul", inv, e.scalar(-0.5, like=x)))
            grads[4] = _sum_to(e, dvar, other_axes, var)
    if node.needs[2]:
        grads[2] = _sum_to(e, dy, other_axes, bias)
    return grads


# ---- instance, layer and mean-variance normalization -------------------------------
def instance_normalization(e: Emitter, node: Node, dys):
    """y = scale · x̂ + B, x̂ standardized over the spatial axes of each (n, c)."""
    rank = _rank(e, node)
    x, scale, bias = node.inputs
    dy = dys[0]
    axes = list(range(2, rank))
    xhat, inv = _standardize(e, x, axes, node.attr("epsilon", 1e-5))
    channel_axes = [0] + axes
    grads = [None] * 3
    if node.needs[0]:
        scale_b = e.unsqueeze(scale, list(range(1, rank - 1)))
        grads[0] = _standardize_backward(e, e.op("Mul", dy, scale_b), xhat, inv, axes)
    if node.needs[1]:
        grads[1] = _sum_to(e, e.op("Mul", dy, xhat), channel_axes, scale)
    if node.needs[2]:
        grads[2] = _sum_to(e, dy, channel_axes, bias)
    return grads


def layer_normalization(e: Emitter, node: Node, dys):
    """y = scale · x̂ + B, x̂ standardized over axes [axis, rank); scale and B broadcast from the right."""
    _refuse_extra_outputs(node, dys)
    rank = _rank(e, node)
    x, scale = node.inputs[:2]
    y, dy = node.outputs[0], dys[0]
    axis = node.attr("axis", -1) % rank
    axes = list(range(axis, rank))
    xhat, inv = _standardize(e, x, axes, node.attr("epsilon", 1e-5))
    grads = [None] * len(node.inputs)
    if node.needs[0]:
        grads[0] = _standardize_backward(e, e.op("Mul", dy, scale), xhat, inv, axes)
    if node.needs[1]:
        grads[1] = e.unbroadcast(e.op("Mul", dy, xhat), scale, y)
    if len(node.inputs) > 2 and node.needs[2]:
        grads[2] = e.unbroadcast(dy, node.inputs[2], y)
    return grads


def mean_variance_normalization(e: Emitter, node: Node, dys):
    """y = (x - mean) / (std + 1e-9) over ``axes`` (default [0, 2, 3]); the 1e-9 is dropped in dx."""
    rank = _rank(e, node)
    axes = [a % rank for a in node.attr("axes", [0, 2, 3])]
    xhat, inv = _standardize(e, node.inputs[0], axes, 0.0)
    return [_standardize_backward(e, dys[0], xhat, inv, axes)]


# ---- local response normalization --------------------------------------------------
def _channel_window_sum(e: Emitter, t: str, like: str, rank: int, size: int, before: int, after: int) -> str:
    """Σ of ``t`` over channels [c - before, c + after] (zero outside), as a Conv over [N, 1, C, ...]."""
    kernel = e.const(np.ones([1, 1, size] + [1] * (rank - 2), dtype=e.dtype(like)))
    spatial = [0] * (rank - 2)
    summed = e.op("Conv", e.unsqueeze(t, [1]), kernel, kernel_shape=[size] + [1] * (rank - 2),
                  pads=[before] + spatial + [after] + spatial)
    return e.squeeze(summed, [1])


def lrn(e: Emitter, node: Node, dys):
    """y = x · d^(-beta), d = bias + alpha/size · Σ_window x², window [c - ⌊(size-1)/2⌋, c + ⌈(size-1)/2⌉].

    dx = dy · d^(-beta) - (2 · alpha · beta / size) · x · Σ_adjoint-window (dy · y / d),
    where the adjoint window swaps the before/after extents (they differ for even sizes).
    """
    size = node.attr("size")
    return _lrn(e, node, dys, (size - 1) // 2, size // 2)  # floor and ceil of (size - 1) / 2


def _lrn(e: Emitter, node: Node, dys, before: int, after: int):
    rank = _rank(e, node)
    x, y, dy = node.inputs[0], node.outputs[0], dys[0]
    size = node.attr("size")
    alpha, beta, bias = node.attr("alpha", 1e-4), node.attr("beta", 0.75), node.attr("bias", 1.0)
    s = lambda v: e.scalar(v, like=x)  # noqa: E731
    window = _channel_window_sum(e, e.op("Mul", x, x), x, rank, size, before, after)
    d = e.op("Add", s(bias), e.op("Mul", s(alpha / size), window))
    direct = e.op("Mul", dy, e.op("Pow", d, s(-beta)))
    t = e.op("Div", e.op("Mul", dy, y), d)
    back = _channel_window_sum(e, t, x, rank, size, after, before)
    return [e.op("Sub", direct, e.op("Mul", e.op("Mul", s(2 * alpha * beta / size), x), back))]



def lp_normalization(e: Emitter, node: Node, dys):
    """y = x / n with n = ||x||_p along ``axis`` (p = 1 or 2):

    dx = (dy - s · Σ(dy · y)) / n, s = y for p = 2 (∂n/∂x = x/n = y) and sign(x) for p = 1.
    """
    x, y, dy = node.inputs[0], node.outputs[0], dys[0]
    p = node.attr("p", 2)
    if p not in (1, 2):
        raise OnnxvizError(f"LpNormalization node {node.name!r}: p={p} is not 1 or 2 (the operator's only values)")
    axis = node.attr("axis", -1)
    rank = _rank(e, node)
    axes = [axis % rank]
    norm = e.reduce_op("ReduceL2" if p == 2 else "ReduceL1", x, axes)
    slope = y if p == 2 else e.op("Sign", x)
    inner = e.reduce_sum(e.op("Mul", dy, y), axes)
    return [e.op("Div", e.op("Sub", dy, e.op("Mul", slope, inner)), norm)]

RULES = {
    "BatchNormalization": batch_normalization,
    "InstanceNormalization": instance_normalization,
    "LayerNormalization": layer_normalization,
    "LpNormalization": lp_normalization,
    "MeanVarianceNormalization": mean_variance_normalization,
    "LRN": lrn,
}
