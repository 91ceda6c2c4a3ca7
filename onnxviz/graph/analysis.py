"""Static analysis of a CNN graph: layer table, receptive fields, Grad-CAM layers, CAM heads.

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

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelError

__all__ = [
    "CamHead",
    "LayerInfo",
    "ReceptiveField",
    "best_gradcam_layer",
    "cam_head",
    "gradcam_candidates",
    "layer_table",
    "receptive_field",
    "spatial_axes",
    "summarize",
]


# ---------------------------------------------------------------------------- public types


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


@dataclass(frozen=True)
class LayerInfo:
    """One row of the layer table: a tensor produced by a node (``node`` is "" when unnamed).

    ``params`` counts the elements of the node's constant inputs (weights, biases, BN
    statistics, PRelu slopes); ``param_tensors`` names them (stored tensor, elements) so
    that totals count shared initializers once. ``macs`` is per sample, None when a size
    is unknown.
    """

    name: str
    op: str
    node: str
    shape: Optional[tuple]
    params: int
    macs: Optional[int]
    rf: Optional[ReceptiveField]
    param_tensors: tuple = ()


@dataclass(frozen=True, eq=False)
class CamHead:
    """A GAP → fully-connected head: ``logit_c = Σ_k weight[c, k] · mean_hw(feature_k) + bias[c]``.

    CAM for class c is then ``Σ_k weight[c, k] · feature_k`` (Zhou et al., 2016). ``fc`` is the
    node name of the fully-connected layer, None when the pooled tensor is itself the logits
    (SqueezeNet: weight is then the identity).
    """

    feature: str
    weight: np.ndarray
    bias: np.ndarray
    output: str
    logits: str
    channel_axis: int
    fc: Optional[str]


# ---------------------------------------------------------------------------- graph lookups

_FLOATS = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
_RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


class _Graph:
    """Lookups over one model: producers, shapes, dtypes and constant tensors."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.model = model
        self.nodes = list(g.node)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.init = {t.name: t for t in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in self.init]
        self.outputs = [o.name for o in g.output]
        self.producer = {o: k for k, n in enumerate(self.nodes) for o in n.output if o}
        self.shapes, self.dtypes = {}, {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            self._read_value_info(vi)
        for t in g.initializer:
            self.shapes[t.name], self.dtypes[t.name] = tuple(t.dims), t.data_type
        self.const = set(self.init) | {""}
        for n in self.nodes:
            if n.op_type not in _RANDOM and all(i in self.const for i in n.input):
                self.const.update(n.output)

    def _read_value_info(self, vi):
        t = vi.type.tensor_type
        if vi.type.HasField("tensor_type"):
            self.dtypes[vi.name] = t.elem_type
        if t.HasField("shape"):
            self.shapes[vi.name] = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)

    def node_of(self, name: str):
        k = self.producer.get(name)
        return None if k is None else self.nodes[k]

    def shape(self, name: str) -> Optional[tuple]:
        """Shape with ints for known dims, dim_param strings or None for unknown ones."""
        return self.shapes.get(name)

    def rank(self, name: str) -> Optional[int]:
        s = self.shapes.get(name)
        return None if s is None else len(s)

    def dim(self, name: str, axis: int) -> Optional[int]:
        s = self.shapes.get(name)
        if s is None or not -len(s) <= axis < len(s):
            return None
        d = s[axis]
        return d if isinstance(d, int) else None

    def is_float(self, name: str) -> bool:
        return self.dtypes.get(name, TensorProto.FLOAT) in _FLOATS


def _attrs(node) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _const_value(g: _Graph, name: str) -> Optional[np.ndarray]:
    """Value of a constant tensor (initializer, Constant, or a subgraph of constants), else None."""
    if not name or name not in g.const:
        return None
    if name in g.init:
        return numpy_helper.to_array(g.init[name])
    node = g.node_of(name)
    if node.op_type == "Constant":
        a = _attrs(node)
        if "value" in a:
            return numpy_helper.to_array(a["value"])
        for key in ("value_float", "value_floats", "value_int", "value_ints"):
            if key in a:
                return np.asarray(a[key], np.float32 if "float" in key else np.int64)
        return None
    return _evaluate_constant(g, name)


def _evaluate_constant(g: _Graph, name: str) -> Optional[np.ndarray]:
    """Run the constant subgraph behind `name` with onnx's numpy reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    needed, stack = set(), [name]
    while stack:
        k = g.producer.get(stack.pop())
        if k is not None and k not in needed:
            needed.add(k)
            stack.extend(i for i in g.nodes[k].input if i)
    nodes = [g.nodes[k] for k in sorted(needed)]
    inits = [g.init[i] for n in nodes for i in n.input if i in g.init]
    graph = helper.make_graph(nodes, "const", [], [onnx.ValueInfoProto(name=name)],
                              initializer=list({t.name: t for t in inits}.values()))
    model = helper.make_model(graph, opset_imports=list(g.model.opset_import))
    model.ir_version = g.model.ir_version
    try:
        return np.asarray(ReferenceEvaluator(model).run(None, {})[0])
    except Exception:  # an exotic constant subgraph: report "unknown" rather than fail the analysis
        return None


def _ints(g: _Graph, node, attr: str, index: int) -> Optional[list]:
    """An int-list setting given as attribute (old opsets) or constant input (new ones)."""
    a = _attrs(node)
    if attr in a:
        v = a[attr]
        return [v] if isinstance(v, int) else list(v)
    if len(node.input) > index and node.input[index]:
        v = _const_value(g, node.input[index])
        return None if v is None else [int(x) for x in np.ravel(v)]
    return None


def _floats(g: _Graph, node, attr: str, index: int) -> Optional[list]:
    a = _attrs(node)
    if attr in a:
        return list(a[attr])
    if len(node.input) > index and node.input[index]:
        v = _const_value(g, node.input[index])
        return None if v is None or v.size == 0 else [float(x) for x in np.ravel(v)]
    return None


# ---------------------------------------------------------------------------- receptive-field tracks


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


def _remap(g: _Graph, name: str, t: _Track, mapping: Callable[[int], Optional[int]]) -> _Track:
    """Move tracked axes to new positions; an axis mapped to None is merged away (whole)."""
    for d in (0, 1):
        a = t.axes[d]
        if a is None:
            continue
        new = mapping(a)
        t = _replace(t, d, axis=new, span=None if new is not None else _whole(t.spans[d], g.dim(name, a)))
    return t


def _mix(g: _Graph, name: str, t: _Track, axes, keep: bool = True) -> _Track:
    """Units along `axes` all see each other (a reduction); keep=False also drops those axes."""
    axes = set(axes)
    for d in (0, 1):
        a = t.axes[d]
        if a in axes:
            t = _replace(t, d, axis=a if keep else None, span=_whole(t.spans[d], g.dim(name, a)))
    if keep:
        return t
    return _Track(tuple(None if a is None else a - sum(r < a for r in axes) for a in t.axes), t.spans)


def _lost(g: _Graph, name: str, t: _Track) -> _Track:
    return _mix(g, name, t, [a for a in t.axes if a is not None], keep=False)


def _merge(g: _Graph, out: str, parts) -> _Track:
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


def _part(g: _Graph, name: str, t: _Track, mapping) -> tuple:
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
    a = _attrs(node)
    k = a.get("kernel_shape")
    if k is None:
        w = g.shape(node.input[3 if node.op_type == "QLinearConv" else 1])
        k = None if w is None or not all(isinstance(x, int) for x in w[2:]) else list(w[2:])
    if k is None:
        return None, None, None, None, None
    nd = len(k)
    return (list(k), a.get("strides", [1] * nd), a.get("dilations", [1] * nd),
            a.get("pads", [0] * (2 * nd)), a.get("auto_pad", "NOTSET"))


def _pad_begin(auto: str, pads, i: int, n: Optional[int], ke: int, s: int) -> int:
    """Begin pad of Conv/Pool axis i; SAME total = max((⌈n/s⌉-1)s + k_eff - n, 0)."""
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        # unknown n: exact when n is a multiple of s, the usual case for image sizes
        total = max(ke - s, 0) if n is None else max((-(-n // s) - 1) * s + ke - n, 0)
        return total // 2 if auto == "SAME_UPPER" else total - total // 2
    return 0 if auto == "VALID" else pads[i]


def _convt_pad_begin(node, pads, i: int, n: Optional[int], ke: int, s: int) -> int:
    """Begin pad of ConvTranspose axis i, derived from output_shape / auto_pad as the spec says."""
    a = _attrs(node)
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
                sp = _conv_span(t.spans[d], k[i], s[i], dil[i], _pad_begin(auto, pads, i, n, ke, s[i]))
            t = _replace(t, d, span=sp)
        elif a == 1 and node.op_type in _WEIGHTED:  # convolution sums over its channel axis
            t = _mix(g, x, t, [1])
    return t


def _rf_space_to_depth(g, node, ins):
    b = _attrs(node)["blocksize"]
    t = ins[0]
    for d in (0, 1):
        if t.axes[d] in (2, 3):
            t = _replace(t, d, span=_conv_span(t.spans[d], b, b, 1, 0))
    return t


def _rf_depth_to_space(g, node, ins):
    """Output row y copies input row ⌊y/b⌋: j' = j/b."""
    b = _attrs(node)["blocksize"]
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
    x, t, a = node.input[0], ins[0], _attrs(node)
    rank = g.rank(x)
    if node.op_type in ("ArgMax", "ArgMin"):
        axes = [a.get("axis", 0)]
    else:
        axes = _ints(g, node, "axes", 1)
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
    axis = _attrs(node).get("axis", 1 if g.opset < 13 else -1) % rank
    return _mix(g, x, ins[0], range(axis, rank) if g.opset < 13 else [axis])


def _rf_transpose(g, node, ins):
    rank = g.rank(node.input[0]) or 1 + max(a for a in ins[0].axes if a is not None)
    perm = list(_attrs(node).get("perm", range(rank - 1, -1, -1)))
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
        ax = _attrs(node).get("axis", 1) % max(len(src), 1)
        dst = tuple(math.prod(part) if all(isinstance(v, int) for v in part) else None
                    for part in (src[:ax], src[ax:]))
    mapping = _reshape_axes(src, dst) if src is not None and dst is not None else {}
    return _remap(g, x, ins[0], mapping.get)


def _rf_squeeze(g, node, ins):
    axes, rank = _ints(g, node, "axes", 1), g.rank(node.input[0])
    if axes is None or rank is None:
        return _rf_reshape(g, node, ins)
    axes = {a % rank for a in axes}
    return _remap(g, node.input[0], ins[0], lambda a: None if a in axes else a - sum(r < a for r in axes))


def _rf_unsqueeze(g, node, ins):
    axes, rank = _ints(g, node, "axes", 1), g.rank(node.input[0])
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
    a = _attrs(node)
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
    axis = _attrs(node).get("axis", 0) % rank
    return _remap(g, x, t, lambda a: a if a < axis else (None if a == axis else a + q - 1))


def _rf_slice(g, node, ins):
    """Slice: c' = c + begin·j, j' = j·step along sliced spatial axes."""
    x, t, rank = node.input[0], ins[0], g.rank(node.input[0])
    if g.opset < 10:
        a = _attrs(node)
        starts, axes, steps = a.get("starts"), a.get("axes"), None
    else:
        starts, axes, steps = _ints(g, node, "", 1), _ints(g, node, "", 3), _ints(g, node, "", 4)
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
    pads = _ints(g, node, "pads", 1) if g.opset >= 2 else _ints(g, node, "paddings", 1)
    if pads is None or rank is None:
        return _lost(g, x, t)
    axes = [a % rank for a in (_ints(g, node, "", 3) or range(len(pads) // 2))]
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
        scales = _floats(g, node, "scales", 1)
    else:
        scales = _floats(g, node, "", 1 if g.opset < 11 else 2)
    sizes = None if node.op_type == "Upsample" or g.opset < 11 else _ints(g, node, "", 3)
    axes = _attrs(node).get("axes")
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
    x, t, a = node.input[0], ins[0], _attrs(node)
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
    axis = _attrs(node).get("axis", 0) % rank
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
_POINTWISE = (
    "Relu LeakyRelu PRelu Elu Selu Celu Gelu Sigmoid HardSigmoid HardSwish Swish Mish Tanh Softplus "
    "Softsign ThresholdedRelu Clip Abs Neg Exp Log Sqrt Reciprocal Floor Ceil Round Sign Erf Sin Cos Not "
    "Identity Dropout Cast CastLike BatchNormalization InstanceNormalization LayerNormalization "
    "GroupNormalization MeanVarianceNormalization LRN Add Sub Mul Div Pow Sum Mean Max Min Where Concat "
    "Expand Equal Greater Less GreaterOrEqual LessOrEqual And Or Xor Mod QuantizeLinear DequantizeLinear "
    "IsNaN IsInf Shrink BitShift"
).split()
_RF_RULES: dict[str, Callable] = {
    **{op: _rf_pointwise for op in _POINTWISE},
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


def _check_input(g: _Graph, input_name: str, layout: str) -> None:
    if layout not in ("NCHW", "NHWC"):
        raise ModelError(f"layout must be 'NCHW' or 'NHWC', not {layout!r}")
    if input_name not in g.inputs:
        raise ModelError(f"{input_name!r} is not an input of the model; its inputs are {g.inputs}")
    rank = g.rank(input_name)
    if rank is not None and rank != 4:
        raise ModelError(f"image input {input_name!r} has rank {rank}; a 4-D {layout} tensor is expected")


def _tracks(g: _Graph, input_name: str, layout: str) -> dict[str, _Track]:
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


def _public(t: _Track) -> ReceptiveField:
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


def receptive_field(model: onnx.ModelProto, input_name: str, layout: str = "NCHW") -> dict[str, ReceptiveField]:
    """Receptive field (size, jump, start) in input pixels of every tensor that depends on the input.

    >>> rf = receptive_field(model, "data", "NCHW")["conv5"]
    >>> y0, x0, y1, x1 = rf.box(3, 4, clip_to=(224, 224))
    """
    return {name: _public(t) for name, t in _tracks(_Graph(model), input_name, layout).items()}


def spatial_axes(model: onnx.ModelProto, input_name: str, layout: str = "NCHW") -> dict[str, tuple[int, int]]:
    """(H axis, W axis) of every tensor that still carries both input spatial axes."""
    tracks = _tracks(_Graph(model), input_name, layout)
    return {name: t.axes for name, t in tracks.items() if None not in t.axes}


# ---------------------------------------------------------------------------- parameters and MACs

_PASS_THROUGH = {"Identity", "Cast", "CastLike", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose",
                 "DequantizeLinear", "Expand"}
# ops whose inputs after the first are settings (shapes, scales, pads, bounds), never weights
_DATA_ONLY = {"Reshape", "Expand", "Tile", "Slice", "Pad", "Resize", "Upsample", "Clip", "Split", "Squeeze",
              "Unsqueeze", "TopK", "Gather", "ConstantOfShape", "Range", "OneHot", "ReduceMean", "ReduceSum",
              "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare",
              "QuantizeLinear", "DequantizeLinear", "Dropout"}
# quantized ops: which inputs are weights (stored as integers)
_PARAM_INPUTS = {"QLinearConv": (3, 8), "QLinearMatMul": (3,), "ConvInteger": (1,), "MatMulInteger": (1,)}


def _param_root(g: _Graph, name: str) -> str:
    """The stored tensor behind a constant input, through Identity/Cast/Reshape/DequantizeLinear..."""
    node = g.node_of(name)
    while node is not None and node.op_type in _PASS_THROUGH and node.input[0] in g.const:
        name = node.input[0]
        node = g.node_of(name)
    return name


def _numel(g: _Graph, name: str) -> int:
    shape = g.shape(name)
    if shape is not None and all(isinstance(d, int) for d in shape):
        return math.prod(shape)
    node = g.node_of(name)
    if node is not None and node.op_type == "ConstantOfShape":
        dims = _const_value(g, node.input[0])
        if dims is not None:
            return int(np.prod(dims))
    value = _const_value(g, name)
    return 0 if value is None else int(value.size)


def _node_params(g: _Graph, node) -> tuple:
    """((stored tensor, elements), ...) for the node's constant weight-like inputs."""
    idx = _PARAM_INPUTS.get(node.op_type)
    if idx is not None:
        names = [node.input[i] for i in idx if i < len(node.input)]
    else:
        names = node.input[:1] if node.op_type in _DATA_ONLY else node.input
        names = [n for n in names if g.is_float(n)]
    roots = {}
    for name in names:
        if name and name in g.const:
            root = _param_root(g, name)
            roots.setdefault(root, _numel(g, root))
    return tuple(roots.items())


def _prod(dims) -> Optional[int]:
    if dims is None or not all(isinstance(d, int) for d in dims):
        return None
    return math.prod(dims)


def _per_sample(shape) -> Optional[int]:
    if shape is None:
        return None
    return _prod(shape[1:] if len(shape) >= 2 else shape)


def _node_macs(g: _Graph, node) -> Optional[int]:
    """Multiply-accumulates per sample: Conv = out elements × Cin/group × kh × kw;
    ConvTranspose = in elements × Cout/group × kh × kw; Gemm/MatMul = out elements × K; others 0."""
    op, out = node.op_type, node.output[0]
    if op in ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose"):
        w = g.shape(node.input[3 if op == "QLinearConv" else 1])
        data = g.shape(node.input[0]) if op == "ConvTranspose" else g.shape(out)
        a, b = _per_sample(data), None if w is None else _prod(w[1:])
        return None if a is None or b is None else a * b
    if op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
        x = g.shape(node.input[0])
        if x is None:
            return None
        k = x[0] if op == "Gemm" and _attrs(node).get("transA", 0) else x[-1]
        a = _per_sample(g.shape(out))
        return None if a is None or not isinstance(k, int) else a * k
    return 0


def layer_table(model: onnx.ModelProto, input_name: str, layout: str = "NCHW") -> list[LayerInfo]:
    """One row per float tensor computed from the inputs: op, shape, params, MACs, receptive field.

    Constant subgraphs (weights made by ConstantOfShape, Unsqueeze of a bias...) are not rows;
    their elements count as params of the node that consumes them, as do constant operands of
    Add/Mul (a split BatchNorm); settings (shapes, scales, pads, Clip bounds, Dropout ratio) do
    not. A node's params and MACs sit on its first output.
    """
    g = _Graph(model)
    tracks = _tracks(g, input_name, layout)
    rows = []
    for node in g.nodes:
        if all(o in g.const for o in node.output):
            continue
        params, macs = _node_params(g, node), _node_macs(g, node)
        for k, name in enumerate(node.output):
            if not name or not g.is_float(name):
                continue
            shape = g.shape(name)
            shape = None if shape is None else tuple(d if isinstance(d, int) else None for d in shape)
            t = tracks.get(name)
            rows.append(LayerInfo(name, node.op_type, node.name, shape,
                                  sum(n for _, n in params) if k == 0 else 0, macs if k == 0 else 0,
                                  None if t is None else _public(t), params if k == 0 else ()))
    return rows


def summarize(layers: Sequence[LayerInfo]) -> dict:
    """Totals of a layer table: params (shared tensors counted once), MACs per sample.

    ``macs_unknown`` counts rows whose MACs depend on an unknown size (left out of ``macs``).
    """
    stored = {}
    for row in layers:
        stored.update(row.param_tensors)
    return {
        "layers": len(layers),
        "params": sum(stored.values()),
        "macs": sum(row.macs for row in layers if row.macs),
        "macs_unknown": sum(row.macs is None for row in layers),
    }


# ---------------------------------------------------------------------------- Grad-CAM layers

_ACTIVATIONS = {"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid",
                "HardSwish", "Swish", "Mish", "Tanh", "Softplus", "Softsign", "ThresholdedRelu", "Clip"}
_SAME_VALUES = {"Identity", "Dropout", "Cast"}
# ops that keep a tensor's spatial meaning: a chain of them leads back to the layer that made it
_CHAIN = _ACTIVATIONS | _SAME_VALUES | {"BatchNormalization", "InstanceNormalization", "LRN", "Transpose",
                                        "MaxPool", "AveragePool", "LpPool", "Add", "Sub", "Mul", "Div"}


def _has_extent(g: _Graph, tracks, name: str) -> bool:
    """Both input axes are still there, each larger than 1 (or dynamic)."""
    t = tracks.get(name)
    return t is not None and None not in t.axes and all(g.dim(name, a) != 1 for a in t.axes)


def _is_spatial(g: _Graph, tracks, name: str) -> bool:
    """A 4-D tensor with spatial extent: what Grad-CAM can weight and upsample."""
    return g.rank(name) == 4 and _has_extent(g, tracks, name)


def _is_gate(g: _Graph, tracks, node, name: str) -> bool:
    """An input broadcast over the spatial axes of a spatial output: an SE-style gate or scale."""
    if node.op_type not in _POINTWISE or not _has_extent(g, tracks, node.output[0]):
        return False
    return not _has_extent(g, tracks, name)


def _main_path(g: _Graph, tracks) -> set:
    """Tensors that reach a model output other than only through gates."""
    main = set(g.outputs)
    for node in reversed(g.nodes):
        if any(o in main for o in node.output):
            main.update(i for i in node.input if i in tracks and not _is_gate(g, tracks, node, i))
    return main


def _data_input(g: _Graph, tracks, node) -> Optional[str]:
    """The single input-dependent, non-gate input of a node, if there is exactly one."""
    names = [i for i in node.input if i in tracks and not _is_gate(g, tracks, node, i)]
    return names[0] if len(set(names)) == 1 else None


def _chain(g: _Graph, tracks, name: str) -> list:
    """`name` and the tensors behind it through activations, pools and the like, up to the layer."""
    chain = [name]
    node = g.node_of(name)
    while node is not None and node.op_type in _CHAIN:
        x = _data_input(g, tracks, node)
        if x is None or x in chain or not _is_spatial(g, tracks, x):
            break
        chain.append(x)
        node = g.node_of(x)
    first = next((k for k, n in enumerate(chain) if g.node_of(n) is None
                  or g.node_of(n).op_type not in _SAME_VALUES), 0)
    return [chain[first]] + chain[:first] + chain[first + 1:]


def gradcam_candidates(model: onnx.ModelProto, input_name: str, layout: str = "NCHW") -> list[str]:
    """Tensors for Grad-CAM, best first: the last spatial tensors before the head pools them away.

    A candidate is 4-D with H, W > 1 (or dynamic), lies on the main path to an output (not only
    behind an SE gate) and is consumed there by a node whose output has lost spatial extent
    (GlobalAveragePool, an AveragePool covering the map, Flatten/Reshape, ReduceMean, Gemm).
    Each is followed by the tensors behind it up to its layer; copies (Dropout, Identity) defer
    to the activation they copy, so a conv→relu→GAP head gives [relu, conv].
    """
    g = _Graph(model)
    tracks = _tracks(g, input_name, layout)
    main = _main_path(g, tracks)
    frontier = []
    for k, node in enumerate(g.nodes):
        if not any(o in main for o in node.output):
            continue
        outs = [o for o in node.output if o in tracks]
        if not outs or any(_has_extent(g, tracks, o) for o in outs):
            continue
        for x in node.input:
            if x in main and _is_spatial(g, tracks, x) and not _is_gate(g, tracks, node, x):
                frontier.append(x)
    frontier.sort(key=lambda n: g.producer.get(n, -1), reverse=True)
    out = []
    for name in frontier:
        out += [c for c in _chain(g, tracks, name) if c not in out]
    return out


def best_gradcam_layer(model: onnx.ModelProto, input_name: str, layout: str = "NCHW") -> str:
    """The first Grad-CAM candidate; ModelError when the model has no pooled spatial tensor."""
    found = gradcam_candidates(model, input_name, layout)
    if not found:
        raise ModelError(
            "found no 4-D tensor with spatial extent (H, W > 1) that the classifier head pools away "
            "(no GlobalAveragePool/Flatten/ReduceMean after the convolutions on the path to the output); "
            "name a layer explicitly (see `onnxviz inspect` for the tensor names)")
    return found[0]


# ---------------------------------------------------------------------------- CAM heads

_AFTER_FC = {"Softmax", "LogSoftmax", "Identity", "Dropout", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Cast"}
_BEFORE_FC = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast", "Transpose"}


def _skip_back(g: _Graph, tracks, name: str, ops) -> str:
    node = g.node_of(name)
    while node is not None and node.op_type in ops:
        x = _data_input(g, tracks, node)
        if x is None:
            break
        name, node = x, g.node_of(x)
    return name


def _pooled(g: _Graph, tracks, node):
    """(feature, channel_axis, scale) when `node` averages its input over both spatial axes.

    `scale` = pooled value / spatial mean: ≠ 1 only for an AveragePool counting padding.
    """
    if node is None or not node.input:
        return None
    x = node.input[0]
    t, rank, a = tracks.get(x), g.rank(x), _attrs(node)
    if t is None or None in t.axes or rank is None:
        return None
    scale = 1.0
    if node.op_type == "GlobalAveragePool":
        pooled = set(range(2, rank))
    elif node.op_type == "ReduceMean":
        axes = _ints(g, node, "axes", 1)
        pooled = set(range(rank)) if not axes else {ax % rank for ax in axes}
    elif node.op_type == "AveragePool":
        pooled, scale = _covering_pool(g, node, a, x)
    else:
        return None
    channels = [ax for ax in range(1, rank) if ax not in t.axes]
    if not set(t.axes) <= pooled or len(channels) != 1 or channels[0] in pooled:
        return None
    return x, channels[0], scale


def _covering_pool(g: _Graph, node, a: dict, x: str) -> tuple:
    """Axes an AveragePool averages whole (its single window covers them), and its scale to the mean."""
    k, s, pads = a["kernel_shape"], a.get("strides", [1] * len(a["kernel_shape"])), a.get("pads")
    nd = len(k)
    pads = pads or [0] * 2 * nd
    pooled, scale = set(), 1.0
    for i in range(nd):
        n, n_out = g.dim(x, 2 + i), g.dim(node.output[0], 2 + i)
        pb = _pad_begin(a.get("auto_pad", "NOTSET"), pads, i, n, k[i], s[i])
        if n is None or n_out != 1 or k[i] - pb < n:
            continue
        pooled.add(2 + i)
        if a.get("count_include_pad", 0):
            pe = max(k[i] - pb - n, 0) if a.get("auto_pad", "NOTSET") != "NOTSET" else pads[nd + i]
            scale *= n / min(k[i], n + pb + pe)
    return pooled, scale


def _fc_data(g: _Graph, tracks, node) -> Optional[str]:
    """The data input of a Gemm / MatMul / Conv with constant weights, else None."""
    if node is None or node.op_type not in ("Gemm", "MatMul", "Conv") or len(node.input) < 2:
        return None
    a = _attrs(node)
    if a.get("transA", 0) or a.get("group", 1) != 1 or node.input[1] not in g.const:
        return None
    return node.input[0] if node.input[0] in tracks else None


def _fc_weights(g: _Graph, node) -> Optional[tuple]:
    """(weight classes×channels, bias) of a fully-connected node: Gemm (any transB), MatMul, 1×1 Conv."""
    a, w = _attrs(node), _const_value(g, node.input[1])
    c = _const_value(g, node.input[2]) if len(node.input) > 2 else None
    if w is None:
        return None
    if node.op_type == "Gemm" and w.ndim == 2:
        w = (w if a.get("transB", 0) else w.T) * a.get("alpha", 1.0)
        return w, _bias(c, w.shape[0], a.get("beta", 1.0))
    if node.op_type == "MatMul" and w.ndim == 2:
        return w.T, _bias(None, w.shape[1])
    if node.op_type == "Conv" and w.ndim == 4 and w.shape[2:] == (1, 1):
        return w.reshape(w.shape[:2]), _bias(c, w.shape[0])
    return None


def _bias(c, classes: int, scale: float = 1.0) -> Optional[np.ndarray]:
    if c is None:
        return np.zeros(classes, np.float32)
    c = np.asarray(c) * scale
    if c.ndim > 1 and c.shape[0] != 1:
        return None
    return np.broadcast_to(c.reshape(c.shape[-1:]), (classes,)).copy()


def _extra_bias(g: _Graph, tracks, name: str):
    """(bias, data input) when `name` is Add(data, constant), as after a Keras Dense MatMul."""
    node = g.node_of(name)
    if node is None or node.op_type != "Add":
        return None, name
    consts = [i for i in node.input if i in g.const]
    data = [i for i in node.input if i in tracks]
    if len(consts) != 1 or len(data) != 1:
        return None, name
    return np.ravel(_const_value(g, consts[0])), data[0]


def cam_head(model: onnx.ModelProto, input_name: str, layout: str = "NCHW",
             output: Optional[str] = None) -> Optional[CamHead]:
    """The GAP → fully-connected head of a classifier, for CAM (Zhou et al., 2016), or None.

    Recognises GlobalAveragePool, ReduceMean over H and W, or an AveragePool whose window covers
    the map; then Flatten/Reshape/Squeeze/Transpose; then Gemm (any transB), MatMul or a 1×1
    Conv with constant weights (plus an optional constant Add); then Softmax/LogSoftmax/Identity.
    Walking back from the output, SE gates cannot pass for a head. A GAP whose output is already
    the logits (SqueezeNet: conv10 → relu → GAP → softmax) gives an identity weight.
    """
    g = _Graph(model)
    tracks = _tracks(g, input_name, layout)
    for out in [output] if output else g.outputs:
        head = _head_at(g, tracks, out)
        if head is not None:
            return head
    return None


def _head_at(g: _Graph, tracks, out: str) -> Optional[CamHead]:
    logits = _skip_back(g, tracks, out, _AFTER_FC)
    extra, name = _extra_bias(g, tracks, logits)
    fc_node = g.node_of(name)
    data = _fc_data(g, tracks, fc_node)
    pooled = _pooled(g, tracks, g.node_of(_skip_back(g, tracks, data or name, _BEFORE_FC)))
    if pooled is None:  # checked before loading any weights: flatten heads (VGG) stop here
        return None
    feature, channel_axis, scale = pooled
    channels = g.dim(feature, channel_axis)
    if data is None:
        if channels is None:
            return None
        weight, bias = np.eye(channels, dtype=np.float32), np.zeros(channels, np.float32)
    else:
        fc = _fc_weights(g, fc_node)
        if fc is None or fc[1] is None:
            return None
        weight, bias = fc
    if channels is not None and weight.shape[1] != channels:
        return None
    if extra is not None:
        if extra.size not in (1, weight.shape[0]):
            return None
        bias = bias + extra
    return CamHead(feature=feature, weight=np.asarray(weight * scale, dtype=weight.dtype), bias=bias,
                   output=out, logits=logits, channel_axis=channel_axis,
                   fc=None if data is None else fc_node.name)
