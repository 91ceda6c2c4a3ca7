"""Small CNNs built in the tests (readable, no binary fixtures)."""
from __future__ import annotations

import glob
import os

import numpy as np
import onnx
from onnx import helper, numpy_helper

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
LIGHT_MODELS = sorted(glob.glob(os.path.join(LIGHT_DIR, "*.onnx")))


def tiny_cnn(layout="NCHW", size=16, channels=3, classes=4, opset=17, seed=0, softmax=True,
             dynamic=False, prelu=False) -> onnx.ModelProto:
    """conv3x3-relu-maxpool-conv3x3-relu-GAP-Gemm(-Softmax); NHWC adds the Keras-style Transpose."""
    rng = np.random.default_rng(seed)
    c1, c2 = 6, 8
    inits = {
        "w1": rng.standard_normal((c1, channels, 3, 3)).astype(np.float32) * 0.5,
        "b1": rng.standard_normal(c1).astype(np.float32) * 0.1,
        "w2": rng.standard_normal((c2, c1, 3, 3)).astype(np.float32) * 0.3,
        "b2": rng.standard_normal(c2).astype(np.float32) * 0.1,
        "fc_w": rng.standard_normal((c2, classes)).astype(np.float32),
        "fc_b": rng.standard_normal(classes).astype(np.float32) * 0.1,
        "slope": np.full((c1, 1, 1), 0.1, np.float32),
    }
    nodes = []
    x = "image"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    act1 = helper.make_node("PRelu", ["conv1", "slope"], ["relu1"]) if prelu else \
        helper.make_node("Relu", ["conv1"], ["relu1"])
    nodes += [
        helper.make_node("Conv", [x, "w1", "b1"], ["conv1"], pads=[1, 1, 1, 1]),
        act1,
        helper.make_node("MaxPool", ["relu1"], ["pool1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "w2", "b2"], ["conv2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"]),
        helper.make_node("GlobalAveragePool", ["relu2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
    ]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["prob"], axis=1))
        out = "prob"
    h = "H" if dynamic else size
    w = "W" if dynamic else size
    shape = ["N", channels, h, w] if layout == "NCHW" else ["N", h, w, channels]
    if not prelu:
        del inits["slope"]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, ["N", classes])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def randomized(model: onnx.ModelProto, seed=0) -> onnx.ModelProto:
    """A copy with every float weight replaced by He-scaled noise (the light models' weights are constant).

    Weights produced by ConstantOfShape nodes are turned into random initializers.
    """
    from onnxviz.graph.fold import fold_constants
    from onnxviz.graph.surgery import default_opset

    rng = np.random.default_rng(seed)
    m = fold_constants(onnx.ModelProto.FromString(model.SerializeToString()), default_opset(model))
    inits = {t.name for t in m.graph.initializer}
    bn_vars = {n.input[4] for n in m.graph.node if n.op_type == "BatchNormalization"}
    new = []
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32 and a.size > 1:
            if t.name in bn_vars:
                a = rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
            elif a.ndim >= 2:
                fan_in = int(np.prod(a.shape[1:])) if a.ndim == 4 else a.shape[-1]
                a = (rng.standard_normal(a.shape) * np.sqrt(2.0 / max(fan_in, 1))).astype(np.float32)
            else:
                a = (rng.standard_normal(a.shape) * 0.1).astype(np.float32)
        new.append(numpy_helper.from_array(a, t.name))
    del m.graph.initializer[:]
    m.graph.initializer.extend(new)
    graph_inputs = [i for i in m.graph.input if i.name not in inits]
    del m.graph.input[:]
    m.graph.input.extend(graph_inputs)
    return m
