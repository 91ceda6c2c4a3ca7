"""Small models for the attribution tests, built in code (weights from a seeded generator)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def weights(channels=3, classes=4, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.standard_normal((6, channels, 3, 3)).astype(np.float32) * 0.5,
        "b1": rng.standard_normal(6).astype(np.float32) * 0.1,
        "w2": rng.standard_normal((8, 6, 3, 3)).astype(np.float32) * 0.3,
        "b2": rng.standard_normal(8).astype(np.float32) * 0.1 + 0.2,
        "fc_w": rng.standard_normal((8, classes)).astype(np.float32),
        "fc_b": rng.standard_normal(classes).astype(np.float32) * 0.1,
    }


def _model(nodes, inits: dict, shape, out: str, classes: int, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "attribution_test",
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, ["N", classes])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def strided_cnn(layout="NCHW", size=16, classes=4, seed=0, dynamic=False) -> onnx.ModelProto:
    """conv3x3-relu-conv3x3/2-relu("feat")-GAP-Gemm-Softmax: no pooling but the global one.

    NHWC adds a Keras-style Transpose after the input; the layers stay NCHW.
    """
    w = weights(classes=classes, seed=seed)
    x, nodes = "image", []
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    nodes += [
        helper.make_node("Conv", [x, "w1", "b1"], ["conv1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("Conv", ["relu1", "w2", "b2"], ["conv2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["conv2"], ["feat"]),
        helper.make_node("GlobalAveragePool", ["feat"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1),
    ]
    h = wd = "S" if dynamic else size
    shape = ["N", 3, h, wd] if layout == "NCHW" else ["N", h, wd, 3]
    return _model(nodes, w, shape, "prob", classes)


def keras_cnn(size=16, classes=4, seed=0) -> onnx.ModelProto:
    """strided_cnn as tf2onnx writes Keras models: NHWC tensors, each Conv wrapped in Transposes,
    ReduceMean over H and W, MatMul + Add. Its layers ("relu1", "feat") are channels-last."""
    w = weights(classes=classes, seed=seed)
    inits = {"w1": w["w1"], "b1": w["b1"], "w2": w["w2"], "b2": w["b2"], "fc_w": w["fc_w"], "fc_b": w["fc_b"],
             "axes": np.array([1, 2], np.int64)}
    to_nchw, to_nhwc = [0, 3, 1, 2], [0, 2, 3, 1]
    nodes = [
        helper.make_node("Transpose", ["image"], ["t0"], perm=to_nchw),
        helper.make_node("Conv", ["t0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c1"], ["c1_nhwc"], perm=to_nhwc),
        helper.make_node("Relu", ["c1_nhwc"], ["relu1"]),
        helper.make_node("Transpose", ["relu1"], ["t1"], perm=to_nchw),
        helper.make_node("Conv", ["t1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Transpose", ["c2"], ["c2_nhwc"], perm=to_nhwc),
        helper.make_node("Relu", ["c2_nhwc"], ["feat"]),
        helper.make_node("ReduceMean", ["feat", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "fc_w"], ["mm"]),
        helper.make_node("Add", ["mm", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=-1),
    ]
    return _model(nodes, inits, ["N", size, size, 3], "prob", classes, opset=18)


def flatten_head_cnn(size=8, classes=3, seed=0) -> onnx.ModelProto:
    """conv-relu-Flatten-Gemm (VGG-style head): no global pooling, so no CAM head."""
    rng = np.random.default_rng(seed)
    inits = {"w1": rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.5,
             "fc_w": rng.standard_normal((4 * size * size, classes)).astype(np.float32) * 0.1}
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["conv1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("Flatten", ["relu1"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w"], ["logits"]),
    ]
    return _model(nodes, inits, ["N", 3, size, size], "logits", classes)


def linear_model(weight: np.ndarray, layout="NCHW", size=(4, 5)) -> onnx.ModelProto:
    """logits = Flatten(x) · W: x is (N, 3, h, w) and W (3·h·w, classes), rows in the NCHW order of x."""
    classes = weight.shape[1]
    c, (h, w) = 3, size
    x, nodes = "image", []
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    nodes += [helper.make_node("Flatten", [x], ["flat"]),
              helper.make_node("Gemm", ["flat", "W"], ["logits"])]
    shape = ["N", c, h, w] if layout == "NCHW" else ["N", h, w, c]
    return _model(nodes, {"W": weight.astype(np.float32)}, shape, "logits", classes)


def two_layer_relu(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray) -> onnx.ModelProto:
    """x (N, 1, 2, 2) -> Flatten -> Gemm(w1, b1) -> Relu -> Gemm(w2): one hidden ReLU layer."""
    inits = {"w1": w1.astype(np.float32), "b1": b1.astype(np.float32), "w2": w2.astype(np.float32)}
    nodes = [helper.make_node("Flatten", ["image"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["logits"])]
    return _model(nodes, inits, ["N", 1, 2, 2], "logits", w2.shape[1])


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)
