"""Where a classifier's head pools its feature maps: Grad-CAM target layers, CAM heads, the penultimate layer.

Grad-CAM layers and CAM heads read the spatial-axis tracks of :mod:`.receptive_fields` from the ModelProto only (run
``onnx.shape_inference.infer_shapes`` first for shapes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx

from ..errors import ModelError, OnnxvizError
from .receptive_fields import POINTWISE_OPS, pad_begin, track_axes
from .view import GraphView, attrs, const_value, ints, walk_back

__all__ = ["CamHead", "best_gradcam_layer", "cam_head", "gradcam_candidates", "penultimate_layer"]


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


# ---------------------------------------------------------------------------- Grad-CAM layers

_ACTIVATIONS = {"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid",
                "HardSwish", "Swish", "Mish", "Tanh", "Softplus", "Softsign", "ThresholdedRelu", "Clip"}
_SAME_VALUES = {"Identity", "Dropout", "Cast"}
# ops that keep a tensor's spatial meaning: a chain of them leads back to the layer that made it
_CHAIN = _ACTIVATIONS | _SAME_VALUES | {"BatchNormalization", "InstanceNormalization", "LRN", "Transpose",
                                        "MaxPool", "AveragePool", "LpPool", "Add", "Sub", "Mul", "Div"}


def _has_extent(g: GraphView, tracks, name: str) -> bool:
    """Both input axes are still there, each larger than 1 (or dynamic)."""
    t = tracks.get(name)
    return t is not None and None not in t.axes and all(g.dim(name, a) != 1 for a in t.axes)


def _is_spatial(g: GraphView, tracks, name: str) -> bool:
    """A 4-D tensor with spatial extent: what Grad-CAM can weight and upsample."""
    return g.rank(name) == 4 and _has_extent(g, tracks, name)


def _is_gate(g: GraphView, tracks, node, name: str) -> bool:
    """An input broadcast over the spatial axes of a spatial output: an SE-style gate or scale."""
    if node.op_type not in POINTWISE_OPS or not _has_extent(g, tracks, node.output[0]):
        return False
    return not _has_extent(g, tracks, name)


def _main_path(g: GraphView, tracks) -> set:
    """Tensors that reach a model output other than only through gates."""
    main = set(g.outputs)
    for node in reversed(g.nodes):
        if any(o in main for o in node.output):
            main.update(i for i in node.input if i in tracks and not _is_gate(g, tracks, node, i))
    return main


def _data_input(g: GraphView, tracks, node) -> Optional[str]:
    """The single input-dependent, non-gate input of a node, if there is exactly one."""
    names = [i for i in node.input if i in tracks and not _is_gate(g, tracks, node, i)]
    return names[0] if len(set(names)) == 1 else None


def _chain(g: GraphView, tracks, name: str) -> list:
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


def gradcam_candidates(model: onnx.ModelProto, input_name: str, layout: str = "NCHW",
                       shapes: Optional[dict] = None) -> list[str]:
    """Tensors for Grad-CAM, best first: the last spatial tensors before the head pools them away.

    A candidate is 4-D with H, W > 1 (or dynamic), lies on the main path to an output (not only
    behind an SE gate) and is consumed there by a node whose output has lost spatial extent
    (GlobalAveragePool, an AveragePool covering the map, Flatten/Reshape, ReduceMean, Gemm).
    Each is followed by the tensors behind it up to its layer; copies (Dropout, Identity) defer
    to the activation they copy, so a conv→relu→GAP head gives [relu, conv]. When an output
    keeps spatial extent (a dense head) or nothing is pooled, the coarsest spatial tensors come
    first (:func:`_dense_candidates`). Sequence heads (N, T, C) find the last 4-D tensor before
    the reshape that makes the sequence: that reshape is where spatial extent is lost.
    ``shapes`` overrides static shapes (concrete ones at the analysed size: Model.shapes_at).
    """
    g = GraphView(model, shapes)
    tracks = track_axes(g, input_name, layout)
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
    if not out or any(_has_extent(g, tracks, o) for o in g.outputs):
        out = [c for c in _dense_candidates(g, tracks, main) if c not in out] + out
    return out


def _output_chain(g: GraphView, tracks) -> set:
    """The outputs and the tensors they copy, activate, normalize or upsample, back to the layer
    that computes the scores (a dense head's classifier): scores, not features."""
    found = set()
    for name in g.outputs:
        while name is not None and name not in found:
            found.add(name)
            node = g.node_of(name)
            if node is None or node.op_type not in _CHAIN | {"Softmax", "LogSoftmax", "Resize", "Upsample"}:
                break
            name = _data_input(g, tracks, node)
    return found


def _dense_candidates(g: GraphView, tracks, main: set) -> list[str]:
    """Grad-CAM layers of a dense head (the output keeps spatial extent: segmentation, detection maps).

    The coarsest tensors on the main path (largest product of receptive-field jumps: the
    bottleneck of an encoder–decoder, the last stage of a backbone before any upsampling),
    deepest first, each followed by the tensors behind it up to its layer.
    """
    scores = _output_chain(g, tracks)
    spatial = [n for n in main if n in tracks and n not in scores and _is_spatial(g, tracks, n) and n in g.producer]
    if not spatial:
        return []

    def coarseness(name):
        jh, jw = (sp.jump for sp in tracks[name].spans)
        return abs(jh * jw)

    spatial.sort(key=lambda n: (coarseness(n), g.producer[n]), reverse=True)
    out = []
    for name in spatial:
        out += [c for c in _chain(g, tracks, name) if c not in out]
    return out


def best_gradcam_layer(model: onnx.ModelProto, input_name: str, layout: str = "NCHW",
                       shapes: Optional[dict] = None) -> str:
    """The first Grad-CAM candidate; ModelError when the model has no pooled spatial tensor."""
    found = gradcam_candidates(model, input_name, layout, shapes)
    if not found:
        raise ModelError(
            "found no 4-D tensor with spatial extent (H, W > 1) on the path to the output; "
            "name a layer explicitly (see `onnxviz inspect` for the tensor names)")
    return found[0]


# ---------------------------------------------------------------------------- CAM heads

_AFTER_FC = {"Softmax", "LogSoftmax", "Identity", "Dropout", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Cast"}
_BEFORE_FC = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast", "Transpose"}


def _skip_back(g: GraphView, tracks, name: str, ops) -> str:
    return walk_back(name, g.node_of, ops, lambda node: _data_input(g, tracks, node))[0]


def _pooled(g: GraphView, tracks, node):
    """(feature, channel_axis, scale) when `node` averages its input over both spatial axes.

    `scale` = pooled value / spatial mean: ≠ 1 only for an AveragePool counting padding.
    """
    if node is None or not node.input:
        return None
    x = node.input[0]
    t, rank, a = tracks.get(x), g.rank(x), attrs(node)
    if t is None or None in t.axes or rank is None:
        return None
    scale = 1.0
    if node.op_type == "GlobalAveragePool":
        pooled = set(range(2, rank))
    elif node.op_type == "ReduceMean":
        axes = ints(g, node, "axes", 1)
        pooled = set(range(rank)) if not axes else {ax % rank for ax in axes}
    elif node.op_type == "AveragePool":
        pooled, scale = _covering_pool(g, node, a, x)
    else:
        return None
    channels = [ax for ax in range(1, rank) if ax not in t.axes]
    if not set(t.axes) <= pooled or len(channels) != 1 or channels[0] in pooled:
        return None
    return x, channels[0], scale


def _covering_pool(g: GraphView, node, a: dict, x: str) -> tuple:
    """Axes an AveragePool averages whole (its single window covers them), and its scale to the mean."""
    k, s, pads = a["kernel_shape"], a.get("strides", [1] * len(a["kernel_shape"])), a.get("pads")
    nd = len(k)
    pads = pads or [0] * 2 * nd
    pooled, scale = set(), 1.0
    for i in range(nd):
        n, n_out = g.dim(x, 2 + i), g.dim(node.output[0], 2 + i)
        pb = pad_begin(a.get("auto_pad", "NOTSET"), pads, i, n, k[i], s[i])
        if n is None or n_out != 1 or k[i] - pb < n:
            continue
        pooled.add(2 + i)
        if a.get("count_include_pad", 0):
            pe = max(k[i] - pb - n, 0) if a.get("auto_pad", "NOTSET") != "NOTSET" else pads[nd + i]
            scale *= n / min(k[i], n + pb + pe)
    return pooled, scale


def _fc_data(g: GraphView, tracks, node) -> Optional[str]:
    """The data input of a Gemm / MatMul / Conv with constant weights, else None."""
    if node is None or node.op_type not in ("Gemm", "MatMul", "Conv") or len(node.input) < 2:
        return None
    a = attrs(node)
    if a.get("transA", 0) or a.get("group", 1) != 1 or node.input[1] not in g.const:
        return None
    return node.input[0] if node.input[0] in tracks else None


def _fc_weights(g: GraphView, node) -> Optional[tuple]:
    """(weight classes×channels, bias) of a fully-connected node: Gemm (any transB), MatMul, 1×1 Conv."""
    a, w = attrs(node), const_value(g, node.input[1])
    c = const_value(g, node.input[2]) if len(node.input) > 2 else None
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


def _extra_bias(g: GraphView, tracks, name: str):
    """(bias, data input) when `name` is Add(data, constant), as after a Keras Dense MatMul."""
    node = g.node_of(name)
    if node is None or node.op_type != "Add":
        return None, name
    consts = [i for i in node.input if i in g.const]
    data = [i for i in node.input if i in tracks]
    if len(consts) != 1 or len(data) != 1:
        return None, name
    return np.ravel(const_value(g, consts[0])), data[0]


def cam_head(model: onnx.ModelProto, input_name: str, layout: str = "NCHW",
             output: Optional[str] = None, shapes: Optional[dict] = None) -> Optional[CamHead]:
    """The GAP → fully-connected head of a classifier, for CAM (Zhou et al., 2016), or None.

    Recognises GlobalAveragePool, ReduceMean over H and W, or an AveragePool whose window covers
    the map; then Flatten/Reshape/Squeeze/Transpose; then Gemm (any transB), MatMul or a 1×1
    Conv with constant weights (plus an optional constant Add); then Softmax/LogSoftmax/Identity.
    Walking back from the output, SE gates cannot pass for a head. A GAP whose output is already
    the logits (SqueezeNet: conv10 → relu → GAP → softmax) gives an identity weight.
    ``shapes`` overrides static shapes (concrete ones at the analysed size: Model.shapes_at).
    """
    g = GraphView(model, shapes)
    tracks = track_axes(g, input_name, layout)
    for out in [output] if output else g.outputs:
        head = _head_at(g, tracks, out)
        if head is not None:
            return head
    return None


def _head_at(g: GraphView, tracks, out: str) -> Optional[CamHead]:
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


# ---------------------------------------------------------------------------- penultimate layer

_AFTER_CLASSIFIER = {"Softmax", "LogSoftmax", "Sigmoid", "Identity", "Dropout", "Flatten", "Reshape", "Squeeze",
                     "Unsqueeze", "Cast"}
_GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax"}
_BEFORE_POOL = {"Relu", "LeakyRelu", "PRelu", "Clip", "Elu", "Selu", "Sigmoid", "HardSwish", "Identity", "Dropout"}


def penultimate_layer(model, output: Optional[str] = None) -> str:
    """The data input of the classifier's final fully-connected op (Gemm, MatMul or 1x1 Conv).

    ``model``: a ModelProto or a loaded :class:`onnxviz.Model`. Walks back from ``output``
    (default the first) past Softmax/Flatten/Reshape and a bias Add. A head without a
    fully-connected op (SqueezeNet: conv → relu → global pool) gives the input of its last
    convolution. Raises when the head has another shape: name a layer then.
    """
    g = GraphView(getattr(model, "proto", model))
    out = output or g.outputs[0]
    name, node = walk_back(out, g.node_of, _AFTER_CLASSIFIER)
    if node is not None and node.op_type == "Add":
        data = [i for i in node.input if i not in g.init]
        if len(data) == 1 and len(node.input) == 2:
            name, node = data[0], g.node_of(data[0])
    if node is not None and node.op_type in _GLOBAL_POOLS:  # pooled conv classifier
        name, node = walk_back(node.input[0], g.node_of, _BEFORE_POOL)
    if node is not None and node.op_type in ("Gemm", "MatMul", "Conv"):
        data = [i for i in node.input[:2] if i and i not in g.init]
        if len(data) == 1:
            return data[0]
    raise OnnxvizError(
        f"could not find the final fully-connected layer behind output {out!r} "
        f"(walking back stopped at {node.op_type if node is not None else 'the input'} {name!r}); "
        "name the layer (--layer; `onnxviz inspect` lists the tensors)")
