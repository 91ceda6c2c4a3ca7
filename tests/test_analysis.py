"""Static analysis: receptive fields, params/MACs, Grad-CAM candidates and CAM heads."""
from __future__ import annotations

import glob
import math
import os

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

from onnxviz.errors import ModelError
from onnxviz.graph.analysis import (
    ReceptiveField,
    best_gradcam_layer,
    cam_head,
    gradcam_candidates,
    layer_table,
    receptive_field,
    spatial_axes,
    summarize,
)

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def build(text: str, seed: int = 0, **values) -> onnx.ModelProto:
    """Parse a model; every input but the first (the image) becomes an initializer.

    Weights default to uniform(0.5, 1.5): positive, so every tap of a window shows in a probe.
    """
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(seed)
    keep = []
    for k, vi in enumerate(model.graph.input):
        if k > 0:
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            v = values.get(vi.name)
            v = rng.uniform(0.5, 1.5, shape).astype(np.float32) if v is None else np.asarray(v)
            model.graph.initializer.append(numpy_helper.from_array(v, vi.name))
        else:
            keep.append(vi)
    del model.graph.input[:]
    model.graph.input.extend(keep)
    onnx.checker.check_model(model)
    return shape_inference.infer_shapes(model)


def light(name: str) -> onnx.ModelProto:
    return shape_inference.infer_shapes(onnx.load(os.path.join(LIGHT, f"light_{name}.onnx")))


def rf_tuple(rf: ReceptiveField):
    return (rf.size, rf.jump, rf.start)


# ---------------------------------------------------------------------------- receptive fields

STACK = """
<ir_version: 8, opset_import: ["" : 17]>
stack (float[1,1,32,32] x, float[1,1,3,3] w1, float[1,1,3,3] w2, float[1,1,4,4] w3, float[1,1,2,2] w4,
       float[1,1,4,4] w5) => (float[1,1,1,1] g) {
  c1 = Conv <pads=[1,1,1,1]> (x, w1)
  p1 = POOL <kernel_shape=[2,2], strides=[2,2]> (c1)
  c2 = Conv <pads=[2,2,2,2], dilations=[2,2]> (p1, w2)
  p2 = POOL <kernel_shape=[3,3], strides=[2,2], pads=[1,1,1,1], ceil_mode=1> (c2)
  c3 = Conv <auto_pad="SAME_UPPER", strides=[2,2]> (p2, w3)
  c4 = Conv <auto_pad="SAME_LOWER"> (c3, w4)
  p3 = AveragePool <kernel_shape=[3,3], count_include_pad=1> (c4)
  t1 = ConvTranspose <strides=[2,2], pads=[1,1,1,1]> (p3, w5)
  pads = Constant <value = int64[8] {0,0,1,2,0,0,1,2}> ()
  t2 = Pad (t1, pads)
  starts = Constant <value = int64[2] {1,2}> ()
  ends = Constant <value = int64[2] {100,100}> ()
  axes = Constant <value = int64[2] {2,3}> ()
  steps = Constant <value = int64[2] {2,1}> ()
  t3 = Slice (t2, starts, ends, axes, steps)
  scales = Constant <value = float[4] {1,1,2,2}> ()
  t4 = Resize <mode="nearest", coordinate_transformation_mode="asymmetric"> (t3, , scales)
  g = GlobalAveragePool (t4)
}
"""

# Hand-computed with r' = r + (k_eff-1)j, j' = js, c' = c + ((k_eff-1)/2 - p_begin)j, per layer:
STACK_RF = {
    "c1": (3, 1, 0),            # k3 p1
    "p1": (4, 2, 0.5),          # k2 s2: c = 0 + 0.5
    "c2": (12, 2, 0.5),         # k3 d2 -> k_eff 5, p2: c += (2 - 2)·2
    "p2": (16, 4, 0.5),         # k3 s2 p1 ceil_mode (ceil only adds a unit at the end)
    "c3": (28, 8, 2.5),         # SAME_UPPER on n=9, k4 s2: total 3, begin 1: c += (1.5 - 1)·4
    "c4": (36, 8, -1.5),        # SAME_LOWER on n=5, k2: total 1, begin 1: c += (0.5 - 1)·8
    "p3": (52, 8, 6.5),         # k3: c += 1·8
    "t1": (60, 4, 4.5),         # ConvT k4 s2 p1: j/2, c += (1 - 1.5)·8/2, widest phase 2 taps: +8
}


def test_receptive_field_of_conv_pool_stack_matches_hand_computation():
    rfs = receptive_field(build(STACK.replace("POOL", "MaxPool")), "x", "NCHW")
    assert rf_tuple(rfs["x"]) == ((1, 1), (1, 1), (0, 0))
    for name, (size, jump, start) in STACK_RF.items():
        assert rf_tuple(rfs[name]) == ((size, size), (jump, jump), (start, start)), name


def test_receptive_field_through_pad_slice_resize_and_global_pool():
    rfs = receptive_field(build(STACK.replace("POOL", "MaxPool")), "x", "NCHW")
    # Pad begins (1, 2) move the start back by pads·4; Slice begins (1, 2), steps (2, 1).
    assert rf_tuple(rfs["t2"]) == ((60, 60), (4, 4), (0.5, -3.5))
    assert rf_tuple(rfs["t3"]) == ((60, 60), (8, 4), (4.5, 4.5))
    assert rf_tuple(rfs["t4"]) == ((60, 60), (4, 2), (4.5, 4.5))  # nearest ×2, asymmetric
    # t4 is 8×16: the pool sees 60 + 7·4 rows and 60 + 15·2 columns, centred mid-map.
    assert rf_tuple(rfs["g"]) == ((88, 90), (32, 32), (18.5, 19.5))
    assert set(rfs) == {"x", "c1", "p1", "c2", "p2", "c3", "c4", "p3", "t1", "t2", "t3", "t4", "g"}


def test_box_is_half_open_and_clipped():
    rf = ReceptiveField(size=(16, 16), jump=(4, 4), start=(0.5, 0.5))
    assert rf.box(0, 0) == (-7, -7, 9, 9)                   # rows 0.5 ± 7.5
    assert rf.box(2, 3, clip_to=(32, 32)) == (1, 5, 17, 21)
    assert rf.box(8, 8, clip_to=(32, 32)) == (25, 25, 32, 32)
    whole = ReceptiveField(size=(math.inf, math.inf), jump=(1, 1), start=(0, 0))
    assert whole.box(0, 0, clip_to=(10, 12)) == (0, 0, 10, 12)
    with pytest.raises(ValueError, match="clip_to"):
        whole.box(0, 0)


def _probe(model: onnx.ModelProto, names, size: int) -> dict:
    """Exact receptive fields by experiment: which one-hot input pixels reach each unit.

    The probe models are linear with positive weights, so unit u depends on pixel p iff out_u(e_p) > 0.
    """
    ort = pytest.importorskip("onnxruntime")
    m = onnx.ModelProto.FromString(model.SerializeToString())
    del m.graph.output[:]
    del m.graph.value_info[:]
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    basis = np.eye(size * size, dtype=np.float32).reshape(-1, 1, size, size)
    return dict(zip(names, sess.run(names, {m.graph.input[0].name: basis})))


def _support_box(response: np.ndarray, i: int, j: int, size: int):
    hit = (response[:, 0, i, j] > 0).reshape(size, size)
    rows, cols = np.nonzero(hit.any(axis=1))[0], np.nonzero(hit.any(axis=0))[0]
    return (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)


def test_receptive_field_matches_one_hot_probe_exactly():
    """Away from the border the box is exactly the set of pixels a unit depends on."""
    model = build(STACK.replace("POOL", "AveragePool"))  # same windows as MaxPool, all taps visible
    names = ["c1", "p1", "c2", "p2", "c3", "c4", "p3"]
    rfs = receptive_field(model, "x", "NCHW")
    responses = _probe(model, names, 32)
    for name in names:
        rf, resp = rfs[name], responses[name]
        for i in range(resp.shape[2]):
            for j in range(resp.shape[3]):
                box, support = rf.box(i, j), _support_box(resp, i, j, 32)
                if box[0] >= 0 and box[1] >= 0 and box[2] <= 32 and box[3] <= 32:
                    assert support == box, (name, i, j)
                else:  # near the border, padding can hide the outer taps of a dilated kernel
                    y0, x0, y1, x1 = rf.box(i, j, clip_to=(32, 32))
                    assert y0 <= support[0] and x0 <= support[1] and support[2] <= y1 and support[3] <= x1


UPSAMPLING = """
<ir_version: 8, opset_import: ["" : 17]>
up (float[1,1,24,24] x, float[1,1,3,3] w1, float[1,1,3,3] w2, float[1,1,4,4] w3)
   => (float[1,1,24,24] s, float[1,1,24,24] r1, float[1,1,24,24] r2) {
  c1 = Conv <strides=[2,2], pads=[1,1,1,1]> (x, w1)
  t1 = ConvTranspose <strides=[2,2], pads=[1,1,1,1], output_padding=[1,1]> (c1, w2)
  t2 = ConvTranspose <strides=[2,2], pads=[1,1,1,1]> (c1, w3)
  s = Add (t1, t2)
  scales = Constant <value = float[4] {1,1,2,2}> ()
  r1 = Resize <mode="linear"> (c1, , scales)
  r2 = Resize <mode="nearest", coordinate_transformation_mode="asymmetric"> (c1, , scales)
}
"""


def test_fractional_jumps_cover_the_probe_within_one_pixel():
    """ConvTranspose and Resize: sizes are the widest footprint; boxes are off by at most one pixel."""
    model = build(UPSAMPLING)
    rfs = receptive_field(model, "x", "NCHW")       # c1: size 3, jump 2, start 0
    assert rf_tuple(rfs["t1"]) == ((5, 5), (1, 1), (0, 0))        # k3 s2 p1: taps 0 and 2 reach 1 unit
    assert rf_tuple(rfs["t2"]) == ((5, 5), (1, 1), (-0.5, -0.5))  # k4 s2 p1: c += (1 - 1.5)·2/2
    assert rf_tuple(rfs["s"]) == ((5.5, 5.5), (1, 1), (-0.25, -0.25))  # [-2, 2] ∪ [-2.5, 1.5]
    assert rf_tuple(rfs["r1"]) == ((5, 5), (1, 1), (-0.5, -0.5))  # linear: 2 taps; x(0) = 0.5/2 - 0.5
    assert rf_tuple(rfs["r2"]) == ((3, 3), (1, 1), (0, 0))        # nearest, asymmetric: x(0) = 0
    names = ["t1", "t2", "r1", "r2"]
    responses = _probe(model, names, 24)
    for name in names:
        rf, resp = rfs[name], responses[name]
        widest = 0
        for i in range(2, resp.shape[2] - 2):
            for j in range(2, resp.shape[3] - 2):
                y0, x0, y1, x1 = rf.box(i, j, clip_to=(24, 24))
                s = _support_box(resp, i, j, 24)
                assert s[0] >= y0 - 1 and s[1] >= x0 - 1 and s[2] <= y1 + 1 and s[3] <= x1 + 1, (name, i, j)
                widest = max(widest, s[2] - s[0])
        assert widest == rf.size[0], name


def test_residual_and_concat_merges_take_the_union():
    model = build("""
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[1,1,32,32] x, float[1,1,3,3] w1, float[1,1,5,5] w2, float[1,1,1,1] w3) => (float[1,3,16,16] cat) {
      a = Conv <pads=[1,1,1,1]> (x, w1)
      b = Conv <pads=[2,2,2,2]> (a, w2)
      r = Add (a, b)
      pooled = MaxPool <kernel_shape=[2,2], strides=[2,2]> (r)
      d = Conv <strides=[2,2]> (x, w3)
      cat = Concat <axis=1> (pooled, d, pooled)
    }""")
    rfs = receptive_field(model, "x", "NCHW")
    assert rf_tuple(rfs["r"]) == ((7, 7), (1, 1), (0, 0))        # a: [-1, 1], b: [-3, 3]
    assert rf_tuple(rfs["pooled"]) == ((8, 8), (2, 2), (0.5, 0.5))
    assert rf_tuple(rfs["d"]) == ((1, 1), (2, 2), (0, 0))
    # concat: windows [-3, 4] and [0, 0] at unit 0 -> [-3, 4]; jumps agree.
    assert rf_tuple(rfs["cat"]) == ((8, 8), (2, 2), (0.5, 0.5))


def test_different_jumps_keep_the_smallest():
    model = build("""
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[1,1,32,32] x, float[1,1,3,3] w1) => (float[1,1,16,16] s) {
      a = Conv <strides=[2,2], pads=[1,1,1,1]> (x, w1)
      starts = Constant <value = int64[2] {4,4}> ()
      ends = Constant <value = int64[2] {20,20}> ()
      axes = Constant <value = int64[2] {2,3}> ()
      b = Slice (x, starts, ends, axes)
      s = Add (a, b)
    }""")
    rfs = receptive_field(model, "x", "NCHW")
    assert rf_tuple(rfs["a"]) == ((3, 3), (2, 2), (0, 0))
    assert rf_tuple(rfs["b"]) == ((1, 1), (1, 1), (4, 4))
    # unit 0 sees [-1, 1] through a and [4, 4] through b: the union [-1, 4] with the smaller jump
    assert rf_tuple(rfs["s"]) == ((6, 6), (1, 1), (1.5, 1.5))


NHWC = """
<ir_version: 8, opset_import: ["" : 17]>
keras (float[1,16,16,3] image, float[8,3,3,3] w1, float[8] b1, float[12,8,3,3] w2, float[12] b2,
       float[12,5] wd, float[5] bd) => (float[1,5] prob) {
  nchw = Transpose <perm=[0,3,1,2]> (image)
  c1 = Conv <strides=[2,2], pads=[1,1,1,1]> (nchw, w1, b1)
  r1 = Relu (c1)
  c2 = Conv <pads=[1,1,1,1]> (r1, w2, b2)
  r2 = Relu (c2)
  feat = Transpose <perm=[0,2,3,1]> (r2)
  ax = Constant <value = int64[2] {1,2}> ()
  gap = ReduceMean <keepdims=0> (feat, ax)
  dense = MatMul (gap, wd)
  logits = Add (dense, bd)
  prob = Softmax (logits)
}
"""


def test_channels_last_model_tracks_axes_through_transposes():
    model = build(NHWC.replace('opset_import: ["" : 17]', 'opset_import: ["" : 18]'), seed=1)
    rfs = receptive_field(model, "image", "NHWC")
    assert rf_tuple(rfs["image"]) == ((1, 1), (1, 1), (0, 0))
    assert rf_tuple(rfs["c1"]) == ((3, 3), (2, 2), (0, 0))
    assert rf_tuple(rfs["feat"]) == ((7, 7), (2, 2), (0, 0))
    axes = spatial_axes(model, "image", "NHWC")
    assert axes["image"] == (1, 2) and axes["nchw"] == (2, 3) and axes["feat"] == (1, 2)
    assert "gap" not in axes
    assert gradcam_candidates(model, "image", "NHWC") == ["feat", "r2", "c2"]
    assert best_gradcam_layer(model, "image", "NHWC") == "feat"


def test_channels_last_cam_head_weights_reproduce_the_logits():
    model = build(NHWC.replace('opset_import: ["" : 17]', 'opset_import: ["" : 18]'), seed=1)
    head = cam_head(model, "image", "NHWC")
    assert (head.feature, head.logits, head.output, head.channel_axis) == ("feat", "logits", "prob", 3)
    wd = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "wd"))
    np.testing.assert_array_equal(head.weight, wd.T)
    _check_head_numerically(model, head, {"image": np.random.default_rng(0).random((1, 16, 16, 3), np.float32)})


def _check_head_numerically(model, head, feeds):
    """logits == weight · mean over H, W of the feature + bias, on the numpy reference runtime."""
    feature, logits = ReferenceEvaluator(model).run([head.feature, head.logits], feeds)
    spatial = tuple(a for a in range(1, 4) if a != head.channel_axis)
    pooled = feature.mean(axis=spatial)
    expected = logits.reshape(len(logits), -1)
    np.testing.assert_allclose(pooled @ head.weight.T + head.bias, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gap_gemm_head_for_both_weight_orientations(trans_b):
    shape = "[4,6]" if trans_b else "[6,4]"
    model = build(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[2,3,10,10] x, float[6,3,3,3] w1, float{shape} wf, float[4] bf) => (float[2,4] y) {{
      c = Conv <pads=[1,1,1,1]> (x, w1)
      r = Relu (c)
      g = GlobalAveragePool (r)
      f = Flatten (g)
      z = Gemm <transB={trans_b}, alpha=0.5, beta=2.0> (f, wf, bf)
      y = LogSoftmax (z)
    }}""", seed=2)
    head = cam_head(model, "x", "NCHW")
    assert (head.feature, head.logits, head.output, head.channel_axis) == ("r", "z", "y", 1)
    assert head.weight.shape == (4, 6) and head.fc is not None
    _check_head_numerically(model, head, {"x": np.random.default_rng(1).random((2, 3, 10, 10), np.float32)})


def test_covering_average_pool_with_padding_counts_as_gap():
    """An AveragePool whose window covers the map is a GAP; counting padding rescales the weights."""
    model = build("""
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[1,3,6,6] x, float[5,3,1,1] w1, float[7,5,1,1] wf) => (float[1,7,1,1] z) {
      r = Conv (x, w1)
      g = AveragePool <kernel_shape=[7,7], pads=[0,0,1,1], count_include_pad=1> (r)
      z = Conv (g, wf)
    }""", seed=3)
    head = cam_head(model, "x", "NCHW")
    assert head.feature == "r" and head.weight.shape == (7, 5)
    _check_head_numerically(model, head, {"x": np.random.default_rng(2).random((1, 3, 6, 6), np.float32)})


SE = """
<ir_version: 8, opset_import: ["" : 18]>
se (float[1,3,12,12] x, float[8,3,3,3] w1, float[2,8] wr, float[8,2] we, float[10,8] wf) => (float[1,10] y) {
  c = Conv <pads=[1,1,1,1]> (x, w1)
  r = Relu (c)
  ax = Constant <value = int64[2] {2,3}> ()
  squeeze = ReduceMean <keepdims=0> (r, ax)
  red = Gemm <transB=1> (squeeze, wr)
  rr = Relu (red)
  exc = Gemm <transB=1> (rr, we)
  gate = Sigmoid (exc)
  shp = Constant <value = int64[4] {1,8,1,1}> ()
  gate4 = Reshape (gate, shp)
  scaled = Mul (r, gate4)
  g = GlobalAveragePool (scaled)
  f = Flatten (g)
  y = Gemm <transB=1> (f, wf)
}
"""


def test_squeeze_excite_gate_is_not_a_head():
    model = build(SE, seed=4)
    assert gradcam_candidates(model, "x", "NCHW") == ["scaled", "r", "c"]
    head = cam_head(model, "x", "NCHW")
    assert head.feature == "scaled" and head.weight.shape == (10, 8)
    # the SE branch averages r too, but its FC output only gates: no CAM head from it
    assert cam_head(model, "x", "NCHW", output="y").feature == "scaled"


def test_dynamic_sizes_give_unbounded_global_fields():
    model = build("""
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[N,3,H,W] x, float[4,3,3,3] w1, float[4,2] wf) => (float[N,2] y) {
      c = Conv <strides=[2,2], auto_pad="SAME_UPPER"> (x, w1)
      r = Relu (c)
      g = GlobalAveragePool (r)
      f = Flatten (g)
      y = Gemm (f, wf)
    }""")
    rfs = receptive_field(model, "x", "NCHW")
    assert rf_tuple(rfs["r"]) == ((3, 3), (2, 2), (1, 1))   # unknown n: total pad k - s = 1, begin 0
    assert rfs["y"].size == (math.inf, math.inf)
    assert rfs["y"].box(0, 0, clip_to=(50, 40)) == (0, 0, 50, 40)
    assert gradcam_candidates(model, "x", "NCHW") == ["r", "c"]
    rows = {row.name: row for row in layer_table(model, "x", "NCHW")}
    assert rows["c"].shape == (None, 4, None, None) and rows["c"].macs is None and rows["c"].params == 108
    assert rows["y"].macs == 8
    assert cam_head(model, "x", "NCHW").weight.shape == (2, 4)


def test_channel_shuffle_with_dynamic_batch_keeps_the_spatial_axes():
    """ShuffleNet's Reshape → Transpose → Reshape; shape inference names each batch dim anew."""
    model = build("""
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[N,8,6,6] x, float[8,8,3,3] w1, float[8,3] wf) => (float[N,3] y) {
      c = Conv <pads=[1,1,1,1]> (x, w1)
      s5 = Constant <value = int64[5] {-1,2,4,6,6}> ()
      g5 = Reshape (c, s5)
      t5 = Transpose <perm=[0,2,1,3,4]> (g5)
      s4 = Constant <value = int64[4] {-1,8,6,6}> ()
      shuffled = Reshape (t5, s4)
      r = Relu (shuffled)
      g = GlobalAveragePool (r)
      f = Flatten (g)
      y = MatMul (f, wf)
    }""")
    axes = spatial_axes(model, "x", "NCHW")
    assert (axes["g5"], axes["t5"], axes["shuffled"]) == ((3, 4), (3, 4), (2, 3))
    assert rf_tuple(receptive_field(model, "x", "NCHW")["r"]) == ((3, 3), (1, 1), (0, 0))
    assert gradcam_candidates(model, "x", "NCHW") == ["r", "shuffled"]


def test_no_pooling_head_is_a_clear_error():
    model = build("""
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[1,3,8,8] x, float[2,3,3,3] w1) => (float[1,2,8,8] y) {
      y = Conv <pads=[1,1,1,1]> (x, w1)
    }""")
    assert gradcam_candidates(model, "x", "NCHW") == []
    with pytest.raises(ModelError, match="name a layer"):
        best_gradcam_layer(model, "x", "NCHW")
    assert cam_head(model, "x", "NCHW") is None


def test_bad_input_name_or_layout_is_reported():
    model = build(SE)
    with pytest.raises(ModelError, match="not an input"):
        receptive_field(model, "w1", "NCHW")
    with pytest.raises(ModelError, match="layout"):
        receptive_field(model, "x", "CHW")


# ---------------------------------------------------------------------------- params and MACs


def test_params_follow_constant_producers_and_count_shared_tensors_once():
    model = build("""
    <ir_version: 8, opset_import: ["" : 17]>
    m (float[1,4,8,8] x, float[4,4,3,3] w1, float[4] b1, int8[4,1,1] q, float sc) => (float[1,4,8,8] y) {
      a = Conv <pads=[1,1,1,1]> (x, w1, b1)
      b = Conv <pads=[1,1,1,1]> (a, w1, b1)
      shape = Constant <value = int64[1] {4}> ()
      bias = ConstantOfShape <value = float[1] {0.5}> (shape)
      ax = Constant <value = int64[2] {1,2}> ()
      bias3 = Unsqueeze (bias, ax)
      scale = DequantizeLinear (q, sc)
      s = Mul (b, scale)
      y = Add (s, bias3)
    }""", q=np.ones((4, 1, 1), np.int8), sc=np.float32(0.1), b1=np.ones(4, np.float32))
    rows = {row.name: row for row in layer_table(model, "x", "NCHW")}
    assert set(rows) == {"a", "b", "s", "y"}             # constant subgraphs are not layers
    assert rows["a"].params == rows["b"].params == 4 * 4 * 9 + 4
    assert rows["s"].param_tensors == (("q", 4),)         # through DequantizeLinear to the stored int8
    assert rows["y"].param_tensors == (("bias", 4),)      # through Unsqueeze to ConstantOfShape
    assert rows["a"].macs == 4 * 8 * 8 * 4 * 9 and rows["s"].macs == 0
    assert summarize(list(rows.values())) == {"layers": 4, "params": 148 + 4 + 4,
                                              "macs": 2 * 4 * 8 * 8 * 4 * 9, "macs_unknown": 0}


def _conv(cout, cin, k, hw):
    return cout * cin * k * k + cout, cout * hw * hw * cin * k * k


def _fc(n_in, n_out):
    return n_in * n_out + n_out, n_in * n_out


def _totals(layers):
    return tuple(sum(v) for v in zip(*layers))


def test_alexnet_params_and_macs_by_hand():
    # Caffe AlexNet at 224: conv1 11×11/4 -> 54, pools 3/2 -> 26, 12, 6 (pool5 pads the end); groups of 2.
    expected = _totals([
        _conv(96, 3, 11, 54), _conv(256, 48, 5, 26), _conv(384, 256, 3, 12), _conv(384, 192, 3, 12),
        _conv(256, 192, 3, 12), _fc(256 * 6 * 6, 4096), _fc(4096, 4096), _fc(4096, 1000),
    ])
    totals = summarize(layer_table(light("bvlc_alexnet"), "data_0", "NCHW"))
    assert (totals["params"], totals["macs"]) == expected
    assert totals["params"] == 60_965_224


def test_vgg19_params_and_macs_by_hand():
    cfg = [(64, 224)] * 2 + [(128, 112)] * 2 + [(256, 56)] * 4 + [(512, 28)] * 4 + [(512, 14)] * 4
    layers, cin = [], 3
    for cout, hw in cfg:
        layers.append(_conv(cout, cin, 3, hw))
        cin = cout
    layers += [_fc(512 * 7 * 7, 4096), _fc(4096, 4096), _fc(4096, 1000)]
    totals = summarize(layer_table(light("vgg19"), "data_0", "NCHW"))
    assert (totals["params"], totals["macs"]) == _totals(layers)
    assert totals["params"] == 143_667_240


def test_squeezenet_params_and_macs_by_hand():
    # SqueezeNet 1.1: conv1 3×3/2 -> 111; fire(squeeze, expand) at 55, 27, 13; conv10 1×1 -> 1000 maps.
    layers, cin = [_conv(64, 3, 3, 111)], 64
    for squeeze, expand, hw in [(16, 64, 55), (16, 64, 55), (32, 128, 27), (32, 128, 27),
                                (48, 192, 13), (48, 192, 13), (64, 256, 13), (64, 256, 13)]:
        layers += [_conv(squeeze, cin, 1, hw), _conv(expand, squeeze, 1, hw), _conv(expand, squeeze, 3, hw)]
        cin = 2 * expand
    layers.append(_conv(1000, 512, 1, 13))
    totals = summarize(layer_table(light("squeezenet"), "data_0", "NCHW"))
    assert (totals["params"], totals["macs"]) == _totals(layers)
    assert totals["params"] == 1_235_496


def test_params_unchanged_by_opset_conversion():
    """Opset 12+ Dropout takes its ratio as a constant input: a setting, not a parameter."""
    from onnx import version_converter

    model = shape_inference.infer_shapes(version_converter.convert_version(light("squeezenet"), 17))
    assert any(n.op_type == "Dropout" and len(n.input) > 1 for n in model.graph.node)
    assert summarize(layer_table(model, "data_0", "NCHW"))["params"] == 1_235_496


# ---------------------------------------------------------------------------- the light models

LIGHT_CANDIDATES = {
    # model: (input, first candidates, what the first one is, what consumes it)
    "resnet50": ("gpu_0/data_0", ["r171", "r170"], "Relu", "AveragePool"),
    "vgg19": ("data_0", ["r36", "r35", "r34"], "MaxPool", "Reshape"),
    "bvlc_alexnet": ("data_0", ["r14", "r13", "r12"], "MaxPool", "Reshape"),
    "zfnet512": ("gpu_0/data_0", ["r14", "r13", "r12"], "MaxPool", "Reshape"),
    "squeezenet": ("data_0", ["r64", "r63"], "Relu", "GlobalAveragePool"),
    "densenet121": ("data_0", ["r907", "r906"], "Relu", "GlobalAveragePool"),
    "inception_v1": ("data_0", ["r137"], "Concat", "AveragePool"),
    "inception_v2": ("data_0", ["r504"], "Concat", "AveragePool"),
    "shufflenet": ("gpu_0/data_0", ["r198", "r197"], "Relu", "AveragePool"),
}


@pytest.mark.parametrize("name", sorted(LIGHT_CANDIDATES))
def test_light_model_gradcam_candidates(name):
    model = light(name)
    inp, expected, producer, consumer = LIGHT_CANDIDATES[name]
    found = gradcam_candidates(model, inp, "NCHW")
    assert found[:len(expected)] == expected
    nodes = {o: n for n in model.graph.node for o in n.output}
    assert nodes[found[0]].op_type == producer
    assert [n.op_type for n in model.graph.node if found[0] in n.input] == [consumer]
    assert receptive_field(model, inp, "NCHW")[found[0]].jump == (32, 32) or name == "squeezenet"


def test_known_receptive_fields_of_vgg19_and_alexnet():
    # VGG: 3×3 convs add 2·jump each, pools double the jump; pool5 of VGG-19 sees 268 px.
    rfs = receptive_field(light("vgg19"), "data_0", "NCHW")
    assert rf_tuple(rfs["r35"]) == ((252, 252), (16, 16), (7.5, 7.5))
    assert rf_tuple(rfs["r36"]) == ((268, 268), (32, 32), (15.5, 15.5))
    assert receptive_field(light("bvlc_alexnet"), "data_0", "NCHW")["r14"].size == (195, 195)


def test_light_cam_heads():
    resnet = cam_head(light("resnet50"), "gpu_0/data_0", "NCHW")
    assert (resnet.feature, resnet.logits, resnet.weight.shape) == ("r171", "r174", (1000, 2048))
    # Inception v1's classifier weight is Reshape(ConstantOfShape(...)): folded to 1000×1024.
    inception = cam_head(light("inception_v1"), "data_0", "NCHW")
    assert inception.feature == "r137" and inception.weight.shape == (1000, 1024)
    assert np.allclose(inception.weight, 0.02)
    # DenseNet ends GAP -> 1×1 Conv (its output is the model output).
    densenet = cam_head(light("densenet121"), "data_0", "NCHW")
    assert (densenet.feature, densenet.output, densenet.weight.shape) == ("r907", "fc6_1", (1000, 1024))
    for flatten_fc in ("vgg19", "bvlc_alexnet", "zfnet512"):
        inp = LIGHT_CANDIDATES[flatten_fc][0]
        assert cam_head(light(flatten_fc), inp, "NCHW") is None, flatten_fc


def test_squeezenet_head_is_gap_of_class_maps():
    """SqueezeNet has no FC after its GAP (conv10 -> relu -> GAP -> softmax): the pooled maps are
    the logits, so the head has identity weights and CAM for class c is channel c of r64."""
    head = cam_head(light("squeezenet"), "data_0", "NCHW")
    assert (head.feature, head.logits, head.output, head.fc) == ("r64", "r65", "softmaxout_1", None)
    np.testing.assert_array_equal(head.weight, np.eye(1000, dtype=np.float32))
    assert not head.bias.any()


def test_all_light_models_analyse_quickly():
    import time

    for path in sorted(glob.glob(os.path.join(LIGHT, "*.onnx"))):
        model = shape_inference.infer_shapes(onnx.load(path))
        inp = next(i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
        t0 = time.perf_counter()
        rows = layer_table(model, inp, "NCHW")
        assert time.perf_counter() - t0 < 10
        assert all(r.rf is not None for r in rows), path
        assert {r.op for r in rows} >= {"Conv", "Relu"}
