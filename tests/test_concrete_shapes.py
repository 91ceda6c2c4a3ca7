"""Shapes that static inference loses are measured at the analysed size, and every analysis uses them.

The models are built here: a channels-last net whose stages go through tf2onnx-style shape
arithmetic (Shape -> Gather -> Cast to float -> Mul -> Cast back -> Concat -> Reshape to the same
shape, between Transposes), which onnx's shape inference cannot follow; and a dynamic-size fully convolutional
net whose output is resized to a size computed the same way.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxviz
from builders import save
from onnxviz.graph.view import tensor_types
from onnxviz.loading import infer_shapes
from onnxviz.methods.layers import resolve_layer
from onnxviz.methods.patches import layer_field
from onnxviz.session import open_session

STAGES = [("stem", 3, 8), ("stage2", 8, 16), ("stage3", 16, 32)]  # each a stride-2 3x3 conv + ReLU
SIZE = 64


def _ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _reshape_roundtrip(x: str, tag: str) -> tuple:
    """NCHW x -> NHWC -> Reshape(N, H, W, C) -> NCHW, the target shape computed from Shape(x) through a
    float Cast (as tf2onnx exports do): the values do not change, but static inference loses H, W."""
    t = f"{tag}_rs_"
    nodes = [helper.make_node("Transpose", [x], [t + "nhwc"], perm=[0, 2, 3, 1]),
             helper.make_node("Shape", [t + "nhwc"], [t + "shape"])]
    for k, axis in enumerate("nhwc"):
        nodes.append(helper.make_node("Gather", [t + "shape", f"axis{k}"], [t + axis], axis=0))
        nodes.append(helper.make_node("Cast", [t + axis], [t + axis + "_f"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", [t + axis + "_f", "one_f"], [t + axis + "_m"]))
        nodes.append(helper.make_node("Cast", [t + axis + "_m"], [t + axis + "_i"], to=TensorProto.INT64))
    nodes += [
        helper.make_node("Concat", [t + "n_i", t + "h_i", t + "w_i", t + "c_i"], [t + "back_shape"], axis=0),
        helper.make_node("Reshape", [t + "nhwc", t + "back_shape"], [t + "nhwc2"]),
        helper.make_node("Transpose", [t + "nhwc2"], [t + "out"], perm=[0, 3, 1, 2]),
    ]
    return nodes, t + "out"


def _constants() -> list:
    return [_ints(f"axis{k}", [k]) for k in range(4)] + [numpy_helper.from_array(np.ones(1, np.float32), "one_f")]


def channels_last_net(classes: int = 5, seed: int = 0) -> onnx.ModelProto:
    """NHWC 64x64 input -> Transpose -> three stride-2 conv stages, each followed by a shape-arithmetic
    Reshape round trip -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2])]
    inits = _constants()
    x = "nchw"
    for name, cin, cout in STAGES:
        inits.append(numpy_helper.from_array(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) * 0.3,
                                             f"{name}_w"))
        nodes.append(helper.make_node("Conv", [x, f"{name}_w"], [f"{name}_conv"], strides=[2, 2], pads=[1] * 4))
        nodes.append(helper.make_node("Relu", [f"{name}_conv"], [f"{name}_relu"]))
        more, x = _reshape_roundtrip(f"{name}_relu", name)
        nodes += more
    inits += [numpy_helper.from_array(rng.standard_normal((classes, 32)).astype(np.float32), "fc_w"),
              numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "channels_last",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", SIZE, SIZE, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def dense_dynamic_net(classes: int = 3, seed: int = 1) -> onnx.ModelProto:
    """Any-size NCHW input -> two stride-2 conv stages -> 1x1 conv scores -> Resize back to the input
    size, computed from Shape(image) through a float Cast: a fully convolutional (dense) head."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w1"),
             numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.3, "w2"),
             numpy_helper.from_array(rng.standard_normal((classes, 16, 1, 1)).astype(np.float32), "w3"),
             _ints("hw_start", [2]), _ints("hw_end", [4]), _ints("head_start", [0]),
             numpy_helper.from_array(np.ones(1, np.float32), "one_f")]
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], strides=[2, 2], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2], pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["scores"]),
        helper.make_node("Shape", ["image"], ["in_shape"]),
        helper.make_node("Slice", ["in_shape", "hw_start", "hw_end"], ["hw"]),
        helper.make_node("Cast", ["hw"], ["hw_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["hw_f", "one_f"], ["hw_m"]),
        helper.make_node("Cast", ["hw_m"], ["hw_i"], to=TensorProto.INT64),
        helper.make_node("Shape", ["scores"], ["s_shape"]),
        helper.make_node("Slice", ["s_shape", "head_start", "hw_start"], ["nc"]),
        helper.make_node("Concat", ["nc", "hw_i"], ["out_size"], axis=0),
        helper.make_node("Resize", ["scores", "", "", "out_size"], ["seg"], mode="linear"),
    ]
    graph = helper.make_graph(nodes, "dense_dynamic",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("seg", TensorProto.FLOAT, ["N", classes, "H", "W"])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def inspect_json(path, *args) -> dict:
    out = subprocess.run([sys.executable, "-m", "onnxviz", "inspect", str(path), "--json", *args],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


@pytest.fixture(scope="module")
def channels_last(tmp_path_factory):
    return save(channels_last_net(), tmp_path_factory.mktemp("cl") / "channels_last.onnx")


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return save(dense_dynamic_net(), tmp_path_factory.mktemp("dense") / "dense.onnx")


def test_static_inference_loses_height_and_width_of_the_later_stages():
    types = tensor_types(infer_shapes(channels_last_net()).graph)
    assert types["stem_relu"][1][2:] == (32, 32)  # before any shape arithmetic: known
    for name in ("stage2_relu", "stage3_relu", "stage3_rs_out"):
        shape = types.get(name, (None, None))[1]
        assert shape is None or not all(isinstance(d, int) for d in shape[2:]), (name, shape)


def test_measured_shapes_fill_what_static_inference_lost(channels_last):
    model = onnxviz.load(str(channels_last), verify=False)
    shapes = model.shapes_at()
    # measured by onnxruntime on a 64x64 image: stride 2 three times
    assert shapes["stage2_relu"][1:] == (16, 16, 16) and shapes["stage3_rs_out"][1:] == (32, 8, 8)
    assert shapes["stage3_rs_nhwc2"][1:] == (8, 8, 32)
    assert not isinstance(shapes["stage3_rs_out"][0], int)  # the batch stays symbolic
    assert model.tensor_shape("stage3_rs_nhwc2")[1:] == (8, 8, 32)
    layers = {layer.name: layer.shape for layer in model.layers}
    assert layers["stage3_relu"][1:] == (32, 8, 8)


def test_default_gradcam_layer_is_the_last_stage_not_the_stem(channels_last):
    model = onnxviz.load(str(channels_last), verify=False)
    assert resolve_layer(model) in ("stage3_rs_out", "stage3_relu", "stage3_conv")
    x = np.random.default_rng(0).random((1, SIZE, SIZE, 3), np.float32)
    heat = onnxviz.grad_cam(model, x, target=0)
    assert heat.layer == resolve_layer(model)
    assert heat.raw.shape[-2:] == (8, 8) and heat.map.shape[-2:] == (SIZE, SIZE)


def test_inspect_shows_concrete_sizes_and_macs(channels_last):
    info = inspect_json(channels_last, "--size", f"{SIZE}x{SIZE}")
    assert info["analyzed_size"] == [SIZE, SIZE]
    assert info["totals"]["macs_unknown"] == 0
    rows = {r["name"]: r for r in info["layers"]}
    assert rows["stage3_rs_out"]["shape"][1:] == [32, 8, 8]
    # MACs per image of each conv: output elements x Cin x 3 x 3, from the stage sizes above
    hw = {"stem": 32, "stage2": 16, "stage3": 8}
    for name, cin, cout in STAGES:
        assert rows[f"{name}_conv"]["macs"] == cout * hw[name] ** 2 * cin * 9
    assert rows["logits"]["macs"] == 5 * 32
    assert rows["stage3_rs_out"]["rf"]["jump"] == [8, 8]
    assert info["gradcam_candidates"][0].startswith("stage3")
    assert all(None not in r["shape"][1:] for r in info["layers"])


def test_dynamic_dense_model_is_analysed_at_the_given_size(dense):
    before = tensor_types(infer_shapes(dense_dynamic_net()).graph)
    assert before["seg"][1] is None or not all(isinstance(d, int) for d in before["seg"][1][2:])
    info = inspect_json(dense, "--size", "96x128")
    assert info["analyzed_size"] == [96, 128]
    assert info["totals"]["macs_unknown"] == 0
    rows = {r["name"]: r for r in info["layers"]}
    assert all(r["shape"] is not None and None not in r["shape"][1:] for r in info["layers"])
    assert rows["r2"]["shape"][1:] == [16, 24, 32] and rows["seg"]["shape"][1:] == [3, 96, 128]
    assert rows["c1"]["macs"] == 8 * 48 * 64 * 3 * 9


def test_dynamic_model_without_a_size_says_so(dense):
    info = inspect_json(dense)
    assert info["analyzed_size"] is None
    assert info["totals"]["macs_unknown"] > 0


def test_sidecar_size_gives_the_same_analysis_as_the_flag(dense, tmp_path):
    copy = tmp_path / "dense.onnx"
    with open(dense, "rb") as f:
        copy.write_bytes(f.read())
    (tmp_path / "dense.json").write_text(json.dumps({"preprocess": {"size": [96, 128]}}))
    by_sidecar, by_flag = inspect_json(copy), inspect_json(dense, "--size", "96x128")
    for key in ("analyzed_size", "totals", "layers", "gradcam_candidates"):
        assert by_sidecar[key] == by_flag[key], key


def test_patches_trace_receptive_fields_through_the_measured_shapes(channels_last):
    model = onnxviz.load(str(channels_last), verify=False)
    rf = layer_field(model, "stage3_rs_out", (SIZE, SIZE))
    # three stride-2 3x3 convs with pad 1: jump 8, size 1 + 2*(1 + 2 + 4) = 15
    assert rf.jump == (8, 8) and rf.size == (15, 15)


def test_the_sidecar_size_drives_the_model_analyses_too(dense, tmp_path):
    copy = tmp_path / "dense.onnx"
    with open(dense, "rb") as f:
        copy.write_bytes(f.read())
    (tmp_path / "dense.json").write_text(json.dumps({"preprocess": {"size": [96, 128]}}))
    model = open_session(str(copy), verify=False).model
    assert model.input.size is None and model.analysis_size == (96, 128)
    layers = {layer.name: layer.shape for layer in model.layers}
    assert layers["r2"][1:] == (16, 24, 32) and layers["seg"][1:] == (3, 96, 128)
