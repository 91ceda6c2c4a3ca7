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

F16, F32, F64 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE


def _tensor(t: onnx.TensorProto, src: frozenset, dst: int) -> onnx.TensorProto:
    if t.data_type not in src:
        return t
    dtype = onnx.helper.tensor_dtype_to_np_dtype(dst)
    return numpy_helper.from_array(numpy_helper.to_array(t).astype(dtype), t.name)


def _graph(graph: onnx.GraphProto, src: frozenset, dst: int):
    converted = [_tensor(t, src, dst) for t in graph.initializer]
    del graph.initializer[:]
    graph.initializer.extend(converted)
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.tensor_type.elem_type in src:
            vi.type.tensor_type.elem_type = dst
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                attr.t.CopyFrom(_tensor(attr.t, src, dst))
            elif attr.type == onnx.AttributeProto.GRAPH:
                _graph(attr.g, src, dst)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _graph(g, src, dst)
            elif attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i in src:
                attr.i = dst


def cast_floats(model: onnx.ModelProto, src, dst: int) -> onnx.ModelProto:
    """A copy with every initializer, constant, Cast target and I/O type of a type in ``src`` turned into ``dst``."""
    out = copy.deepcopy(model)
    _graph(out.graph, frozenset(src), dst)
    return out


def to_double(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float64 copy: float32 and float16 weights, constants, Cast targets and I/O types become float64."""
    return cast_floats(model, {F32, F16}, F64)


def to_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float32 copy of a float16 model: onnxruntime's CPU backward ops (ScatterElements-add) lack float16."""
    return cast_floats(model, {F16}, F32)


def has_float16(model: onnx.ModelProto) -> bool:
    return any(t.data_type == F16 for t in model.graph.initializer) or any(
        vi.type.tensor_type.elem_type == F16 for vi in [*model.graph.input, *model.graph.output])


def spec_lrn():
    """LRN as the ONNX spec defines it, over the channel axis, for any rank >= 3.

    onnx.reference's own LRN (onnx 1.23) sums the window over the batch axis, which is
    wrong whenever N != C: Caffe-era networks (AlexNet, GoogLeNet) would be refereed wrongly.
    """
    from onnx.reference.op_run import OpRun

    class LRN(OpRun):  # the class name is the op type it replaces
        op_domain = ""

        def _run(self, x, alpha=None, beta=None, bias=None, size=None):
            alpha = 1e-4 if alpha is None else alpha
            beta = 0.75 if beta is None else beta
            bias = 1.0 if bias is None else bias
            before, after = (size - 1) // 2, size // 2
            sq = x.astype(np.float64) ** 2
            pad = [(0, 0)] * x.ndim
            pad[1] = (before + 1, after)
            csum = np.cumsum(np.pad(sq, pad), axis=1)
            c = x.shape[1]
            window = np.take(csum, np.arange(c) + before + after + 1, axis=1) - np.take(csum, np.arange(c), axis=1)
            return ((x / (bias + alpha / size * window) ** beta).astype(x.dtype),)

    return LRN


def spec_batchnorm():
    """Inference BatchNormalization as the spec defines it (onnx.reference's opset-9 version is wrong)."""
    from onnx.reference.op_run import OpRun

    class BatchNormalization(OpRun):
        op_domain = ""

        def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None, spatial=None,
                 training_mode=None, is_test=None, consumed_inputs=None):
            if training_mode:
                raise NotImplementedError("the float64 referee covers inference BatchNormalization only")
            eps = 1e-5 if epsilon is None else epsilon
            if scale.ndim == x.ndim - 1:  # spatial=0 (opset < 9): statistics per (C, H, W)
                shape = (1, *scale.shape)
            else:
                shape = (1, -1) + (1,) * (x.ndim - 2)
            s = (scale / np.sqrt(var + eps)).reshape(shape)
            return ((x - mean.reshape(shape)) * s + bias.reshape(shape)).astype(x.dtype),

    return BatchNormalization


class Reference:
    """Runs a model in float64 with onnx's reference evaluator; inputs are cast to float64."""

    def __init__(self, model: onnx.ModelProto):
        from onnx.reference import ReferenceEvaluator

        self.evaluator = ReferenceEvaluator(to_double(model), new_ops=[spec_lrn(), spec_batchnorm()])

    def __call__(self, feeds: dict, outputs=None) -> dict:
        feeds = {k: v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v for k, v in feeds.items()}
        names = outputs or list(self.evaluator.output_names)
        return dict(zip(names, self.evaluator.run(names, feeds)))
