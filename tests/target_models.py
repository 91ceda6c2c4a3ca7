"""Non-classifier models for the target tests: a segmentation net, a CTC-style recognizer, a two-input net.

Built with onnx.helper from numpy weights (returned too, so that a torch reference can
recompute the same network); random weights, dynamic batch.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

F = onnx.TensorProto.FLOAT


def _graph(nodes, inits: dict, inputs, outputs, opset=17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "m", inputs, outputs,
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def seg_weights(seed=0, classes=3) -> dict:
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.4):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return {
        "w1": w(6, 3, 3, 3), "b1": w(6, scale=0.1),
        "w2": w(8, 6, 3, 3), "b2": w(8, scale=0.1),
        "w3": w(8, 8, 3, 3), "b3": w(8, scale=0.1),
        "w4": w(8, 8, 3, 3), "b4": w(8, scale=0.1),
        "wt": w(8, 6, 2, 2), "bt": w(6, scale=0.1),  # ConvTranspose weight: (in, out, kh, kw)
        "ws": w(6, 6, 1, 1), "bs": w(6, scale=0.1),  # skip projection
        "w5": w(classes, 6, 3, 3), "b5": w(classes, scale=0.1),
    }


def seg_net(size=16, seed=0, classes=3) -> tuple[onnx.ModelProto, dict]:
    """Encoder–decoder: two stride-2 convs down to size/4, a conv there (the bottleneck, ``r4``),
    ConvTranspose ×2, nearest Resize ×2, a 1×1-conv skip from the first layer, a 3×3 conv to
    ``classes`` score maps at the input size, then Softmax over classes: output ``seg`` (N, C, H, W)."""
    inits = seg_weights(seed, classes)
    inits["scales"] = np.array([1, 1, 2, 2], np.float32)
    p1 = [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=p1),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=p1, strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], pads=p1, strides=[2, 2]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("Conv", ["r3", "w4", "b4"], ["c4"], pads=p1),
        helper.make_node("Relu", ["c4"], ["r4"]),
        helper.make_node("ConvTranspose", ["r4", "wt", "bt"], ["u1"], strides=[2, 2]),
        helper.make_node("Relu", ["u1"], ["r5"]),
        helper.make_node("Resize", ["r5", "", "scales"], ["u2"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Conv", ["r1", "ws", "bs"], ["skip"]),
        helper.make_node("Add", ["u2", "skip"], ["fused"]),
        helper.make_node("Relu", ["fused"], ["r6"]),
        helper.make_node("Conv", ["r6", "w5", "b5"], ["logits"], pads=p1),
        helper.make_node("Softmax", ["logits"], ["seg"], axis=1),
    ]
    model = _graph(nodes, inits, [helper.make_tensor_value_info("image", F, ["N", 3, size, size])],
                   [helper.make_tensor_value_info("seg", F, ["N", classes, size, size])])
    return model, inits


def seg_net_nhwc(size=16, classes=3, seed=0) -> onnx.ModelProto:
    """A channels-last dense net as Keras exports it: NHWC in, Transpose, stride-2 conv, conv,
    nearest Resize ×2, 1×1 conv to classes, Transpose back: output (N, H, W, classes)."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": (rng.standard_normal((6, 3, 3, 3)) * 0.5).astype(np.float32),
        "w2": (rng.standard_normal((6, 6, 3, 3)) * 0.4).astype(np.float32),
        "w3": (rng.standard_normal((classes, 6, 1, 1)) * 0.5).astype(np.float32),
        "scales": np.array([1, 1, 2, 2], np.float32),
    }
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Resize", ["r2", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Conv", ["up", "w3"], ["scores"]),
        helper.make_node("Transpose", ["scores"], ["out"], perm=[0, 2, 3, 1]),
    ]
    return _graph(nodes, inits, [helper.make_tensor_value_info("image", F, ["N", size, size, 3])],
                  [helper.make_tensor_value_info("out", F, ["N", size, size, classes])])


def ctc_net(height=8, width=16, classes=5, seed=0) -> onnx.ModelProto:
    """A CRNN-style recognizer: convs, a 2×2 max pool, (N, C, h, w) -> (N, w, C·h) by
    Transpose+Reshape, a linear layer to ``classes`` per step and LogSoftmax: output (N, T, C)."""
    rng = np.random.default_rng(seed)
    c = 4
    h2, w2 = height // 2, width // 2
    inits = {
        "w1": (rng.standard_normal((c, 3, 3, 3)) * 0.5).astype(np.float32),
        "b1": (rng.standard_normal(c) * 0.1).astype(np.float32),
        "w2": (rng.standard_normal((c, c, 3, 3)) * 0.4).astype(np.float32),
        "b2": (rng.standard_normal(c) * 0.1).astype(np.float32),
        "shape": np.array([0, w2, c * h2], np.int64),
        "fc": (rng.standard_normal((c * h2, classes)) * 0.5).astype(np.float32),
        "fb": (rng.standard_normal(classes) * 0.1).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["features"]),
        helper.make_node("Transpose", ["features"], ["nwch"], perm=[0, 3, 1, 2]),
        helper.make_node("Reshape", ["nwch", "shape"], ["seq"]),
        helper.make_node("MatMul", ["seq", "fc"], ["mm"]),
        helper.make_node("Add", ["mm", "fb"], ["logits"]),
        helper.make_node("LogSoftmax", ["logits"], ["chars"], axis=2),
    ]
    return _graph(nodes, inits, [helper.make_tensor_value_info("image", F, ["N", 3, height, width])],
                  [helper.make_tensor_value_info("chars", F, ["N", w2, classes])])


def two_input_net(size=8, classes=4, seed=0) -> onnx.ModelProto:
    """An image branch (conv, relu, global average pool, linear) times a second input ``scale``
    (N, classes): output ``y`` (N, classes)."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": (rng.standard_normal((6, 3, 3, 3)) * 0.5).astype(np.float32),
        "b1": (rng.standard_normal(6) * 0.1).astype(np.float32),
        "fc": (rng.standard_normal((6, classes)) * 0.5).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["z"]),
        helper.make_node("Mul", ["z", "scale"], ["y"]),
    ]
    return _graph(nodes, inits, [helper.make_tensor_value_info("image", F, ["N", 3, size, size]),
                                 helper.make_tensor_value_info("scale", F, ["N", classes])],
                  [helper.make_tensor_value_info("y", F, ["N", classes])])


def save(model: onnx.ModelProto, path) -> str:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)
