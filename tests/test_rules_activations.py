"""Activations: finite differences per op and opset; guided/deconvnet against their defined formulas."""
import numpy as np
import pytest

from gradcheck import Case, Draw, assert_case, check_case, gradients, node_model
from onnxviz.autodiff import DECONVNET, GUIDED, STANDARD

f32, f64 = np.float32, np.float64
draw = Draw(dtype=f32)
rng = draw.rng
r = draw.r


def away(*shape, dtype=f32, scale=1.0, kinks=(0.0,), margin=0.1):
    """Random values at least ``margin`` away from every kink."""
    v = scale * rng.standard_normal(shape)
    for k in kinks:
        close = np.abs(v - k) < margin
        v = np.where(close, k + np.where(v >= k, margin, -margin) + (v - k), v)
    return v.astype(dtype)


def _relu(v):
    return np.maximum(v, 0)


# ---- references of the non-gradient rules (numpy, the formulas of the module docstring) ----
def ref_relu_guided(seed, x):
    return {"x": np.where(x > 0, _relu(seed), 0)}


def ref_relu_deconvnet(seed, x):
    return {"x": _relu(seed)}


def ref_clip_guided(seed, x, lo, hi):
    return {"x": np.where((x > lo) & (x < hi), _relu(seed), 0)}


def ref_clip_deconvnet(seed, x, lo, hi):
    return {"x": np.where(x < hi, _relu(seed), 0)}


def ref_leaky_guided(seed, x):
    return {"x": np.where(x > 0, 1, 0.2) * _relu(seed)}


def ref_prelu_guided(seed, x, slope):
    return {"x": np.where(x > 0, 1, slope) * _relu(seed)}


def ref_any_deconvnet(seed, x, **consts):
    return {"x": _relu(seed)}


X4 = away(2, 3, 4, 5, scale=3.0, kinks=(0.0, 6.0))
SLOPE = np.array([0.1, 0.25, -0.3], f32).reshape(3, 1, 1)
RELU6 = {"lo": np.array(0, f32), "hi": np.array(6, f32)}
# The captum-style 4x4 input with a few exact zeros (kinks) and values above 6.
X_SMALL = np.array([[-2.0, 0.0, 1.0, 7.0], [3.0, -1.0, 6.0, 0.5], [0.0, 2.0, -3.0, 8.0], [1.5, -0.5, 4.0, -6.0]], f32)
X_SMALL = X_SMALL.reshape(1, 1, 4, 4)

CASES = [
    # ReLU family
    Case("LeakyRelu", {"x": away(2, 3, 4, dtype=f64)}, opset=16, id="LeakyRelu-default"),
    Case("LeakyRelu", {"x": away(2, 3, 4)}, attrs={"alpha": 0.2}, opset=7, id="LeakyRelu-opset7"),
    Case("PRelu", {"x": away(2, 3, 4, 5, dtype=f64)}, consts={"slope": SLOPE.astype(f64)}, opset=16,
         id="PRelu-channel-slope"),
    Case("PRelu", {"x": away(2, 3, 4, 5, dtype=f64), "slope": r(4, 5, dtype=f64)}, opset=16,
         id="PRelu-computed-slope"),
    Case("PRelu", {"x": away(2, 3)}, consts={"slope": np.array([0.3], f32)}, opset=7, id="PRelu-opset7"),
    Case("ThresholdedRelu", {"x": away(2, 3, 4, scale=2, kinks=(0.5,))}, attrs={"alpha": 0.5}, opset=10),
    Case("ThresholdedRelu", {"x": away(2, 3, 4, scale=2, kinks=(1.0,))}, opset=22, id="ThresholdedRelu-22"),
    # Clip: attributes before 11, optional inputs after (empty names or absent)
    Case("Clip", {"x": away(2, 3, 4, scale=4, kinks=(0.0, 6.0))}, attrs={"min": 0.0, "max": 6.0}, opset=7,
         id="Clip-opset7-relu6"),
    Case("Clip", {"x": away(2, 3, 4, scale=2, kinks=(-1.0,))}, attrs={"min": -1.0}, opset=10,
         id="Clip-opset10-min-only"),
    Case("Clip", {"x": away(2, 3, 4, scale=4, kinks=(0.0, 6.0), dtype=f64)},
         consts={"lo": np.array(0.0), "hi": np.array(6.0)}, opset=13, id="Clip-opset13-relu6"),
    Case("Clip", {"x": away(2, 3, 4, scale=2, kinks=(1.0,), dtype=f64)}, consts={"hi": np.array(1.0)},
         order=["x", "", "hi"], opset=13, id="Clip-opset13-min-omitted"),
    Case("Clip", {"x": away(2, 3, 4, scale=2, kinks=(-0.5,))}, consts={"lo": np.array(-0.5, f32)},
         opset=11, id="Clip-opset11-max-absent"),
    Case("Clip", {"x": away(2, 3, dtype=f64)}, opset=13, id="Clip-no-bounds"),
    Case("Clip", {"x": away(3, 4, scale=2, kinks=(-0.3, 0.8), dtype=f64), "lo": np.array(-0.3),
                  "hi": np.array(0.8)}, opset=12, id="Clip-computed-bounds"),
    # exponential-linear units
    Case("Elu", {"x": away(2, 3, 4)}, opset=7),
    Case("Elu", {"x": away(2, 3, 4)}, attrs={"alpha": 0.5}, opset=22, id="Elu-alpha"),
    Case("Selu", {"x": away(2, 3, 4)}, opset=7),
    Case("Selu", {"x": away(2, 3, 4)}, attrs={"alpha": 1.5, "gamma": 2.0}, opset=22, id="Selu-attrs"),
    Case("Celu", {"x": away(2, 3, 4)}, opset=12),
    Case("Celu", {"x": away(2, 3, 4)}, attrs={"alpha": 2.0}, opset=22, id="Celu-alpha"),
    # sigmoids and smooth activations
    Case("Sigmoid", {"x": r(2, 3, 4, dtype=f64, scale=2)}, opset=13),
    Case("Sigmoid", {"x": r(2, 3, 4, scale=2)}, opset=7, id="Sigmoid-opset7"),
    Case("Tanh", {"x": r(2, 3, 4, dtype=f64, scale=2)}, opset=13),
    Case("HardSigmoid", {"x": away(2, 3, 4, scale=3, kinks=(-2.5, 2.5))}, opset=7),
    Case("HardSigmoid", {"x": away(2, 3, 4, scale=3, kinks=(-1.0, 3.0))}, attrs={"alpha": 0.25, "beta": 0.25},
         opset=22, id="HardSigmoid-attrs"),
    Case("HardSwish", {"x": away(2, 3, 4, scale=3, kinks=(-3.0, 3.0))}, opset=14),
    Case("Softplus", {"x": r(2, 3, 4, scale=2)}, opset=7),
    Case("Softsign", {"x": r(2, 3, 4, scale=2)}, opset=7),
    Case("Erf", {"x": r(2, 3, 4)}, opset=9),
    Case("Gelu", {"x": r(2, 3, 4, scale=2)}, opset=20, id="Gelu-exact"),
    Case("Gelu", {"x": r(2, 3, 4, scale=2)}, attrs={"approximate": "tanh"}, opset=20, id="Gelu-tanh"),
    Case("Mish", {"x": r(2, 3, 4, dtype=f64, scale=2)}, opset=18),
    # softmax: opset >= 13 reduces along axis; before, over every axis >= axis
    Case("Softmax", {"x": r(2, 3, 2, 2, dtype=f64)}, opset=11, id="Softmax-11-default-axis"),
    Case("Softmax", {"x": r(2, 3, 2, 2, dtype=f64)}, attrs={"axis": 1}, opset=11, id="Softmax-11-axis1"),
    Case("Softmax", {"x": r(2, 3, 2, 2, dtype=f64)}, attrs={"axis": -1}, opset=11, id="Softmax-11-axis-1"),
    Case("Softmax", {"x": r(2, 3, 2, 2, dtype=f64)}, attrs={"axis": 2}, opset=9, id="Softmax-9-axis2"),
    Case("Softmax", {"x": r(2, 3, 2, 2, dtype=f64)}, attrs={"axis": 1}, opset=13, id="Softmax-13-axis1"),
    Case("Softmax", {"x": r(2, 3, 2, 2, dtype=f64)}, opset=13, id="Softmax-13-default-axis"),
    Case("Softmax", {"x": r(2, 3, 2, 2, dtype=f64)}, attrs={"axis": -3}, opset=18, id="Softmax-18-axis-3"),
    Case("LogSoftmax", {"x": r(2, 3, 2, 2, dtype=f64)}, attrs={"axis": 1}, opset=11, id="LogSoftmax-11-axis1"),
    Case("LogSoftmax", {"x": r(2, 3, 2, 2, dtype=f64)}, opset=11, id="LogSoftmax-11-default-axis"),
    Case("LogSoftmax", {"x": r(2, 3, 2, 2, dtype=f64)}, attrs={"axis": 1}, opset=13, id="LogSoftmax-13-axis1"),
    Case("LogSoftmax", {"x": r(2, 5, dtype=f64)}, opset=13, id="LogSoftmax-13-2d"),
    Case("Hardmax", {"x": r(2, 5)}, opset=13),
    # symbolic dims
    Case("PRelu", {"x": away(2, 3, 4, dtype=f64), "slope": r(3, 1, dtype=f64)}, opset=16, dynamic=(0, 1, 2),
         id="PRelu-dynamic"),
    Case("Softmax", {"x": r(2, 3, 2, 2, dtype=f64)}, attrs={"axis": 1}, opset=11, dynamic=(0, 2, 3),
         id="Softmax-11-dynamic"),
    Case("Clip", {"x": away(2, 3, scale=2, kinks=(-0.5,), dtype=f64), "lo": np.array(-0.5)}, opset=13,
         dynamic=(0, 1), id="Clip-dynamic-computed-min"),
    # guided backprop and deconvnet: defined formulas, not gradients
    Case("Relu", {"x": X4}, rules=GUIDED, check="reference", reference=ref_relu_guided, id="Relu-guided"),
    Case("Relu", {"x": X4}, rules=DECONVNET, check="reference", reference=ref_relu_deconvnet,
         id="Relu-deconvnet"),
    Case("Clip", {"x": X4}, consts=RELU6, opset=13, rules=GUIDED, check="reference", reference=ref_clip_guided,
         id="Clip-guided-relu6"),
    Case("Clip", {"x": X4}, consts=RELU6, opset=13, rules=DECONVNET, check="reference",
         reference=ref_clip_deconvnet, id="Clip-deconvnet-relu6"),
    Case("Clip", {"x": X_SMALL}, attrs={"min": 0.0, "max": 6.0}, opset=10, rules=GUIDED, check="reference",
         reference=lambda seed, x: ref_clip_guided(seed, x, 0.0, 6.0), id="Clip-guided-opset10-kinks"),
    Case("Clip", {"x": X_SMALL}, attrs={"min": 0.0}, opset=10, rules=DECONVNET, check="reference",
         reference=lambda seed, x: ref_clip_deconvnet(seed, x, 0.0, np.inf), id="Clip-deconvnet-no-max"),
    Case("LeakyRelu", {"x": X4}, attrs={"alpha": 0.2}, rules=GUIDED, check="reference",
         reference=ref_leaky_guided, id="LeakyRelu-guided"),
    Case("LeakyRelu", {"x": X4}, attrs={"alpha": 0.2}, rules=DECONVNET, check="reference",
         reference=ref_any_deconvnet, id="LeakyRelu-deconvnet"),
    Case("PRelu", {"x": X4}, consts={"slope": SLOPE}, rules=GUIDED, check="reference", reference=ref_prelu_guided,
         id="PRelu-guided"),
    Case("PRelu", {"x": X4}, consts={"slope": SLOPE}, rules=DECONVNET, check="reference",
         reference=ref_any_deconvnet, id="PRelu-deconvnet"),
    # NCHWc spellings (4-D float32); last, so that they do not shift the draws above
    Case("PRelu", {"x": away(2, 3, 4, 5)}, consts={"slope": SLOPE}, opset=16, id="PRelu-blocked-channel-slope"),
    Case("LeakyRelu", {"x": away(2, 3, 4, 5)}, attrs={"alpha": 0.2}, opset=16, id="LeakyRelu-blocked"),
    Case("HardSwish", {"x": away(2, 3, 4, 5, scale=3, kinks=(-3.0, 3.0))}, opset=14, id="HardSwish-blocked-4d"),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_rule(case):
    assert_case(case)


def _grad(case, seed, rules=STANDARD):
    return gradients(node_model(case), case.inputs, "y0", ["x"], seed, rules)["x"]


def test_guided_and_deconvnet_by_hand():
    """Captum-style small arrays with the expected maps written out by hand (x = 0 is a kink)."""
    x = np.array([[1.0, -1.0], [0.0, 2.0]], f32).reshape(1, 1, 2, 2)
    dy = np.array([[0.5, 0.7], [0.3, -0.4]], f32).reshape(1, 1, 2, 2)
    case = Case("Relu", {"x": x})
    assert np.allclose(_grad(case, dy), [[0.5, 0.0], [0.0, -0.4]])
    assert np.allclose(_grad(case, dy, GUIDED), [[0.5, 0.0], [0.0, 0.0]])
    assert np.allclose(_grad(case, dy, DECONVNET), [[0.5, 0.7], [0.3, 0.0]])
    relu6 = Case("Clip", {"x": np.array([[7.0, -1.0], [0.0, 6.0]], f32).reshape(1, 1, 2, 2)},
                 consts={"lo": np.array(0, f32), "hi": np.array(6, f32)})
    dy6 = np.array([[0.5, 0.7], [0.3, 0.2]], f32).reshape(1, 1, 2, 2)
    assert np.allclose(_grad(relu6, dy6), 0.0)  # strict bounds, as torch's ReLU6
    assert np.allclose(_grad(relu6, -dy6, GUIDED), 0.0)
    assert np.allclose(_grad(relu6, dy6, DECONVNET), [[0.0, 0.7], [0.3, 0.0]])  # upper mask stays
    leaky = Case("LeakyRelu", {"x": x}, attrs={"alpha": 0.1})
    assert np.allclose(_grad(leaky, dy), [[0.5, 0.07], [0.03, -0.4]])
    assert np.allclose(_grad(leaky, dy, GUIDED), [[0.5, 0.07], [0.03, 0.0]])
    assert np.allclose(_grad(leaky, dy, DECONVNET), [[0.5, 0.7], [0.3, 0.0]])


@pytest.mark.parametrize("opset", [10, 13])
@pytest.mark.parametrize("shape", [(5,), (1, 5, 1, 1)])
def test_clip_boundaries_block_the_gradient(opset, shape):
    """Strictly inside (min, max), as torch's ReLU6/hardtanh and TF's relu6; in 4-D float32 the
    mask is the blocked-layout Conv spelling, in 1-D the comparisons: both must agree."""
    x = np.array([0.0, 6.0, -1e-3, 6.001, 3.0], f32).reshape(shape)
    bounds = {"attrs": {"min": 0.0, "max": 6.0}} if opset < 11 else {"consts": RELU6}
    case = Case("Clip", {"x": x}, opset=opset, **bounds)
    assert np.array_equal(_grad(case, np.ones(shape, f32)).ravel(), [0, 0, 0, 0, 1])


def test_softmax13_rule_on_opset11_model_fails_the_check():
    """The known-wrong variant: reducing along `axis` only, while the opset-11 op flattens from `axis` on."""
    from onnxviz.autodiff.rules import activations

    def softmax_axis_only(e, node, dys):
        y, dy = node.outputs[0], dys[0]
        s = e.reduce_sum(e.op("Mul", dy, y), [node.attr("axis", 1)])
        return [e.op("Mul", y, e.op("Sub", dy, s))]

    case = Case("Softmax", {"x": r(2, 3, 2, 2, dtype=f64)}, attrs={"axis": 1}, opset=11,
                rules=STANDARD.replace(Softmax=softmax_axis_only))
    assert check_case(case) > 0.1
    assert check_case(Case("Softmax", case.inputs, attrs={"axis": 1}, opset=11)) < 1e-6
    assert activations.softmax is STANDARD["Softmax"]


TORCH_OPS = [
    ("Softmax", {"axis": 1}, 13, lambda t, x: t.softmax(x, dim=1)),
    ("LogSoftmax", {"axis": 1}, 11, lambda t, x: t.log_softmax(x.flatten(1), dim=1).reshape(x.shape)),
    ("HardSwish", {}, 14, lambda t, x: t.nn.functional.hardswish(x)),
    ("Gelu", {"approximate": "tanh"}, 20, lambda t, x: t.nn.functional.gelu(x, approximate="tanh")),
    ("Mish", {}, 18, lambda t, x: t.nn.functional.mish(x)),
    ("Selu", {}, 7, lambda t, x: t.selu(x)),
]


@pytest.mark.parametrize("op,attrs,opset,fn", TORCH_OPS, ids=[t[0] for t in TORCH_OPS])
def test_against_torch(op, attrs, opset, fn):
    torch = pytest.importorskip("torch")
    x = away(2, 3, 4, 5, scale=3, kinks=(-3.0, 3.0))
    seed = r(2, 3, 4, 5)
    ours = _grad(Case(op, {"x": x}, attrs=attrs, opset=opset), seed)
    xt = torch.tensor(x, requires_grad=True)
    fn(torch, xt).backward(torch.tensor(seed))
    np.testing.assert_allclose(ours, xt.grad.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax11_of_unknown_rank_flattens_like_the_op(op):
    """Without a known rank, the opset-11 rule flattens at `axis` (as the op does) and reshapes back."""
    import onnx
    from onnx import helper

    from gradcheck import forward, numeric_vjp

    x = r(2, 3, 2, 2, dtype=f64)
    node = helper.make_node(op, ["x"], ["y"], axis=2)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.DOUBLE, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 10
    seed = r(2, 3, 2, 2, dtype=f64)
    g = gradients(model, {"x": x}, "y", ["x"], seed)["x"]
    dirs, nums = numeric_vjp(forward(model, "y"), {"x": x}, "x", seed, 1e-6)
    np.testing.assert_allclose([np.sum(g * d) for d in dirs], nums, atol=1e-8)


def test_hard_swish_blocked_spelling_at_its_kinks():
    """The NCHWc spelling (depthwise Conv masks, no Where/Less/Cast) equals torch's rule at and
    around -3 and 3: 0 below -3, x/3 + 1/2 on [-3, 3] (-1/2 and 3/2 at the ends), 1 above."""
    from onnxviz.autodiff import gradient_graph

    below3, above3 = np.nextafter(f32(-3), f32(-4)), np.nextafter(f32(3), f32(4))
    values = np.array([-7, below3, -3, np.nextafter(f32(-3), f32(0)), -1.5, -0.0, 0.0, 1e-40, 1.5,
                       np.nextafter(f32(3), f32(0)), 3, above3, 9], f32)
    x = np.resize(values, (2, 3, 3, 5)).astype(f32)
    seed = r(*x.shape)
    case = Case("HardSwish", {"x": x}, opset=14)
    ours = _grad(case, seed)
    slope = np.where(x < -3, f32(0), np.where(x <= 3, x / f32(3) + f32(0.5), f32(1))).astype(f32)
    np.testing.assert_allclose(ours, seed * slope, rtol=1e-6, atol=0)
    from gradcheck import node_model

    ops = {n.op_type for n in gradient_graph(node_model(case), "y0", ["x"], STANDARD).proto.graph.node}
    assert not ops & {"Where", "Less", "Greater", "Cast"}, ops


@pytest.mark.parametrize("op", ["PRelu", "LeakyRelu"])
def test_leaky_blocked_spelling_is_exact(op):
    """The NCHWc spelling (a mask Conv and a depthwise Conv, no Greater/Where) gives exactly
    g where x > 0 and slope * g elsewhere, at 0, -0 and subnormals too."""
    from onnxviz.autodiff import gradient_graph

    values = np.array([-2, -1e-40, -0.0, 0.0, 1e-40, 1e-30, 3, -7.5, 0.5, -0.25], f32)
    x = np.resize(values, (2, 3, 2, 5)).astype(f32)
    seed = r(*x.shape)
    if op == "PRelu":
        case, slope = Case(op, {"x": x}, consts={"slope": SLOPE}, opset=16), SLOPE
    else:
        case, slope = Case(op, {"x": x}, attrs={"alpha": 0.2}, opset=16), np.float32(0.2)
    ours = _grad(case, seed)
    np.testing.assert_array_equal(ours, np.where(x > 0, seed, seed * slope))
    ops = {n.op_type for n in gradient_graph(node_model(case), "y0", ["x"], STANDARD).proto.graph.node}
    assert not ops & {"Where", "Greater", "Cast"}, ops
