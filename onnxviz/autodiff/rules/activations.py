"""Backward rules for activations, with the guided-backprop and deconvnet variants of ReLU-like ops.

Forward outputs are reused where the derivative is a function of them (Sigmoid: y(1-y),
Tanh: 1-y², Softmax, Exp-like branches of Elu/Selu/Celu).

Boundaries (measure-zero, but they occur: clipped values feed later Clips):

* Relu passes the gradient where y > 0 (strict), HardSigmoid strictly inside (0, 1).
* Clip passes it strictly inside (min, max), read from its output y: as torch's ReLU6 and
  hardtanh and TF's relu6 do, and consistent with Relu (Clip(0) is Relu). torch.clamp and
  tf.clip_by_value pass it at the bounds too; the two differ only where x equals a bound
  exactly (e.g. a conv output of exactly 0 over an all-zero region). Reading the mask from y
  alone also lets onnxruntime fuse the Clip into the Conv before it.
* HardSwish follows torch: 0 for x < -3, (2x + 3)/6 for -3 <= x <= 3, 1 above.

Guided backprop and deconvnet (rule sets ``GUIDED`` and ``DECONVNET``). Captum only
overrides ``nn.ReLU``; we extend the same idea to the ReLU-like ops of exported CNNs,
reading "guided" as *the standard local derivative applied to relu(dy)* and "deconvnet"
as *relu(dy), ignoring the forward pass's rectification*:

============  ======================================  ======================================
op            guided                                  deconvnet
============  ======================================  ======================================
Relu          relu(dy) where y > 0                    relu(dy)
Clip          relu(dy) where min < y < max            relu(dy) where y < max (the upper
              (the standard Clip mask)                saturation is not a rectification, so
                                                      its forward mask stays)
LeakyRelu     relu(dy) · (1 if x > 0 else alpha)      relu(dy)
PRelu         relu(dy) · (1 if x > 0 else slope)      relu(dy)
============  ======================================  ======================================

With no max, Clip(0) is Relu and the variants agree with Relu's up to the x = 0 boundary.
A slope that depends on the input gets its standard gradient in every rule set.
"""
from __future__ import annotations

import math

import numpy as np
from typing import Optional

from ...graph.emitter import Emitter
from ..ruleset import Node
from .elementwise import (above, below, blocked_channels, inside, not_less, positive, scale_channels, select,
                          where_zero, zero_grad)


# ---- ReLU family --------------------------------------------------------------
def relu(e: Emitter, node: Node, dys):
    """dx = dy where y > 0 (the output's sign is the mask: no extra forward value needed)."""
    y, dy = node.outputs[0], dys[0]
    return [e.op("Mul", dy, above(e, y))]


def relu_guided(e: Emitter, node: Node, dys):
    """Guided backprop (Springenberg et al.): pass only positive gradients where the input was positive."""
    y, dy = node.outputs[0], dys[0]
    return [e.op("Mul", e.op("Relu", dy), above(e, y))]


def relu_deconvnet(e: Emitter, node: Node, dys):
    """Deconvnet (Zeiler & Fergus): ReLU applied to the gradient, ignoring the forward mask."""
    return [e.op("Relu", dys[0])]


def _leaky(e: Emitter, x: str, g: str, slope: str, value: Optional[np.ndarray] = None) -> str:
    """g where x > 0, else slope · g (``value``: the slope's value when it is not a forward constant)."""
    slopes = _channel_slopes(e, x, e.value(slope) if value is None else value)
    if slopes is not None:
        # in NCHWc: m = [x > 0], then m + (slope - slope·m) as a depthwise Conv whose sum
        # onnxruntime fuses into it; exact (-s·1 + s is 0): Greater and Where left the layout
        m = above(e, x)
        c = len(slopes)
        ramp = e.op("Conv", m, e.const((-slopes).reshape(c, 1, 1, 1)), e.const(slopes), group=c, kernel_shape=[1, 1])
        return e.op("Mul", g, e.op("Add", ramp, m))
    return select(e, positive(e, x), g, e.op("Mul", g, slope), like=x)


def _channel_slopes(e: Emitter, x: str, value: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The slope as float32 [C] when x runs in onnxruntime's NCHWc layout and the slope is a
    constant scalar or per-channel value (shaped [C, 1, 1] as torch exports PRelu), else None."""
    channels = blocked_channels(e, x)
    if channels is None or value is None:
        return None
    if value.size == 1:
        return np.full(channels, value.reshape(()), np.float32)
    shape = list(value.shape)
    while shape and shape[0] == 1 and len(shape) > 3:
        shape.pop(0)
    if value.size == channels and len(shape) == 3 and shape == [channels, 1, 1]:
        return value.reshape(-1).astype(np.float32)
    return None


def leaky_relu(e: Emitter, node: Node, dys):
    """dx = dy if x > 0 else alpha · dy (alpha defaults to 0.01)."""
    x = node.inputs[0]
    alpha = node.attr("alpha", 0.01)
    return [_leaky(e, x, dys[0], e.scalar(alpha, like=x), np.asarray(alpha))]


def leaky_relu_guided(e: Emitter, node: Node, dys):
    x = node.inputs[0]
    alpha = node.attr("alpha", 0.01)
    return [_leaky(e, x, e.op("Relu", dys[0]), e.scalar(alpha, like=x), np.asarray(alpha))]


def _prelu_slope(e: Emitter, node: Node, dy: str):
    """dslope = Σ dy · x where x <= 0, summed back to the slope's shape (None when not needed)."""
    if not node.needs[1]:
        return None
    x, slope = node.inputs
    g = where_zero(e, e.op("Not", positive(e, x)), e.op("Mul", dy, x), like=x)
    return e.unbroadcast(g, slope, node.outputs[0])


def prelu(e: Emitter, node: Node, dys):
    """dx = dy if x > 0 else slope · dy (slope broadcasts to x); dslope = Σ dy · x where x <= 0."""
    x, slope = node.inputs
    dx = _leaky(e, x, dys[0], slope) if node.needs[0] else None
    return [dx, _prelu_slope(e, node, dys[0])]


def prelu_guided(e: Emitter, node: Node, dys):
    x, slope = node.inputs
    dx = _leaky(e, x, e.op("Relu", dys[0]), slope) if node.needs[0] else None
    return [dx, _prelu_slope(e, node, dys[0])]


def prelu_deconvnet(e: Emitter, node: Node, dys):
    return [e.op("Relu", dys[0]) if node.needs[0] else None, _prelu_slope(e, node, dys[0])]


def leaky_relu_deconvnet(e: Emitter, node: Node, dys):
    return [e.op("Relu", dys[0])]


def _clip_bounds(e: Emitter, node: Node):
    """(min, max) tensor names or None: attributes before opset 11, optional inputs after."""
    x = node.inputs[0]
    if "min" in node.attrs or "max" in node.attrs or node.opset < 11:
        lo, hi = node.attr("min"), node.attr("max")
        return (None if lo is None else e.scalar(lo, like=x)), (None if hi is None else e.scalar(hi, like=x))
    return node.input(1), node.input(2)


def _clip_bound_value(e: Emitter, node: Node, i: int) -> Optional[float]:
    """Bound ``i`` (1: min, 2: max) as a number when it is known at build time."""
    if "min" in node.attrs or "max" in node.attrs or node.opset < 11:
        v = node.attr("min" if i == 1 else "max")
        return None if v is None else float(v)
    value = e.value(node.input(i))
    return float(value.reshape(())) if value is not None and value.size == 1 else None


def _clip_mask(e: Emitter, node: Node, lower: bool = True):
    """1.0 strictly inside (min, max), read from Clip's output y (None when Clip has no bounds).

    Known bounds use the blocked-layout masks (:func:`above`, :func:`below`, and for Clip(0, max),
    ReLU6, the one-Conv-less :func:`inside`); computed bounds compare y with the bound tensors.
    ``lower=False`` leaves out the min.
    """
    y = node.outputs[0]
    lo, hi = _clip_bounds(e, node)
    if lower and lo is not None and hi is not None and _clip_bound_value(e, node, 1) == 0.0:
        upper = _clip_bound_value(e, node, 2)
        fused = inside(e, y, upper) if upper is not None else None
        if fused is not None:
            return fused
    parts = []
    for i, bound, const_mask, op in [(1, lo if lower else None, above, "Greater"), (2, hi, below, "Less")]:
        if bound is None:
            continue
        value = _clip_bound_value(e, node, i)
        parts.append(const_mask(e, y, value) if value is not None else e.cast_like(e.op(op, y, bound), y))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else e.op("Mul", *parts)


def _clip(e: Emitter, node: Node, dys, dx_from: str, mask):
    """Clip's gradients: dx_from under ``mask``; a computed bound gets Σ dy where it was the result."""
    x = node.inputs[0]
    dy = dys[0]
    lo, hi = _clip_bounds(e, node)
    grads = [None] * len(node.inputs)
    if node.needs[0]:
        grads[0] = dx_from if mask is None else e.op("Mul", dx_from, mask)
    for i, (bound, outside) in enumerate([(lo, "Less"), (hi, "Greater")], start=1):
        if i < len(node.inputs) and node.needs[i]:
            total = e.op("ReduceSum", where_zero(e, e.op(outside, x, bound), dy, like=x), keepdims=0)
            grads[i] = e.reshape_like(total, bound)
    return grads


def clip(e: Emitter, node: Node, dys):
    """dx = dy where min < y < max (strict, see the module docstring); ReLU6 is Clip(0, 6)."""
    return _clip(e, node, dys, dys[0], _clip_mask(e, node))


def clip_guided(e: Emitter, node: Node, dys):
    return _clip(e, node, dys, e.op("Relu", dys[0]), _clip_mask(e, node))


def clip_deconvnet(e: Emitter, node: Node, dys):
    return _clip(e, node, dys, e.op("Relu", dys[0]), _clip_mask(e, node, lower=False))


def thresholded_relu(e: Emitter, node: Node, dys):
    """y = x if x > alpha else 0 (alpha defaults to 1)."""
    x = node.inputs[0]
    return [where_zero(e, e.op("Greater", x, e.scalar(node.attr("alpha", 1.0), like=x)), dys[0], like=x)]


# ---- exponential-linear units -------------------------------------------------
def elu(e: Emitter, node: Node, dys):
    """dx = dy if x > 0 else dy · (y + alpha)."""
    x, y, dy = node.inputs[0], node.outputs[0], dys[0]
    slope = e.op("Add", y, e.scalar(node.attr("alpha", 1.0), like=y))
    return [select(e, positive(e, x), dy, e.op("Mul", dy, slope), like=x)]


SELU_ALPHA = 1.67326319217681884765625
SELU_GAMMA = 1.05070102214813232421875


def selu(e: Emitter, node: Node, dys):
    """dx = gamma · dy if x > 0 else dy · (y + alpha · gamma)."""
    x, y, dy = node.inputs[0], node.outputs[0], dys[0]
    alpha, gamma = node.attr("alpha", SELU_ALPHA), node.attr("gamma", SELU_GAMMA)
    neg = e.op("Mul", dy, e.op("Add", y, e.scalar(alpha * gamma, like=y)))
    return [select(e, positive(e, x), e.op("Mul", dy, e.scalar(gamma, like=y)), neg, like=x)]


def celu(e: Emitter, node: Node, dys):
    """dx = dy if x > 0 else dy · exp(x / alpha) = dy · (y / alpha + 1)."""
    x, y, dy = node.inputs[0], node.outputs[0], dys[0]
    alpha = node.attr("alpha", 1.0)
    slope = e.op("Add", e.op("Mul", y, e.scalar(1.0 / alpha, like=y)), e.scalar(1, like=y))
    return [select(e, positive(e, x), dy, e.op("Mul", dy, slope), like=x)]


# ---- sigmoids -----------------------------------------------------------------
def sigmoid(e: Emitter, node: Node, dys):
    """dx = dy · y · (1 - y)."""
    y = node.outputs[0]
    return [e.op("Mul", dys[0], e.op("Mul", y, e.op("Sub", e.scalar(1, like=y), y)))]


def tanh(e: Emitter, node: Node, dys):
    """dx = dy · (1 - y²)."""
    y = node.outputs[0]
    return [e.op("Mul", dys[0], e.op("Sub", e.scalar(1, like=y), e.op("Mul", y, y)))]


def hard_sigmoid(e: Emitter, node: Node, dys):
    """y = clip(alpha · x + beta, 0, 1): dx = alpha · dy strictly inside (0, 1)."""
    y = node.outputs[0]
    inside = e.op("And", positive(e, y), e.op("Less", y, e.scalar(1, like=y)))
    return [where_zero(e, inside, e.op("Mul", dys[0], e.scalar(node.attr("alpha", 0.2), like=y)), like=y)]


def hard_swish(e: Emitter, node: Node, dys):
    """y = x · clip(x/6 + 1/2, 0, 1): dx = 0 below -3, dy · (x/3 + 1/2) up to 3, dy above."""
    x, dy = node.inputs[0], dys[0]
    channels = blocked_channels(e, x)
    if channels is not None:
        return [e.op("Mul", dy, _hard_swish_slope(e, x, channels))]
    ramp = e.op("Mul", dy, e.op("Add", e.op("Mul", x, e.scalar(1 / 3, like=x)), e.scalar(0.5, like=x)))
    upper = select(e, e.op("Greater", x, e.scalar(3, like=x)), dy, ramp, like=x)
    return [where_zero(e, not_less(e, x, e.scalar(-3, like=x)), upper, like=x)]


def _hard_swish_slope(e: Emitter, x: str, channels: int) -> str:
    """HardSwish's derivative for a float32 tensor in onnxruntime's blocked NCHWc layout:
    2·r + ([x < -3] + [x <= 3])/2 - 1 with r = clip(x/6 + 1/2, 0, 1), i.e. 0 below -3,
    x/3 + 1/2 on [-3, 3] (-1/2 and 3/2 at the ends) and 1 above, exactly outside [-3, 3]
    (sums of halves and ones). r and the halving are HardSigmoids, the masks :func:`below`,
    the last affine step a depthwise Conv whose Add onnxruntime fuses as its Sum input: all
    stay in NCHWc. Where, Less, Cast and Sub left the layout (on MobileNetV3-Large every
    HardSwish sent its input and gradient through reorders, 21% of a saliency run). Paired
    runs: 3% faster than two ramps times two masks; as fast as a clipped-ramp Conv with
    both half-masks fused into Convs.
    """
    ramp = e.op("HardSigmoid", x, alpha=1 / 6, beta=0.5)
    not_above = below(e, x, float(np.nextafter(np.float32(3), np.float32(np.inf))))
    halves = e.op("HardSigmoid", e.op("Add", below(e, x, -3.0), not_above), alpha=0.5, beta=0.0)
    return e.op("Add", scale_channels(e, ramp, np.full(channels, 2.0), like=x, shift=-1.0), halves)


def softplus(e: Emitter, node: Node, dys):
    """dx = dy · sigmoid(x)."""
    return [e.op("Mul", dys[0], e.op("Sigmoid", node.inputs[0]))]


def softsign(e: Emitter, node: Node, dys):
    """y = x / (1 + |x|): dx = dy / (1 + |x|)²."""
    x = node.inputs[0]
    d = e.op("Add", e.scalar(1, like=x), e.op("Abs", x))
    return [e.op("Div", dys[0], e.op("Mul", d, d))]


def _erf_derivative(e: Emitter, x: str, scale: float) -> str:
    """scale · exp(-x²) — d erf(x)/dx is 2/sqrt(pi) · exp(-x²)."""
    return e.op("Mul", e.scalar(scale, like=x), e.op("Exp", e.op("Neg", e.op("Mul", x, x))))


def erf(e: Emitter, node: Node, dys):
    x = node.inputs[0]
    return [e.op("Mul", dys[0], _erf_derivative(e, x, 2 / math.sqrt(math.pi)))]


GELU_TANH_C = math.sqrt(2 / math.pi)


def gelu(e: Emitter, node: Node, dys):
    """Exact: Φ(x) + x·φ(x). approximate="tanh": 0.5(1+t) + 0.5x(1-t²)·c(1+3·0.044715x²)."""
    x, dy = node.inputs[0], dys[0]
    s = lambda v: e.scalar(v, like=x)  # noqa: E731
    if node.attr("approximate", "none") == "tanh":
        x2 = e.op("Mul", x, x)
        inner = e.op("Mul", e.op("Mul", s(GELU_TANH_C), x), e.op("Add", s(1), e.op("Mul", s(0.044715), x2)))
        t = e.op("Tanh", inner)
        dinner = e.op("Mul", s(GELU_TANH_C), e.op("Add", s(1), e.op("Mul", s(3 * 0.044715), x2)))
        second = e.op("Mul", e.op("Mul", s(0.5), x), e.op("Mul", e.op("Sub", s(1), e.op("Mul", t, t)), dinner))
        local = e.op("Add", e.op("Mul", s(0.5), e.op("Add", s(1), t)), second)
    else:
        cdf = e.op("Mul", s(0.5), e.op("Add", s(1), e.op("Erf", e.op("Mul", x, s(1 / math.sqrt(2))))))
        pdf = e.op("Mul", s(1 / math.sqrt(2 * math.pi)), e.op("Exp", e.op("Mul", e.op("Mul", x, x), s(-0.5))))
        local = e.op("Add", cdf, e.op("Mul", x, pdf))
    return [e.op("Mul", dy, local)]


def mish(e: Emitter, node: Node, dys):
    """y = x · tanh(softplus(x)): dx = dy · (t + x · sigmoid(x) · (1 - t²)), t = tanh(softplus(x))."""
    x = node.inputs[0]
    t = e.op("Tanh", e.op("Softplus", x))
    one_minus_t2 = e.op("Sub", e.scalar(1, like=x), e.op("Mul", t, t))
    local = e.op("Add", t, e.op("Mul", e.op("Mul", x, e.op("Sigmoid", x)), one_minus_t2))
    return [e.op("Mul", dys[0], local)]


# ---- softmax --------------------------------------------------------------------
def _softmax_axes(e: Emitter, node: Node):
    """The reduced axes: [axis] from opset 13; every axis >= axis before (the op flattened there).

    None when the rank is unknown before opset 13 (the caller then flattens like the op did).
    """
    if node.opset >= 13:
        return [node.attr("axis", -1)]
    axis, rank = node.attr("axis", 1), e.rank(node.inputs[0])
    if rank is None:
        return None
    return list(range(axis % rank if axis < 0 else axis, rank))


def _softmax_like(e: Emitter, node: Node, dys, backward):
    x, y, dy = node.inputs[0], node.outputs[0], dys[0]
    axes = _softmax_axes(e, node)
    if axes is not None:
        return [backward(y, dy, axes)]
    axis = node.attr("axis", 1)
    flat = backward(e.op("Flatten", y, axis=axis), e.op("Flatten", dy, axis=axis), [1])
    return [e.reshape_like(flat, x)]


def softmax(e: Emitter, node: Node, dys):
    """dx = y · (dy - Σ_axes dy · y)."""
    def backward(y, dy, axes):
        return e.op("Mul", y, e.op("Sub", dy, e.reduce_sum(e.op("Mul", dy, y), axes)))
    return _softmax_like(e, node, dys, backward)


def log_softmax(e: Emitter, node: Node, dys):
    """dx = dy - exp(y) · Σ_axes dy."""
    def backward(y, dy, axes):
        return e.op("Sub", dy, e.op("Mul", e.op("Exp", y), e.reduce_sum(dy, axes)))
    return _softmax_like(e, node, dys, backward)


RULES = {
    "Relu": relu,
    "LeakyRelu": leaky_relu,
    "PRelu": prelu,
    "Clip": clip,
    "ThresholdedRelu": thresholded_relu,
    "Elu": elu,
    "Selu": selu,
    "Celu": celu,
    "Sigmoid": sigmoid,
    "HardSigmoid": hard_sigmoid,
    "HardSwish": hard_swish,
    "Tanh": tanh,
    "Softplus": softplus,
    "Softsign": softsign,
    "Erf": erf,
    "Gelu": gelu,
    "Mish": mish,
    "Softmax": softmax,
    "LogSoftmax": log_softmax,
    "Hardmax": zero_grad,
}
GUIDED = {"Relu": relu_guided, "Clip": clip_guided, "LeakyRelu": leaky_relu_guided, "PRelu": prelu_guided}
DECONVNET = {
    "Relu": relu_deconvnet,
    "Clip": clip_deconvnet,
    "LeakyRelu": leaky_relu_deconvnet,
    "PRelu": prelu_deconvnet,
}


def relu_redirected(e: Emitter, node: Node, dys):
    """Lucid's redirected ReLU gradient: for an image where no gradient passes a ReLU at all (a
    dead target channel), also pass it where it pushes the output up (dy > 0), so the ascent can
    revive the channel; otherwise the standard rule."""
    y, dy = node.outputs[0], dys[0]
    passed = where_zero(e, positive(e, y), dy, like=y)
    rank = e.rank(y)
    if not rank or rank < 2:
        return [passed]
    upward = where_zero(e, e.op("Or", positive(e, y), e.op("Greater", dy, e.scalar(0, like=y))), dy, like=y)
    magnitude = e.reduce_sum(e.op("Abs", passed), list(range(1, rank)), keepdims=True)
    return [select(e, e.op("Greater", magnitude, e.scalar(0, like=y)), passed, upward, like=y)]


# Class visualization's rule set: a dead ReLU lets the ascent through (see relu_redirected).
REDIRECTED = {"Relu": relu_redirected}
