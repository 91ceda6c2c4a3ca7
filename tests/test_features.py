"""Filters and activations through the API: layouts, and weights hidden behind casts or quantization."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from builders import save, tiny_cnn
import onnxviz
from onnxviz.errors import OnnxvizError
from onnxviz.methods.features import activations, filters


def test_nhwc_activations_come_out_channels_first_like_nchw(tmp_path):
    a = onnxviz.load(save(tiny_cnn(), tmp_path / "a.onnx"), device="cpu")
    b = onnxviz.load(save(tiny_cnn(layout="NHWC"), tmp_path / "b.onnx"), device="cpu")
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    xb = x.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(activations(a, x, "relu2").values, activations(b, xb, "relu2").values, rtol=1e-6)
    # the NHWC input tensor itself is channels-last: it comes back as the NCHW image
    np.testing.assert_array_equal(activations(b, xb, "image").values, x)


def test_filters_behind_dequantize_and_cast(tmp_path):
    m = tiny_cnn()
    w1 = next(t for t in m.graph.initializer if t.name == "w1")
    w = numpy_helper.to_array(w1)
    scale = np.float32(np.abs(w).max() / 127)
    q = np.round(w / scale).astype(np.int8)
    m.graph.initializer.remove(w1)
    m.graph.initializer.extend([numpy_helper.from_array(q, "w1_q"), numpy_helper.from_array(scale, "w1_s"),
                                numpy_helper.from_array(np.int8(0), "w1_z")])
    m.graph.node.insert(0, helper.make_node("DequantizeLinear", ["w1_q", "w1_s", "w1_z"], ["w1_f"]))
    m.graph.node.insert(1, helper.make_node("Cast", ["w1_f"], ["w1"], to=onnx.TensorProto.FLOAT))
    model = onnxviz.load(save(m, tmp_path / "q.onnx"), device="cpu")
    f = filters(model)
    np.testing.assert_allclose(f.weights, q.astype(np.float32) * scale, rtol=1e-6)
    assert f.layer == "conv1"


def test_filters_of_a_named_layer_and_errors(tmp_path):
    model = onnxviz.load(save(tiny_cnn(), tmp_path / "a.onnx"), device="cpu")
    assert filters(model, "conv2").weights.shape == (8, 6, 3, 3)
    with pytest.raises(OnnxvizError, match="not a convolution"):
        filters(model, "relu2")
    # a vector layer is shown as C maps of 1x1
    assert activations(model, np.zeros((2, 3, 16, 16), np.float32), "prob").values.shape == (2, 4, 1, 1)
