"""A float64 copy of a float32 model, for the pure-numpy reference evaluator.

onnxruntime's CPU build lacks float64 kernels for Conv, pooling and most activations, but
``onnx.reference.ReferenceEvaluator`` computes in whatever dtype it is given: a model whose
float tensors are all double gives finite differences accurate to ~1e-8.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

F32, F64 = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE


def _tensor(t: onnx.TensorProto) -> onnx.TensorProto:
    if t.data_type != F32:
        return t
    return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name)


def _graph(graph: onnx.GraphProto):
    converted = [_tensor(t) for t in graph.initializer]
    del graph.initializer[:]
    graph.initializer.extend(converted)
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.tensor_type.elem_type == F32:
            vi.type.tensor_type.elem_type = F64
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                attr.t.CopyFrom(_tensor(attr.t))
            elif attr.type == onnx.AttributeProto.GRAPH:
                _graph(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _graph(g)
            elif attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i == F32:
                attr.i = F64


def to_double(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every float32 initializer, constant, Cast target and I/O type turned into float64."""
    out = copy.deepcopy(model)
    _graph(out.graph)
    return out


class Reference:
    """Runs a model in float64 with onnx's reference evaluator; inputs are cast to float64."""

    def __init__(self, model: onnx.ModelProto):
        from onnx.reference import ReferenceEvaluator

        self.evaluator = ReferenceEvaluator(to_double(model))

    def __call__(self, feeds: dict, outputs=None) -> dict:
        feeds = {k: v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v for k, v in feeds.items()}
        names = outputs or list(self.evaluator.output_names)
        return dict(zip(names, self.evaluator.run(names, feeds)))
