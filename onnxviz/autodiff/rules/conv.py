"""Backward rules for convolutions and dense layers."""
from __future__ import annotations

import math
from typing import Optional

from ...errors import OnnxvizError
from ...graph.emitter import Emitter
from ..ruleset import Node


def _refuse_weight_grad(node: Node):
    if any(node.needs[1:]):
        raise OnnxvizError(
            f"{node.op} node {node.name!r} has weights that depend on the input; "
            "gradients through computed weights are not supported"
        )


def conv_pads(node: Node, in_sizes: list, kernel: list) -> Optional[list]:
    """Explicit [begin..., end...] pads of a Conv/pool node; None when they depend on an unknown size."""
    n = len(kernel)
    strides = node.attr("strides", [1] * n)
    dilations = node.attr("dilations", [1] * n)
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


def conv(e: Emitter, node: Node, dys):
    """dX = ConvTranspose(dY, W) with the forward's strides, dilations, group and explicit pads.

    output_padding = (H + pb + pe - ((k-1)d+1)) mod s recovers the rows that striding dropped.
    """
    _refuse_weight_grad(node)
    x, w = node.inputs[0], node.inputs[1]
    dy = dys[0]
    xs, ws = e.shape(x), e.shape(w)
    if ws is None or xs is None:
        raise OnnxvizError(f"Conv node {node.name!r}: the rank and kernel shape must be known")
    kernel = list(node.attr("kernel_shape", ws[2:]))
    n = len(kernel)
    strides = list(node.attr("strides", [1] * n))
    dilations = list(node.attr("dilations", [1] * n))
    group = node.attr("group", 1)
    sizes = list(xs[2:])
    pads = conv_pads(node, sizes, kernel)
    if pads is not None and all(isinstance(h, int) for h in sizes):
        out_pad = [
            (h + pads[i] + pads[i + n] - ((k - 1) * d + 1)) % s
            for i, (h, k, s, d) in enumerate(zip(sizes, kernel, strides, dilations))
        ]
        dx = e.op("ConvTranspose", dy, w, strides=strides, dilations=dilations, group=group,
                  pads=pads, kernel_shape=kernel, output_padding=out_pad if any(out_pad) else None)
        return [dx, None, None][: len(node.inputs)]
    return [_conv_backward_dynamic(e, node, dy, x, w, kernel, strides, dilations, group, pads), None, None][
        : len(node.inputs)
    ]


def _conv_backward_dynamic(e: Emitter, node: Node, dy, x, w, kernel, strides, dilations, group, pads):
    """Unknown spatial sizes: full ConvTranspose, then Slice off the begin pads and Pad the end to H."""
    n = len(kernel)
    full = e.op("ConvTranspose", dy, w, strides=strides, dilations=dilations, group=group, kernel_shape=kernel)
    sizes = e.op("Slice", e.shape_of(x), e.ints([2]), e.ints([2 + n]))
    if pads is not None:
        begin = e.ints(pads[:n])
    else:
        begin = _same_pads_begin(e, node, sizes, kernel, strides, dilations)
    axes = e.ints(range(2, 2 + n))
    cropped = e.op("Slice", full, begin, e.op("Add", begin, sizes), axes)
    got = e.op("Slice", e.op("Shape", cropped), e.ints([2]), e.ints([2 + n]))
    missing = e.op("Sub", sizes, got)
    zeros = e.ints([0] * (n + 2))
    pad_spec = e.op("Concat", zeros, e.ints([0, 0]), missing, axis=0)
    return e.op("Pad", cropped, pad_spec)


def _same_pads_begin(e: Emitter, node: Node, sizes, kernel, strides, dilations):
    """Begin pads of auto_pad=SAME_* computed at run time from the input sizes."""
    s = e.ints(strides)
    eff = e.ints([(k - 1) * d + 1 for k, d in zip(kernel, dilations)])
    one = e.ints([1])
    ceil_div = e.op("Div", e.op("Sub", e.op("Add", sizes, s), one), s)
    total = e.op("Sub", e.op("Add", e.op("Mul", e.op("Sub", ceil_div, one), s), eff), sizes)
    total = e.op("Max", total, e.ints([0] * len(kernel)))
    two = e.ints([2])
    if node.attr("auto_pad") == "SAME_UPPER":
        return e.op("Div", total, two)
    return e.op("Sub", total, e.op("Div", total, two))


RULES = {"Conv": conv}
