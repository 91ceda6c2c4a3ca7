"""Backward rules of Conv, ConvTranspose, Gemm and MatMul.

Conv and ConvTranspose have no float64 kernels in ORT's CPU build: they are checked in float32
with the exact adjoint identity. Gemm and MatMul run in float64 against central differences.
"""
import numpy as np
import pytest

from gradcheck import Case, Draw, assert_case, check_case

from onnxviz.autodiff import STANDARD
from onnxviz.errors import OnnxvizError

f32, f64 = np.float32, np.float64
draw = Draw(dtype=f32)
rng = draw.rng
r = draw.r


CASES = []

CONV_TRANSPOSE = [
    dict(id="plain", x=(1, 3, 5, 5), w=(3, 2, 3, 3), attrs={}),
    dict(id="stride2-pad", x=(2, 2, 4, 5), w=(2, 3, 3, 3), attrs={"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    dict(id="output-padding", x=(1, 2, 4, 5), w=(2, 3, 3, 3),
         attrs={"strides": [2, 3], "pads": [1, 0, 1, 1], "output_padding": [1, 2]}),
    dict(id="output-padding-beyond-pads", x=(1, 2, 4, 5), w=(2, 2, 3, 3),
         attrs={"strides": [3, 3], "output_padding": [2, 1]}),
    dict(id="output-shape", x=(1, 2, 5, 6), w=(2, 2, 3, 3), attrs={"strides": [2, 2], "output_shape": [9, 10]}),
    dict(id="output-shape-odd", x=(1, 2, 5, 6), w=(2, 2, 3, 3), attrs={"strides": [2, 3], "output_shape": [8, 14]}),
    dict(id="output-shape-output-padding", x=(1, 2, 5, 6), w=(2, 2, 3, 3),
         attrs={"strides": [2, 2], "output_shape": [9, 10], "output_padding": [1, 1]}),
    dict(id="output-shape-same-upper", x=(1, 2, 5, 6), w=(2, 2, 3, 3),
         attrs={"strides": [2, 2], "output_shape": [10, 12], "auto_pad": "SAME_UPPER"}),
    dict(id="same-upper", x=(1, 2, 5, 6), w=(2, 2, 3, 3), attrs={"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    dict(id="same-lower", x=(1, 2, 5, 6), w=(2, 2, 4, 3), attrs={"strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    dict(id="valid", x=(1, 2, 4, 5), w=(2, 2, 3, 3), attrs={"strides": [2, 2], "auto_pad": "VALID"}),
    dict(id="group", x=(1, 4, 5, 5), w=(4, 3, 3, 3), attrs={"group": 2, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    dict(id="depthwise", x=(1, 3, 4, 4), w=(3, 1, 4, 4), attrs={"group": 3, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    dict(id="dilated", x=(1, 2, 5, 6), w=(2, 2, 3, 3), attrs={"dilations": [2, 3], "strides": [2, 1], "pads": [1, 2, 0, 1]}),
    dict(id="1d", x=(2, 2, 7), w=(2, 3, 4), attrs={"strides": [2], "pads": [1, 0], "output_padding": [1]}),
    dict(id="3d", x=(1, 1, 3, 4, 3), w=(1, 2, 3, 3, 2), attrs={"strides": [2, 1, 2], "pads": [1, 0, 0, 1, 1, 0]}),
]
for c in CONV_TRANSPOSE:
    CASES.append(Case("ConvTranspose", {"x": r(*c["x"])}, consts={"w": r(*c["w"]), "b": r(c["w"][1] * c["attrs"].get("group", 1))},
                      attrs=c["attrs"], check="adjoint", id="ConvTranspose-" + c["id"], rtol=1e-4))
# Stride 1 with constant weights: the adjoint is a Conv with the flipped kernel (rules/conv.py)
FLIPPED = [
    dict(id="dense", x=(2, 3, 7, 8), w=(4, 3, 3, 3), attrs={"pads": [1, 1, 1, 1]}),
    dict(id="depthwise", x=(2, 4, 7, 6), w=(4, 1, 3, 3), attrs={"group": 4, "pads": [1, 1, 1, 1]}),
    dict(id="depthwise-multiplier", x=(1, 3, 6, 6), w=(6, 1, 5, 5), attrs={"group": 3, "pads": [2, 2, 2, 2]}),
    dict(id="grouped", x=(1, 6, 6, 7), w=(4, 3, 3, 2), attrs={"group": 2, "pads": [1, 0, 1, 1]}),
    dict(id="asym-pads", x=(1, 2, 7, 6), w=(3, 2, 3, 4), attrs={"pads": [0, 2, 2, 1]}),
    dict(id="dilated-asym", x=(1, 2, 9, 9), w=(2, 2, 3, 2), attrs={"dilations": [2, 3], "pads": [1, 3, 4, 0]}),
    dict(id="no-pads", x=(1, 2, 6, 7), w=(3, 2, 3, 3), attrs={}),
    dict(id="same-upper-even", x=(1, 2, 6, 7), w=(2, 2, 4, 2), attrs={"auto_pad": "SAME_UPPER"}),
    dict(id="pointwise", x=(2, 5, 4, 4), w=(3, 5, 1, 1), attrs={}),
    dict(id="pads-beyond-kernel", x=(1, 2, 5, 5), w=(2, 2, 2, 2), attrs={"pads": [2, 0, 1, 3]}),
    dict(id="1d", x=(2, 2, 9), w=(3, 2, 4), attrs={"pads": [2, 1]}),
    dict(id="3d", x=(1, 2, 4, 5, 4), w=(2, 2, 2, 3, 2), attrs={"pads": [1, 1, 0, 0, 1, 1]}),
]
for c in FLIPPED:
    CASES.append(Case("Conv", {"x": r(*c["x"])}, consts={"w": r(*c["w"]), "b": r(c["w"][0])}, attrs=c["attrs"],
                      check="adjoint", id="Conv-s1-" + c["id"], rtol=1e-4))
# Strided depthwise: zero insertion, then the stride-1 flipped-kernel Conv (rules/conv.py)
STRIDED = [
    dict(id="s2-pad1", x=(2, 4, 8, 8), w=(4, 1, 3, 3), attrs={"group": 4, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    dict(id="s2-odd", x=(1, 3, 7, 9), w=(3, 1, 3, 3), attrs={"group": 3, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    dict(id="s2-k5-multiplier", x=(1, 2, 9, 8), w=(6, 1, 5, 5), attrs={"group": 2, "strides": [2, 2], "pads": [2, 2, 2, 2]}),
    dict(id="s3-2-asym", x=(1, 3, 10, 9), w=(3, 1, 3, 2), attrs={"group": 3, "strides": [3, 2], "pads": [0, 1, 2, 0]}),
    dict(id="s2-dilated", x=(1, 2, 11, 10), w=(2, 1, 3, 3),
         attrs={"group": 2, "strides": [2, 2], "dilations": [2, 2], "pads": [2, 1, 1, 2]}),
    dict(id="s2-same-upper", x=(1, 4, 7, 6), w=(4, 1, 3, 3), attrs={"group": 4, "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    dict(id="s2-same-lower-even", x=(1, 4, 8, 6), w=(4, 1, 4, 4), attrs={"group": 4, "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    dict(id="s2-no-pads", x=(2, 3, 9, 8), w=(3, 1, 3, 3), attrs={"group": 3, "strides": [2, 2]}),
    dict(id="s2-pads-beyond-kernel", x=(1, 2, 6, 6), w=(2, 1, 2, 2), attrs={"group": 2, "strides": [2, 2], "pads": [2, 0, 0, 3]}),
]
# Strided 1x1 without pads: the 1x1 adjoint, then zero insertion (rules/conv.py)
STRIDED += [
    dict(id="pointwise-s2-even", x=(2, 4, 8, 8), w=(6, 4, 1, 1), attrs={"strides": [2, 2]}),
    dict(id="pointwise-s2-odd", x=(1, 3, 7, 9), w=(5, 3, 1, 1), attrs={"strides": [2, 2]}),
    dict(id="pointwise-s3-2", x=(1, 2, 10, 7), w=(3, 2, 1, 1), attrs={"strides": [3, 2]}),
    dict(id="pointwise-s2-same", x=(1, 2, 7, 6), w=(3, 2, 1, 1), attrs={"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
]
for c in STRIDED:
    CASES.append(Case("Conv", {"x": r(*c["x"])}, consts={"w": r(*c["w"]), "b": r(c["w"][0])}, attrs=c["attrs"],
                      check="adjoint", id="Conv-strided-" + c["id"], rtol=1e-4))
CASES += [
    Case("Conv", {"x": r(2, 2, 7, 8)}, consts={"w": r(3, 2, 3, 4)}, attrs={"strides": [2, 3], "auto_pad": "SAME_UPPER"},
         dynamic=(0, 2, 3), check="adjoint", rtol=1e-4, id="Conv-same-upper-dynamic"),
    Case("Conv", {"x": r(1, 2, 7, 8)}, consts={"w": r(3, 2, 3, 3)}, attrs={"strides": [2, 2], "pads": [1, 0, 0, 1]},
         dynamic=(2, 3), check="adjoint", rtol=1e-4, id="Conv-pads-dynamic"),
    Case("ConvTranspose", {"x": r(1, 2, 5, 6)}, consts={"w": r(2, 2, 3, 3)},
         attrs={"strides": [2, 3], "output_shape": [8, 14]}, dynamic=(0, 2, 3), check="adjoint", rtol=1e-4,
         id="ConvTranspose-output-shape-dynamic"),
    Case("ConvTranspose", {"x": r(1, 2, 5, 6)}, consts={"w": r(2, 2, 3, 3)},
         attrs={"strides": [2, 2], "auto_pad": "SAME_LOWER"}, dynamic=(0, 2, 3), check="adjoint", rtol=1e-4,
         id="ConvTranspose-same-dynamic"),
]
CASES.append(Case("ConvTranspose", {"x": r(1, 2, 4, 4)}, consts={"w": r(2, 3, 3, 3)}, attrs={"strides": [2, 2]},
                  opset=7, check="adjoint", id="ConvTranspose-opset7", rtol=1e-4))

# Gemm: every trans combination, alpha/beta, C broadcast; both operands differentiated.
for ta in (0, 1):
    for tb in (0, 1):
        a = r(*((4, 3) if ta else (3, 4)), dtype=f64)
        b = r(*((5, 4) if tb else (4, 5)), dtype=f64)
        CASES.append(Case("Gemm", {"a": a, "b": b, "c": r(1, 5, dtype=f64)},
                          attrs={"transA": ta, "transB": tb, "alpha": 0.7, "beta": -1.3}, id=f"Gemm-tA{ta}-tB{tb}"))
CASES += [
    Case("Gemm", {"a": r(2, 6, dtype=f64)}, consts={"b": r(4, 6, dtype=f64), "c": r(4, dtype=f64)},
         attrs={"transB": 1}, id="Gemm-linear-layer"),
    Case("Gemm", {"a": r(2, 6, dtype=f64)}, consts={"b": r(4, 6, dtype=f64)}, attrs={"transB": 1, "alpha": 2.0},
         id="Gemm-no-C"),
    Case("Gemm", {"a": r(3, 2, dtype=f64), "c": r(3, 1, dtype=f64)}, consts={"b": r(4, 2, dtype=f64)},
         attrs={"transB": 1, "beta": 0.5}, order=["a", "b", "c"], id="Gemm-C-column"),
    Case("Gemm", {"a": r(2, 6, dtype=f32)}, consts={"b": r(6, 4, dtype=f32), "c": r(4, dtype=f32)},
         attrs={"alpha": 1.5}, opset=7, id="Gemm-opset7"),
    Case("Gemm", {"a": r(2, 6, dtype=f32)}, consts={"b": r(4, 6, dtype=f32), "c": r(4, dtype=f32)},
         attrs={"transA": 0, "transB": 1}, opset=9, id="Gemm-opset9"),
    Case("Gemm", {"a": r(6, 2, dtype=f64), "b": r(4, 6, dtype=f64), "c": r(1, 4, dtype=f64)},
         attrs={"transA": 1, "transB": 1, "beta": 2.0}, opset=7, id="Gemm-opset7-C-broadcast"),
]

MATMUL = [
    ("2d", (3, 4), (4, 5)),
    ("batched", (2, 3, 4), (2, 4, 5)),
    ("broadcast-b", (2, 3, 4), (4, 5)),
    ("broadcast-a", (3, 4), (2, 2, 4, 5)),
    ("broadcast-ones", (2, 1, 3, 4), (1, 3, 4, 2)),
    ("k1", (3, 1), (2, 1, 4)),
    ("1d-left", (4,), (2, 4, 3)),
    ("1d-right", (2, 3, 4), (4,)),
    ("1d-both", (4,), (4,)),
    ("1d-left-2d", (4,), (4, 3)),
]
for name, sa, sb in MATMUL:
    CASES.append(Case("MatMul", {"a": r(*sa, dtype=f64), "b": r(*sb, dtype=f64)}, id=f"MatMul-{name}"))
CASES += [
    Case("MatMul", {"a": r(2, 3, 4, dtype=f64)}, consts={"b": r(4, 5, dtype=f64)}, id="MatMul-const-b"),
    Case("MatMul", {"b": r(2, 4, 5, dtype=f64)}, consts={"a": r(3, 4, dtype=f64)}, order=["a", "b"], id="MatMul-const-a"),
    Case("MatMul", {"a": r(3, 4, dtype=f32), "b": r(4, 2, dtype=f32)}, opset=7, id="MatMul-opset7"),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_rule(case):
    assert_case(case)


def test_attention_like_product_gets_both_gradients():
    """softmax-free attention core: Q K^T then V, all three activations depending on x."""
    from onnx import helper, TensorProto
    import onnx
    from gradcheck import gradients

    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["x", "xt"], ["s"]),
        helper.make_node("MatMul", ["s", "x"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = onnx.shape_inference.infer_shapes(model)
    x = r(2, 3, 4, dtype=f64)
    seed = r(2, 3, 4, dtype=f64)
    g = gradients(model, {"x": x}, "y", ["x"], seed)["x"]
    # y = x x^T x: dy/dx . seed = seed x^T x + x seed^T x + x x^T seed
    xt = x.transpose(0, 2, 1)
    want = seed @ xt @ x + x @ seed.transpose(0, 2, 1) @ x + x @ xt @ seed
    np.testing.assert_allclose(g, want, rtol=1e-10)


def test_conv_output_shape_variant_would_fail():
    """Conv's backward as ConvTranspose(output_shape=...) lets ORT split the crop itself: wrong values."""
    def conv_with_output_shape(e, node, dys):
        return [e.op("ConvTranspose", dys[0], node.inputs[1], strides=node.attr("strides"),
                     pads=node.attr("pads"), output_shape=[8, 9]), None, None]

    case = Case("Conv", {"x": r(1, 2, 8, 9)}, consts={"w": r(3, 2, 3, 3), "b": r(3)},
                attrs={"strides": [2, 2], "pads": [0, 1, 2, 1]}, check="adjoint",
                rules=STANDARD.replace(Conv=conv_with_output_shape))
    assert check_case(case) > 1e-2
    assert check_case(Case(**{**case.__dict__, "rules": None})) < 1e-4


def test_conv_transpose_wrong_pad_split_would_fail():
    """With output_shape ORT puts the larger half of an odd total crop first; the other split is caught."""
    def floor_first(e, node, dys):
        # total crop is (2, 3) for this case; floor-first gives begin (1, 1) instead of (1, 2)
        return [e.op("Conv", dys[0], node.inputs[1], strides=[2, 2], pads=[1, 1, 1, 2]), None]

    case = Case("ConvTranspose", {"x": r(1, 2, 5, 6)}, consts={"w": r(2, 2, 3, 3)},
                attrs={"strides": [2, 2], "output_shape": [9, 10]}, check="adjoint",
                rules=STANDARD.replace(ConvTranspose=floor_first))
    assert check_case(case) > 1e-2
    assert check_case(Case(**{**case.__dict__, "rules": None})) < 1e-4


def test_conv_transpose_same_with_output_padding_follows_ort():
    """SAME + output_padding: onnx shape inference and ORT disagree on the size; the rule follows ORT."""
    from gradcheck import node_model, session
    from onnxviz.autodiff import gradient_graph

    for auto_pad, op in (("SAME_UPPER", [1, 1]), ("SAME_LOWER", [2, 1])):
        case = Case("ConvTranspose", {"x": r(1, 2, 5, 6)}, consts={"w": r(2, 2, 3, 3)},
                    attrs={"strides": [3, 2], "auto_pad": auto_pad, "output_padding": op})
        model = node_model(case)
        for d in model.graph.output[0].type.tensor_type.shape.dim[2:]:
            d.dim_param = "s"  # let ORT decide the output size
        gm = gradient_graph(model, "y0", ["x"], STANDARD)
        sess = session(gm.proto)
        x = case.inputs["x"]
        y = sess.run(["y0"], {"x": x, gm.seed: np.zeros((1, 2, 15, 12), f32)})[0]
        y0 = sess.run(["y0"], {"x": np.zeros_like(x), gm.seed: np.zeros_like(y)})[0]
        seed = r(*y.shape)
        g = sess.run([gm.grads["x"]], {"x": x, gm.seed: seed})[0]
        lhs, rhs = float(np.sum(seed * (y - y0))), float(np.sum(g * x))
        assert abs(lhs - rhs) < 1e-4 * abs(lhs), (auto_pad, lhs, rhs)


def test_conv_weight_gradient_is_refused():
    from onnx import helper, TensorProto
    import onnx
    from onnxviz.autodiff import gradient_graph

    nodes = [helper.make_node("Conv", ["x", "x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    with pytest.raises(OnnxvizError, match="weights"):
        gradient_graph(model, "y", ["x"], STANDARD)


def test_matmul_against_torch():
    torch = pytest.importorskip("torch")
    from gradcheck import node_model, gradients

    a, b = r(2, 1, 3, 4, dtype=f64), r(5, 4, 2, dtype=f64)
    seed = r(2, 5, 3, 2, dtype=f64)
    model = node_model(Case("MatMul", {"a": a, "b": b}))
    got = gradients(model, {"a": a, "b": b}, "y0", ["a", "b"], seed)
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    (torch.matmul(ta, tb) * torch.tensor(seed)).sum().backward()
    np.testing.assert_allclose(got["a"], ta.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(got["b"], tb.grad.numpy(), rtol=1e-10)


@pytest.mark.parametrize("case", [
    Case("ConvTranspose", {"x": r(1, 2, 4, 5)}, consts={"w": r(2, 3, 3, 3)},
         attrs={"strides": [2, 2], "output_padding": [1, 0], "pads": [1, 0, 0, 1]}, check="adjoint", rtol=1e-4),
    Case("Conv", {"x": r(1, 2, 6, 7)}, consts={"w": r(3, 2, 3, 3)}, attrs={"strides": [2, 2], "auto_pad": "SAME_LOWER"},
         check="adjoint", rtol=1e-4),
    Case("Gemm", {"a": r(3, 2, dtype=f64), "b": r(4, 3, dtype=f64)}, attrs={"transA": 1, "transB": 1, "alpha": 0.5}),
    Case("MatMul", {"a": r(2, 3, 4, dtype=f64), "b": r(4, dtype=f64)}),
], ids=lambda c: f"{c}-opset22")
def test_rule_at_opset22(case):
    case.opset = 22
    assert_case(case)


def _backward_ops(case):
    from gradcheck import node_model

    from onnxviz.autodiff import gradient_graph

    gm = gradient_graph(node_model(case), "y0", list(case.inputs), STANDARD)
    return [n.op_type for n in gm.proto.graph.node][1:]  # after the forward Conv


@pytest.mark.parametrize("c", [c for c in FLIPPED if c["id"] not in ("pointwise", "pads-beyond-kernel")],
                         ids=lambda c: c["id"])
def test_stride1_adjoint_is_a_flipped_conv(c):
    """The cases above really take the flipped-kernel spelling (else they test ConvTranspose again)."""
    case = Case("Conv", {"x": r(*c["x"])}, consts={"w": r(*c["w"])}, attrs=c["attrs"])
    assert "Conv" in _backward_ops(case) and "ConvTranspose" not in _backward_ops(case)


def test_flipped_kernel_by_hand():
    """Group 2, one in/two out channels per group: w[o, i] lands at [i-group-wise, o] rotated."""
    from onnxviz.autodiff.rules.conv import flipped_kernel

    w = np.arange(4 * 1 * 2 * 2, dtype=f32).reshape(4, 1, 2, 2)  # out 0,1 in group 0; out 2,3 in group 1
    f = flipped_kernel(w, group=2)
    assert f.shape == (2, 2, 2, 2)
    np.testing.assert_array_equal(f[0, 1], w[1, 0, ::-1, ::-1])
    np.testing.assert_array_equal(f[1, 0], w[2, 0, ::-1, ::-1])


@pytest.mark.parametrize("shape,group", [((4, 1, 2, 2), 2), ((6, 2, 3, 2), 3), ((3, 5, 3, 3), 1), ((4, 2, 3), 2)])
def test_flip_spelled_in_the_graph_equals_the_numpy_flip(shape, group):
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    from onnxviz.autodiff.rules.conv import emit_flipped_kernel, flipped_kernel
    from onnxviz.graph.emitter import Emitter

    e = Emitter({"w": (TensorProto.FLOAT, shape)}, {}, 17)
    out = emit_flipped_kernel(e, "w", shape, group)
    graph = helper.make_graph(e.nodes, "flip", [helper.make_tensor_value_info("w", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], e.initializers)
    w = np.random.default_rng(0).standard_normal(shape).astype(f32)
    got = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])).run(None, {"w": w})
    np.testing.assert_array_equal(got[0], flipped_kernel(w, group))


def test_unflipped_kernel_variant_would_fail():
    """Forgetting to rotate the kernel is caught by the adjoint check."""
    import onnxviz.autodiff.rules.conv as conv_rules

    real = conv_rules.emit_flipped_kernel

    def unrotated(e, w, shape, group):  # the channel swap without the 180-degree rotation
        flipped = real(e, w, shape, group)
        n = len(shape) - 2
        return e.op("Slice", flipped, e.ints([-1] * n), e.ints([np.iinfo(np.int64).min] * n),
                    e.ints(range(2, n + 2)), e.ints([-1] * n))

    case = Case("Conv", {"x": r(1, 2, 6, 6)}, consts={"w": r(3, 2, 3, 3)}, attrs={"pads": [1, 1, 1, 1]},
                check="adjoint", rtol=1e-4)
    conv_rules.emit_flipped_kernel = unrotated
    try:
        assert check_case(case) > 1e-2
    finally:
        conv_rules.emit_flipped_kernel = real
    assert check_case(case) < 1e-4


def test_fed_weights_reach_the_flipped_adjoint():
    """An initializer overridden at run time (the randomization test feeds weights) changes dX too."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from onnxviz.autodiff import gradient_graph

    rng = np.random.default_rng(1)
    w0, w1 = rng.standard_normal((3, 2, 3, 3)).astype(f32), rng.standard_normal((3, 2, 3, 3)).astype(f32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 5, 5])],
        [numpy_helper.from_array(w0, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    gm = gradient_graph(model, "y", ["x"], STANDARD)
    proto = gm.proto
    proto.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 2, 3, 3]))
    seeds = [i.name for i in proto.graph.input if i.name not in ("x", "w")]
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((1, 2, 5, 5)).astype(f32)
    dy = rng.standard_normal((1, 3, 5, 5)).astype(f32)
    feeds = {"x": x, seeds[0]: dy}
    got = sess.run([gm.grads["x"]], {**feeds, "w": w1})[0]
    # the exact J^T dy with the fed weights: conv is linear in x, so dx[i] = <dy, conv(e_i, w1)>
    fwd = helper.make_model(helper.make_graph(
        graph.node, "conv1", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w1, "w")]),
        opset_imports=[helper.make_opsetid("", 17)])
    basis = np.eye(x.size, dtype=f32).reshape(x.size, *x.shape[1:])
    ys = ort.InferenceSession(fwd.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": basis})[0]
    want = np.tensordot(ys, dy[0], axes=3).reshape(x.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    stale = sess.run([gm.grads["x"]], feeds)[0]  # the initializer's own weights give another answer
    assert np.abs(stale - want).max() > 1e-2


@pytest.mark.parametrize("case", [c for c in CASES if str(c).startswith("Conv-strided")], ids=str)
def test_strided_cases_take_the_zero_insertion_spelling(case):
    """The adjoint cases above pass with any correct spelling; this one fails if a strided
    depthwise or 1x1 Conv falls back to the spatial ConvTranspose (onnxruntime's slow path).
    The one exception is the case whose pads reach past the kernel (no stride-1 Conv fits)."""
    import onnx

    from gradcheck import node_model
    from onnxviz.autodiff import gradient_graph

    model = onnx.shape_inference.infer_shapes(node_model(case))
    graph = gradient_graph(model, "y0", ["x"], STANDARD).proto.graph
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    weights = [consts.get(n.input[1]) for n in graph.node if n.op_type == "ConvTranspose"]
    zero_insertion = [w is not None and w.shape[2:] == (1, 1) and (w == 1).all() for w in weights]
    assert len(weights) == 1
    assert zero_insertion[0] != ("pads-beyond-kernel" in str(case))


EINSUM_CASES = [
    Case("Einsum", {"a": r(3, 4, dtype=f64), "b": r(4, 2, dtype=f64)}, attrs={"equation": "ij,jk->ik"}, id="Einsum-matmul"),
    Case("Einsum", {"a": r(2, 3, 4, dtype=f64), "b": r(2, 4, 5, dtype=f64)}, attrs={"equation": "bij,bjk->bik"},
         id="Einsum-batched"),
    Case("Einsum", {"q": r(2, 3, 4, dtype=f64), "k": r(2, 5, 4, dtype=f64)}, attrs={"equation": "bqd, bkd -> bqk"},
         id="Einsum-attention"),
    Case("Einsum", {"a": r(4, dtype=f64), "b": r(4, dtype=f64)}, attrs={"equation": "i,i->"}, id="Einsum-dot"),
    Case("Einsum", {"a": r(3, 4, dtype=f64)}, attrs={"equation": "ij->ji"}, id="Einsum-transpose"),
    Case("Einsum", {"a": r(3, 4, dtype=f64), "b": r(4, dtype=f64)}, attrs={"equation": "ij,j->ij"}, id="Einsum-scale"),
]


@pytest.mark.parametrize("case", EINSUM_CASES, ids=str)
def test_einsum(case):
    assert_case(case)


@pytest.mark.parametrize("equation", ["ij->i", "ii->i", "...ij,...jk->...ik", "ij,jk"])
def test_einsum_forms_without_a_rule_are_refused(equation):
    from gradcheck import node_model
    from onnxviz.autodiff import STANDARD, gradient_graph
    from onnxviz.errors import OnnxvizError

    shapes = {"ij->i": [(3, 4)], "ii->i": [(3, 3)], "...ij,...jk->...ik": [(2, 3, 4), (2, 4, 5)], "ij,jk": [(3, 4), (4, 2)]}
    inputs = {f"x{k}": r(*s, dtype=f64) for k, s in enumerate(shapes[equation])}
    case = Case("Einsum", inputs, attrs={"equation": equation})
    with pytest.raises(OnnxvizError, match="Einsum node"):
        gradient_graph(node_model(case), "y0", list(inputs), STANDARD)
