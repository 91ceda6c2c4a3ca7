"""Backward rules of data-movement ops: copies, permutations, concatenation, indexing, resampling.

Every op here is linear in its data input, so most cases use the exact adjoint identity;
Resize has no float64 kernel in ORT's CPU build and runs in float32.
"""
import numpy as np
import pytest
from onnx import TensorProto

from gradcheck import Case, Draw, assert_case, check_case


f32, f64 = np.float32, np.float64
i64 = np.int64
draw = Draw(dtype=f64)
rng = draw.rng
r = draw.r


def ints(*v):
    return np.array(v, i64)


def adj(op, inputs, rtol=1e-9, **kw):
    return Case(op, inputs, check="adjoint", rtol=rtol, **kw)


CASES = [
    Case("Identity", {"x": r(2, 3)}),
    Case("Dropout", {"x": r(2, 3)}, attrs={"ratio": 0.3}, opset=7, outputs=2, id="Dropout-opset7"),
    Case("Dropout", {"x": r(2, 3)}, consts={"ratio": np.array(0.5, f64), "training": np.array(False)},
         outputs=2, id="Dropout-training-false"),
    Case("Dropout", {"x": r(2, 3)}, opset=13, id="Dropout-opset13"),
    Case("Cast", {"x": r(2, 3, dtype=f32)}, attrs={"to": TensorProto.DOUBLE}, id="Cast-f32-f64"),
    Case("Cast", {"x": r(2, 3)}, attrs={"to": TensorProto.FLOAT}, rtol=1e-4, eps=0.1, id="Cast-f64-f32"),
    Case("Cast", {"x": r(2, 3)}, attrs={"to": TensorProto.DOUBLE}, id="Cast-f64-f64"),
    adj("Transpose", {"x": r(2, 3, 4, 5)}, attrs={"perm": [0, 2, 3, 1]}, id="Transpose-nhwc"),
    adj("Transpose", {"x": r(2, 3, 4)}, id="Transpose-default"),
    adj("Transpose", {"x": r(2, 3, 4)}, dynamic=(0, 1, 2), id="Transpose-default-dynamic"),
    # Concat / Split
    adj("Concat", {"a": r(2, 3, 4), "b": r(2, 1, 4), "c": r(2, 2, 4)}, attrs={"axis": 1}, id="Concat-3"),
    adj("Concat", {"a": r(2, 3, 4), "b": r(2, 3, 2)}, attrs={"axis": -1}, id="Concat-neg-axis"),
    adj("Concat", {"a": r(2, 3)}, consts={"b": r(2, 4)}, attrs={"axis": 1}, id="Concat-const"),
    adj("Concat", {"a": r(2, 3, 4), "b": r(2, 1, 4)}, attrs={"axis": -2}, dynamic=(1,), id="Concat-dynamic"),
    adj("Concat", {"a": r(2, 3, 4), "b": r(2, 1, 4)}, attrs={"axis": 1}, dynamic=(1,), opset=11,
        id="Concat-dynamic-opset11"),
    adj("Concat", {"a": r(2, 3), "b": r(2, 2)}, attrs={"axis": 1}, opset=7, id="Concat-opset7"),
    adj("Split", {"x": r(2, 6, 3)}, attrs={"axis": 1, "split": [1, 2, 3]}, opset=11, outputs=3, id="Split-attr"),
    adj("Split", {"x": r(2, 6, 3)}, consts={"s": ints(4, 2)}, attrs={"axis": -2}, outputs=2, opset=13,
        id="Split-input-neg-axis"),
    adj("Split", {"x": r(2, 7)}, attrs={"axis": -1, "num_outputs": 3}, outputs=3, opset=18, id="Split-num-outputs"),
    adj("Split", {"x": r(2, 6)}, attrs={"axis": 1}, outputs=3, opset=7, id="Split-equal-opset7"),
    adj("Split", {"x": r(4, 3)}, outputs=2, dynamic=(0,), id="Split-dynamic"),
    # Slice: attributes before opset 10, inputs after; negative steps, clamped and negative bounds
    adj("Slice", {"x": r(4, 5)}, attrs={"starts": [1, -4], "ends": [3, 100], "axes": [0, 1]}, opset=7,
        id="Slice-opset7"),
    adj("Slice", {"x": r(4, 6)}, consts={"s": ints(5, 0), "e": ints(-100, 6), "a": ints(1, 0), "t": ints(-2, 2)},
        opset=10, id="Slice-opset10-steps"),
    adj("Slice", {"x": r(3, 7, 4)}, consts={"s": ints(-1), "e": ints(-2**63), "a": ints(1), "t": ints(-1)},
        id="Slice-reverse"),
    adj("Slice", {"x": r(3, 8, 5)}, consts={"s": ints(6, 4), "e": ints(0, -6), "a": ints(-2, -1), "t": ints(-3, -1)},
        id="Slice-neg-steps-axes"),
    adj("Slice", {"x": r(3, 8)}, consts={"s": ints(1), "e": ints(2**62), "a": ints(1), "t": ints(3)},
        dynamic=(0, 1), id="Slice-dynamic"),
    # Gather: scalar and tensor indices, repeats, negative indices, any axis
    adj("Gather", {"x": r(4, 3)}, consts={"i": np.array(2, i64)}, id="Gather-scalar"),
    adj("Gather", {"x": r(3, 5)}, consts={"i": ints(0, -1, 4, 0, 2)}, attrs={"axis": 1}, id="Gather-repeats-neg"),
    adj("Gather", {"x": r(2, 3, 4)}, consts={"i": np.array([[0, 3], [-1, 1]], i64)}, attrs={"axis": -1},
        id="Gather-2d-indices"),
    adj("Gather", {"x": r(4, 3)}, consts={"i": ints(3, 1, 3)}, opset=13, id="Gather-repeats-opset13"),
    adj("Gather", {"x": r(4, 3)}, consts={"i": ints(3, 1)}, opset=13, id="Gather-unique-opset13"),
    adj("Gather", {"x": r(4, 3)}, consts={"i": ints(3, 1, -4, 3)}, opset=7, id="Gather-opset7"),
    adj("Gather", {"x": r(5, 3)}, consts={"i": ints(4, 4, 0)}, dynamic=(0,), id="Gather-dynamic"),
    # Pad: attribute before opset 11, inputs after, axes input at 18, wrap at 19; negative pads crop
    adj("Pad", {"x": r(2, 3)}, attrs={"pads": [1, 0, 2, 3], "value": 1.5}, opset=7, id="Pad-opset7"),
    adj("Pad", {"x": r(3, 4)}, attrs={"pads": [1, 2, 1, 2], "mode": "reflect"}, opset=7, id="Pad-reflect-opset7"),
    adj("Pad", {"x": r(2, 3, 4)}, consts={"p": ints(0, 1, -1, 0, 2, 1), "v": np.array(2.0, f64)},
        id="Pad-constant-neg"),
    adj("Pad", {"x": r(2, 4, 5)}, consts={"p": ints(0, 2, 3, 0, 3, 1)}, attrs={"mode": "reflect"}, id="Pad-reflect"),
    adj("Pad", {"x": r(2, 3, 4)}, consts={"p": ints(0, 2, 3, 0, 3, 1)}, attrs={"mode": "edge"}, id="Pad-edge"),
    adj("Pad", {"x": r(2, 3, 4)}, consts={"p": ints(0, 2, 3, 0, 3, 1)}, attrs={"mode": "edge"}, opset=13,
        id="Pad-edge-opset13"),
    adj("Pad", {"x": r(2, 3, 4)}, consts={"p": ints(2, 1, 1, 2), "v": np.array(0.0, f64), "a": ints(-1, 1)},
        attrs={"mode": "reflect"}, opset=18, id="Pad-axes"),
    adj("Pad", {"x": r(2, 3, 4)}, consts={"p": ints(0, 2, 5, 0, 1, 3)}, attrs={"mode": "wrap"}, opset=19,
        id="Pad-wrap"),
    adj("Pad", {"x": r(2, 3, 4)}, consts={"p": ints(0, 2, 2, 0, 1, 1)}, attrs={"mode": "reflect"}, dynamic=(0, 1, 2),
        id="Pad-reflect-dynamic"),
    # Expand, Tile
    adj("Expand", {"x": r(3, 1)}, consts={"s": ints(2, 3, 4)}, id="Expand"),
    adj("Expand", {"x": r(1, 3, 1)}, consts={"s": ints(2, 1, 1)}, opset=8, id="Expand-opset8"),
    adj("Tile", {"x": r(2, 3, 1)}, consts={"t": ints(2, 1, 3)}, id="Tile"),
    adj("Tile", {"x": r(2, 3)}, consts={"t": ints(3, 2)}, dynamic=(0, 1), id="Tile-dynamic"),
    adj("Tile", {"x": r(2, 3)}, consts={"t": ints(1, 2)}, opset=7, id="Tile-opset7"),
    # DepthToSpace / SpaceToDepth
    adj("DepthToSpace", {"x": r(2, 8, 3, 2)}, attrs={"blocksize": 2, "mode": "DCR"}, id="DepthToSpace-DCR"),
    adj("DepthToSpace", {"x": r(2, 8, 3, 2)}, attrs={"blocksize": 2, "mode": "CRD"}, id="DepthToSpace-CRD"),
    adj("DepthToSpace", {"x": r(1, 18, 2, 3)}, attrs={"blocksize": 3, "mode": "CRD"}, dynamic=(0, 2, 3),
        id="DepthToSpace-CRD-dynamic"),
    adj("DepthToSpace", {"x": r(1, 8, 2, 3)}, attrs={"blocksize": 2}, opset=7, id="DepthToSpace-opset7"),
    adj("SpaceToDepth", {"x": r(2, 2, 4, 6)}, attrs={"blocksize": 2}, id="SpaceToDepth"),
]


def resize(name, x_shape, attrs, scales=None, sizes=None, roi=None, opset=17, **kw):
    consts = {}
    order = ["x"]
    if opset == 10:
        consts["scales"] = np.array(scales, f32)
        order.append("scales")
    else:
        if roi is None and opset < 13:
            roi = np.zeros(0, f32)
        if roi is not None:
            consts["roi"] = np.array(roi, f32)
        order.append("roi" if roi is not None else "")
        if scales is not None:
            consts["scales"] = np.array(scales, f32)
            order.append("scales")
        elif opset < 13:
            consts["scales"] = np.zeros(0, f32)
            order.append("scales")
        else:
            order.append("")
        if sizes is not None:
            consts["sizes"] = np.array(sizes, i64)
            order.append("sizes")
    return Case("Resize", {"x": r(*x_shape, dtype=f32)}, consts=consts, order=order, attrs=attrs, opset=opset,
                check="adjoint", rtol=2e-5, id="Resize-" + name, **kw)


LIN, CUB, NN = {"mode": "linear"}, {"mode": "cubic"}, {"mode": "nearest"}


def ctm(mode):
    return {"coordinate_transformation_mode": mode}


CASES += [
    resize("linear-half-pixel-x2", (1, 2, 4, 5), LIN, sizes=[1, 2, 8, 10]),
    resize("linear-align-corners", (1, 2, 4, 5), {**LIN, **ctm("align_corners")}, scales=[1, 1, 1.5, 0.6]),
    resize("linear-asymmetric", (2, 1, 5, 3), {**LIN, **ctm("asymmetric")}, scales=[1, 1, 1.7, 2.5]),
    resize("linear-pytorch-half-pixel", (1, 2, 4, 5), {**LIN, **ctm("pytorch_half_pixel")}, sizes=[1, 2, 1, 7]),
    resize("linear-down", (1, 2, 9, 7), LIN, scales=[1, 1, 0.5, 0.75]),
    resize("cubic-x2.3", (1, 1, 5, 6), CUB, scales=[1, 1, 2.3, 1.6]),
    resize("cubic-exclude-outside", (1, 2, 5, 4), {**CUB, "exclude_outside": 1, "cubic_coeff_a": -0.5,
                                                 **ctm("align_corners")}, sizes=[1, 2, 7, 9]),
    resize("nearest-asymmetric-floor", (1, 2, 3, 4), {**NN, **ctm("asymmetric"), "nearest_mode": "floor"},
           scales=[1, 1, 2, 2]),
    resize("nearest-down", (1, 2, 7, 5), {**NN, **ctm("half_pixel"), "nearest_mode": "round_prefer_ceil"},
           scales=[1, 1, 0.6, 0.5]),
    resize("nearest-opset13", (1, 2, 3, 5), {**NN, **ctm("half_pixel"), "nearest_mode": "round_prefer_ceil"},
           scales=[1, 1, 1.5, 2.4], opset=13),
    resize("nearest-channels", (1, 2, 3, 4), NN, scales=[1, 2, 1, 1.5], opset=13),
    resize("nearest-channels-iota", (1, 2, 3, 4), NN, scales=[1, 2, 1, 1.5]),
    resize("tf-crop-and-resize", (1, 2, 6, 5), {**LIN, **ctm("tf_crop_and_resize"), "extrapolation_value": 3.0},
           roi=[0, 0, 0.2, -0.1, 1, 1, 0.9, 1.2], sizes=[1, 2, 4, 6]),
    resize("antialias", (1, 2, 9, 8), {**LIN, "antialias": 1}, scales=[1, 1, 0.45, 0.6], opset=18),
    resize("cubic-antialias", (1, 1, 9, 8), {**CUB, "antialias": 1}, scales=[1, 1, 0.5, 0.7], opset=18),
    resize("axes", (1, 2, 4, 5), {**LIN, "axes": [3, 2]}, scales=[1.5, 2.0], opset=18),
    resize("nearest-keep-aspect", (1, 2, 4, 6), {**NN, "axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"},
           sizes=[7, 7], opset=18),
    resize("half-pixel-symmetric", (1, 2, 4, 5), {**LIN, **ctm("half_pixel_symmetric")}, scales=[1, 1, 1.7, 0.8],
           opset=19),
    resize("opset10", (1, 2, 3, 4), LIN, scales=[1, 1, 2, 1.5], opset=10),
    resize("opset11-sizes", (1, 2, 3, 4), {**LIN, **ctm("align_corners")}, sizes=[1, 2, 5, 7], opset=11),
    resize("trilinear", (1, 1, 3, 4, 3), LIN, scales=[1, 1, 1.5, 2, 0.7]),
    resize("linear-dynamic", (1, 2, 4, 5), LIN, scales=[1, 1, 1.5, 2.2], dynamic=(0, 2, 3)),
    resize("nearest-dynamic", (1, 2, 4, 5), NN, scales=[1, 1, 1.5, 2.2], dynamic=(0, 2, 3)),
    Case("Upsample", {"x": r(1, 2, 3, 4, dtype=f32)}, attrs={"mode": "nearest", "scales": [1.0, 1.0, 2.0, 3.0]},
         opset=7, check="adjoint", rtol=2e-5, id="Upsample-opset7-nearest"),
    Case("Upsample", {"x": r(1, 2, 3, 4, dtype=f32)}, attrs={"mode": "linear", "scales": [1.0, 1.0, 2.0, 1.5]},
         opset=7, check="adjoint", rtol=2e-5, id="Upsample-opset7-linear"),
    Case("Upsample", {"x": r(1, 2, 3, 4, dtype=f32)}, consts={"s": np.array([1, 1, 2.5, 2], f32)},
         attrs={"mode": "linear"}, opset=9, check="adjoint", rtol=2e-5, id="Upsample-opset9-linear"),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_rule(case):
    assert_case(case)


@pytest.mark.parametrize("index", [1, 2])
def test_split_other_outputs(index):
    case = adj("Split", {"x": r(2, 6, 3)}, attrs={"axis": 1, "split": [1, 2, 3]}, opset=11, outputs=3)
    assert check_case(case, output_index=index) < 1e-9


def test_slice_tiny_by_hand():
    from gradcheck import gradients, node_model

    x = np.arange(6, dtype=f64)
    case = Case("Slice", {"x": x}, consts={"s": ints(4), "e": ints(0), "a": ints(0), "t": ints(-2)})
    g = gradients(node_model(case), {"x": x}, "y0", ["x"], np.array([10.0, 20.0]))["x"]
    np.testing.assert_array_equal(g, [0, 0, 20, 0, 10, 0])


def test_reflect_pad_by_hand():
    from gradcheck import gradients, node_model

    x = np.arange(4, dtype=f64)  # reflect by 2: [2 1 | 0 1 2 3 | 2 1]
    case = Case("Pad", {"x": x}, consts={"p": ints(2, 2)}, attrs={"mode": "reflect"})
    g = gradients(node_model(case), {"x": x}, "y0", ["x"], np.arange(1.0, 9.0))["x"]
    np.testing.assert_array_equal(g, [3, 2 + 4 + 8, 1 + 5 + 7, 6])


def test_resize_against_torch():
    torch = pytest.importorskip("torch")
    from gradcheck import gradients, node_model

    x = r(1, 2, 5, 6, dtype=f32)
    seed = r(1, 2, 8, 9, dtype=f32)
    for mode, ctm_, align in (("linear", "half_pixel", False), ("linear", "align_corners", True),
                              ("cubic", "half_pixel", False)):
        attrs = {"mode": mode, "coordinate_transformation_mode": ctm_}
        if mode == "cubic":
            attrs["cubic_coeff_a"] = -0.75
        case = resize("t", x.shape, attrs, sizes=[1, 2, 8, 9])
        case.inputs["x"] = x
        g = gradients(node_model(case), {"x": x}, "y0", ["x"], seed)["x"]
        tx = torch.tensor(x, requires_grad=True)
        y = torch.nn.functional.interpolate(tx, size=(8, 9), mode="bilinear" if mode == "linear" else "bicubic",
                                            align_corners=align)
        (y * torch.tensor(seed)).sum().backward()
        np.testing.assert_allclose(g, tx.grad.numpy(), rtol=1e-4, atol=1e-5)


OPSET22 = [
    adj("Transpose", {"x": r(2, 3, 4)}, attrs={"perm": [2, 0, 1]}),
    adj("Slice", {"x": r(3, 8)}, consts={"s": ints(6), "e": ints(0), "a": ints(1), "t": ints(-2)}),
    adj("Pad", {"x": r(2, 3, 4)}, consts={"p": ints(0, 2, 1, 0, 1, 3)}, attrs={"mode": "reflect"}),
    adj("Gather", {"x": r(4, 3)}, consts={"i": ints(3, 1, 3)}),
    adj("Concat", {"a": r(2, 3), "b": r(2, 2)}, attrs={"axis": -1}),
    adj("Split", {"x": r(2, 6)}, attrs={"axis": 1, "num_outputs": 2}, outputs=2),
    Case("Cast", {"x": r(2, 3, dtype=f32)}, attrs={"to": TensorProto.DOUBLE}),
    Case("Dropout", {"x": r(2, 3)}),
    resize("opset22", (1, 2, 3, 4), {**LIN, **ctm("half_pixel_symmetric")}, scales=[1, 1, 2, 1.5]),
]


@pytest.mark.parametrize("case", OPSET22, ids=lambda c: f"{c}-opset22")
def test_rule_at_opset22(case):
    case.opset = 22
    assert_case(case)


def test_cast_to_its_own_type_adds_no_backward_node():
    """Exporters leave hundreds of float -> float Casts; their gradient passes straight through."""
    from gradcheck import node_model
    from onnxviz.autodiff import STANDARD, gradient_graph

    model = node_model(Case("Cast", {"x": r(2, 3, dtype=f32)}, attrs={"to": TensorProto.FLOAT}))
    gm = gradient_graph(model, "y0", ["x"], STANDARD)
    backward = [n.op_type for n in gm.proto.graph.node if n.name.startswith("grad")]
    assert "Cast" not in backward


BLOCK_CASES = [  # (name, attrs, scales, block spelling expected)
    ("default-x2", {}, [1, 1, 2, 2], True),
    ("default-x3x2", {}, [1, 1, 3, 2], True),
    ("half-pixel-ceil-x3", {**ctm("half_pixel"), "nearest_mode": "round_prefer_ceil"}, [1, 1, 3, 3], True),
    ("pytorch-half-pixel-x2", {**ctm("pytorch_half_pixel")}, [1, 1, 2, 2], True),
    ("asymmetric-floor-x3", {**ctm("asymmetric"), "nearest_mode": "floor"}, [1, 1, 3, 3], True),
    ("tf-half-pixel-x3", {**ctm("tf_half_pixel_for_nn"), "nearest_mode": "floor"}, [1, 1, 3, 2], True),
    ("asymmetric-round-x2", {**ctm("asymmetric")}, [1, 1, 2, 2], True),
    ("asymmetric-round-x3", {**ctm("asymmetric")}, [1, 1, 3, 3], False),  # i/3 rounds up at j = 2
    ("half-pixel-floor-x2", {**ctm("half_pixel"), "nearest_mode": "floor"}, [1, 1, 2, 2], False),
    ("align-corners-x2", {**ctm("align_corners")}, [1, 1, 2, 2], False),
    ("ceil-x2", {**ctm("asymmetric"), "nearest_mode": "ceil"}, [1, 1, 2, 2], False),
]


@pytest.mark.parametrize("name,attrs,scales,block", BLOCK_CASES, ids=[c[0] for c in BLOCK_CASES])
def test_nearest_upsampling_by_integer_factors_sums_blocks(name, attrs, scales, block):
    """Where every output pixel i comes from input i // s, dx is the s x s block sum (a strided
    ones Conv); the adjoint identity against the runtime's own Resize checks the mode table,
    and the other modes keep the scatter."""
    from gradcheck import node_model
    from onnxviz.autodiff import STANDARD, gradient_graph

    case = resize("block-" + name, (2, 3, 4, 5), {**NN, **attrs}, scales=scales)
    assert_case(case)
    ops = {n.op_type for n in gradient_graph(node_model(case), "y0", ["x"], STANDARD).proto.graph.node}
    assert ("ScatterElements" not in ops and "Conv" in ops) if block else "ScatterElements" in ops


def test_nearest_upsample_opset9_sums_blocks():
    assert_case(Case("Upsample", {"x": r(2, 3, 3, 4, dtype=f32)}, consts={"s": np.array([1, 1, 2, 3], f32)},
                     attrs={"mode": "nearest"}, opset=9, check="adjoint", rtol=2e-5, id="Upsample-opset9-nearest"))


GATHER_SCATTER_CASES = [
    adj("GatherElements", {"x": r(3, 4)}, consts={"i": np.array([[0, 3, 3], [1, 0, 2], [2, 2, -1]], i64)},
        attrs={"axis": 1}, id="GatherElements-repeats-neg"),
    adj("GatherElements", {"x": r(3, 2, 4)}, consts={"i": np.array([[[2, 0, 1, 2]], [[0, 0, 1, 1]]], i64)},
        attrs={"axis": 0}, id="GatherElements-axis0"),
    adj("GatherND", {"x": r(3, 4, 2)}, consts={"i": np.array([[0, 1], [2, 3], [0, 1]], i64)}, id="GatherND-repeats"),
    adj("GatherND", {"x": r(2, 3, 4)}, consts={"i": np.array([[1], [2]], i64)}, attrs={"batch_dims": 1},
        id="GatherND-batch-dims"),
    Case("ScatterND", {"data": r(4, 3), "u": r(2, 3)}, consts={"i": np.array([[2], [0]], i64)}, order=["data", "i", "u"],
         id="ScatterND"),
    Case("ScatterND", {"data": r(4, 3), "u": r(3, 3)}, consts={"i": np.array([[2], [0], [2]], i64)},
         order=["data", "i", "u"], attrs={"reduction": "add"}, opset=16, id="ScatterND-add-repeats"),
    Case("ScatterElements", {"data": r(3, 4), "u": r(3, 2)}, consts={"i": np.array([[1, 3], [0, 2], [3, 0]], i64)},
         order=["data", "i", "u"], attrs={"axis": 1}, id="ScatterElements"),
    Case("ScatterElements", {"data": r(3, 4), "u": r(2, 4)}, consts={"i": np.array([[1, 0, 2, 1], [1, 2, 0, 0]], i64)},
         order=["data", "i", "u"], attrs={"axis": 0, "reduction": "add"}, opset=16, id="ScatterElements-add"),
    adj("CumSum", {"x": r(3, 5)}, consts={"a": np.array(1, i64)}, id="CumSum"),
    adj("CumSum", {"x": r(3, 5)}, consts={"a": np.array(-1, i64)}, attrs={"exclusive": 1, "reverse": 1},
        id="CumSum-exclusive-reverse"),
    adj("CumSum", {"x": r(4, 2)}, consts={"a": np.array(0, i64)}, attrs={"exclusive": 1}, id="CumSum-exclusive"),
]


@pytest.mark.parametrize("case", GATHER_SCATTER_CASES, ids=str)
def test_gather_scatter_cumsum_rules(case):
    assert_case(case)


TOPK_CASES = [Case("TopK", {"x": r(4, 5)}, consts={"k": np.array([2], i64)}, attrs={"largest": largest, "axis": axis},
                   outputs=2, id=f"TopK-largest{largest}-axis{axis}") for largest, axis in [(1, -1), (0, 0)]]


@pytest.mark.parametrize("case", TOPK_CASES, ids=str)
def test_top_k_sends_dy_to_the_chosen_elements(case):
    assert_case(case)
