"""Backward rules for windowed pooling: MaxPool, AveragePool, LpPool.

MaxPool routes dy to each window's first maximum: by scatter-adding at the argmax (the
``Indices`` output of a twin MaxPool; opset >= 16, the fast path), else by comparing the
input under each kernel offset with the output (static geometry). Overlapping windows can
pick the same element, so a plain scatter or MaxUnpool would drop contributions. Average
and Lp pooling are window sums (S) with per-window weights, and S^T is a ConvTranspose with
a ones kernel over [N*C, 1, ...] (no channel count needed). Output sizes come from the
runtime, never from shape inference.
"""
from __future__ import annotations

import collections
import itertools
import math

import numpy as np
from onnx import helper

from ...errors import OnnxvizError
from ...graph.emitter import Emitter
from ..ruleset import Node
from .conv import conv_pads, runtime_pads, spatial_sizes, transpose_conv_to
from .elementwise import blocked_channels, scale_channels

BIG = 2**62


def _geometry(e: Emitter, node: Node):
    """kernel, strides, dilations and the explicit (begin, end) pads: ints, or runtime tensors for SAME."""
    x = node.inputs[0]
    kernel = list(node.attr("kernel_shape"))
    n = len(kernel)
    strides = list(node.attr("strides", [1] * n))
    dilations = list(node.attr("dilations", [1] * n))
    xs = e.shape(x)
    pads = conv_pads(node, list(xs[2:]) if xs is not None else [None] * n, kernel)
    if pads is not None:
        return kernel, strides, dilations, pads[:n], pads[n:]
    begin, end = runtime_pads(e, node, x, kernel, strides, dilations)
    return kernel, strides, dilations, begin, end


# ---- MaxPool -------------------------------------------------------------------------------

def max_pool(e: Emitter, node: Node, dys):
    """MaxPool's gradient: one scatter-add at the Indices (:func:`_indices`) where ScatterElements adds
    (opset >= 16), else by window offsets where the geometry is static, else a scatter per
    class of non-overlapping windows.

    With onnxruntime 1.32 the Indices path wins in wall time (paired runs of whole saliency
    graphs, the offsets' time over this one's): ResNet-50 1.04x (B=8), DenseNet-121 1.06x,
    SqueezeNet 1.23x and Inception v1 1.17x (B=1); VGG-19's 2x2 pools even. The MaxPool that
    writes Indices is 28x slower than the blocked-layout one, but the offsets' slices,
    comparisons and one-hot ConvTranspose cost more (ResNet-50's stem pool: 55 ms against
    95 ms of kernels).
    """
    if e.opset >= 16 and node.opset >= 8:
        return max_pool_scatter(e, node, dys)
    dx = max_pool_by_offsets(e, node, dys[0])
    return [dx] if dx is not None else max_pool_scatter(e, node, dys)


def max_pool_by_offsets(e: Emitter, node: Node, dy: str):
    """dy routed to each window's first maximum, without Indices; None where this spelling does not apply.

    For graphs below opset 16 (no ScatterElements reduction), where the scatter at Indices
    must go class by class (see :func:`max_pool`). For each of
    the K kernel offsets, the strided slice of the (-inf padded) input under that offset is
    compared with y; the first offset in row-major order that attains the max takes dy
    (``taken`` carries the earlier offsets), exactly onnxruntime's Indices (a strict > scan)
    and torch's tie policy. The K masked copies of dy, stacked as channels, go back to the
    input positions in one ConvTranspose with a one-hot kernel, which also sums overlapping
    windows. Needs static pads and spatial sizes of x and y, and opset >= 11.
    """
    x, y = node.inputs[0], node.outputs[0]
    if e.opset < 11:
        return None
    kernel, strides, dilations, begin, end = _geometry(e, node)
    xs, ys = e.shape(x), e.shape(y)
    n = len(kernel)
    if not isinstance(begin, list) or xs is None or ys is None:
        return None
    sizes, outs = list(xs[2:]), list(ys[2:])
    if len(sizes) != n or len(outs) != n or not all(isinstance(v, int) for v in sizes + outs):
        return None
    if outs != _ort_pool_sizes(node, sizes, kernel, strides, dilations, begin, end):
        return None  # onnx's shape inference keeps a ceil_mode window that starts in the padding; ORT drops it
    reach = [(o - 1) * s + (k - 1) * d + 1 for o, k, s, d in zip(outs, kernel, strides, dilations)]
    pad_end = [max(r - b - h, 0) for r, b, h in zip(reach, begin, sizes)]
    padded = x
    if any(begin) or any(pad_end):
        padded = e.op("Pad", x, e.ints([0, 0, *begin, 0, 0, *pad_end]), e.const(np.array(-np.inf, e.dtype(x))))
    axes = e.ints(range(2, 2 + n))
    picks, taken = [], None
    offsets = list(itertools.product(*[range(k) for k in kernel]))
    starts = [[o * d for o, d in zip(offset, dilations)] for offset in offsets]
    shared = collections.Counter(_phase(a, strides) for a in starts)
    phases = {p: None for p, count in shared.items() if count > 1}
    for start in starts:
        window = _window(e, padded, start, outs, strides, axes, phases)
        hit = e.op("Equal", window, y)
        pick = hit if taken is None else e.op("And", hit, e.op("Not", taken))
        taken = hit if taken is None else e.op("Or", taken, hit)
        picks.append(e.unsqueeze(pick, [2]))
    stacked = e.op("Concat", *picks, axis=2) if len(picks) > 1 else picks[0]
    routed = e.op("Mul", e.op("Cast", stacked, to=e.elem_type(x)), e.unsqueeze(dy, [2]))
    onehot = np.zeros([len(offsets), 1, *kernel], e.dtype(x))
    for i, offset in enumerate(offsets):
        onehot[(i, 0, *offset)] = 1
    rows = e.op("Reshape", routed, e.ints([-1, len(offsets), *outs]))
    dx = transpose_conv_to(e, rows, e.const(onehot), x, kernel, strides, dilations, 1, begin)
    return e.reshape_like(dx, x)


def _window(e: Emitter, padded: str, start: list, outs: list, strides: list, axes: str, phases: dict) -> str:
    """padded[..., start::stride][:outs]: the input under one kernel offset, for every window.

    With a stride, the offset's rows and columns are a contiguous run of one phase of the
    input (its elements at start mod stride, every stride-th). Where windows overlap,
    several offsets share a phase (``phases``: those shared, sliced once when first needed):
    each is then a plain slice of it, which onnxruntime copies row by row. On a 3x3/2 pool
    over [8, 64, 112, 112] the backward took 125 ms of CPU instead of 150; an unshared phase
    (2x2/2) is sliced directly, the extra slice cost 12%.
    """
    phase = _phase(start, strides)
    if phase not in phases:
        stop = [a + (o - 1) * s + 1 for a, o, s in zip(start, outs, strides)]
        steps = [e.ints(strides)] if any(s > 1 for s in strides) else []
        return e.op("Slice", padded, e.ints(start), e.ints(stop), axes, *steps)
    if phases[phase] is None:  # stride 1: the one phase is the input itself
        phases[phase] = padded if not any(s > 1 for s in strides) else e.op(
            "Slice", padded, e.ints(phase), e.ints([BIG] * len(phase)), axes, e.ints(strides))
    begin = [a // s for a, s in zip(start, strides)]
    return e.op("Slice", phases[phase], e.ints(begin), e.ints([b + o for b, o in zip(begin, outs)]), axes)


def _phase(start: list, strides: list) -> tuple:
    return tuple(a % s for a, s in zip(start, strides))


def _ort_pool_sizes(node: Node, sizes, kernel, strides, dilations, begin, end) -> list:
    """Output sizes as onnxruntime computes them (ceil_mode drops a last window that starts in the end padding)."""
    ceil = node.attr("ceil_mode", 0)
    outs = []
    for h, k, s, d, b, f in zip(sizes, kernel, strides, dilations, begin, end):
        span = h + b + f - ((k - 1) * d + 1)
        o = (-(-span // s) if ceil else span // s) + 1
        if ceil and (o - 1) * s >= h + b:
            o -= 1
        outs.append(o)
    return outs


def max_pool_scatter(e: Emitter, node: Node, dys):
    """dx = ScatterElements(zeros[N*C*H*W], flat(Indices), flat(dy), reduction="add"), reshaped.

    ORT's Indices are flat over the whole N*C*H*W tensor; storage_order=1 makes the spatial
    part column-major, so the scatter then fills a buffer with the spatial axes reversed.
    Before opset 16 (no reduction="add") windows are split into classes that do not overlap
    (output positions congruent mod ceil(eff/s)), each scattered with a read-add-write.
    """
    x, dy = node.inputs[0], dys[0]
    if node.opset < 8:
        raise OnnxvizError(
            f"MaxPool node {node.name!r}: opset {node.opset} MaxPool has no Indices output; upgrade the model "
            "to opset >= 16 (onnxviz's loader does)"
        )
    if e.opset < 10:
        raise OnnxvizError(
            f"MaxPool node {node.name!r}: its backward pass needs a scatter (opset >= 10, ideally >= 16); "
            f"the model has opset {e.opset}. Upgrade it (onnxviz's loader does)."
        )
    indices = _indices(e, node)
    kernel = list(node.attr("kernel_shape"))
    n = len(kernel)
    flat = e.ints([-1])
    zero = helper.make_tensor("zero", e.elem_type(x), [1], [0])
    size = e.op("Reshape", e.op("Size", x), flat)
    buf = e.op("ConstantOfShape", size, value=zero)
    if e.opset >= 16:
        buf = e.op("ScatterElements", buf, e.op("Reshape", indices, flat), e.op("Reshape", dy, flat), axis=0,
                   reduction="add")
    else:
        strides = list(node.attr("strides", [1] * n))
        dilations = list(node.attr("dilations", [1] * n))
        period = [math.ceil(((k - 1) * d + 1) / s) for k, s, d in zip(kernel, strides, dilations)]
        scatter = "ScatterElements" if e.opset >= 11 else "Scatter"
        axes = list(range(2, 2 + n))
        for offset in itertools.product(*[range(p) for p in period]):
            if max(period) == 1:
                idx, upd = indices, dy
            else:
                pick = lambda t: e.op("Slice", t, e.ints(offset), e.ints([BIG] * n), e.ints(axes),  # noqa: E731
                                      e.ints(period))
                idx, upd = pick(indices), pick(dy)
            idx, upd = e.op("Reshape", idx, flat), e.op("Reshape", upd, flat)
            buf = e.op(scatter, buf, idx, e.op("Add", e.op("Gather", buf, idx, axis=0), upd), axis=0)
    if node.attr("storage_order", 0) == 1 and n > 1:
        perm = [0, 1] + list(range(n + 1, 1, -1))
        xs = e.static_shape(x)
        shape = e.ints([xs[p] for p in perm]) if xs else e.op("Gather", e.shape_of(x), e.ints(perm), axis=0)
        buf = e.op("Transpose", e.op("Reshape", buf, shape), perm=perm)
    return [e.reshape_like(buf, x)]


def _indices(e: Emitter, node: Node) -> str:
    """The forward MaxPool's argmax Indices: its own output where the model uses it (MaxUnpool),
    else a twin MaxPool's. Asking the forward node for them would move it off onnxruntime's
    blocked layout and its output with it: DenseNet-121's first block then ran its
    BatchNormalizations unblocked (31 ms, and reorders); the twin runs beside it.
    """
    if len(node.proto.output) > 1 and node.proto.output[1]:
        return node.proto.output[1]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.proto.attribute}
    return e.op("MaxPool", node.inputs[0], outputs=2, **attrs)[1]


# ---- window sums: AveragePool, LpPool ------------------------------------------------------

def _ones_like_spatial(e: Emitter, x: str, n: int) -> str:
    """ones[1, 1, *spatial(x)] in x's element type."""
    sizes = spatial_sizes(e, x, n)
    if isinstance(sizes, list):
        return e.const(np.ones([1, 1, *sizes], e.dtype(x)))
    one = helper.make_tensor("one", e.elem_type(x), [1], [1])
    return e.op("ConstantOfShape", e.op("Concat", e.ints([1, 1]), sizes, axis=0), value=one)


def window_sum_adjoint(e: Emitter, node: Node, g: str) -> str:
    """S^T g for S = zero-padded window sums with the node's geometry; g is shaped like the output.

    Runs over [N*C, 1, ...] with a ones kernel, so the channel count may be unknown.
    """
    x, y = node.inputs[0], node.outputs[0]
    kernel, strides, dilations, begin, end = _geometry(e, node)
    n = len(kernel)
    ones_k = e.const(np.ones([1, 1, *kernel], e.dtype(x)))
    gb = e.op("Reshape", g, e.ints([-1, 1] + [0] * n))
    if e.opset >= 11:
        dx = transpose_conv_to(e, gb, ones_k, x, kernel, strides, dilations, 1, begin)
        return e.reshape_like(dx, x)
    xs, ys = e.static_shape(x), e.static_shape(y)
    if xs is None or ys is None or not isinstance(begin, list):
        raise OnnxvizError(f"{node.op} node {node.name!r}: before opset 11 its gradient needs static shapes")
    pads_end, out_pad = [], []
    for h, o, k, s, d, b in zip(xs[2:], ys[2:], kernel, strides, dilations, begin):
        v = (o - 1) * s + (k - 1) * d + 1 - b - h
        pads_end.append(max(v, 0))
        out_pad.append(max(-v, 0))
    dx = e.op("ConvTranspose", gb, ones_k, kernel_shape=kernel, strides=strides, dilations=dilations,
              pads=list(begin) + pads_end, output_padding=out_pad if any(out_pad) else None)
    return e.reshape_like(dx, x)


def _window_counts(e: Emitter, node: Node, like: str) -> str:
    """Number of real (non-pad) input elements under each output window, shaped like ``like`` [1,1,...]."""
    x, y = node.inputs[0], node.outputs[0]
    kernel, strides, dilations, begin, end = _geometry(e, node)
    n = len(kernel)
    ones_x = _ones_like_spatial(e, x, n)
    ones_k = e.const(np.ones([1, 1, *kernel], e.dtype(x)))
    attrs = dict(kernel_shape=kernel, strides=strides, dilations=dilations)
    if e.opset >= 11:
        # s-1 extra end padding covers ceil_mode's last window; then crop to the pool's own output size
        extra = [s - 1 for s in strides]
        if isinstance(begin, list) and isinstance(end, list):
            counts = e.op("Conv", ones_x, ones_k, pads=begin + [p + q for p, q in zip(end, extra)], **attrs)
        else:
            spec = e.op("Concat", e.ints([0, 0]), begin, e.ints([0, 0]), e.op("Add", end, e.ints(extra)), axis=0)
            counts = e.op("Conv", e.op("Pad", ones_x, spec), ones_k, **attrs)
        out = e.op("Slice", e.op("Shape", like), e.ints([2]), e.ints([BIG]))
        return e.op("Slice", counts, e.ints([0] * n), out, e.ints(range(2, 2 + n)))
    xs, ys = e.static_shape(x), e.static_shape(y)
    pads_end = [max((o - 1) * s + (k - 1) * d + 1 - h - b, 0)
                for h, o, k, s, d, b in zip(xs[2:], ys[2:], kernel, strides, dilations, begin)]
    return e.op("Conv", ones_x, ones_k, pads=list(begin) + pads_end, **attrs)


def _tiling(e: Emitter, node: Node):
    """(kh, kw) when a 2-D pool's windows tile a 4-D float32 input with known channels exactly:
    kernel = strides, no padding or dilation, sizes divisible (opset >= 13 for the Resize); else None."""
    x, y = node.inputs[0], node.outputs[0]
    kernel = list(node.attr("kernel_shape"))
    xs, ys = e.shape(x), e.shape(y)
    if (len(kernel) != 2 or e.opset < 13 or blocked_channels(e, x) is None or xs is None or ys is None
            or not all(isinstance(d, int) for d in [*xs[2:], *ys[2:]])):
        return None
    if list(node.attr("strides", [1, 1])) != kernel or list(node.attr("dilations", [1, 1])) != [1, 1]:
        return None
    if any(node.attr("pads", [0] * 4)) or node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    if [h // k for h, k in zip(xs[2:], kernel)] != list(ys[2:]) or any(h % k for h, k in zip(xs[2:], kernel)):
        return None
    return tuple(kernel)


def average_pool(e: Emitter, node: Node, dys):
    """dx = S^T (dy / divisor). The divisor per window is AveragePool(ones) / counts(ones):

    it covers count_include_pad 0/1 and the clipped windows of ceil_mode exactly as the runtime
    defines them, since the runtime's own AveragePool computes it.
    """
    x, dy = node.inputs[0], dys[0]
    tiles = _tiling(e, node)
    if tiles is not None:
        # windows tile the input exactly: each element's gradient is its window's dy / (kh·kw),
        # a depthwise Conv and a nearest Upsample, both in onnxruntime's NCHWc layout (the
        # ConvTranspose over [N*C, 1, H, W] below left it, with two reorders)
        channels = e.shape(x)[1]
        scaled = scale_channels(e, dy, np.full(channels, 1.0 / (tiles[0] * tiles[1])), like=x)
        return [e.op("Resize", scaled, None, e.const(np.array([1, 1, *tiles], np.float32)), mode="nearest",
                     coordinate_transformation_mode="asymmetric", nearest_mode="floor")]
    n = len(node.attr("kernel_shape"))
    ones_x = _ones_like_spatial(e, x, n)
    mean_of_ones = e.op("AveragePool", ones_x, **node.attrs)
    weights = e.op("Div", mean_of_ones, _window_counts(e, node, mean_of_ones))
    return [window_sum_adjoint(e, node, e.op("Mul", dy, weights))]


def lp_pool(e: Emitter, node: Node, dys):
    """y = (S |x|^p)^(1/p): dx = sign(x) |x|^(p-1) * S^T(dy * y^(1-p)); windows with y = 0 pass nothing."""
    x, y, dy = node.inputs[0], node.outputs[0], dys[0]
    p = node.attr("p", 2)
    if e.opset < 9 and p != 2:  # no Sign/Where yet
        raise OnnxvizError(f"LpPool node {node.name!r}: p={p} needs opset >= 9 for its gradient (p=2 works)")
    if p == 1:
        return [e.op("Mul", e.op("Sign", x), window_sum_adjoint(e, node, dy))]
    scaled = e.op("Div", dy, y if p == 2 else e.op("Pow", y, e.scalar(p - 1, like=y)))
    if e.opset >= 9:  # an all-zero window has y = 0 and passes nothing
        zero = e.scalar(0, like=y)
        scaled = e.op("Where", e.op("Greater", y, zero), scaled, zero)
    back = window_sum_adjoint(e, node, scaled)
    if p == 2:
        return [e.op("Mul", x, back)]
    local = e.op("Mul", e.op("Sign", x), e.op("Pow", e.op("Abs", x), e.scalar(p - 1, like=x)))
    return [e.op("Mul", local, back)]


RULES = {"MaxPool": max_pool, "AveragePool": average_pool, "LpPool": lp_pool}
