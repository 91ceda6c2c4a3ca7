"""Small models built in the tests (readable, weights from seeded generators, no binary fixtures)."""
from __future__ import annotations

import glob
import os

import numpy as np
import onnx
from onnx import helper, numpy_helper

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
LIGHT_MODELS = sorted(glob.glob(os.path.join(LIGHT_DIR, "*.onnx")))
# The light models whose weights fold to tens or hundreds of MB: their whole-model tests take
# 15-95 s each on 2 cores, so they are marked slow (pytest -m slow).
HEAVY_LIGHT = {"light_vgg19", "light_zfnet512", "light_bvlc_alexnet", "light_resnet50"}


def light_params(paths=None) -> list:
    """pytest params of the light model paths, the heavy ones marked slow, ids the file names."""
    import pytest

    return [pytest.param(p, marks=[pytest.mark.slow] if os.path.basename(p)[:-5] in HEAVY_LIGHT else [],
                         id=os.path.basename(p)) for p in (LIGHT_MODELS if paths is None else paths)]


def make_model(nodes, inits: dict, shape, out: str, classes: int, opset=17, name="attribution_test") -> onnx.ModelProto:
    """A checked model of ``nodes``: float input "image" of ``shape``, output ``out`` of (N, classes)."""
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, ["N", classes])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


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
    return make_model(nodes, inits, shape, out, classes, opset, name="tiny")


# ---------------------------------------------------------------------------- attribution test models

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
    return make_model(nodes, w, shape, "prob", classes)


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
    return make_model(nodes, inits, ["N", size, size, 3], "prob", classes, opset=18)


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
    return make_model(nodes, inits, ["N", 3, size, size], "logits", classes)


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
    return make_model(nodes, {"W": weight.astype(np.float32)}, shape, "logits", classes)


def two_layer_relu(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray) -> onnx.ModelProto:
    """x (N, 1, 2, 2) -> Flatten -> Gemm(w1, b1) -> Relu -> Gemm(w2): one hidden ReLU layer."""
    inits = {"w1": w1.astype(np.float32), "b1": b1.astype(np.float32), "w2": w2.astype(np.float32)}
    nodes = [helper.make_node("Flatten", ["image"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["logits"])]
    return make_model(nodes, inits, ["N", 1, 2, 2], "logits", w2.shape[1])


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
