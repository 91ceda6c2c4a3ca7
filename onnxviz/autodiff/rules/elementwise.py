"""Backward rules for element-wise arithmetic with numpy broadcasting.

Every gradient of a broadcasting op is summed back to its operand's shape (``unbroadcast``).
Comparisons are spelled with ``Less``/``Greater``/``Not`` (float kernels since opset 7) rather
than ``Equal``/``GreaterOrEqual`` (float only from opset 11/12), and selections go through
``select`` (``Where`` from opset 9, a 0/1 mask product before), so the rules also serve
models that keep an old opset.

Tie policy of the variadic Max/Min (shared with ReduceMax/ReduceMin and GlobalMaxPool):
the gradient is split equally between all operands that attain the extremum, so the
operands' gradients always add up to ``dy`` (PyTorch's ``maximum``/``amax`` do the same;
for two tied operands it is also what central differences measure).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
from onnx import TensorProto

from ...graph.emitter import Emitter
from ..ruleset import Node


# ---- small helpers shared by the rule modules ---------------------------------
def select(e: Emitter, cond: str, a: str, b: str, like: str) -> str:
    """Where(cond, a, b); before opset 9 (no Where) b + (a - b) · cond, in the type of ``like``."""
    if e.opset >= 9:
        return e.op("Where", cond, a, b)
    return e.op("Add", b, e.op("Mul", e.op("Sub", a, b), as_float(e, cond, like)))


def where_zero(e: Emitter, cond: str, g: str, like: str) -> str:
    """``g`` where ``cond``, else 0 (of the element type of forward tensor ``like``).

    Spelled g * Cast(cond), not Where: onnxruntime's CPU Where is a generic broadcasting
    kernel, about 3x slower than a Cast and a vectorized Mul on activation-sized tensors
    (scripts/bench_spellings.py). The two differ only where g is inf or NaN.
    """
    return e.op("Mul", g, as_float(e, cond, like))


def not_less(e: Emitter, a: str, b: str) -> str:
    """a >= b as a bool tensor (false for NaN-free a < b)."""
    return e.op("Not", e.op("Less", a, b))


def not_greater(e: Emitter, a: str, b: str) -> str:
    """a <= b as a bool tensor."""
    return e.op("Not", e.op("Greater", a, b))


def as_float(e: Emitter, cond: str, like: str) -> str:
    """A bool mask as 0/1 in the element type of ``like``."""
    return e.op("Cast", cond, to=e.elem_type(like))


def positive(e: Emitter, t: str) -> str:
    return e.op("Greater", t, e.scalar(0, like=t))


# ---- exact 0/1 masks in onnxruntime's blocked layout ----------------------------------
# 2^23 * 2^126 = 2^149 maps the smallest float32 subnormal (2^-149) to 1, so
# HardSigmoid(2^126 * (2^23 * (t - b))) is exactly 1 where t > b and 0 elsewhere; the first
# factor is a 1x1 depthwise Conv (whose bias subtracts b), the second HardSigmoid's alpha.
# (Standalone HardSigmoids also stay in NCHWc and alone run 3x faster than this Conv, but
# one or two of them per mask measured 0-3% slower in whole saliency graphs: ResNet-50,
# MobileNetV2, DenseNet-121, paired runs.)
MASK_SCALE_IN = 2.0 ** 23
MASK_SCALE_OUT = 2.0 ** 126
MASK_BOUND_LIMIT = 2.0 ** 100  # 2^23 * b stays finite, so t - b keeps its sign


def blocked_channels(e: Emitter, t: str) -> Optional[int]:
    """Channel count of a 4-D float32 tensor with a known channel count: the tensors onnxruntime
    runs in its blocked NCHWc layout, where the Conv spellings below apply; else None."""
    s = e.shape(t)
    if e.elem_type(t) != TensorProto.FLOAT or s is None or len(s) != 4 or not isinstance(s[1], int):
        return None
    return s[1]


def _compare_mask(e: Emitter, t: str, bound: float, sign: float) -> str:
    channels = blocked_channels(e, t) if abs(bound) <= MASK_BOUND_LIMIT else None
    if channels is None:
        op = "Greater" if sign > 0 else "Less"
        return as_float(e, e.op(op, t, e.scalar(bound, like=t)), like=t)
    w = e.const(np.full((channels, 1, 1, 1), sign * MASK_SCALE_IN, np.float32))
    shift = np.float32(-sign * MASK_SCALE_IN) * np.float32(bound)  # exact: a power of two times a float32
    b = e.const(np.full(channels, shift, np.float32)) if bound else None
    scaled = e.op("Conv", t, w, b, group=channels, kernel_shape=[1, 1])
    return e.op("HardSigmoid", scaled, alpha=MASK_SCALE_OUT, beta=0.0)


def scale_channels(e: Emitter, g: str, factor: np.ndarray, like: str, shift: Optional[float] = None) -> str:
    """g (shaped like the forward tensor ``like``) times a constant per-channel ``factor`` ([C])
    along axis 1, plus a constant ``shift``.

    For 4-D float32 tensors a 1x1 depthwise Conv, which onnxruntime keeps in its NCHWc
    layout; a Mul (or Sub) with a constant would leave it (see :func:`above`).
    """
    factor = np.asarray(factor).reshape(-1)
    if blocked_channels(e, like) == factor.size:
        w = e.const(factor.astype(np.float32).reshape(-1, 1, 1, 1))
        b = None if shift is None else e.const(np.full(factor.size, shift, np.float32))
        return e.op("Conv", g, w, b, group=factor.size, kernel_shape=[1, 1])
    rank = e.rank(like)
    shape = [-1] + [1] * (rank - 2) if rank and rank > 2 else [-1]
    out = e.op("Mul", g, e.const(factor.astype(e.dtype(like)).reshape(shape)))
    return out if shift is None else e.op("Add", out, e.scalar(shift, like=like))


def blocked(e: Emitter, g: str, like: str) -> str:
    """g unchanged, passed through a 1x1 depthwise Conv with unit weights (exact) for 4-D float32.

    After an op onnxruntime runs in plain NCHW (ConvTranspose): the element-wise masks and
    sums downstream stay in whatever layout their inputs arrive in, so without this every
    one of them would pay a reorder; the Conv moves the gradient back into NCHWc once.
    """
    channels = blocked_channels(e, like)
    return g if channels is None else scale_channels(e, g, np.ones(channels, np.float32), like)


def upsampled_point(e: Emitter, g: str, height: int, width: int) -> str:
    """g ([N, C, 1, 1], float32) broadcast to [N, C, height, width] as a nearest Resize (opset >= 13).

    The same values as an Expand, but asymmetric/floor nearest upsampling is an op onnxruntime
    runs in NCHWc (its Upsample), so what follows stays in that layout.
    """
    return e.op("Resize", g, None, e.const(np.array([1, 1, height, width], np.float32)), mode="nearest",
                coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def above(e: Emitter, t: str, bound: float = 0.0) -> str:
    """1.0 where t > bound, else 0.0, in t's type: the masks of ReLU-like backward rules.

    A Greater and a Cast make onnxruntime leave its blocked NCHWc layout twice per
    activation (measured 5x slower, reorders included); for 4-D float32 tensors the same
    mask is one Conv fused with HardSigmoid, which stays blocked. Exact for every float32,
    subnormals included (see MASK_SCALE_IN); NaN gives NaN, so it is not hidden.
    """
    return _compare_mask(e, t, bound, 1.0)


def below(e: Emitter, t: str, bound: float) -> str:
    """1.0 where t < bound, else 0.0 (the spelling of :func:`above`)."""
    return _compare_mask(e, t, bound, -1.0)


def inside(e: Emitter, t: str, upper: float) -> Optional[str]:
    """1.0 where 0 < t < upper, else 0.0, for t known to be >= 0 (a Clip(0, upper) output: ReLU6);
    None where the fused spelling below does not apply (the caller multiplies two masks).

    m = HardSigmoid_a(a - c·t + (c·upper - 1)) with a = [t > 0] and c = 2^-k, upper in
    (2^(k-1), 2^k], which onnxruntime runs as one Conv whose Sum input is a: no [t < upper]
    mask and no Mul (MobileNetV2 saliency: above · below took 1.11x as long, paired runs).
    Exact in every order of the three additions:
    a = 0 means t = 0 and the sum is c·upper - 1 <= 0; with a = 1 it is 0 at t = upper and at
    least 2^-24 below it (c times the float spacing under upper), so a = 2^26 saturates it.
    """
    channels = blocked_channels(e, t)
    if channels is None or not 1 / MASK_BOUND_LIMIT <= upper <= MASK_BOUND_LIMIT or np.float32(upper) != upper:
        return None
    mantissa, exponent = math.frexp(upper)  # upper = mantissa · 2^exponent, mantissa in [1/2, 1)
    c = 2.0 ** -(exponent - 1 if mantissa == 0.5 else exponent)
    scaled = scale_channels(e, t, np.full(channels, -c), like=t, shift=c * upper - 1.0)  # exact: c·upper in (1/2, 1]
    shifted = e.op("Add", scaled, above(e, t))
    return e.op("HardSigmoid", shifted, alpha=2.0 ** 26, beta=0.0)


def zero_grad(e: Emitter, node: Node, dys):
    """Piecewise-constant ops (Floor, Ceil, Round, Sign, Hardmax): no gradient."""
    return [None] * len(node.inputs)


# ---- arithmetic -----------------------------------------------------------------
def add(e: Emitter, node: Node, dys):
    dy, out = dys[0], node.outputs[0]
    return [e.unbroadcast(dy, x, out) if need else None for x, need in zip(node.inputs, node.needs)]


def sub(e: Emitter, node: Node, dys):
    dy, out = dys[0], node.outputs[0]
    a, b = node.inputs
    return [
        e.unbroadcast(dy, a, out) if node.needs[0] else None,
        e.unbroadcast(e.op("Neg", dy), b, out) if node.needs[1] else None,
    ]


def _silu_input(node: Node) -> Optional[int]:
    """Which input of this Mul is x when the node is x · Sigmoid(x) (SiLU / Swish), else None."""
    a, b = node.inputs
    for i, (x, s) in enumerate([(a, b), (b, a)]):
        p = node.producer(s)
        if p is not None and p.op_type == "Sigmoid" and p.domain in ("", "ai.onnx") and list(p.input) == [x]:
            return i
    return None


def silu(e: Emitter, node: Node, dy: str, i: int) -> list:
    """y = x · s with s = Sigmoid(x): dx = dy · (s + y · (1 - s)), the whole derivative through both
    factors in four element-wise passes from values the forward keeps (s, y), where the
    Mul and Sigmoid rules took six and a Sum. s gets no gradient from this node: its
    contribution is in dx, so the Sigmoid rule runs only for s's other consumers, if any.
    Exact: d(x·σ(x))/dx = σ + x·σ(1-σ) = σ + y(1-σ).
    """
    s, y = node.inputs[1 - i], node.outputs[0]
    channels = blocked_channels(e, y)
    if channels is not None and e.shape(s) == e.shape(y):
        # 1 - s as clip(1 - s, 0, 1) (s is in [0, 1]): a HardSigmoid stays in NCHWc where Sub
        # left it; as fast as the depthwise Conv it replaces (EfficientNet-B0), no constants
        one_minus_s = e.op("HardSigmoid", s, alpha=-1.0, beta=1.0)
    else:
        one_minus_s = e.op("Sub", e.scalar(1, like=y), s)
    dx = e.op("Mul", dy, e.op("Add", s, e.op("Mul", y, one_minus_s)))
    return [dx, None] if i == 0 else [None, dx]


def _per_channel_mul(e: Emitter, node: Node, dy: str) -> Optional[list]:
    """Gradients of a 4-D float32 x · g with g shaped [N or 1, C, 1, 1] (a squeeze-excite gate, or
    a constant per-channel scale), spelled in ops onnxruntime keeps in its NCHWc layout; None
    where the pattern does not apply.

    dx = dy · upsample(g) (nearest, asymmetric/floor: the NCHWc Upsample; a broadcasting Mul
    would leave the layout) or, for a constant g, a depthwise Conv; dg = H·W · mean_HW(dy · x)
    (GlobalAveragePool, also NCHWc).
    """
    out = node.outputs[0]
    so = e.shape(out)
    if e.elem_type(out) != TensorProto.FLOAT or so is None or len(so) != 4 or not all(
            isinstance(d, int) for d in so[1:]):
        return None
    channels, height, width = so[1:]
    for i in (0, 1):
        x, g = node.inputs[i], node.inputs[1 - i]
        sx, sg = e.shape(x), e.shape(g)
        if sx is None or sg is None or len(sx) != 4 or len(sg) != 4 or list(sx[1:]) != [channels, height, width]:
            continue
        if list(sg[1:]) != [channels, 1, 1] or (height, width) == (1, 1):
            continue
        grads = [None, None]
        value = e.value(g)
        if node.needs[i]:
            if value is not None:
                grads[i] = scale_channels(e, dy, value.reshape(-1), like=x)
            elif e.opset >= 13:
                grads[i] = e.op("Mul", dy, upsampled_point(e, g, height, width))
            else:
                return None
        if node.needs[1 - i]:
            if sg[0] != sx[0]:
                return None  # g's batch may broadcast: the generic rule sums it
            pooled = e.op("GlobalAveragePool", e.op("Mul", dy, x))
            grads[1 - i] = scale_channels(e, pooled, np.full(channels, float(height * width)), like=g)
        return grads
    return None


def mul(e: Emitter, node: Node, dys):
    dy, out = dys[0], node.outputs[0]
    a, b = node.inputs
    i = _silu_input(node)
    if i is not None and a != b and node.needs[i]:
        return silu(e, node, dy, i)
    if a != b:
        grads = _per_channel_mul(e, node, dy)
        if grads is not None:
            return grads
    return [
        e.unbroadcast(e.op("Mul", dy, b), a, out) if node.needs[0] else None,
        e.unbroadcast(e.op("Mul", dy, a), b, out) if node.needs[1] else None,
    ]


def div(e: Emitter, node: Node, dys):
    """y = a / b: da = dy / b, db = -dy · y / b."""
    dy, y = dys[0], node.outputs[0]
    a, b = node.inputs
    return [
        e.unbroadcast(e.op("Div", dy, b), a, y) if node.needs[0] else None,
        e.unbroadcast(e.op("Neg", e.op("Div", e.op("Mul", dy, y), b)), b, y) if node.needs[1] else None,
    ]


def pow_(e: Emitter, node: Node, dys):
    """y = a^b: da = dy · b · a^(b-1); db = dy · y · log(a), taken as 0 where a <= 0.

    The exponent may have another element type than the base (opset 12+); it is cast to the
    base's type where it multiplies. A constant exponent gets b-1 folded at build time.
    """
    dy, y = dys[0], node.outputs[0]
    a, b = node.inputs
    da = db = None
    if node.needs[0]:
        bv = e.value(b)
        if bv is not None:
            b_minus_1 = e.const(bv - 1)
            b_like_a = e.const(bv.astype(e.dtype(a)))
        else:
            b_minus_1 = e.op("Sub", b, e.scalar(1, like=b))
            b_like_a = b if e.elem_type(b) == e.elem_type(a) else e.cast_like(b, a)
        local = e.op("Mul", b_like_a, e.op("Pow", a, b_minus_1))
        da = e.unbroadcast(e.op("Mul", dy, local), a, y)
    if node.needs[1]:
        # log(a) is undefined for a <= 0: there the exponent gets no gradient (the a = 0, b > 0 limit).
        pos = positive(e, a)
        safe_a = select(e, pos, a, e.scalar(1, like=a), like=a)
        local = e.op("Mul", y, e.op("Log", safe_a))
        g = e.op("Mul", dy, where_zero(e, pos, local, like=a))
        db = e.unbroadcast(e.cast_like(g, b) if e.elem_type(b) != e.elem_type(a) else g, b, y)
    return [da, db]


def neg(e: Emitter, node: Node, dys):
    return [e.op("Neg", dys[0])]


def sign(e: Emitter, x: str) -> str:
    """Sign(x); before opset 9 (no Sign) [x > 0] - [x < 0]."""
    if e.opset >= 9:
        return e.op("Sign", x)
    zero = e.scalar(0, like=x)
    return e.op("Sub", as_float(e, e.op("Greater", x, zero), x), as_float(e, e.op("Less", x, zero), x))


def abs_(e: Emitter, node: Node, dys):
    """dx = dy · sign(x) (0 at x = 0)."""
    return [e.op("Mul", dys[0], sign(e, node.inputs[0]))]


def sqrt(e: Emitter, node: Node, dys):
    """dx = dy / (2 y)."""
    y = node.outputs[0]
    return [e.op("Div", e.op("Mul", dys[0], e.scalar(0.5, like=y)), y)]


def exp(e: Emitter, node: Node, dys):
    """dx = dy · y."""
    return [e.op("Mul", dys[0], node.outputs[0])]


def log(e: Emitter, node: Node, dys):
    """dx = dy / x."""
    return [e.op("Div", dys[0], node.inputs[0])]


def reciprocal(e: Emitter, node: Node, dys):
    """dx = -dy · y²."""
    y = node.outputs[0]
    return [e.op("Neg", e.op("Mul", dys[0], e.op("Mul", y, y)))]


def sin(e: Emitter, node: Node, dys):
    return [e.op("Mul", dys[0], e.op("Cos", node.inputs[0]))]


def cos(e: Emitter, node: Node, dys):
    return [e.op("Neg", e.op("Mul", dys[0], e.op("Sin", node.inputs[0])))]


def mean(e: Emitter, node: Node, dys):
    """Variadic Mean: each operand gets dy / n, unbroadcast."""
    y = node.outputs[0]
    g = e.op("Mul", dys[0], e.scalar(1.0 / len(node.inputs), like=y))
    return [e.unbroadcast(g, x, y) if need else None for x, need in zip(node.inputs, node.needs)]


def _extremum(e: Emitter, node: Node, dys, attains):
    """Variadic Max/Min: dy goes to the operands equal to y, split equally between ties."""
    dy, y = dys[0], node.outputs[0]
    if len(node.inputs) == 1:
        return [dy]
    masks = [as_float(e, attains(e, x, y), like=y) for x in node.inputs]
    share = e.op("Div", dy, e.op("Sum", *masks))  # the count is >= 1 everywhere
    return [
        e.unbroadcast(e.op("Mul", share, m), x, y) if need else None
        for x, m, need in zip(node.inputs, masks, node.needs)
    ]


def max_(e: Emitter, node: Node, dys):
    return _extremum(e, node, dys, not_less)  # x <= y always, so x == y iff not x < y


def min_(e: Emitter, node: Node, dys):
    return _extremum(e, node, dys, not_greater)


def where(e: Emitter, node: Node, dys):
    """Where(c, a, b): da = dy where c, db = dy where not c; the condition gets none."""
    dy, y = dys[0], node.outputs[0]
    c, a, b = node.inputs
    return [
        None,
        e.unbroadcast(where_zero(e, c, dy, like=y), a, y) if node.needs[1] else None,
        e.unbroadcast(where_zero(e, e.op("Not", c), dy, like=y), b, y) if node.needs[2] else None,
    ]


def sum_(e: Emitter, node: Node, dys):
    """Variadic Sum: each operand gets the (unbroadcast) incoming gradient."""
    return add(e, node, dys)


RULES = {
    "Add": add,
    "Sub": sub,
    "Mul": mul,
    "Div": div,
    "Pow": pow_,
    "Neg": neg,
    "Abs": abs_,
    "Sqrt": sqrt,
    "Exp": exp,
    "Log": log,
    "Reciprocal": reciprocal,
    "Sin": sin,
    "Cos": cos,
    "Sum": sum_,
    "Mean": mean,
    "Max": max_,
    "Min": min_,
    "Where": where,
    "Floor": zero_grad,
    "Ceil": zero_grad,
    "Round": zero_grad,
    "Sign": zero_grad,
}
