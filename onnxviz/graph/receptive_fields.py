"""Receptive fields and spatial-axis tracking.

Everything reads the ModelProto only (run ``onnx.shape_inference.infer_shapes`` first for
shapes): no sessions, so inspecting a large model takes seconds.

Receptive fields follow the usual recurrence (Araujo et al., Distill 2019), per spatial axis,
in input pixels: a window op with kernel k, stride s, dilation d and begin pad p maps
``(size r, jump j, start c)`` to ``(r + (k_eff-1)|j|, j·s, c + ((k_eff-1)/2 - p)·j)`` with
``k_eff = (k-1)d + 1``. ``start`` is the input coordinate of the centre of output unit 0;
unit i is centred on ``start + i·jump``. Conventions where the graph is not a plain chain:

* merges (Add, Concat, ...) take the union of the branches' windows at unit 0 and the
  smallest jump; inputs broadcast along a spatial axis (squeeze-excite gates, per-channel
  scales) carry context, not locality, and are left out of that axis' union;
* normalisations (BatchNorm, InstanceNorm, LayerNorm, LRN) count as pointwise: their
  statistics are per-channel context, like the gates above;
* an axis that is pooled, reduced or merged away (GlobalAveragePool, ReduceMean, Flatten,
  Gemm) becomes the whole input seen so far; ``size`` is ``math.inf`` when that extent is
  unknown (dynamic sizes);
* ConvTranspose and Resize have fractional jumps; their ``start`` is the continuous sampling
  coordinate and ``size`` the widest exact footprint over output phases, so a unit's box
  may be off by one pixel; everywhere else the box is exact;
* ceil_mode only adds units at the end, so it changes no field;
* operators not listed here are taken as pointwise when they keep the spatial sizes, else
  they merge the spatial axes away.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, NamedTuple, Optional, Sequence

import onnx
from ..errors import ModelError
from .view import GraphView, attrs, floats, ints

__all__ = ["ReceptiveField", "receptive_field", "spatial_axes"]


@dataclass(frozen=True)
class ReceptiveField:
    """Where a tensor's units look in the input, per (height, width), in input pixels.

    Unit (i, j) sees rows ``start[0] + i·jump[0] ± (size[0]-1)/2`` (and likewise columns).
    ``size`` is ``math.inf`` for "the whole input" when the input size is unknown.
    """

    size: tuple
    jump: tuple
    start: tuple

    def center(self, i: float, j: float) -> tuple[float, float]:
        """Input (y, x) at the centre of unit (i, j)."""
        return (self.start[0] + i * self.jump[0], self.start[1] + j * self.jump[1])

    def box(self, i: int, j: int, clip_to: Optional[tuple[int, int]] = None) -> tuple[int, int, int, int]:
        """Half-open input box ``(y0, x0, y1, x1)`` seen by unit (i, j): ``img[y0:y1, x0:x1]``.

        >>> ReceptiveField((3, 3), (1, 1), (0, 0)).box(0, 0, clip_to=(8, 8))
        (0, 0, 2, 2)
        """
        y0, y1 = _interval(self.start[0] + i * self.jump[0], self.size[0])
        x0, x1 = _interval(self.start[1] + j * self.jump[1], self.size[1])
        if clip_to is None:
            if math.inf in (y1, x1):
                raise ValueError("this receptive field spans the whole input of unknown size: pass clip_to=(H, W)")
            return (y0, x0, y1, x1)
        h, w = clip_to
        return (_clamp(y0, 0, h), _clamp(x0, 0, w), _clamp(y1, 0, h), _clamp(x1, 0, w))


class _Span(NamedTuple):
    """Receptive field along one spatial direction: size, jump, start (Fraction or math.inf)."""

    size: object
    jump: object
    start: object


class _Track(NamedTuple):
    """Which tensor axes hold input H and W (None once merged away), and their spans."""

    axes: tuple
    spans: tuple


def _frac(x) -> Fraction:
    return Fraction(x).limit_denominator(1 << 20) if isinstance(x, float) else Fraction(x)


def _whole(sp: _Span, n: Optional[int]) -> _Span:
    """Span covering all n units of an axis: what a global pool over it sees."""
    if n is None:
        return _Span(math.inf, sp.jump, sp.start)
    return _Span(sp.size + (n - 1) * abs(sp.jump), sp.jump * n, sp.start + Fraction(n - 1, 2) * sp.jump)


def _conv_span(sp: _Span, k: int, s: int, d: int, p: int) -> _Span:
    """r' = r + (k_eff-1)|j|, j' = j·s, c' = c + ((k_eff-1)/2 - p)·j."""
    ke = (k - 1) * d + 1
    return _Span(sp.size + (ke - 1) * abs(sp.jump), sp.jump * s, sp.start + (Fraction(ke - 1, 2) - p) * sp.jump)


def _convt_span(sp: _Span, k: int, s: int, d: int, p: int) -> _Span:
    """Transposed conv: j' = j/s, c' = c + (p - (k_eff-1)/2)·j/s; size from the widest output phase."""
    ke = (k - 1) * d + 1
    reach = 0
    for phase in range(s):
        taps = [t for t in range(k) if (phase - t * d) % s == 0]
        if taps:
            reach = max(reach, (taps[-1] - taps[0]) * d // s)
    return _Span(sp.size + reach * abs(sp.jump), sp.jump / s, sp.start + (p - Fraction(ke - 1, 2)) * sp.jump / s)


def _union(spans: Sequence[_Span]) -> _Span:
    """Smallest span covering every branch's window at unit 0, with the smallest jump."""
    jump = min((sp.jump for sp in spans), key=abs)
    if len(spans) == 1 or any(sp.size == math.inf for sp in spans):
        return _Span(max(sp.size for sp in spans), jump, spans[0].start)
    lo = min(sp.start - (sp.size - 1) / 2 for sp in spans)
    hi = max(sp.start + (sp.size - 1) / 2 for sp in spans)
    return _Span(max(hi - lo + 1, max(sp.size for sp in spans)), jump, (lo + hi) / 2)


def _replace(t: _Track, d: int, axis=..., span=None) -> _Track:
    axes, spans = list(t.axes), list(t.spans)
    if axis is not ...:
        axes[d] = axis
    if span is not None:
        spans[d] = span
    return _Track(tuple(axes), tuple(spans))


def _remap(g: GraphView, name: str, t: _Track, mapping: Callable[[int], Optional[int]]) -> _Track:
    """Move tracked axes to new positions; an axis mapped to None is merged away (whole)."""
    for d in (0, 1):
        a = t.axes[d]
        if a is None:
            continue
        new = mapping(a)
        t = _replace(t, d, axis=new, span=None if new is not None else _whole(t.spans[d], g.dim(name, a)))
    return t


def _mix(g: GraphView, name: str, t: _Track, axes, keep: bool = True) -> _Track:
    """Units along `axes` all see each other (a reduction); keep=False also drops those axes."""
    axes = set(axes)
    for d in (0, 1):
        a = t.axes[d]
        if a in axes:
            t = _replace(t, d, axis=a if keep else None, span=_whole(t.spans[d], g.dim(name, a)))
    if keep:
        return t
    return _Track(tuple(None if a is None else a - sum(r < a for r in axes) for a in t.axes), t.spans)


def _lost(g: GraphView, name: str, t: _Track) -> _Track:
    return _mix(g, name, t, [a for a in t.axes if a is not None], keep=False)


def _merge(g: GraphView, out: str, parts) -> _Track:
    """Union of input tracks already moved to output axes; parts are (track, in_sizes)."""
    axes, spans = [], []
    for d in (0, 1):
        local, other = [], []
        for t, sizes in parts:
            a = t.axes[d]
            broadcast = a is None or (sizes[d] == 1 and g.dim(out, a) != 1)
            (other if broadcast else local).append(t)
        chosen = local or other
        axes.append(next((t.axes[d] for t in chosen if t.axes[d] is not None), None))
        spans.append(_union([t.spans[d] for t in chosen]))
    return _Track(tuple(axes), tuple(spans))


def _part(g: GraphView, name: str, t: _Track, mapping) -> tuple:
    sizes = tuple(None if a is None else g.dim(name, a) for a in t.axes)
    return (_remap(g, name, t, mapping), sizes)


# --- rules: one function per operator family, (graph, node, input tracks) -> output track(s)


def _rf_pointwise(g, node, ins):
    """Elementwise ops with numpy broadcasting, Concat, Expand, normalisations."""
    out = node.output[0]
    rank = g.rank(out) or max(g.rank(i) or 0 for i, t in zip(node.input, ins) if t)
    parts = []
    for name, t in zip(node.input, ins):
        if t is not None:
            shift = rank - (g.rank(name) or rank)
            parts.append(_part(g, name, t, lambda a, s=shift: a + s))
    return _merge(g, out, parts)


def _window_attrs(g, node):
    """(kernel, strides, dilations, pads, auto_pad) of a Conv/Pool node; kernel None if unknown."""
    a = attrs(node)
    k = a.get("kernel_shape")
    if k is None:
        w = g.shape(node.input[3 if node.op_type == "QLinearConv" else 1])
        k = None if w is None or not all(isinstance(x, int) for x in w[2:]) else list(w[2:])
    if k is None:
        return None, None, None, None, None
    nd = len(k)
    return (list(k), a.get("strides", [1] * nd), a.get("dilations", [1] * nd),
            a.get("pads", [0] * (2 * nd)), a.get("auto_pad", "NOTSET"))


def pad_begin(auto: str, pads, i: int, n: Optional[int], ke: int, s: int) -> int:
    """Begin pad of Conv/Pool axis i; SAME total = max((⌈n/s⌉-1)s + k_eff - n, 0)."""
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        # unknown n: exact when n is a multiple of s, the usual case for image sizes
        total = max(ke - s, 0) if n is None else max((-(-n // s) - 1) * s + ke - n, 0)
        return total // 2 if auto == "SAME_UPPER" else total - total // 2
    return 0 if auto == "VALID" else pads[i]


def _convt_pad_begin(node, pads, i: int, n: Optional[int], ke: int, s: int) -> int:
    """Begin pad of ConvTranspose axis i, derived from output_shape / auto_pad as the spec says."""
    a = attrs(node)
    nd = len(pads) // 2
    auto, out_shape = a.get("auto_pad", "NOTSET"), a.get("output_shape")
    if not out_shape and auto not in ("SAME_UPPER", "SAME_LOWER"):
        return 0 if auto == "VALID" else pads[i]
    op = a.get("output_padding", [0] * nd)[i]
    if out_shape:
        if n is None:
            return 0
        total = s * (n - 1) + op + ke - out_shape[len(out_shape) - nd + i]
    else:
        total = op + ke - s  # output = n·s
    return total // 2 if auto == "SAME_UPPER" else total - total // 2


def _rf_window(g, node, ins):
    """Conv, ConvTranspose and the local pools."""
    t, x = ins[0], node.input[0]
    k, s, dil, pads, auto = _window_attrs(g, node)
    if k is None or t is None:
        return _lost(g, x, t) if t is not None else None
    transposed = node.op_type == "ConvTranspose"
    for d in (0, 1):
        a = t.axes[d]
        i = None if a is None else a - 2
        if i is not None and 0 <= i < len(k):
            n, ke = g.dim(x, a), (k[i] - 1) * dil[i] + 1
            if transposed:
                sp = _convt_span(t.spans[d], k[i], s[i], dil[i], _convt_pad_begin(node, pads, i, n, ke, s[i]))
            else:
                sp = _conv_span(t.spans[d], k[i], s[i], dil[i], pad_begin(auto, pads, i, n, ke, s[i]))
            t = _replace(t, d, span=sp)
        elif a == 1 and node.op_type in _WEIGHTED:  # convolution sums over its channel axis
            t = _mix(g, x, t, [1])
    return t


def _rf_space_to_depth(g, node, ins):
    b = attrs(node)["blocksize"]
    t = ins[0]
    for d in (0, 1):
        if t.axes[d] in (2, 3):
            t = _replace(t, d, span=_conv_span(t.spans[d], b, b, 1, 0))
    return t


def _rf_depth_to_space(g, node, ins):
    """Output row y copies input row ⌊y/b⌋: j' = j/b."""
    b = attrs(node)["blocksize"]
    t = ins[0]
    for d in (0, 1):
        if t.axes[d] in (2, 3):
            sp = t.spans[d]
            t = _replace(t, d, span=_Span(sp.size, sp.jump / b, sp.start))
    return t


def _rf_global_pool(g, node, ins):
    rank = g.rank(node.input[0]) or 4
    return _mix(g, node.input[0], ins[0], range(2, rank))


def _rf_reduce(g, node, ins):
    """Reduce* and ArgMax/ArgMin: reduced axes see the whole input along them."""
    x, t, a = node.input[0], ins[0], attrs(node)
    rank = g.rank(x)
    if node.op_type in ("ArgMax", "ArgMin"):
        axes = [a.get("axis", 0)]
    else:
        axes = ints(g, node, "axes", 1)
        if not axes and a.get("noop_with_empty_axes", 0):
            return t
    if rank is None:
        return _lost(g, x, t)
    axes = range(rank) if axes is None or not axes else [ax % rank for ax in axes]
    return _mix(g, x, t, axes, keep=bool(a.get("keepdims", 1)))


def _rf_softmax(g, node, ins):
    """Softmax mixes its axis; before opset 13 it flattens and mixes every axis from `axis` on."""
    x, rank = node.input[0], g.rank(node.input[0])
    if rank is None:
        return _lost(g, x, ins[0])
    axis = attrs(node).get("axis", 1 if g.opset < 13 else -1) % rank
    return _mix(g, x, ins[0], range(axis, rank) if g.opset < 13 else [axis])


def _rf_transpose(g, node, ins):
    rank = g.rank(node.input[0]) or 1 + max(a for a in ins[0].axes if a is not None)
    perm = list(attrs(node).get("perm", range(rank - 1, -1, -1)))
    return _remap(g, node.input[0], ins[0], lambda a: perm.index(a) if a in perm else None)


def _same_dim(a, b) -> bool:
    return a == b and a is not None


def _reshape_axes(src: Sequence, dst: Sequence) -> dict:
    """Map each source axis that a row-major reshape keeps whole (not split or merged) to its new axis."""
    mapping, i, o = {}, 0, 0
    while i < len(src) and o < len(dst):
        if src[i] == 1:
            i += 1
        elif dst[o] == 1:
            o += 1
        elif _same_dim(src[i], dst[o]) or (i == o == 0 and not isinstance(src[0], int)
                                            and not isinstance(dst[0], int)):  # dynamic batch
            mapping[i] = o
            i, o = i + 1, o + 1
        else:  # a group of axes whose products agree: nothing inside survives alone
            if not (isinstance(src[i], int) and isinstance(dst[o], int)):
                return mapping
            ps, pd, i, o = src[i], dst[o], i + 1, o + 1
            while ps != pd:
                if ps < pd and i < len(src) and isinstance(src[i], int):
                    ps, i = ps * src[i], i + 1
                elif pd < ps and o < len(dst) and isinstance(dst[o], int):
                    pd, o = pd * dst[o], o + 1
                else:
                    return mapping
    return mapping


def _rf_reshape(g, node, ins):
    """Reshape, Flatten and shape-driven Squeeze/Unsqueeze, tracked through static shapes."""
    x, src, dst = node.input[0], g.shape(node.input[0]), g.shape(node.output[0])
    if node.op_type == "Flatten" and src is not None and dst is None:
        ax = attrs(node).get("axis", 1) % max(len(src), 1)
        dst = tuple(math.prod(part) if all(isinstance(v, int) for v in part) else None
                    for part in (src[:ax], src[ax:]))
    mapping = _reshape_axes(src, dst) if src is not None and dst is not None else {}
    return _remap(g, x, ins[0], mapping.get)


def _rf_squeeze(g, node, ins):
    axes, rank = ints(g, node, "axes", 1), g.rank(node.input[0])
    if axes is None or rank is None:
        return _rf_reshape(g, node, ins)
    axes = {a % rank for a in axes}
    return _remap(g, node.input[0], ins[0], lambda a: None if a in axes else a - sum(r < a for r in axes))


def _rf_unsqueeze(g, node, ins):
    axes, rank = ints(g, node, "axes", 1), g.rank(node.input[0])
    if axes is None or rank is None:
        return _rf_reshape(g, node, ins)
    out_rank = rank + len(axes)
    kept = [k for k in range(out_rank) if k not in {a % out_rank for a in axes}]
    return _remap(g, node.input[0], ins[0], lambda a: kept[a])


def _rf_matmul(g, node, ins):
    """MatMul: A's last axis and B's second-to-last are summed over; the rest broadcast."""
    ra, rb, out = g.rank(node.input[0]), g.rank(node.input[1]), node.output[0]
    ro = g.rank(out)
    if None in (ra, rb, ro):
        return _lost(g, node.input[0], next(t for t in ins if t))
    parts = []
    if ins[0] is not None:
        shift = 0 if rb == 1 else ro - ra
        parts.append(_part(g, node.input[0], ins[0], lambda a: None if a == ra - 1 else a + shift))
    if ins[1] is not None and rb > 1:
        parts.append(_part(g, node.input[1], ins[1],
                           lambda a: None if a == rb - 2 else (ro - 1 if a == rb - 1 else a + ro - rb)))
    elif ins[1] is not None:
        parts.append(_part(g, node.input[1], ins[1], lambda a: None))
    return _merge(g, out, parts)


def _rf_gemm(g, node, ins):
    a = attrs(node)
    keep_a = 1 if a.get("transA", 0) else 0
    keep_b = 0 if a.get("transB", 0) else 1
    parts = []
    if ins[0] is not None:
        parts.append(_part(g, node.input[0], ins[0], lambda ax: 0 if ax == keep_a else None))
    if len(ins) > 1 and ins[1] is not None:
        parts.append(_part(g, node.input[1], ins[1], lambda ax: 1 if ax == keep_b else None))
    if len(ins) > 2 and ins[2] is not None:
        shift = 2 - (g.rank(node.input[2]) or 2)
        parts.append(_part(g, node.input[2], ins[2], lambda ax: ax + shift))
    return _merge(g, node.output[0], parts)


def _rf_gather(g, node, ins):
    x, t = node.input[0], ins[0]
    rank, q = g.rank(x), g.rank(node.input[1])
    if t is None or rank is None or q is None:
        return _lost(g, x, t) if t is not None else None
    axis = attrs(node).get("axis", 0) % rank
    return _remap(g, x, t, lambda a: a if a < axis else (None if a == axis else a + q - 1))


def _rf_slice(g, node, ins):
    """Slice: c' = c + begin·j, j' = j·step along sliced spatial axes."""
    x, t, rank = node.input[0], ins[0], g.rank(node.input[0])
    if g.opset < 10:
        a = attrs(node)
        starts, axes, steps = a.get("starts"), a.get("axes"), None
    else:
        starts, axes, steps = ints(g, node, "", 1), ints(g, node, "", 3), ints(g, node, "", 4)
    if starts is None or rank is None:
        return _lost(g, x, t)
    axes = [a % rank for a in (axes or range(len(starts)))]
    steps = steps or [1] * len(starts)
    for ax, begin, step in zip(axes, starts, steps):
        for d in (0, 1):
            if t.axes[d] == ax:
                t = _replace(t, d, span=_slice_span(t.spans[d], begin, step, g.dim(x, ax)))
    return t


def _slice_span(sp: _Span, begin: int, step: int, n: Optional[int]) -> _Span:
    if n is None and (begin < 0 or begin > 1 << 30):
        return _whole(sp, None)
    if n is not None:
        begin = begin + n if begin < 0 else begin
        begin = min(max(begin, 0), n) if step > 0 else min(max(begin, 0), n - 1)
    return _Span(sp.size, sp.jump * step, sp.start + begin * sp.jump)


def _rf_pad(g, node, ins):
    """Pad shifts the start: c' = c - pad_begin·j (any mode; reflect/edge borders repeat inner units)."""
    x, t, rank = node.input[0], ins[0], g.rank(node.input[0])
    pads = ints(g, node, "pads", 1) if g.opset >= 2 else ints(g, node, "paddings", 1)
    if pads is None or rank is None:
        return _lost(g, x, t)
    axes = [a % rank for a in (ints(g, node, "", 3) or range(len(pads) // 2))]
    for k, ax in enumerate(axes):
        for d in (0, 1):
            if t.axes[d] == ax:
                sp = t.spans[d]
                t = _replace(t, d, span=_Span(sp.size, sp.jump, sp.start - pads[k] * sp.jump))
    return t


_TAPS = {"nearest": 0, "linear": 1, "bilinear": 1, "cubic": 3}


def _resize_scales(g, node, x: str) -> Optional[list]:
    """Per-axis output/input scale of Resize/Upsample: constant scales, else sizes or shapes."""
    rank = g.rank(x)
    if node.op_type == "Upsample":
        scales = floats(g, node, "scales", 1)
    else:
        scales = floats(g, node, "", 1 if g.opset < 11 else 2)
    sizes = None if node.op_type == "Upsample" or g.opset < 11 else ints(g, node, "", 3)
    axes = attrs(node).get("axes")
    if scales is None and sizes and rank is not None:
        axes_ = axes or range(rank)
        scales = [None if g.dim(x, a) is None else s / g.dim(x, a) for a, s in zip(axes_, sizes)]
    if scales is not None and axes is not None and rank is not None:
        full = [1.0] * rank
        for a, s in zip(axes, scales):
            full[a % rank] = s
        scales = full
    if scales is None and rank is not None:
        out = g.shape(node.output[0]) or (None,) * rank
        scales = [None if g.dim(x, a) is None or not isinstance(out[a], int) else out[a] / g.dim(x, a)
                  for a in range(rank)]
    return scales


def _rf_resize(g, node, ins):
    """Resize/Upsample: j' = j/f; c' = c + j·x(0) with x(0) the sampling coordinate of output 0."""
    x, t, a = node.input[0], ins[0], attrs(node)
    scales = _resize_scales(g, node, x)
    old = node.op_type == "Upsample" or g.opset < 11
    mode = a.get("coordinate_transformation_mode", "asymmetric" if old else "half_pixel")
    taps = _TAPS.get(a.get("mode", "nearest"), 3)
    for d in (0, 1):
        ax = t.axes[d]
        if ax is None:
            continue
        f = None if scales is None or ax >= len(scales) or scales[ax] is None else _frac(scales[ax])
        n_in, n_out = g.dim(x, ax), g.dim(node.output[0], ax)
        if mode == "align_corners" and n_in and n_out and n_in > 1 and n_out > 1:
            f = Fraction(n_out - 1, n_in - 1)
        if not f:
            t = _mix(g, x, t, [ax])
            continue
        x0 = {"asymmetric": 0, "align_corners": 0, "tf_half_pixel_for_nn": Fraction(1, 2) / f}.get(
            mode, Fraction(1, 2) / f - Fraction(1, 2))
        reach = taps / f if f < 1 and a.get("antialias", 0) else taps
        sp = t.spans[d]
        t = _replace(t, d, span=_Span(sp.size + reach * abs(sp.jump), sp.jump / f, sp.start + x0 * sp.jump))
    return t


def _rf_split(g, node, ins):
    """Split: output k along a spatial axis starts `offset_k` units in: c' = c + offset·j."""
    x, t, rank = node.input[0], ins[0], g.rank(node.input[0])
    if rank is None:
        return [_lost(g, x, t)] * len(node.output)
    axis = attrs(node).get("axis", 0) % rank
    sizes = [g.dim(o, axis) for o in node.output]
    outs, offset = [], 0
    for size in sizes:
        u = t
        for d in (0, 1):
            if t.axes[d] == axis:
                sp = t.spans[d]
                u = _replace(u, d, span=_whole(sp, None) if offset is None else
                             _Span(sp.size, sp.jump, sp.start + offset * sp.jump))
        outs.append(u)
        offset = None if offset is None or size is None else offset + size
    return outs


def _rf_default(g, node, ins):
    """Unknown op: pointwise when it keeps rank and the spatial sizes, else the axes merge away."""
    out = node.output[0]
    for name, t in zip(node.input, ins):
        if t is None:
            continue
        if g.rank(name) != g.rank(out) or any(
                a is not None and g.dim(name, a) != g.dim(out, a) for a in t.axes):
            return _lost(g, name, t)
    return _rf_pointwise(g, node, ins)


def _rf_none(g, node, ins):
    return None


_WEIGHTED = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "DeformConv"}
POINTWISE_OPS = (
    "Relu LeakyRelu PRelu Elu Selu Celu Gelu Sigmoid HardSigmoid HardSwish Swish Mish Tanh Softplus "
    "Softsign ThresholdedRelu Clip Abs Neg Exp Log Sqrt Reciprocal Floor Ceil Round Sign Erf Sin Cos Not "
    "Identity Dropout Cast CastLike BatchNormalization InstanceNormalization LayerNormalization "
    "GroupNormalization MeanVarianceNormalization LRN Add Sub Mul Div Pow Sum Mean Max Min Where Concat "
    "Expand Equal Greater Less GreaterOrEqual LessOrEqual And Or Xor Mod QuantizeLinear DequantizeLinear "
    "IsNaN IsInf Shrink BitShift"
).split()
_RF_RULES: dict[str, Callable] = {
    **{op: _rf_pointwise for op in POINTWISE_OPS},
    **{op: _rf_window for op in (*_WEIGHTED, "MaxPool", "AveragePool", "LpPool")},
    **{op: _rf_global_pool for op in ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")},
    **{op: _rf_reduce for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd",
                                 "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                                 "ReduceSumSquare", "ArgMax", "ArgMin")},
    **{op: _rf_softmax for op in ("Softmax", "LogSoftmax", "Hardmax")},
    **{op: _rf_reshape for op in ("Reshape", "Flatten")},
    **{op: _rf_resize for op in ("Resize", "Upsample")},
    **{op: _rf_none for op in ("Shape", "Size")},
    "Transpose": _rf_transpose,
    "Squeeze": _rf_squeeze,
    "Unsqueeze": _rf_unsqueeze,
    "MatMul": _rf_matmul,
    "Gemm": _rf_gemm,
    "Gather": _rf_gather,
    "Slice": _rf_slice,
    "Pad": _rf_pad,
    "Split": _rf_split,
    "SpaceToDepth": _rf_space_to_depth,
    "DepthToSpace": _rf_depth_to_space,
}


def _check_input(g: GraphView, input_name: str, layout: str) -> None:
    if layout not in ("NCHW", "NHWC"):
        raise ModelError(f"layout must be 'NCHW' or 'NHWC', not {layout!r}")
    if input_name not in g.inputs:
        raise ModelError(f"{input_name!r} is not an input of the model; its inputs are {g.inputs}")
    rank = g.rank(input_name)
    if rank is not None and rank != 4:
        raise ModelError(f"image input {input_name!r} has rank {rank}; a 4-D {layout} tensor is expected")


def track_axes(g: GraphView, input_name: str, layout: str) -> dict[str, _Track]:
    """Receptive-field track of every tensor whose values depend on the image input."""
    _check_input(g, input_name, layout)
    one = _Span(Fraction(1), Fraction(1), Fraction(0))
    tracks = {input_name: _Track((2, 3) if layout == "NCHW" else (1, 2), (one, one))}
    for node in g.nodes:
        ins = [tracks.get(i) for i in node.input]
        if not any(ins):
            continue
        try:
            out = _RF_RULES.get(node.op_type, _rf_default)(g, node, ins)
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as e:
            raise ModelError(f"cannot trace receptive fields through {node.op_type} node {node.name!r} "
                             f"(output {node.output[0]!r}): {type(e).__name__}: {e}") from e
        outs = out if isinstance(out, list) else [out] * len(node.output)
        for name, t in zip(node.output, outs):
            if name and t is not None:
                tracks[name] = t
    return tracks


def _number(x):
    if x == math.inf:
        return math.inf
    x = Fraction(x)
    return int(x) if x.denominator == 1 else float(x)


def field_of(t: _Track) -> ReceptiveField:
    h, w = t.spans
    return ReceptiveField(size=(_number(h.size), _number(w.size)), jump=(_number(h.jump), _number(w.jump)),
                          start=(_number(h.start), _number(w.start)))


def _interval(center: float, size: float) -> tuple:
    if size == math.inf:
        return (-math.inf, math.inf)
    half = (size - 1) / 2
    return (math.floor(center - half), math.ceil(center + half) + 1)


def _clamp(v, lo: int, hi: int) -> int:
    return int(min(max(v, lo), hi))


def receptive_field(model: onnx.ModelProto, input_name: str, layout: str = "NCHW",
                    shapes: Optional[dict] = None) -> dict[str, ReceptiveField]:
    """Receptive field (size, jump, start) in input pixels of every tensor that depends on the input.

    >>> rf = receptive_field(model, "data", "NCHW")["conv5"]
    >>> y0, x0, y1, x1 = rf.box(3, 4, clip_to=(224, 224))
    """
    return {name: field_of(t) for name, t in track_axes(GraphView(model, shapes), input_name, layout).items()}


def spatial_axes(model: onnx.ModelProto, input_name: str, layout: str = "NCHW",
                 shapes: Optional[dict] = None) -> dict[str, tuple[int, int]]:
    """(H axis, W axis) of every tensor that still carries both input spatial axes.

    ``shapes`` overrides static shapes (concrete ones at the analysed size: Model.shapes_at).
    """
    tracks = track_axes(GraphView(model, shapes), input_name, layout)
    return {name: t.axes for name, t in tracks.items() if None not in t.axes}

