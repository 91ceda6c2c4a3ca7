"""Backward rules for ops that only move, copy or resample data.

Reshapes, transposes, concatenation and splits have closed-form adjoints. Ops that pick
elements by index (Slice, Gather, Pad, nearest Resize) use the *iota trick*: run the same
op on the positions 1..n of the input, then scatter-add dy back to the positions it
picked (0 marks a padded element). Linear resampling uses R^T along each resized axis,
where R is the same Resize applied to an identity matrix.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import helper

from ...errors import OnnxvizError
from ...graph.emitter import Emitter
from ..ruleset import Node

BIG = 2**62  # "to the end" for Slice


def _first(node: Node, dx: Optional[str]) -> list:
    return [dx] + [None] * (len(node.inputs) - 1)


def _slice(e: Emitter, x: str, starts, ends, axes, steps=None) -> str:
    """Slice with static parameters in the opset's spelling (attributes before opset 10)."""
    if e.opset >= 10:
        return e.op("Slice", x, e.ints(starts), e.ints(ends), e.ints(axes), None if steps is None else e.ints(steps))
    if steps is not None and any(s != 1 for s in steps):
        raise OnnxvizError(f"Slice steps need opset >= 10 (model has {e.opset})")
    return e.op("Slice", x, starts=list(starts), ends=list(ends), axes=list(axes))


def _split(e: Emitter, g: str, axis: int, sizes: list) -> list:
    """Split g into pieces of static ``sizes`` (at least two) in the opset's spelling."""
    if e.opset >= 13:
        return e.op("Split", g, e.ints(sizes), axis=axis, outputs=len(sizes))
    return e.op("Split", g, axis=axis, split=list(sizes), outputs=len(sizes))


def _zeros_like(e: Emitter, t: str) -> str:
    if e.opset >= 9:
        return e.zeros_like(t)
    s = e.static_shape(t)
    if s is None:
        raise OnnxvizError(f"zeros shaped like {t!r} need a static shape or opset >= 9")
    return e.const(np.zeros(s, dtype=e.dtype(t)))


def _constant(e: Emitter, node: Node, i: int, what: str) -> Optional[np.ndarray]:
    name = node.input(i)
    if name is None:
        return None
    v = e.value(name)
    if v is None:
        raise OnnxvizError(f"{node.op} node {node.name!r}: its {what} must be a constant at this opset/shape")
    return v


# ---- the iota trick --------------------------------------------------------------------------

def iota_backward(e: Emitter, node: Node, x: str, dy: str, apply, injective: bool, int32: bool = False) -> str:
    """dx for y = apply(x) when y only copies elements of x (or constants).

    apply(iota) re-emits the forward op on ``iota`` = x's positions 1..n (0 then marks an element
    that came from no input position); dy is scatter-added back to those positions.
    Injective maps (each input used at most once) need opset 11, others 16 (reduction="add").
    """
    need = 11 if injective else 16
    if e.opset < need:
        raise OnnxvizError(
            f"{node.op} node {node.name!r}: its backward pass needs opset >= {need} "
            f"({'ScatterElements' if injective else 'ScatterElements with reduction=add'}); the model has "
            f"opset {e.opset}. Upgrade it with onnx.version_converter (onnxviz's loader does)."
        )
    one = e.const(np.array(1, np.int64))
    n = e.op("Size", x)
    n1 = e.op("Add", n, one)
    iota = e.reshape_like(e.op("Range", one, n1, one), x)
    if int32:  # Resize has no int64 kernel in onnxruntime
        iota = e.op("Cast", iota, to=onnx.TensorProto.INT32)
    src = apply(iota)
    if int32:
        src = e.op("Cast", src, to=onnx.TensorProto.INT64)
    flat = e.ints([-1])
    zero = helper.make_tensor("zero", e.elem_type(x), [1], [0])
    buf = e.op("ConstantOfShape", e.op("Reshape", n1, flat), value=zero)
    summed = e.op("ScatterElements", buf, e.op("Reshape", src, flat), e.op("Reshape", dy, flat), axis=0,
                  reduction=None if injective else "add")
    return e.reshape_like(_slice(e, summed, [1], [BIG], [0]), x)


def static_map_backward(e: Emitter, x: str, dy: str, src: np.ndarray) -> str:
    """dx for a build-time-known map: src[k] = 1 + (flat input position copied to output k), 0 for none.

    Written with Gather only (any opset): dx[j] = sum over the r-th occurrences of j of dy_flat.
    """
    xs = e.static_shape(x)
    n = int(np.prod(xs, dtype=np.int64))
    flat = np.asarray(src, np.int64).ravel()
    m = flat.size
    counts = np.bincount(flat, minlength=n + 1)[1:]
    order = np.argsort(flat, kind="stable")
    starts = np.searchsorted(flat[order], np.arange(1, n + 1))
    dy_ext = e.op("Concat", e.op("Reshape", dy, e.ints([-1])), e.const(np.zeros(1, e.dtype(x))), axis=0)
    terms = []
    for r in range(int(counts.max()) if n else 0):
        pick = np.where(counts > r, order[np.minimum(starts + r, max(m - 1, 0))], m)
        terms.append(e.op("Gather", dy_ext, e.ints(pick), axis=0))
    if not terms:
        return _zeros_like(e, x)
    total = terms[0] if len(terms) == 1 else e.op("Sum", *terms)
    return e.op("Reshape", total, e.ints(xs))


def _static_iota(e: Emitter, node: Node, x: str) -> np.ndarray:
    xs = e.static_shape(x)
    if xs is None:
        raise OnnxvizError(
            f"{node.op} node {node.name!r}: at opset {e.opset} its backward pass needs a static input shape "
            "(or upgrade the model to opset >= 16)"
        )
    return np.arange(1, int(np.prod(xs, dtype=np.int64)) + 1, dtype=np.int64).reshape(xs)


# ---- identities and permutations ------------------------------------------------------------

def identity(e: Emitter, node: Node, dys):
    """Identity, and the data input of ops that pass it through unchanged."""
    return _first(node, dys[0])


def dropout(e: Emitter, node: Node, dys):
    """Inference-mode Dropout is the identity; its mask output carries no gradient."""
    training = node.input(2)
    if training is not None:
        v = e.value(training)
        if v is None or bool(np.asarray(v).item()):
            raise OnnxvizError(
                f"Dropout node {node.name!r} runs in training mode (training_mode is "
                f"{'not a constant' if v is None else 'true'}): its random mask has no reproducible gradient"
            )
    return _first(node, dys[0])


def cast(e: Emitter, node: Node, dys):
    """Cast dy back to the input's float type (the driver never differentiates int/bool inputs);
    a Cast to the type it had (exporters leave hundreds) passes dy through untouched."""
    x, y = node.inputs[0], node.outputs[0]
    if x in e.types and y in e.types and e.types[x][0] == e.types[y][0]:
        return [dys[0]]
    return [e.cast_like(dys[0], x)]


def transpose(e: Emitter, node: Node, dys):
    """The inverse permutation; the default (reversed axes) is its own inverse."""
    perm = node.attr("perm")
    if perm is None:
        return [e.op("Transpose", dys[0])]
    return [e.op("Transpose", dys[0], perm=[int(i) for i in np.argsort(perm)])]


def reshape(e: Emitter, node: Node, dys):
    """Reshape, Flatten, Squeeze, Unsqueeze: reshape dy back to the input's shape."""
    return _first(node, e.reshape_like(dys[0], node.inputs[0]))


def _crd_shape(e: Emitter, x: str, b: int):
    """Shape [N, C/b^2, H, b, W, b] (CRD) of x = [N, C, H, W], static or at run time."""
    s = e.static_shape(x)
    if s is not None:
        n, c, h, w = s
        return e.ints([n, c // (b * b), h, b, w, b])
    shp = e.shape_of(x)
    part = lambda i: _slice(e, shp, [i], [i + 1], [0])  # noqa: E731
    c = e.op("Div", part(1), e.ints([b * b]))
    return e.op("Concat", part(0), c, part(2), e.ints([b]), part(3), e.ints([b]), axis=0)


def depth_to_space(e: Emitter, node: Node, dys):
    """DCR: SpaceToDepth is its exact inverse. CRD: undo its reshape-transpose-reshape."""
    b = node.attr("blocksize")
    x, dy = node.inputs[0], dys[0]
    if node.attr("mode", "DCR") == "DCR":
        return [e.op("SpaceToDepth", dy, blocksize=b)]
    six = e.op("Reshape", dy, _crd_shape(e, x, b))  # [N, C', H, b, W, b]
    return [e.reshape_like(e.op("Transpose", six, perm=[0, 1, 3, 5, 2, 4]), x)]


def space_to_depth(e: Emitter, node: Node, dys):
    """SpaceToDepth is defined as the inverse of DepthToSpace(DCR)."""
    return [e.op("DepthToSpace", dys[0], blocksize=node.attr("blocksize"), mode="DCR")]


# ---- concatenation and splitting ------------------------------------------------------------

def _axis(e: Emitter, node: Node, x: str, default: int = 0) -> int:
    axis = node.attr("axis", default)
    if axis < 0:
        r = e.rank(x)
        if r is None:
            raise OnnxvizError(f"{node.op} node {node.name!r}: a negative axis needs the input rank")
        axis += r
    return axis


def concat(e: Emitter, node: Node, dys):
    """Split dy at the inputs' sizes along the axis (static sizes, or taken at run time)."""
    dy = dys[0]
    xs = node.inputs
    if len(xs) == 1:
        return [dy]
    axis = _axis(e, node, xs[0])
    sizes = [(e.shape(x) or (None,) * (axis + 1))[axis] for x in xs]
    if all(isinstance(s, int) for s in sizes):
        parts = _split(e, dy, axis, sizes)
    elif e.opset >= 13:
        dims = [_slice(e, e.shape_of(x), [axis], [axis + 1], [0]) for x in xs]
        parts = e.op("Split", dy, e.op("Concat", *dims, axis=0), axis=axis, outputs=len(xs))
    elif e.opset >= 10:
        parts, start = [], e.ints([0])
        for x in xs:
            end = e.op("Add", start, _slice(e, e.shape_of(x), [axis], [axis + 1], [0]))
            parts.append(e.op("Slice", dy, start, end, e.ints([axis])))
            start = end
    else:
        raise OnnxvizError(f"Concat node {node.name!r}: sizes along axis {axis} must be static before opset 10")
    return [p if need else None for p, need in zip(parts, node.needs)]


def split(e: Emitter, node: Node, dys):
    """Concat of the output gradients; outputs without one contribute zeros of their shape."""
    x = node.inputs[0]
    axis = _axis(e, node, x)
    parts = [dy if dy is not None else _zeros_like(e, out) for dy, out in zip(dys, node.outputs)]
    dx = parts[0] if len(parts) == 1 else e.op("Concat", *parts, axis=axis)
    return _first(node, dx)


# ---- indexing: Slice, Gather, Pad ------------------------------------------------------------

def slice_(e: Emitter, node: Node, dys):
    """Each input element appears at most once: an injective iota map (any steps, negative included)."""
    x, dy = node.inputs[0], dys[0]
    if e.opset >= 11:
        rest = node.inputs[1:]
        return _first(node, iota_backward(e, node, x, dy, lambda t: e.op("Slice", t, *rest), injective=True))
    if node.opset < 10:  # starts/ends/axes are attributes
        starts, ends = node.attr("starts"), node.attr("ends")
        axes, steps = node.attr("axes"), None
    else:
        starts, ends = _constant(e, node, 1, "starts"), _constant(e, node, 2, "ends")
        axes, steps = _constant(e, node, 3, "axes"), _constant(e, node, 4, "steps")
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    src = _static_iota(e, node, x)
    index = [slice(None)] * src.ndim
    for s, t, a, st in zip(starts, ends, axes, steps):  # numpy clamps out-of-range bounds as ONNX does
        index[int(a)] = slice(int(s), int(t), int(st))
    return _first(node, static_map_backward(e, x, dy, src[tuple(index)]))


def gather(e: Emitter, node: Node, dys):
    """Scatter-add dy back along the axis: repeated (and negative) indices are handled by the iota map."""
    x, idx = node.inputs
    dy = dys[0]
    axis = node.attr("axis", 0)
    values = e.value(idx)
    injective = False
    if values is not None:
        n = (e.shape(x) or [None] * 64)[axis]
        if isinstance(n, int):
            norm = np.where(values < 0, values + n, values).ravel()
            injective = len(np.unique(norm)) == norm.size
    if e.opset >= (11 if injective else 16):
        return [iota_backward(e, node, x, dy, lambda t: e.op("Gather", t, idx, axis=axis), injective), None]
    if values is None:
        raise OnnxvizError(f"Gather node {node.name!r}: run-time indices need opset >= 16 for their gradient")
    return [static_map_backward(e, x, dy, np.take(_static_iota(e, node, x), values, axis=axis)), None]


def gather_elements(e: Emitter, node: Node, dys):
    """Scatter-add dy back to the gathered positions (repeats add up)."""
    x, idx = node.inputs
    axis = node.attr("axis", 0)
    return [iota_backward(e, node, x, dys[0], lambda t: e.op("GatherElements", t, idx, axis=axis), False), None]


def gather_nd(e: Emitter, node: Node, dys):
    x, idx = node.inputs
    dims = node.attr("batch_dims", 0)
    return [iota_backward(e, node, x, dys[0], lambda t: e.op("GatherND", t, idx, batch_dims=dims), False), None]


def top_k(e: Emitter, node: Node, dys):
    """The k values are x at the returned indices (distinct along the axis): dy goes back there."""
    x = node.inputs[0]
    if dys[0] is None:
        return [None] * len(node.inputs)
    indices = e.add_output(node.proto, 1)
    axis = node.attr("axis", -1)
    dx = iota_backward(e, node, x, dys[0], lambda t: e.op("GatherElements", t, indices, axis=axis), True)
    return [dx] + [None] * (len(node.inputs) - 1)


def _scatter_updates(e: Emitter, node: Node, updates: str) -> str:
    """Zeros shaped like ``updates`` in the iota's type (int64): scattered, they mark positions
    that no longer come from the data input."""
    zero = helper.make_tensor("zero", onnx.TensorProto.INT64, [1], [0])
    return e.op("ConstantOfShape", e.op("Shape", updates), value=zero)


def scatter_nd(e: Emitter, node: Node, dys):
    """y = data with the indexed slices replaced (reduction none) or added to (add): d data is dy
    where data survives, d updates is dy gathered at the indices."""
    return _scatter(e, node, dys, "GatherND", {})


def scatter_elements(e: Emitter, node: Node, dys):
    return _scatter(e, node, dys, "GatherElements", {"axis": node.attr("axis", 0)})


def _scatter(e: Emitter, node: Node, dys, gather_op: str, attrs: dict):
    data, idx, updates = node.inputs
    reduction = node.attr("reduction", "none")
    if reduction not in ("none", "add"):
        raise OnnxvizError(f"{node.op} node {node.name!r}: no gradient rule for reduction={reduction!r} "
                           "(none and add have one); use finite differences (--grad fd)")
    dy = dys[0]
    grads = [None, None, None]
    if node.needs[0]:
        if reduction == "add":
            grads[0] = dy
        else:
            zeros = _scatter_updates(e, node, updates)
            grads[0] = iota_backward(e, node, data, dy, lambda t: e.op(node.op, t, idx, zeros, **attrs), True)
    if node.needs[2]:
        grads[2] = e.op(gather_op, dy, idx, **attrs)
    return grads


def cumsum(e: Emitter, node: Node, dys):
    """CumSum is linear; its adjoint sums from the other end, with the same exclusivity."""
    x, axis = node.inputs
    reverse = 0 if node.attr("reverse", 0) else 1
    return [e.op("CumSum", dys[0], axis, exclusive=node.attr("exclusive", 0), reverse=reverse), None]


def pad(e: Emitter, node: Node, dys):
    """Constant mode copies each element once; reflect/edge/wrap repeat border elements (scatter-add)."""
    x, dy = node.inputs[0], dys[0]
    mode = node.attr("mode", "constant")
    injective = mode == "constant"
    grads = [None] * len(node.inputs)
    if node.opset >= 11:
        pads_in, axes_in = node.input(1), node.input(3)
        if e.opset >= (11 if injective else 16):
            grads[0] = iota_backward(e, node, x, dy, lambda t: e.op("Pad", t, pads_in, None, axes_in, mode=mode),
                                     injective)
            return grads
        pads = _constant(e, node, 1, "pads")
        axes = _constant(e, node, 3, "axes")
    else:
        pads, axes = node.attr("pads"), None
    src = _static_iota(e, node, x)
    r = src.ndim
    axes = list(range(r)) if axes is None else [int(a) % r for a in axes]
    k = len(axes)
    widths = [(0, 0)] * r
    for i, a in enumerate(axes):
        widths[a] = (int(pads[i]), int(pads[i + k]))
    crop = tuple(slice(max(-b, 0), src.shape[a] - max(-t, 0)) for a, (b, t) in enumerate(widths))
    src = src[crop]  # negative pads crop
    np_mode = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode]
    src = np.pad(src, [(max(b, 0), max(t, 0)) for b, t in widths], mode=np_mode)
    grads[0] = static_map_backward(e, x, dy, src)
    return grads


# ---- broadcasting copies: Expand, Tile ------------------------------------------------------

def expand(e: Emitter, node: Node, dys):
    return [e.unbroadcast(dys[0], node.inputs[0], node.outputs[0]), None]


def tile(e: Emitter, node: Node, dys):
    """View dy as [r0, d0, r1, d1, ...] and sum over the repeat axes."""
    x, reps = node.inputs
    dy = dys[0]
    r = e.rank(x)
    if r is None:
        raise OnnxvizError(f"Tile node {node.name!r}: the input rank must be known")
    xs, rv = e.static_shape(x), e.value(reps)
    if xs is not None and rv is not None:
        shape = e.ints([v for pair in zip(rv, xs) for v in pair])
    else:
        pairs = e.op("Concat", e.unsqueeze(reps, [1]), e.unsqueeze(e.shape_of(x), [1]), axis=1)
        shape = e.op("Reshape", pairs, e.ints([-1]))
    summed = e.reduce_sum(e.op("Reshape", dy, shape), list(range(0, 2 * r, 2)), keepdims=False)
    return [e.reshape_like(summed, x), None]


# ---- resampling: Resize, Upsample -----------------------------------------------------------

def _resize_axes(e: Emitter, node: Node, x: str, scales: Optional[str], sizes: Optional[str]) -> list:
    """Axes that may change size (all axes the scales/sizes do not prove unchanged)."""
    r = e.rank(x)
    listed = node.attr("axes")
    listed = list(range(r)) if listed is None else [a % r for a in listed]
    xs = e.shape(x)
    out = []
    sv, zv = e.value(scales), e.value(sizes)
    for i, a in enumerate(listed):
        if sv is not None and sv.size and float(sv[i]) == 1.0:
            continue
        if zv is not None and zv.size and xs is not None and xs[a] == int(zv[i]):
            continue
        out.append(a)
    return out


def _eye_basis(e: Emitter, x: str, a: int, b: int, r: int):
    """Identity matrix over axis a's positions, laid out on axes (a, b) of an otherwise size-1 rank-r tensor."""
    n = (e.shape(x) or [None] * r)[a]
    if isinstance(n, int):
        shape = [1] * r
        shape[a] = shape[b] = n
        return e.const(np.eye(n, dtype=e.dtype(x)).reshape(shape)), e.ints(shape)
    if e.opset < 9:
        raise OnnxvizError("resizing a dynamic axis needs opset >= 9 for its gradient")
    nn = _slice(e, e.shape_of(x), [a], [a + 1], [0])
    zero = helper.make_tensor("zero", e.elem_type(x), [1], [0])
    eye = e.op("EyeLike", e.op("ConstantOfShape", e.op("Concat", nn, nn, axis=0), value=zero))
    shape = e.op("Concat", *[nn if i in (a, b) else e.ints([1]) for i in range(r)], axis=0)
    return e.op("Reshape", eye, shape), shape


def _pick(e: Emitter, t: str, i: int) -> str:
    v = e.value(t)
    if v is not None:
        return e.const(np.asarray(v).ravel()[i : i + 1])
    return _slice(e, t, [i], [i + 1], [0])


def _axis_matrix(e: Emitter, node: Node, a: int) -> tuple:
    """R for axis a as the forward op applied to an identity; returns (matrix, transposed?)."""
    x, y = node.inputs[0], node.outputs[0]
    r = e.rank(x)
    b = r - 1 if a != r - 1 else r - 2
    basis, basis_shape = _eye_basis(e, x, a, b, r)
    attrs = {k: v for k, v in node.attrs.items() if k not in ("axes", "keep_aspect_ratio_policy", "scales")}
    if node.op == "Upsample" or node.opset < 11:  # Upsample-7/9, Resize-10: (X, scales)
        scales = node.attr("scales")
        if scales is not None:  # Upsample-7 attribute
            basis_scales = [1.0] * r
            basis_scales[a] = float(scales[a])
            out = e.op(node.op, basis, scales=basis_scales, **attrs)
        else:
            ones = lambda k: e.const(np.ones(k, np.float32))  # noqa: E731
            pieces = ([ones(a)] if a else []) + [_pick(e, node.inputs[1], a)] + ([ones(r - a - 1)] if a < r - 1 else [])
            out = e.op(node.op, basis, e.op("Concat", *pieces, axis=0), **attrs)
    else:
        listed = node.attr("axes")
        listed = list(range(r)) if listed is None else [ax % r for ax in listed]
        pos = listed.index(a)
        roi_in, scales_in = node.input(1), node.input(2)
        attrs["extrapolation_value"] = 0.0
        if attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize" and roi_in:
            k = len(listed)
            lo, hi = _pick(e, roi_in, pos), _pick(e, roi_in, pos + k)
            lo, hi = e.op("Cast", lo, to=onnx.TensorProto.FLOAT), e.op("Cast", hi, to=onnx.TensorProto.FLOAT)
            zeros = lambda k: e.const(np.zeros(k, np.float32))  # noqa: E731
            ones = lambda k: e.const(np.ones(k, np.float32))  # noqa: E731
            roi = e.op("Concat", *[p for p in (zeros(a) if a else None, lo, zeros(r - a - 1) if a < r - 1 else None,
                                              ones(a) if a else None, hi, ones(r - a - 1) if a < r - 1 else None)
                                   if p is not None], axis=0)
        else:
            roi = e.const(np.array([0.0] * r + [1.0] * r, np.float32))
        sv = e.value(scales_in)
        if scales_in and (sv is None or sv.size):
            s = _pick(e, scales_in, pos)
            s = e.op("Cast", s, to=onnx.TensorProto.FLOAT)
            ones = lambda k: e.const(np.ones(k, np.float32))  # noqa: E731
            pieces = ([ones(a)] if a else []) + [s] + ([ones(r - a - 1)] if a < r - 1 else [])
            out = e.op("Resize", basis, roi, e.op("Concat", *pieces, axis=0), **attrs)
        else:
            policy = node.attr("keep_aspect_ratio_policy", "stretch")
            if policy != "stretch":
                raise OnnxvizError(
                    f"Resize node {node.name!r}: keep_aspect_ratio_policy={policy!r} with mode "
                    f"{node.attr('mode', 'nearest')!r} has no gradient rule (use mode='nearest' or FD)"
                )
            n_out = _slice(e, e.shape_of(y), [a], [a + 1], [0])
            sizes = e.op("Concat", *[n_out if i == a else _slice(e, basis_shape, [i], [i + 1], [0]) for i in range(r)],
                         axis=0)
            no_scales = e.const(np.zeros(0, np.float32)) if e.opset < 13 else None
            out = e.op("Resize", basis, roi, no_scales, sizes, **attrs)
    matrix = e.squeeze(out, [i for i in range(r) if i not in (a, b)])
    return matrix, a > b  # rows follow the lower of the two axes


# (coordinate transformation, nearest mode) pairs that send output i to input i // s for every
# integer scale s; asymmetric with round_prefer_floor does so only for s = 2
_BLOCK_MODES = {("half_pixel", "round_prefer_floor"), ("half_pixel", "round_prefer_ceil"),
                ("pytorch_half_pixel", "round_prefer_floor"), ("pytorch_half_pixel", "round_prefer_ceil"),
                ("asymmetric", "floor"), ("tf_half_pixel_for_nn", "floor")}


def _nearest_blocks(e: Emitter, node: Node, x: str) -> Optional[tuple]:
    """(sH, sW) when this nearest Resize/Upsample copies each input pixel of a 4-D float tensor with
    known channels into an sH x sW block (integer scales on H and W only), else None."""
    if node.attr("mode", "nearest") != "nearest":
        return None
    xs, ys = e.shape(x), e.shape(node.outputs[0])
    if xs is None or ys is None or len(xs) != 4 or len(ys) != 4 or not all(isinstance(d, int) for d in [*xs[1:], *ys[1:]]):
        return None
    if ys[1] != xs[1] or e.elem_type(x) not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        return None
    if ys[2] % xs[2] or ys[3] % xs[3] or (ys[2], ys[3]) == (xs[2], xs[3]):
        return None
    factors = (ys[2] // xs[2], ys[3] // xs[3])
    if node.op == "Upsample" or node.opset < 11:
        given = node.attr("scales")
        given = np.asarray(given) if given is not None else e.value(node.input(1))
        ctm, nearest = "asymmetric", "floor"  # Upsample and Resize-10 index with floor(i / scale)
    else:
        if node.attr("axes") is not None or node.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
            return None
        given = e.value(node.input(2)) if node.input(2) else None
        if given is not None and given.size == 0:
            given = None
        if given is None and (not node.input(3) or e.value(node.input(3)) is None):
            return None  # the output size is known here, but not that the runtime will see it
        ctm = node.attr("coordinate_transformation_mode", "half_pixel")
        nearest = node.attr("nearest_mode", "round_prefer_floor")
    if given is not None and [float(v) for v in np.asarray(given).reshape(-1)] != [1.0, 1.0, *map(float, factors)]:
        return None
    if (ctm, nearest) in _BLOCK_MODES or (ctm, nearest) == ("asymmetric", "round_prefer_floor") and all(
            f in (1, 2) for f in factors):
        return factors
    return None


def resample(e: Emitter, node: Node, dys):
    """Resize/Upsample: nearest via the iota trick (opset >= 16); otherwise dx = R^T dy per resized axis.

    R is the forward op applied to an identity, so every mode, coordinate transformation,
    cubic coefficient and antialias setting is the runtime's own.
    """
    x, dy = node.inputs[0], dys[0]
    grads = [None] * len(node.inputs)
    r = e.rank(x)
    if r is None:
        raise OnnxvizError(f"{node.op} node {node.name!r}: the input rank must be known")
    mode = node.attr("mode", "nearest")
    blocks = _nearest_blocks(e, node, x)
    if blocks is not None:
        # each input pixel fills an sH x sW block of the output: its gradient is the block's
        # sum, a depthwise Conv with a ones kernel and stride s (onnxruntime's NCHWc layout);
        # the scatter-add below ran single-threaded over every output element
        channels = e.shape(x)[1]
        ones = e.const(np.ones((channels, 1, *blocks), e.dtype(x)))
        grads[0] = e.op("Conv", dy, ones, kernel_shape=list(blocks), strides=list(blocks), group=channels)
        return grads
    xs = e.static_shape(x)
    fits_int32 = xs is None or int(np.prod(xs, dtype=np.int64)) < 2**31 - 1
    if mode == "nearest" and node.op == "Resize" and node.opset >= 11 and e.opset >= 16 and fits_int32:
        attrs = {**node.attrs, "extrapolation_value": 0.0}
        rest = node.inputs[1:]
        grads[0] = iota_backward(e, node, x, dy, lambda t: e.op("Resize", t, *rest, **attrs), injective=False,
                                 int32=True)
        return grads
    if node.op == "Upsample" or node.opset < 11:
        scales = node.attr("scales")
        sv = np.asarray(scales) if scales is not None else e.value(node.input(1))
        axes = [a for a in range(r) if sv is None or float(sv[a]) != 1.0]
    else:
        axes = _resize_axes(e, node, x, node.input(2), node.input(3))
    g = dy
    for a in axes:
        m, transposed = _axis_matrix(e, node, a)
        if a == r - 1:  # g [..., out] @ R [out, in]
            g = e.op("MatMul", g, e.op("Transpose", m, perm=[1, 0]) if transposed else m)
        elif a == r - 2:  # R^T [in, out] @ g [..., out, W]
            g = e.op("MatMul", m if transposed else e.op("Transpose", m, perm=[1, 0]), g)
        else:
            perm = [i for i in range(r) if i != a] + [a]
            moved = e.op("MatMul", e.op("Transpose", g, perm=perm), m)
            g = e.op("Transpose", moved, perm=[int(i) for i in np.argsort(perm)])
    grads[0] = g
    return grads


RULES = {
    "Identity": identity,
    "Dropout": dropout,
    "Cast": cast,
    "Reshape": reshape,
    "Flatten": reshape,
    "Squeeze": reshape,
    "Unsqueeze": reshape,
    "Transpose": transpose,
    "DepthToSpace": depth_to_space,
    "SpaceToDepth": space_to_depth,
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Gather": gather,
    "GatherElements": gather_elements,
    "GatherND": gather_nd,
    "TopK": top_k,
    "ScatterND": scatter_nd,
    "ScatterElements": scatter_elements,
    "CumSum": cumsum,
    "Pad": pad,
    "Expand": expand,
    "Tile": tile,
    "Resize": resample,
    "Upsample": resample,
}
