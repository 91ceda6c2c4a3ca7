"""The float64 referee's ConvTranspose (graph/double.py) against onnxruntime's float32 kernel.

onnx.reference's own ConvTranspose slices grouped weights along the wrong axis: the gradient
graphs of grouped and depthwise convolutions (ShuffleNet, MobileNet) could not be refereed.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxviz.graph.double import Reference


def cases():
    rng = np.random.default_rng(0)
    out = []
    for trial in range(40):
        g = int(rng.choice([1, 2, 3]))
        k = [int(rng.integers(1, 4)), int(rng.integers(1, 4))]
        s = [int(rng.integers(1, 4)), int(rng.integers(1, 3))]
        d = [int(rng.integers(1, 3)), 1]
        pads = [min(int(rng.integers(0, k[i % 2])), (k[i % 2] - 1) * d[i % 2]) for i in range(4)]
        extra = [min(int(rng.integers(0, s[i])), max(s[i], d[i]) - 1) for i in (0, 1)]
        attrs = dict(strides=s, dilations=d, group=g, pads=pads, output_padding=extra)
        if trial % 5 == 4:
            attrs = dict(strides=s, group=g, auto_pad="SAME_UPPER" if trial % 2 else "SAME_LOWER")
        if trial % 7 == 6:
            attrs = dict(strides=s, group=g, output_shape=[5 * s[0] - 1, 6 * s[1]])
        out.append(pytest.param(g, k, attrs, id=str(trial)))
    return out


@pytest.mark.parametrize("group, kernel, attrs", cases())
def test_conv_transpose_matches_onnxruntime(group, kernel, attrs):
    rng = np.random.default_rng(sum(kernel) + group)
    c = group * 2
    x = rng.standard_normal((2, c, 5, 6)).astype(np.float32)
    w = rng.standard_normal((c, 3, *kernel)).astype(np.float32)
    b = rng.standard_normal(3 * group).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = Reference(model)({"x": x})["y"]
    assert got.dtype == np.float64 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


POOLS = [dict(strides=[1, 1], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),  # Inception's: reference indices wrong
         dict(strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
         dict(strides=[2, 2], pads=[0, 0, 1, 1], kernel_shape=[3, 3]),
         dict(strides=[2, 2], kernel_shape=[3, 3], ceil_mode=1),
         dict(strides=[2, 2], kernel_shape=[2, 2], ceil_mode=1, pads=[1, 0, 1, 0]),
         dict(strides=[2, 1], kernel_shape=[3, 2], dilations=[2, 1]),
         dict(strides=[2, 2], kernel_shape=[3, 3], auto_pad="SAME_UPPER"),
         dict(strides=[2, 2], kernel_shape=[2, 2], auto_pad="SAME_LOWER"),
         dict(strides=[2, 2], kernel_shape=[3, 3], storage_order=1),
         dict(strides=[3, 3], kernel_shape=[2, 2], auto_pad="VALID")]


@pytest.mark.parametrize("attrs", POOLS, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 7, 9)])
@pytest.mark.parametrize("outputs", [["y", "i"], ["y"]])
def test_max_pool_and_indices_match_onnxruntime(attrs, shape, outputs):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    node = helper.make_node("MaxPool", ["x"], outputs, **attrs)
    infos = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None),
             helper.make_tensor_value_info("i", onnx.TensorProto.INT64, None)][:len(outputs)]
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)], infos)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 3
    want = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = Reference(model)({"x": x})
    np.testing.assert_array_equal(got["y"], want[0])
    if len(outputs) > 1:
        np.testing.assert_array_equal(got["i"], want[1])
