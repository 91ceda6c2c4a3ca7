"""Concrete tensor shapes at one input size, measured with one onnxruntime run.

Static shape inference loses sizes in real exports: tf2onnx's channels-last graphs (hundreds of
Casts and Transposes, shape arithmetic feeding Reshape), and every dynamic-size model, where H and
W stay unknown. The analyses (layer table, MACs, receptive fields, Grad-CAM layers, CAM heads)
then see ``?``. One run of the model on a constant image at batch 1 knows every size: each tensor
whose static shape is incomplete gets a ``Shape`` node, and only those small int64 vectors are
outputs, so the run holds no more memory than a plain forward pass (onnxruntime still frees each
activation after its last consumer) and its session is dropped afterwards.

onnxruntime's symbolic shape inference was the other candidate (scripts/bench_shapes.py): faster
where it works (0.2-0.3 s against 1.5-2.5 s for the run on ResNet-50, DenseNet-121 and
Inception-v2 at 224x224, 2 CPU cores; both leave no size unknown there), but it imports sympy,
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

_KEY = "concrete-shapes"  # the run's session, dropped as soon as it has answered


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
    try:
        values = runtime.run(graph, {spec.name: x, **(feeds or {})}, key=_KEY)
    finally:
        runtime.forget(_KEY)
    out = {}
    for k, name in enumerate(wanted):
        measured = tuple(int(d) for d in values[f"{name}::shape{k}"])
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


def _shape_outputs(proto: onnx.ModelProto, names: list) -> onnx.ModelProto:
    """A copy of the model whose only outputs are ``Shape(name)`` for each name."""
    out = copy.deepcopy(proto)
    del out.graph.output[:]
    for k, name in enumerate(names):
        shape = f"{name}::shape{k}"
        out.graph.node.append(helper.make_node("Shape", [name], [shape], name=f"onnxviz_shape_{k}"))
        out.graph.output.append(helper.make_tensor_value_info(shape, onnx.TensorProto.INT64, [None]))
    return out
