"""The layer table of a CNN graph: per tensor its op, shape, parameters, MACs and receptive field.

Reads the ModelProto only (run ``onnx.shape_inference.infer_shapes`` first for shapes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import onnx

from .receptive_fields import ReceptiveField, field_of, track_axes
from .view import GraphView, attrs, const_value, walk_back

__all__ = ["LayerInfo", "layer_table", "summarize"]


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


def _param_root(g: GraphView, name: str) -> str:
    """The stored tensor behind a constant input, through Identity/Cast/Reshape/DequantizeLinear..."""
    return walk_back(name, g.node_of, _PASS_THROUGH, lambda n: n.input[0] if n.input[0] in g.const else None)[0]


def _numel(g: GraphView, name: str) -> int:
    shape = g.shape(name)
    if shape is not None and all(isinstance(d, int) for d in shape):
        return math.prod(shape)
    node = g.node_of(name)
    if node is not None and node.op_type == "ConstantOfShape":
        dims = const_value(g, node.input[0])
        if dims is not None:
            return int(np.prod(dims))
    value = const_value(g, name)
    return 0 if value is None else int(value.size)


def _node_params(g: GraphView, node) -> tuple:
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


def _node_macs(g: GraphView, node) -> Optional[int]:
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
        k = x[0] if op == "Gemm" and attrs(node).get("transA", 0) else x[-1]
        a = _per_sample(g.shape(out))
        return None if a is None or not isinstance(k, int) else a * k
    return 0


def layer_table(model: onnx.ModelProto, input_name: str, layout: str = "NCHW",
                shapes: Optional[dict] = None) -> list[LayerInfo]:
    """One row per float tensor computed from the inputs: op, shape, params, MACs, receptive field.

    Constant subgraphs (weights made by ConstantOfShape, Unsqueeze of a bias...) are not rows;
    their elements count as params of the node that consumes them, as do constant operands of
    Add/Mul (a split BatchNorm); settings (shapes, scales, pads, Clip bounds, Dropout ratio) do
    not. A node's params and MACs sit on its first output. ``shapes`` overrides static shapes
    (concrete ones at the analysed size: Model.shapes_at).
    """
    g = GraphView(model, shapes)
    tracks = track_axes(g, input_name, layout)
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
                                  None if t is None else field_of(t), params if k == 0 else ()))
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

