"""Concrete tensor shapes at one input size, measured with one onnxruntime run.

Static shape inference loses sizes in real exports: tf2onnx's channels-last graphs (hundreds of
Casts and Transposes, shape arithmetic feeding Reshape), and every dynamic-size model, where H and
W stay unknown. The analyses (layer table, MACs, receptive fields, Grad-CAM layers, CAM heads)
then see ``?``. One run of the model on a constant image at batch 1 knows every size: each tensor
whose static shape is incomplete gets a ``Shape`` node, and only those small int64 vectors (in
one output) come back, so the run holds about what a plain forward pass does (onnxruntime still
frees each activation after its last consumer) and its session is dropped afterwards.

onnxruntime's symbolic shape inference was the other candidate (scripts/bench_shapes.py): faster
where it works (about 0.2 s against 0.6-1.8 s for the run, session included, on ResNet-50,
DenseNet-121 and Inception-v2 at 224x224 on 2 shared CPU cores; both leave no size unknown there), but it imports sympy,
which onnxruntime no longer installs (1.32 requires only flatbuffers, numpy, packaging, protobuf),
and it gives up or stays symbolic on data-dependent sizes. The run works on any graph
onnxruntime can run, so it is the one path.
"""
from __future__ import annotations

import copy
from typing import Optional

import numpy as np
import onnx
from onnx import helper

from .graph.view import tensor_types, value_shape
from .spec import InputSpec

__all__ = ["concrete_shapes", "incomplete"]

def incomplete(shape, batch) -> bool:
    """Whether a static shape misses a size: unknown rank, or a dim that is neither an int nor
    the batch's own symbol (the batch stays symbolic: a table is per image)."""
    if shape is None:
        return True
    return any(not isinstance(d, int) and (d is None or d != batch) for d in shape)


def concrete_shapes(proto: onnx.ModelProto, spec: InputSpec, runtime, height: int, width: int,
                    feeds: Optional[dict] = None) -> dict:
    """Shape of every tensor whose static shape is incomplete, measured at ``height`` x ``width``.

    Returns ``{tensor: shape}`` for the image input and each node output (of the main graph)
    whose static shape misses a size: the measured sizes, with a first axis that static
    inference left symbolic and that measures the run's batch kept as it was (the batch). ``feeds``: the other inputs' values
    at batch 1. Raises OnnxvizError when onnxruntime cannot run the graph.
    """
    types = tensor_types(proto.graph)
    in_shape = next(value_shape(vi) for vi in proto.graph.input if vi.name == spec.name)
    batch = in_shape[0] if in_shape and isinstance(in_shape[0], str) else None
    tensors = _tensors(proto)
    wanted = [spec.name] + [o for node in proto.graph.node for o in node.output
                            if o in tensors and incomplete(types.get(o, (0, None))[1], batch)]
    wanted = list(dict.fromkeys(wanted))
    if wanted == [spec.name] and not incomplete(in_shape, batch):
        return {}  # static inference knew everything: no run
    graph = _shape_outputs(proto, wanted)
    n = spec.batch or 1
    x = np.zeros(spec.shape(n, height, width), spec.dtype)
    flat = runtime.run_once(graph, {spec.name: x, **(feeds or {})})[_OUT]
    out = {}
    for name, measured in _split(flat, wanted).items():
        static = types.get(name, (0, None))[1]
        if static and len(static) == len(measured) and not isinstance(static[0], int) and measured[0] == n:
            measured = (static[0], *measured[1:])  # the batch axis: keep it symbolic, as inference had it
        out[name] = measured
    return out


def _tensors(proto: onnx.ModelProto) -> set:
    """Names of the main graph's tensor-typed values (sequences and maps have no Shape)."""
    not_tensor = {vi.name for vi in list(proto.graph.value_info) + list(proto.graph.output)
                  if vi.type.WhichOneof("value") not in (None, "tensor_type")}
    return {o for n in proto.graph.node for o in n.output if o and o not in not_tensor}


_OUT = "onnxviz::shapes"


def _shape_outputs(proto: onnx.ModelProto, names: list) -> onnx.ModelProto:
    """A copy of the model whose one output is ``Concat(rank(t), Shape(t), ...)`` over ``names``.

    Run it with priority-based node order (:meth:`Runtime.run_once`): each Shape then runs as
    soon as its tensor exists, which frees the tensor after its own consumers, as in a forward pass.
    """
    out = copy.deepcopy(proto)
    parts = []
    for k, name in enumerate(names):
        shape, rank = f"{name}::shape{k}", f"{name}::rank{k}"
        out.graph.node.append(helper.make_node("Shape", [name], [shape], name=f"onnxviz_shape_{k}"))
        out.graph.node.append(helper.make_node("Shape", [shape], [rank], name=f"onnxviz_rank_{k}"))
        parts += [rank, shape]
    out.graph.node.append(helper.make_node("Concat", parts, [_OUT], axis=0, name="onnxviz_shapes"))
    del out.graph.output[:]
    out.graph.output.append(helper.make_tensor_value_info(_OUT, onnx.TensorProto.INT64, [None]))
    return out


def _split(flat: np.ndarray, names: list) -> dict:
    """``{name: shape}`` from the ``rank, dims..., rank, dims...`` vector :func:`_shape_outputs` makes."""
    out, pos = {}, 0
    for name in names:
        rank = int(flat[pos])
        out[name] = tuple(int(d) for d in flat[pos + 1:pos + 1 + rank])
        pos += 1 + rank
    return out
