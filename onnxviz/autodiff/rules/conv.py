"""Backward rules for convolutions and dense layers: Conv, ConvTranspose, Gemm, MatMul.

Conv and ConvTranspose are each other's adjoints for fixed weights, so each rule emits the
other op with explicit pads. Gemm and MatMul differentiate both operands (attention-like
activation x activation products); convolution weights never get gradients.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ...errors import OnnxvizError
from ...graph.emitter import Emitter
from ..ruleset import Node
from .elementwise import blocked


def _refuse_weight_grad(node: Node):
    if any(node.needs[1:]):
        raise OnnxvizError(
            f"{node.op} node {node.name!r} has weights or a bias that depend on the requested input; "
            f"gradients with respect to {node.op} weights are not supported (only the data input is "
            "differentiated). Use finite differences, or request a tensor upstream of the weights' source."
        )


def _grads(node: Node, dx: Optional[str]) -> list:
    return [dx] + [None] * (len(node.inputs) - 1)


def _window(node: Node, kernel: Sequence[int]):
    n = len(kernel)
    return list(node.attr("strides", [1] * n)), list(node.attr("dilations", [1] * n))


def conv_pads(node: Node, in_sizes: list, kernel: list) -> Optional[list]:
    """Explicit [begin..., end...] pads of a Conv/pool node; None when they depend on an unknown size."""
    n = len(kernel)
    strides, dilations = _window(node, kernel)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        return list(node.attr("pads", [0] * (2 * n)))
    if auto_pad == "VALID":
        return [0] * (2 * n)
    if any(not isinstance(h, int) for h in in_sizes):
        return None
    begin, end = [], []
    for h, k, s, d in zip(in_sizes, kernel, strides, dilations):
        eff = (k - 1) * d + 1
        total = max((math.ceil(h / s) - 1) * s + eff - h, 0)
        first = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        begin.append(first)
        end.append(total - first)
    return begin + end


def spatial_sizes(e: Emitter, x: str, n: int):
    """The last ``n`` dims of ``x``: a list of ints when static, else a runtime int64 tensor."""
    s = e.shape(x)
    if s is not None and all(isinstance(d, int) for d in s[-n:]):
        return list(s[-n:])
    return e.op("Slice", e.shape_of(x), e.ints([-n]), e.ints([2**62]))


def runtime_pads(e: Emitter, node: Node, x: str, kernel, strides, dilations):
    """(begin, end) pads of auto_pad=SAME_* as runtime int64 tensors (input sizes unknown at build time)."""
    sizes = spatial_sizes(e, x, len(kernel))
    sizes = e.ints(sizes) if isinstance(sizes, list) else sizes
    s = e.ints(strides)
    eff = e.ints([(k - 1) * d + 1 for k, d in zip(kernel, dilations)])
    one = e.ints([1])
    ceil_div = e.op("Div", e.op("Sub", e.op("Add", sizes, s), one), s)
    total = e.op("Sub", e.op("Add", e.op("Mul", e.op("Sub", ceil_div, one), s), eff), sizes)
    total = e.op("Max", total, e.ints([0] * len(kernel)))
    half = e.op("Div", total, e.ints([2]))
    begin = half if node.attr("auto_pad") == "SAME_UPPER" else e.op("Sub", total, half)
    return begin, e.op("Sub", total, begin)


def transpose_conv_to(e: Emitter, dy: str, w: str, x: str, kernel, strides, dilations, group, begin) -> str:
    """ConvTranspose(dy, w) without pads, then cropped at ``begin`` and zero-padded to x's spatial size.

    Sizes come from the runtime, so this is right however the forward op rounded its output
    (ceil_mode, SAME padding, dynamic input sizes). Needs opset >= 11 (Slice/Pad with inputs).
    """
    n = len(kernel)
    if e.opset < 11:
        raise OnnxvizError(
            f"this backward pass needs runtime sizes (Slice/Pad with tensor inputs, opset >= 11) but the "
            f"model uses opset {e.opset}; upgrade it with onnx.version_converter (onnxviz's loader does)"
        )
    full = e.op("ConvTranspose", dy, w, strides=list(strides), dilations=list(dilations), group=group,
                kernel_shape=list(kernel))
    sizes = spatial_sizes(e, x, n)
    sizes = e.ints(sizes) if isinstance(sizes, list) else sizes
    begin = e.ints(begin) if isinstance(begin, (list, tuple)) else begin
    axes = e.ints(range(2, 2 + n))
    cropped = e.op("Slice", full, begin, e.op("Add", begin, sizes), axes)
    got = e.op("Slice", e.op("Shape", cropped), e.ints([2]), e.ints([2 + n]))
    pad_spec = e.op("Concat", e.ints([0] * (n + 2)), e.ints([0, 0]), e.op("Sub", sizes, got), axis=0)
    return e.op("Pad", cropped, pad_spec)


def flipped_kernel(w: np.ndarray, group: int) -> np.ndarray:
    """The adjoint's kernel: [C_out, C_in/g, k...] -> [C_in, C_out/g, k...], each kernel rotated 180 degrees.

    Within each group the in/out channel axes swap, so Conv(dy, flipped) with pads
    (k-1)d - p is the transpose of a stride-1 Conv(x, w) with pads p.
    """
    cout, cin_g = w.shape[:2]
    v = w.reshape(group, cout // group, cin_g, *w.shape[2:]).swapaxes(1, 2)
    v = v.reshape(group * cin_g, cout // group, *w.shape[2:])
    return np.ascontiguousarray(np.flip(v, axis=tuple(range(2, w.ndim))))


def _flipped_conv_wins(kernel: Sequence[int], strides: Sequence[int]) -> bool:
    """Whether the adjoint of this Conv is faster as a Conv than as onnxruntime's ConvTranspose.

    At stride 1 always: a Conv with the flipped kernel beats ConvTranspose (col2im) for
    spatial kernels, dense and depthwise (scripts/bench_spellings.py), and for 1x1 kernels
    too, although both are one GEMM: the Conv stays in onnxruntime's blocked NCHWc layout
    with the rest of the backward pass, where ConvTranspose leaves it (ResNet-50, B=8:
    ConvTranspose went from 379 to 122 ms of a 1150 ms gradient run). Strided ones stay
    ConvTranspose: zero insertion makes the Conv do s^2 times the work and lost everywhere (4-15x).
    """
    return all(s == 1 for s in strides)


def emit_flipped_kernel(e: Emitter, w: str, shape: Sequence[int], group: int) -> str:
    """:func:`flipped_kernel` spelled in the graph, so the adjoint follows W wherever W comes from.

    onnxruntime folds it once at session start when W is an initializer; when W is fed (an
    initializer overridden by an input of the same name, as the randomization test does),
    the flip is recomputed from the fed weights instead of going stale.
    """
    cout, cin_g, *kernel = shape
    n = len(kernel)
    if group == 1:
        v = e.op("Transpose", w, perm=[1, 0, *range(2, n + 2)])
    else:
        v = e.op("Reshape", w, e.ints([group, cout // group, cin_g, *kernel]))
        v = e.op("Transpose", v, perm=[0, 2, 1, *range(3, n + 3)])
        v = e.op("Reshape", v, e.ints([group * cin_g, cout // group, *kernel]))
    last = np.iinfo(np.int64).min
    return e.op("Slice", v, e.ints([-1] * n), e.ints([last] * n), e.ints(range(2, n + 2)), e.ints([-1] * n))


def _conv_by_flipped_kernel(e: Emitter, node: Node, dy: str, kernel, dilations, group, pads) -> Optional[str]:
    """dX = Conv(dY, flipped W) with pads (k-1)d - p, for stride 1 and a known kernel shape; None otherwise."""
    ws = e.static_shape(node.inputs[1])
    n = len(kernel)
    if e.opset < 10 or ws is None or len(ws) != n + 2 or not all(isinstance(d, int) for d in ws):
        return None  # Slice with steps needs opset 10
    eff = [(k - 1) * d for k, d in zip(kernel, dilations)]
    back = [eff[i % n] - p for i, p in enumerate(pads)]
    if any(p < 0 for p in back):  # pads wider than the kernel reach: rows no window saw (rare)
        return None
    flipped = emit_flipped_kernel(e, node.inputs[1], ws, group)
    return e.op("Conv", dy, flipped, kernel_shape=list(kernel), dilations=list(dilations), group=group, pads=back)


def _zeros_between(e: Emitter, t: str, channels: int, strides, output_padding, like: str) -> str:
    """t with s-1 zeros inserted between neighbouring pixels (and ``output_padding`` after the
    last), as a 1x1 ConvTranspose with unit weights per channel: 4x faster in onnxruntime than
    Pad/Reshape of a 6-D view, and unlike a spatial grouped ConvTranspose no GEMM per channel."""
    unit = e.const(np.ones((channels, 1, 1, 1), e.dtype(like)))
    return e.op("ConvTranspose", t, unit, group=channels, strides=list(strides), kernel_shape=[1, 1],
                output_padding=output_padding if any(output_padding) else None)


def _strided_depthwise(e: Emitter, node: Node, dy: str, kernel, strides, dilations, group, pads) -> Optional[str]:
    """dX of a strided depthwise 2-D Conv: dY with zeros inserted between its pixels, then the
    stride-1 adjoint (a Conv with the flipped kernel); None where it does not apply.

    onnxruntime's grouped ConvTranspose with a spatial kernel runs one small GEMM and col2im
    per channel (MobileNetV2's 96-channel stride-2 layer, B=8: 50 ms); with a 1x1 unit kernel
    it is a plain zero insertion (11 ms), and the stride-1 Conv stays in its NCHWc layout.
    Dense strided Convs keep ConvTranspose: there zero insertion multiplies the work by s^2.
    """
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    xs, ws, ys = e.shape(x), e.static_shape(w), e.shape(y)
    if (e.opset < 11 or len(kernel) != 2 or ws is None or ws[1] != 1 or xs is None or xs[1] != group
            or ys is None or not all(isinstance(d, int) for d in [*xs[1:], *ys[1:]])):
        return None
    (ho, wo), (sh, sw) = ys[2:], strides
    eff = [(k - 1) * d for k, d in zip(kernel, dilations)]
    back = [eff[0] - pads[0], eff[1] - pads[1], xs[2] + pads[0] - ho * sh, xs[3] + pads[1] - wo * sw]
    # a negative end pad crops the trailing zeros that the insertion added after the last pixel
    if any(p < 0 for p in back[:2]) or back[2] < 1 - sh or back[3] < 1 - sw:
        return None
    spread = _zeros_between(e, dy, ys[1], strides, [sh - 1, sw - 1], like=x)
    if back[2] < 0 or back[3] < 0:
        ends = [ho * sh + min(back[2], 0), wo * sw + min(back[3], 0)]
        spread = e.op("Slice", spread, e.ints([0, 0]), e.ints(ends), e.ints([2, 3]))
        back[2:] = [max(back[2], 0), max(back[3], 0)]
    flipped = emit_flipped_kernel(e, w, ws, group)
    return e.op("Conv", spread, flipped, kernel_shape=list(kernel), dilations=list(dilations), group=group, pads=back)


def _strided_pointwise(e: Emitter, node: Node, dy: str, kernel, strides, pads) -> Optional[str]:
    """dX of a strided 1x1 Conv without pads (ResNet's downsampling shortcuts): the 1x1 adjoint
    at the output's resolution, then zero insertion (a 1x1 unit ConvTranspose per channel);
    None where it does not apply. Both halves are cheaper than one dense ConvTranspose, and
    the Conv stays in onnxruntime's NCHWc layout.
    """
    x, w = node.inputs[0], node.inputs[1]
    xs, ws, ys = e.shape(x), e.static_shape(w), e.shape(node.outputs[0])
    if (len(kernel) != 2 or any(k != 1 for k in kernel) or any(pads) or ws is None or xs is None or ys is None
            or not all(isinstance(d, int) for d in [*xs[1:], *ys[1:]])):
        return None
    extra = [h - (o - 1) * s - 1 for h, o, s in zip(xs[2:], ys[2:], strides)]
    if not all(0 <= v < s for v, s in zip(extra, strides)):
        return None
    low = e.op("Conv", dy, emit_flipped_kernel(e, w, ws, 1), kernel_shape=[1, 1])
    return blocked(e, _zeros_between(e, low, xs[1], strides, extra, like=x), like=x)


def conv(e: Emitter, node: Node, dys):
    """dX = ConvTranspose(dY, W) with the forward's strides, dilations, group and explicit pads.

    output_padding = (H + pb + pe - ((k-1)d+1)) mod s recovers the rows that striding dropped.
    Never ConvTranspose's ``output_shape``: ORT then ignores the pads. Where it measures
    faster (stride 1, spatial kernel) the same adjoint is a Conv with the
    flipped kernel instead.
    """
    _refuse_weight_grad(node)
    x, w = node.inputs[0], node.inputs[1]
    dy = dys[0]
    xs, ws = e.shape(x), e.shape(w)
    if ws is None or xs is None:
        raise OnnxvizError(f"Conv node {node.name!r}: the rank and kernel shape must be known")
    kernel = list(node.attr("kernel_shape", ws[2:]))
    n = len(kernel)
    strides, dilations = _window(node, kernel)
    group = node.attr("group", 1)
    sizes = list(xs[2:])
    pads = conv_pads(node, sizes, kernel)
    if pads is not None and _flipped_conv_wins(kernel, strides):
        dx = _conv_by_flipped_kernel(e, node, dy, kernel, dilations, group, pads)
        if dx is not None:
            return _grads(node, dx)
    if pads is not None and group > 1 and any(s > 1 for s in strides):
        dx = _strided_depthwise(e, node, dy, kernel, strides, dilations, group, pads)
        if dx is not None:
            return _grads(node, dx)
    if pads is not None and group == 1 and any(s > 1 for s in strides):
        dx = _strided_pointwise(e, node, dy, kernel, strides, pads)
        if dx is not None:
            return _grads(node, dx)
    if pads is not None and all(isinstance(h, int) for h in sizes):
        out_pad = [
            (h + pads[i] + pads[i + n] - ((k - 1) * d + 1)) % s
            for i, (h, k, s, d) in enumerate(zip(sizes, kernel, strides, dilations))
        ]
        dx = e.op("ConvTranspose", dy, w, strides=strides, dilations=dilations, group=group,
                  pads=pads, kernel_shape=kernel, output_padding=out_pad if any(out_pad) else None)
        return _grads(node, blocked(e, dx, like=x))
    begin = pads[:n] if pads is not None else runtime_pads(e, node, x, kernel, strides, dilations)[0]
    return _grads(node, transpose_conv_to(e, dy, w, x, kernel, strides, dilations, group, begin))


def conv_transpose_pads(node: Node, in_sizes: list, kernel: list) -> Optional[list]:
    """[begin..., end...] crop of a ConvTranspose as ORT applies it (output_padding folded into end).

    With ``output_shape`` or SAME auto_pad the total is (H-1)s + op + eff - out; SAME_UPPER puts
    floor(total/2) at the begin, everything else (SAME_LOWER, NOTSET with output_shape) ceil(total/2),
    as onnxruntime does (checked by the tests). None when the total depends on an unknown size.
    """
    n = len(kernel)
    strides, dilations = _window(node, kernel)
    out_pad = list(node.attr("output_padding", [0] * n))
    auto_pad = node.attr("auto_pad", "NOTSET") or "NOTSET"
    out_shape = node.attr("output_shape")
    if out_shape is None and auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * n) if auto_pad == "VALID" else list(node.attr("pads", [0] * (2 * n)))
        return pads[:n] + [pads[n + i] - out_pad[i] for i in range(n)]
    if out_shape is not None:
        out_shape = list(out_shape)[-n:]
        if any(not isinstance(h, int) for h in in_sizes):
            return None
    begin, end = [], []
    for i in range(n):
        eff = (kernel[i] - 1) * dilations[i] + 1
        if out_shape is None:  # SAME: output = H * s, so the total does not depend on H
            total = out_pad[i] + eff - strides[i]
        else:
            total = (in_sizes[i] - 1) * strides[i] + out_pad[i] + eff - out_shape[i]
        if total < 0:
            raise OnnxvizError(
                f"ConvTranspose node {node.name!r}: output_shape {out_shape} is larger than the "
                "natural output size; its gradient is not supported"
            )
        first = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        begin.append(first)
        end.append(total - first - out_pad[i])
    return begin + end


def conv_transpose(e: Emitter, node: Node, dys):
    """dX = Conv(dY, W) with the same strides, dilations and group, and the forward's crop as pads.

    Pads here are the effective crop [begin, end - output_padding]: the output_padding rows get
    no input contribution, so a Conv that pads them away (or a negative end, cropped first) is exact.
    """
    _refuse_weight_grad(node)
    x, w = node.inputs[0], node.inputs[1]
    dy = dys[0]
    xs, ws = e.shape(x), e.shape(w)
    if ws is None or xs is None:
        raise OnnxvizError(f"ConvTranspose node {node.name!r}: the rank and kernel shape must be known")
    kernel = list(node.attr("kernel_shape", ws[2:]))
    n = len(kernel)
    strides, dilations = _window(node, kernel)
    group = node.attr("group", 1)
    pads = conv_transpose_pads(node, list(xs[2:]), kernel)
    attrs = dict(strides=strides, dilations=dilations, group=group, kernel_shape=kernel)
    if pads is None:
        begin, end = _conv_transpose_runtime_pads(e, node, x, kernel, strides, dilations)
        padded = e.op("Pad", dy, e.op("Concat", e.ints([0, 0]), begin, e.ints([0, 0]), end, axis=0))
        return _grads(node, e.op("Conv", padded, w, **attrs))
    if min(pads) < 0:  # output_padding beyond the pads: rows that no input reached
        ends = [p if p < 0 else 2**62 for p in pads[n:]]
        dy = _slice(e, dy, [0] * n, ends, list(range(2, 2 + n)))
        pads = pads[:n] + [max(p, 0) for p in pads[n:]]
    return _grads(node, e.op("Conv", dy, w, pads=pads, **attrs))


def _conv_transpose_runtime_pads(e: Emitter, node: Node, x, kernel, strides, dilations):
    """(begin, end) crop of a ConvTranspose with output_shape when the input sizes are only known at run time."""
    n = len(kernel)
    if e.opset < 11:
        raise OnnxvizError(f"ConvTranspose node {node.name!r}: dynamic sizes with output_shape need opset >= 11")
    out_pad = list(node.attr("output_padding", [0] * n))
    out_shape = list(node.attr("output_shape"))[-n:]
    sizes = spatial_sizes(e, x, n)
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    natural = e.op("Add", e.op("Mul", e.op("Sub", sizes, e.ints([1] * n)), e.ints(strides)),
                   e.ints([o + f for o, f in zip(out_pad, eff)]))
    total = e.op("Sub", natural, e.ints(out_shape))
    half = e.op("Div", total, e.ints([2] * n))
    begin = half if node.attr("auto_pad") == "SAME_UPPER" else e.op("Sub", total, half)
    return begin, e.op("Sub", e.op("Sub", total, begin), e.ints(out_pad))


def _slice(e: Emitter, x: str, starts, ends, axes) -> str:
    if e.opset >= 10:
        return e.op("Slice", x, e.ints(starts), e.ints(ends), e.ints(axes))
    return e.op("Slice", x, starts=list(starts), ends=list(ends), axes=list(axes))


# ---- dense products ------------------------------------------------------------------------

def _gemm(e: Emitter, a: str, b: str, alpha: float, trans_a: int, trans_b: int, like: str) -> str:
    """alpha * op(a) @ op(b); Gemm needs an explicit C before opset 11."""
    c = None if e.opset >= 11 else e.scalar(0, like=like)
    return e.op("Gemm", a, b, c, alpha=float(alpha), transA=trans_a, transB=trans_b)


def gemm(e: Emitter, node: Node, dys):
    """Y = alpha * A' B' + beta * C with A' = A or A^T, B' = B or B^T.

    dA' = alpha dY B'^T and dB' = alpha A'^T dY, each written as one Gemm with adjusted
    trans flags; dC = beta * unbroadcast(dY).
    """
    dy, y = dys[0], node.outputs[0]
    a, b = node.inputs[0], node.inputs[1]
    c = node.input(2)
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    ta, tb = node.attr("transA", 0), node.attr("transB", 0)
    grads: list = [None] * len(node.inputs)
    if node.needs[0]:
        grads[0] = (_gemm(e, dy, b, alpha, 0, 1 - tb, y) if not ta else _gemm(e, b, dy, alpha, tb, 1, y))
    if node.needs[1]:
        grads[1] = (_gemm(e, a, dy, alpha, 1 - ta, 0, y) if not tb else _gemm(e, dy, a, alpha, 1, ta, y))
    if c is not None and len(node.needs) > 2 and node.needs[2]:
        scaled = dy if beta == 1.0 else e.op("Mul", dy, e.scalar(beta, like=y))
        grads[2] = e.unbroadcast(scaled, c, y)
    return grads


def _swap_last(e: Emitter, t: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return e.op("Transpose", t, perm=perm)


def _unbroadcast_batch(e: Emitter, d: str, x: str, y: str) -> str:
    """Sum ``d`` (y's batch dims, x's matrix dims) over the batch axes that broadcasting added for x.

    The generic unbroadcast compares x's matrix dims with y's and could sum a K=1 axis away.
    """
    xs, ys = e.shape(x), e.shape(y)
    if xs is None or ys is None:
        return e.unbroadcast_dynamic(d, x)
    lead = len(ys) - len(xs)
    axes = list(range(lead))
    for i, dim in enumerate(xs[:-2]):
        o = ys[lead + i]
        if dim == o or (isinstance(dim, int) and dim != 1):
            continue
        if dim == 1 and isinstance(o, int):
            axes.append(lead + i)
        else:
            return e.unbroadcast_dynamic(d, x)
    if not axes:
        return d
    return e.reshape_like(e.reduce_sum(d, axes, keepdims=True), x)


def matmul(e: Emitter, node: Node, dys):
    """numpy matmul: dA = dY B^T, dB = A^T dY (last two axes swapped), summed over broadcast batch axes.

    1-D operands are promoted as numpy does (a to [1, K], b to [K, 1]): dY gets the dropped axis back.
    """
    dy, y = dys[0], node.outputs[0]
    a, b = node.inputs
    ra, rb = e.rank(a), e.rank(b)
    if ra is None or rb is None:
        raise OnnxvizError(f"MatMul node {node.name!r}: operand ranks must be known for its gradient")
    need_a, need_b = node.needs[0], node.needs[1]
    da = db = None
    if ra == 1 and rb == 1:  # a dot product
        da = e.op("Mul", dy, b) if need_a else None
        db = e.op("Mul", dy, a) if need_b else None
    elif ra == 1:  # [K] @ [..., K, N] -> [..., N]
        g = e.unsqueeze(dy, [rb - 2])  # [..., 1, N]
        if need_a:
            da = e.reduce_sum(e.op("MatMul", g, _swap_last(e, b, rb)), list(range(rb - 1)), keepdims=False)
        if need_b:
            db = e.op("MatMul", e.unsqueeze(a, [1]), g)  # outer product, already B's shape
    elif rb == 1:  # [..., M, K] @ [K] -> [..., M]
        g = e.unsqueeze(dy, [ra - 1])  # [..., M, 1]
        if need_a:
            da = e.op("MatMul", g, e.unsqueeze(b, [0]))
        if need_b:
            full = e.op("MatMul", _swap_last(e, a, ra), g)  # [..., K, 1]
            db = e.reduce_sum(full, [i for i in range(ra) if i != ra - 2], keepdims=False)
    else:
        if need_a:
            da = _unbroadcast_batch(e, e.op("MatMul", dy, _swap_last(e, b, rb)), a, y)
        if need_b:
            db = _unbroadcast_batch(e, e.op("MatMul", _swap_last(e, a, ra), dy), b, y)
    return [da, db]


def einsum(e: Emitter, node: Node, dys):
    """Each operand's gradient is an Einsum of dy with the other operands, back to its subscripts
    ("ij,jk->ik": dA = einsum("ik,jk->ij", dY, B)). Needs an explicit output ("->"), operands
    without repeated letters (diagonals) and, per operand, every letter also in the output or
    another operand (a letter summed within one operand would need a broadcast back)."""
    equation = node.attr("equation", "").replace(" ", "")
    where = f"Einsum node {node.name!r} ({equation!r})"
    if "->" not in equation or "..." in equation:
        raise OnnxvizError(f"{where}: its gradient rule needs an explicit output ('->') and no ellipsis; use "
                           "finite differences (--grad fd)")
    left, out = equation.split("->")
    terms = left.split(",")
    grads = []
    for i, term in enumerate(terms):
        if not node.needs[i]:
            grads.append(None)
            continue
        letters = term  # "..." was refused above
        others = [t for j, t in enumerate(terms) if j != i]
        if len(set(letters)) != len(letters) or set(letters) - set(out) - set("".join(others)):
            raise OnnxvizError(f"{where}: operand {i} repeats or sums a letter of its own; no gradient rule for "
                               "that form, use finite differences (--grad fd)")
        operands = [dys[0]] + [t for j, t in enumerate(node.inputs) if j != i]
        grads.append(e.op("Einsum", *operands, equation=",".join([out, *others]) + "->" + term))
    return grads


RULES = {"Conv": conv, "ConvTranspose": conv_transpose, "Gemm": gemm, "MatMul": matmul, "Einsum": einsum}
