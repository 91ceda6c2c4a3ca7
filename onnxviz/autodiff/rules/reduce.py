"""Backward rules for reductions and global pools.

Every rule first brings dy (and y) back to the input's rank with the reduced axes kept as
size 1 (``keepdims=0`` unsqueezes), then broadcasts against x. The reduced axes come from
the ``axes`` attribute before opset 13 (ReduceSum) or 18 (the others), from the optional
``axes`` input after; empty axes reduce everything unless ``noop_with_empty_axes=1``, where
the op stays element-wise (ReduceSumSquare gives x², ReduceL2 |x|, ...) and the same
formulas apply over no axes.

Tie policy of ReduceMax/ReduceMin/GlobalMaxPool, as for the variadic Max/Min: dy is split
equally between the elements that attain the extremum (PyTorch's ``amax`` does the same).
"""
from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np

from ...errors import OnnxvizError
from ...graph.emitter import Emitter
from ..ruleset import Node
from .elementwise import as_float, not_greater, not_less, scale_channels, select, sign, upsampled_point, where_zero

# A reduction's axes: sorted ints ([] when nothing is reduced), None for "all axes" of an
# input whose rank is unknown, or the name of a run-time axes tensor.
Axes = Union[list, None, str]


def _axes(e: Emitter, node: Node) -> Axes:
    x = node.inputs[0]
    rank = e.rank(x)
    if node.op.startswith("Global"):
        if rank is None:
            raise OnnxvizError(f"{node.op} node {node.name!r}: the input rank must be known")
        return list(range(2, rank))
    since = 13 if node.op == "ReduceSum" else 18
    if node.opset >= since:
        name = node.input(1)
        if name is not None and e.value(name) is None:
            return name
        axes = [] if name is None else [int(a) for a in e.value(name).ravel()]
        if not axes and node.attr("noop_with_empty_axes", 0):
            return []
    else:
        axes = list(node.attr("axes") or [])
    if not axes:
        return None if rank is None else list(range(rank))
    return sorted(a % rank for a in axes) if rank is not None else axes


def _kept(e: Emitter, node: Node, t: str, axes: Axes) -> str:
    """``t`` (shaped like the output) with the reduced axes as size-1 dims."""
    if node.op.startswith("Global") or node.attr("keepdims", 1) or axes == []:
        return t
    if isinstance(axes, str):
        return e.op("Unsqueeze", t, axes)  # a run-time axes input exists only from opset 13 on
    if axes is None:  # all axes of an input of unknown rank: reshape to [1] * rank
        x = node.inputs[0]
        return e.op("Reshape", t, e.op("Expand", e.ints([1]), e.op("Shape", e.shape_of(x))))
    return e.unsqueeze(t, axes)


def _sum_kept(e: Emitter, t: str, axes: Axes) -> str:
    """ReduceSum over the reduced axes with keepdims=1 (the identity over no axes)."""
    if isinstance(axes, str):
        return e.op("ReduceSum", t, axes, keepdims=1)
    if axes is None:
        return e.op("ReduceSum", t, keepdims=1)  # no axes: every axis
    return e.reduce_sum(t, axes, keepdims=True)


def _expand(e: Emitter, g: str, x: str, axes: Axes = None) -> str:
    """Broadcast ``g`` (x's shape with the reduced ``axes`` as 1s) to the shape of ``x``.

    Where only kept axes are unknown (a symbolic batch), the target shape is a constant
    with 1 there, since g already has that size: onnxruntime then knows the result's shape
    statically, which its blocked-layout (NCHWc) rewrites of the backward pass need.
    Tile before Expand existed (opset 8).
    """
    if e.opset >= 8:
        return e.op("Expand", g, _broadcast_shape(e, x, axes))
    return e.op("Tile", g, e.op("Div", e.shape_of(x), e.op("Shape", g)))


def _broadcast_shape(e: Emitter, x: str, axes: Axes) -> str:
    s = e.static_shape(x)
    if s is not None:
        return e.ints(s)
    s = e.shape(x)
    if s is not None and isinstance(axes, list) and all(isinstance(s[a], int) for a in axes):
        return e.ints([d if isinstance(d, int) else 1 for d in s])
    return e.shape_of(x)


def _count(e: Emitter, x: str, y: str, axes: Axes = None) -> str:
    """How many input elements went into each output element: size(x) / size(y)."""
    xs, ys = e.static_shape(x), e.static_shape(y)
    if xs is not None and ys is not None:
        return e.scalar(math.prod(xs) // max(math.prod(ys), 1), like=x)
    s = e.shape(x)
    if s is not None and isinstance(axes, list) and all(isinstance(s[a], int) for a in axes):
        return e.scalar(math.prod(s[a] for a in axes), like=x)
    return e.cast_like(e.op("Div", e.op("Size", x), e.op("Size", y)), x)


def _prepare(e: Emitter, node: Node, dys):
    x, y = node.inputs[0], node.outputs[0]
    axes = _axes(e, node)
    return x, y, axes, _kept(e, node, dys[0], axes)


def _grads(node: Node, dx: Optional[str]) -> list:
    return [dx] + [None] * (len(node.inputs) - 1)


def reduce_sum(e: Emitter, node: Node, dys):
    """dx = dy broadcast back over the reduced axes."""
    x, y, axes, g = _prepare(e, node, dys)
    return _grads(node, _expand(e, g, x, axes))


def reduce_mean(e: Emitter, node: Node, dys):
    """dx = dy / count, broadcast back (also GlobalAveragePool).

    Over the spatial axes of a 4-D float32 tensor (a CNN's pooling head, where the backward
    pass enters the feature maps), the division is a 1x1 depthwise Conv after the
    broadcast: onnxruntime moves the gradient into its NCHWc layout there, and the mask
    products and residual sums that follow stay in it (they never enter it on their own).
    """
    x, y, axes, g = _prepare(e, node, dys)
    s = e.shape(x)
    if axes == [2, 3] and s is not None and len(s) == 4 and all(isinstance(d, int) for d in s[1:]):
        count = s[2] * s[3]
        if e.opset >= 13 and e.dtype(x) == np.float32:
            spread = upsampled_point(e, g, s[2], s[3])
        else:
            spread = _expand(e, g, x, axes)
        return _grads(node, scale_channels(e, spread, np.full(s[1], 1.0 / count), like=x))
    return _grads(node, _expand(e, e.op("Div", g, _count(e, x, y, axes)), x, axes))


def _extremum(e: Emitter, node: Node, dys, attains):
    x, y, axes, g = _prepare(e, node, dys)
    mask = as_float(e, attains(e, x, _kept(e, node, y, axes)), like=x)
    share = e.op("Div", g, _sum_kept(e, mask, axes))  # ties split equally; the count is >= 1
    return _grads(node, e.op("Mul", share, mask))


def reduce_max(e: Emitter, node: Node, dys):
    """dx = dy where x == y (x <= y, so: not x < y), shared equally between ties (also GlobalMaxPool)."""
    return _extremum(e, node, dys, not_less)


def reduce_min(e: Emitter, node: Node, dys):
    return _extremum(e, node, dys, not_greater)


def reduce_l1(e: Emitter, node: Node, dys):
    """y = Σ|x|: dx = dy · sign(x)."""
    x, y, axes, g = _prepare(e, node, dys)
    return _grads(node, e.op("Mul", g, sign(e, x)))


def reduce_l2(e: Emitter, node: Node, dys):
    """y = sqrt(Σx²): dx = dy · x / y, 0 where y = 0 (all of x zero)."""
    x, y, axes, g = _prepare(e, node, dys)
    yk = _kept(e, node, y, axes)
    nonzero = e.op("Greater", yk, e.scalar(0, like=y))
    ratio = e.op("Div", x, select(e, nonzero, yk, e.scalar(1, like=y), like=y))
    return _grads(node, where_zero(e, nonzero, e.op("Mul", g, ratio), like=x))


def reduce_sum_square(e: Emitter, node: Node, dys):
    """dx = 2 · dy · x."""
    x, y, axes, g = _prepare(e, node, dys)
    return _grads(node, e.op("Mul", e.op("Mul", g, e.scalar(2, like=x)), x))


def reduce_log_sum_exp(e: Emitter, node: Node, dys):
    """dx = dy · exp(x - y) (a softmax over the reduced axes)."""
    x, y, axes, g = _prepare(e, node, dys)
    return _grads(node, e.op("Mul", g, e.op("Exp", e.op("Sub", x, _kept(e, node, y, axes)))))


def reduce_log_sum(e: Emitter, node: Node, dys):
    """y = log Σx: dx = dy / Σx = dy / exp(y)."""
    x, y, axes, g = _prepare(e, node, dys)
    return _grads(node, _expand(e, e.op("Div", g, e.op("Exp", _kept(e, node, y, axes))), x))


RULES = {
    "ReduceSum": reduce_sum,
    "ReduceMean": reduce_mean,
    "ReduceMax": reduce_max,
    "ReduceMin": reduce_min,
    "ReduceL1": reduce_l1,
    "ReduceL2": reduce_l2,
    "ReduceSumSquare": reduce_sum_square,
    "ReduceLogSumExp": reduce_log_sum_exp,
    "ReduceLogSum": reduce_log_sum,
    "GlobalAveragePool": reduce_mean,
    "GlobalMaxPool": reduce_max,
}
