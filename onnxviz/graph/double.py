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


def conv_transpose(x, w, b=None, strides=None, dilations=None, group=1, pads=None, output_padding=None,
                   output_shape=None, auto_pad="NOTSET"):
    """ConvTranspose as the ONNX spec defines it, any rank, any group, vectorised per kernel tap.

    onnx.reference's own (onnx 1.23) slices grouped weights along the wrong axis (ShuffleNet's
    and MobileNet's depthwise adjoints fail) and scatters column by column in Python (minutes on
    ResNet-50's gradient graph). Each tap adds ``W[:, :, tap]ᵀ · x`` into the strided window of a
    full-size buffer; ``pads`` are then cropped off (output_padding's extra cells stay zero).
    """
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    nd = len(spatial)
    kernel = w.shape[2:]
    strides = list(strides or [1] * nd)
    dilations = list(dilations or [1] * nd)
    output_padding = list(output_padding or [0] * nd)
    m_group = w.shape[1]
    full = [(spatial[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 + output_padding[i] for i in range(nd)]
    if output_shape is not None and len(output_shape):
        shape = list(output_shape)[-nd:]
        total = [full[i] - shape[i] for i in range(nd)]
        half = [t // 2 for t in total]
        if auto_pad == "SAME_UPPER":
            pads = half + [t - h for t, h in zip(total, half)]
        else:
            pads = [t - h for t, h in zip(total, half)] + half
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        total = [max(full[i] - spatial[i] * strides[i], 0) for i in range(nd)]  # as onnxruntime: never negative
        first = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
        pads = first + [t - f for t, f in zip(total, first)]
    pads = list(pads or [0] * 2 * nd)
    out = np.zeros((n, group, m_group, *full), dtype=np.result_type(x, w))
    xg = x.reshape(n, group, c // group, *spatial)
    wg = w.reshape(group, c // group, m_group, *kernel)
    for tap in np.ndindex(*kernel):
        contrib = np.einsum("ngc...,gcm->ngm...", xg, wg[(slice(None),) * 3 + tap])
        window = tuple(slice(tap[i] * dilations[i], tap[i] * dilations[i] + (spatial[i] - 1) * strides[i] + 1,
                             strides[i]) for i in range(nd))
        out[(slice(None),) * 3 + window] += contrib
    out = out.reshape(n, group * m_group, *full)
    # negative pads (an output_shape larger than the full output) extend with zeros
    grow = [(0, 0), (0, 0)] + [(max(-pads[i], 0), max(-pads[i + nd], 0)) for i in range(nd)]
    out = np.pad(out, grow)
    out = out[(slice(None),) * 2 + tuple(slice(max(pads[i], 0), out.shape[2 + i] - max(pads[i + nd], 0))
                                         for i in range(nd))]
    if b is not None:
        out = out + b.reshape(1, -1, *[1] * nd)
    return out.astype(x.dtype)


def spec_conv_transpose():
    """ConvTranspose for the reference evaluator (see :func:`conv_transpose`)."""
    from onnx.reference.op_run import OpRun

    class ConvTranspose(OpRun):
        op_domain = ""

        def _run(self, x, w, b=None, auto_pad=None, dilations=None, group=None, kernel_shape=None,
                 output_padding=None, output_shape=None, pads=None, strides=None):
            auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else (auto_pad or "NOTSET")
            return (conv_transpose(x, w, b, strides, dilations, group or 1, pads, output_padding,
                                   output_shape, auto_pad),)

    return ConvTranspose


def max_pool(x, kernel_shape, strides=None, pads=None, dilations=None, ceil_mode=0, auto_pad="NOTSET",
             storage_order=0):
    """MaxPool and its Indices as the ONNX spec (and onnxruntime) define them, any rank.

    onnx.reference's (onnx 1.23) Indices are wrong for stride-1 padded pools (Inception's 3x3/1
    pools: 367 of 384 indices off), which the gradient graph scatters through. The windows are
    gathered tap by tap from a -inf padded copy; the first maximum in scan order wins.
    """
    nd = len(kernel_shape)
    spatial = x.shape[2:]
    strides = list(strides or [1] * nd)
    dilations = list(dilations or [1] * nd)
    pads = list(pads or [0] * 2 * nd)
    extent = [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilations)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [-(-spatial[i] // strides[i]) for i in range(nd)]
        total = [max((out[i] - 1) * strides[i] + extent[i] - spatial[i], 0) for i in range(nd)]
        first = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
        pads = first + [t - f for t, f in zip(total, first)]
    elif auto_pad == "VALID":
        pads = [0] * 2 * nd
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for i in range(nd):
            room = spatial[i] + pads[i] + pads[i + nd] - extent[i]
            size = (-(-room // strides[i]) if ceil_mode else room // strides[i]) + 1
            if ceil_mode and (size - 1) * strides[i] >= spatial[i] + pads[i]:
                size -= 1  # a last window that would start in the end padding is dropped
            out.append(size)
    after = [max((out[i] - 1) * strides[i] + extent[i] - spatial[i] - pads[i], 0) for i in range(nd)]
    width = [(0, 0), (0, 0)] + [(pads[i], after[i]) for i in range(nd)]
    padded = np.pad(x, width, constant_values=-np.inf)
    order = "F" if storage_order else "C"
    where = np.pad(np.arange(int(np.prod(spatial))).reshape(spatial, order=order), width[2:], constant_values=-1)
    values, places = [], []
    for tap in np.ndindex(*kernel_shape):
        window = tuple(slice(tap[i] * dilations[i], tap[i] * dilations[i] + (out[i] - 1) * strides[i] + 1, strides[i])
                       for i in range(nd))
        values.append(padded[(slice(None), slice(None)) + window])
        places.append(where[window])
    values, places = np.stack(values, -1), np.stack(places, -1)
    best = values.argmax(-1)[..., None]
    y = np.take_along_axis(values, best, -1)[..., 0]
    spatial_index = np.take_along_axis(np.broadcast_to(places, values.shape), best, -1)[..., 0]
    n, c = x.shape[:2]
    plane = (np.arange(n)[:, None] * c + np.arange(c)[None, :]).reshape(n, c, *[1] * nd) * int(np.prod(spatial))
    return y.astype(x.dtype), (plane + spatial_index).astype(np.int64)


def spec_max_pool():
    """MaxPool for the reference evaluator (see :func:`max_pool`)."""
    from onnx.reference.op_run import OpRun

    class MaxPool(OpRun):
        op_domain = ""

        def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None, pads=None,
                 storage_order=None, strides=None):
            auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else (auto_pad or "NOTSET")
            y, indices = max_pool(x, kernel_shape, strides, pads, dilations, ceil_mode or 0, auto_pad,
                                  storage_order or 0)
            return (y, indices) if len(self.onnx_node.output) > 1 else (y,)

    return MaxPool


class Reference:
    """Runs a model in float64 with onnx's reference evaluator; inputs are cast to float64."""

    def __init__(self, model: onnx.ModelProto):
        from onnx.reference import ReferenceEvaluator

        self.evaluator = ReferenceEvaluator(to_double(model), new_ops=[spec_lrn(), spec_batchnorm(), spec_conv_transpose(),
                                                                       spec_max_pool()])
        # The evaluator has its weights as arrays now; its float64 protobuf copy of them would
        # double the memory (VGG-19: 1.1 GB more per evaluator, and a check holds three).
        self.evaluator.inits_ = []
        graph = getattr(self.evaluator.proto_, "graph", None)
        if graph is not None:
            graph.ClearField("initializer")

    def __call__(self, feeds: dict, outputs=None) -> dict:
        feeds = {k: v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v for k, v in feeds.items()}
        names = outputs or list(self.evaluator.output_names)
        return dict(zip(names, self.evaluator.run(names, feeds)))
