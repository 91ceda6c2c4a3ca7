"""Element-wise arithmetic: Div, Pow, unary math, variadic Mean/Max/Min, Where, piecewise-constant ops."""
import numpy as np
import pytest

from gradcheck import Case, Draw, assert_case, away_from_zero, gradients, node_model

f32, f64 = np.float32, np.float64
draw = Draw(dtype=f64)
rng = draw.rng
r, pos = draw.r, draw.pos


def off_grid(*shape, offset=0.0, dtype=f64):
    """Values at least 0.1 away from (integers + offset), where Floor/Ceil/Round jump."""
    return (rng.integers(-3, 4, shape) + offset + rng.uniform(0.1, 0.9, shape)).astype(dtype)


CASES = [
    Case("Div", {"a": r(2, 3, 4), "b": pos(3, 1)}, id="Div-broadcast"),
    Case("Div", {"a": r(2, 3)}, consts={"b": pos(2, 3)}, id="Div-const-divisor"),
    Case("Div", {"b": pos(1, 3)}, consts={"a": r(2, 3)}, order=["a", "b"], id="Div-divisor-only"),
    Case("Div", {"a": r(2, 3), "b": pos(2, 3)}, opset=7, id="Div-opset7"),
    Case("Pow", {"a": pos(2, 3, 4), "b": r(3, 1)}, id="Pow-both"),
    Case("Pow", {"a": r(2, 3, 4)}, consts={"b": np.array(2.0)}, id="Pow-square"),
    Case("Pow", {"a": r(2, 3, 4)}, consts={"b": np.array(3, np.int64)}, opset=15, id="Pow-int-exponent"),
    Case("Pow", {"a": pos(2, 3, 4)}, consts={"b": np.array(0.5, f32)}, opset=15, id="Pow-mixed-types"),
    Case("Pow", {"b": r(2, 3)}, consts={"a": pos(2, 3)}, order=["a", "b"], opset=9, id="Pow-exponent-only"),
    Case("Neg", {"x": r(2, 3)}),
    Case("Abs", {"x": away_from_zero(rng, (2, 3, 4), dtype=f64)}),
    Case("Sqrt", {"x": pos(2, 3, 4)}),
    Case("Exp", {"x": r(2, 3, 4)}),
    Case("Log", {"x": pos(2, 3, 4)}),
    Case("Reciprocal", {"x": pos(2, 3, 4)}),
    Case("Sin", {"x": r(2, 3, 4)}),
    Case("Cos", {"x": r(2, 3, 4)}),
    Case("Mean", {"a": r(2, 3, 4, dtype=f32), "b": r(3, 1, dtype=f32), "c": r(4, dtype=f32)},
         id="Mean-3-broadcast"),
    Case("Mean", {"a": r(2, 3, dtype=f32)}, consts={"b": r(2, 3, dtype=f32)}, opset=7, id="Mean-opset7"),
    Case("Max", {"a": r(2, 3, 4), "b": r(3, 1), "c": r(4)}, id="Max-3-broadcast"),
    Case("Max", {"a": r(2, 3, dtype=f32)}, consts={"b": r(2, 3, dtype=f32)}, opset=7, id="Max-opset7"),
    Case("Max", {"a": r(2, 3)}, id="Max-1"),
    Case("Min", {"a": r(2, 3, 4), "b": r(1, 4)}, id="Min-broadcast"),
    Case("Min", {"a": r(2, 3), "b": r(2, 3)}, opset=8, id="Min-opset8"),
    Case("Where", {"a": r(2, 3, 4), "b": r(3, 1)}, consts={"c": rng.random((1, 4)) > 0.5},
         order=["c", "a", "b"], id="Where-broadcast"),
    Case("Where", {"b": r(2, 3)}, consts={"c": rng.random((2, 3)) > 0.5, "a": r(2, 3)},
         order=["c", "a", "b"], opset=9, id="Where-else-only"),
    Case("Floor", {"x": off_grid(2, 3)}),
    Case("Ceil", {"x": off_grid(2, 3)}),
    Case("Round", {"x": off_grid(2, 3, offset=0.5)}),
    Case("Sign", {"x": away_from_zero(rng, (2, 3), dtype=f64)}),
    # per-channel products in 4-D float32: squeeze-excite gates and constant scales (NCHWc spellings)
    Case("Mul", {"a": r(2, 3, 4, 5, dtype=f32), "b": r(2, 3, 1, 1, dtype=f32)}, opset=13, id="Mul-se-gate"),
    Case("Mul", {"a": r(2, 3, 1, 1, dtype=f32), "b": r(2, 3, 4, 5, dtype=f32)}, opset=13, id="Mul-se-gate-first"),
    Case("Mul", {"a": r(2, 3, 4, 5, dtype=f32), "b": r(1, 3, 1, 1, dtype=f32)}, opset=13,
         id="Mul-batch-broadcast-gate"),
    Case("Mul", {"a": r(2, 3, 4, 5, dtype=f32)}, consts={"b": r(1, 3, 1, 1, dtype=f32)}, opset=13,
         id="Mul-constant-scale"),
    Case("Mul", {"a": r(2, 3, 4, 5, dtype=f32), "b": r(2, 3, 1, 1, dtype=f32)}, opset=11, id="Mul-se-gate-opset11"),
    Case("ReduceMean", {"x": r(2, 3, 4, 5, dtype=f32)}, attrs={"axes": [2, 3]}, opset=13, id="ReduceMean-spatial-f32"),
    # symbolic dims: unbroadcast and shapes are worked out at run time
    Case("Div", {"a": r(2, 3, 4), "b": pos(3, 1)}, dynamic=(0, 1), id="Div-dynamic"),
    Case("Pow", {"a": pos(2, 3), "b": r(3)}, dynamic=(0,), id="Pow-dynamic"),
    Case("Mean", {"a": r(2, 3, dtype=f32), "b": r(3, dtype=f32)}, dynamic=(0, 1), id="Mean-dynamic"),
    Case("Max", {"a": r(2, 3, 4), "b": r(3, 1)}, dynamic=(0, 1, 2), id="Max-dynamic"),
    Case("Where", {"a": r(2, 3), "b": r(3)}, consts={"c": rng.random((2, 1)) > 0.5}, order=["c", "a", "b"],
         dynamic=(0,), id="Where-dynamic"),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_rule(case):
    assert_case(case)


def _grads(case):
    model = node_model(case)
    seed = np.ones(np.broadcast_shapes(*(v.shape for v in {**case.inputs, **case.consts}.values())))
    return gradients(model, case.inputs, "y0", list(case.inputs), seed.astype(f64))


EXPECTED_TIES = {  # a, b, c for the arrays below, worked out by hand
    "Max": ([[1 / 3, 0], [1 / 2, 0]], [[1 / 3, 0], [1 / 2, 0]], [1 / 3, 2]),
    "Min": ([[1 / 3, 0], [0, 1]], [[1 / 3, 1], [0, 0]], [1 / 3 + 1, 0]),
}


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_ties_split_equally(op):
    """Tied operands share dy equally (three ways, two ways); the shares add up to dy."""
    a = np.array([[1.0, 2.0], [3.0, 3.0]])
    b = np.array([[1.0, 0.0], [3.0, 4.0]])
    c = np.array([1.0, 5.0])  # broadcast over the rows
    g = _grads(Case(op, {"a": a, "b": b, "c": c}))
    for name, want in zip("abc", EXPECTED_TIES[op]):
        assert np.allclose(g[name], want), (name, g[name])
    assert np.isclose(g["a"].sum() + g["b"].sum() + g["c"].sum(), 4.0)


def test_pow_exponent_gradient_is_zero_for_nonpositive_base():
    g = _grads(Case("Pow", {"a": np.array([0.0, -2.0, 2.0]), "b": np.array([2.0, 2.0, 3.0])}))
    assert np.allclose(g["a"], [0.0, -4.0, 12.0])
    assert np.allclose(g["b"], [0.0, 0.0, 8 * np.log(2.0)])


# ---- x · Sigmoid(x) (SiLU / Swish): the Mul rule spells both factors' backward as one expression
def _silu_model(swap: bool, sigmoid_also_used: bool):
    from onnx import TensorProto, helper, shape_inference

    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]),
             helper.make_node("Mul", ["s", "x"] if swap else ["x", "s"], ["m"])]
    out = "m"
    if sigmoid_also_used:  # s has a second consumer: the Sigmoid rule still runs for that part
        nodes.append(helper.make_node("Add", ["m", "s"], ["out"]))
        out = "out"
    graph = helper.make_graph(nodes, "silu", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 3, 4])],
                              [helper.make_tensor_value_info(out, TensorProto.DOUBLE, [2, 3, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 10)
    return shape_inference.infer_shapes(model, strict_mode=True), out


@pytest.mark.parametrize("swap", [False, True], ids=["x*s", "s*x"])
@pytest.mark.parametrize("shared", [False, True], ids=["alone", "sigmoid-shared"])
def test_silu_fused_backward_matches_finite_differences(swap, shared):
    from gradcheck import forward, numeric_vjp

    from onnxviz.autodiff import STANDARD
    from onnxviz.autodiff.backward import gradient_graph

    model, out = _silu_model(swap, shared)
    x = r(2, 3, 4, scale=3.0)
    seed = r(2, 3, 4)
    g = gradients(model, {"x": x}, out, ["x"], seed)["x"]
    dirs, nums = numeric_vjp(forward(model, out), {"x": x}, "x", seed, 1e-6)
    ana = np.array([float(np.sum(g * d)) for d in dirs])
    assert np.abs(ana - nums).max() < 1e-7 * max(np.abs(nums).max(), 1.0)
    # the fused spelling was taken: no Sigmoid derivative y(1-y) and, alone, no Sum of two parts
    ops = [n.op_type for n in gradient_graph(model, out, ["x"], STANDARD).proto.graph.node]
    assert ops.count("Sub") == (1 + shared)  # 1 - s, plus the shared Sigmoid rule's 1 - y
    assert ("Sum" in ops) == shared


def test_silu_requested_sigmoid_output_keeps_its_own_gradient():
    """With s itself requested, d/ds must hold the Mul's dy · x: the fusion steps aside."""
    model, out = _silu_model(False, False)
    x, seed = r(2, 3, 4), r(2, 3, 4)
    got = gradients(model, {"x": x}, out, ["x", "s"], seed)
    s = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(got["s"], seed * x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["x"], seed * (s + x * s * (1 - s)), rtol=1e-10, atol=1e-12)


# ---- the blocked-layout masks (above / below) ----------------------------------------------
def _mask_values(bound):
    """Every float32 that could go wrong next to ``bound``: subnormals, signed zeros, infinities,
    the neighbours of the bound and of the overflow limit of the 2^23 pre-scale."""
    f32 = np.float32
    tiny = np.finfo(f32).smallest_subnormal
    b = f32(bound)
    edge = [b, np.nextafter(b, f32(np.inf)), np.nextafter(b, f32(-np.inf)), b + tiny, b - tiny]
    special = [0.0, -0.0, tiny, -tiny, 1e-40, -1e-40, 1e-38, np.inf, -np.inf, 3e38, -3e38, 2.0 ** 104, 1.0, -1.0]
    return np.array(edge + special, f32)


@pytest.mark.parametrize("bound", [0.0, 6.0, -0.5, 1e-30, -3e-39, 2.0 ** 90, 1.0, -3.0, 0.99999994, 2.0 ** 100])
@pytest.mark.parametrize("channels", [3, 16])
def test_blocked_masks_are_exact(bound, channels):
    """above/below equal t > b and t < b bit for bit (the HardSigmoid steps are used
    for 4-D float32, with onnxruntime's full optimizations, i.e. its blocked layout)."""
    import onnx
    from onnx import TensorProto, helper

    from onnxviz.autodiff.rules.elementwise import above, below
    from onnxviz.graph.emitter import Emitter
    from onnxviz.runtime import Runtime

    values = _mask_values(bound)
    x = np.resize(values, (2, channels, 3, 5)).astype(np.float32)
    rng = np.random.default_rng(0)
    rng.shuffle(x.reshape(-1))
    e = Emitter({"t": (TensorProto.FLOAT, list(x.shape))}, {}, 13)
    outs = [above(e, "t", bound), below(e, "t", bound)]
    assert any(n.op_type == "HardSigmoid" for n in e.nodes)  # the spelling under test, not the fallback
    graph = helper.make_graph(e.nodes, "masks", [helper.make_tensor_value_info("t", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, x.shape) for o in outs],
                              e.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    got_above, got_below = Runtime("cpu").run_once(model, {"t": x}).values()
    assert np.array_equal(got_above, (x > np.float32(bound)).astype(np.float32))
    assert np.array_equal(got_below, (x < np.float32(bound)).astype(np.float32))


@pytest.mark.parametrize("upper", [6.0, 8.0, 1.0, 0.75, 3.4000001, 1e-30, 2.0 ** -100, 2.0 ** 90])
def test_fused_inside_mask_is_exact(upper):
    """inside(t, upper) equals 0 < t < upper bit for bit on Clip(0, upper) outputs (t <= upper): zeros of both
    signs, subnormals, upper and the floats just under it (where the fused sum is smallest),
    NaN; run with onnxruntime's full optimizations, which fuse it into one NCHWc Conv."""
    import onnx
    from onnx import TensorProto, helper

    from onnxviz.autodiff.rules.elementwise import inside
    from onnxviz.graph.emitter import Emitter
    from onnxviz.runtime import Runtime

    f32 = np.float32
    u = f32(upper)
    under = [u]
    for _ in range(6):
        under.append(np.nextafter(under[-1], f32(0)))
    tiny = np.finfo(f32).smallest_subnormal
    special = [0.0, -0.0, tiny, 2 * tiny, 1e-40, 1e-38, u / 2, u / 3, np.nextafter(u / 2, f32(0)), np.nan]
    rng = np.random.default_rng(1)
    values = np.minimum(np.concatenate([np.array(under + special, f32), (rng.random(40) * u).astype(f32)]), u)
    x = np.resize(values, (2, 16, 3, 5)).astype(f32)
    rng.shuffle(x.reshape(-1))
    e = Emitter({"t": (TensorProto.FLOAT, list(x.shape))}, {}, 13)
    out = inside(e, "t", upper)
    assert out is not None
    graph = helper.make_graph(e.nodes, "inside", [helper.make_tensor_value_info("t", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, x.shape)], e.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    got = Runtime("cpu").run_once(model, {"t": x})[out]
    want = ((x > 0) & (x < u)).astype(f32)
    nan = np.isnan(x)
    assert np.isnan(got[nan]).all()  # NaN is not hidden
    assert np.array_equal(got[~nan], want[~nan])


def test_relu6_mask_is_one_fused_conv():
    """The cases in test_rules_activations pass with any correct spelling; this fails if a 4-D
    float32 ReLU6 goes back to two mask Convs and their product."""
    from onnx import TensorProto, helper, numpy_helper, shape_inference

    from onnxviz.autodiff import STANDARD
    from onnxviz.autodiff.backward import gradient_graph

    shape = [2, 16, 4, 5]
    graph = helper.make_graph([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], "relu6",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(np.array(0, np.float32), "lo"),
                               numpy_helper.from_array(np.array(6, np.float32), "hi")])
    model = shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    nodes = gradient_graph(model, "y", ["x"], STANDARD).proto.graph.node
    ops = [n.op_type for n in nodes]
    alphas = [{a.name: a.f for a in n.attribute}["alpha"] for n in nodes if n.op_type == "HardSigmoid"]
    fused = [a for a in alphas if a == 2.0 ** 26]  # inside()'s last step
    assert len(fused) == 1 and ops.count("Mul") == 1 and ops.count("Add") == 1
    x = np.array([-1, 0, 1e-40, 3, np.nextafter(np.float32(6), np.float32(0)), 6, 7], np.float32)
    x = np.resize(x, shape).astype(np.float32)
    seed = rng.standard_normal(shape).astype(np.float32)
    got = gradients(model, {"x": x}, "y", ["x"], seed)["x"]
    assert np.array_equal(got, np.where((x > 0) & (x < 6), seed, np.float32(0)))


def test_silu_4d_float32_uses_the_blocked_spelling_and_stays_exact():
    """In 4-D float32 the 1 - s factor is a HardSigmoid (onnxruntime keeps it in NCHWc); the gradient
    still equals SiLU's derivative σ(x)(1 + x(1 - σ(x))), evaluated here in float64."""
    from onnx import TensorProto, helper, shape_inference

    from onnxviz.autodiff import STANDARD
    from onnxviz.autodiff.backward import gradient_graph

    shape = [2, 3, 4, 5]
    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["m"])],
                              "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("m", TensorProto.FLOAT, shape)])
    model = shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    ops = [n.op_type for n in gradient_graph(model, "m", ["x"], STANDARD).proto.graph.node]
    assert "Sub" not in ops and "HardSigmoid" in ops
    x = (3 * rng.standard_normal(shape)).astype(np.float32)
    seed = rng.standard_normal(shape).astype(np.float32)
    got = gradients(model, {"x": x}, "m", ["x"], seed)["x"]
    x64 = x.astype(np.float64)
    sig = 1 / (1 + np.exp(-x64))
    np.testing.assert_allclose(got, seed * sig * (1 + x64 * (1 - sig)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case_id, spelled", [("Mul-se-gate", True), ("Mul-se-gate-first", True),
                                              ("Mul-batch-broadcast-gate", False), ("Mul-se-gate-opset11", False),
                                              ("ReduceMean-spatial-f32", True)])
def test_per_channel_broadcasts_take_the_upsample_spelling(case_id, spelled):
    """The cases above pass with any correct spelling; this fails if a squeeze-excite gate or a
    spatial mean stops using the nearest Upsample (the NCHWc spelling) where it applies, or uses
    it where the gate's batch broadcasts (its gradient must then be summed over the batch)."""
    import onnx

    from gradcheck import node_model
    from onnxviz.autodiff import STANDARD
    from onnxviz.autodiff.backward import gradient_graph

    case = next(c for c in CASES if str(c) == case_id)
    model = onnx.shape_inference.infer_shapes(node_model(case))
    ops = [n.op_type for n in gradient_graph(model, "y0", list(case.inputs), STANDARD).proto.graph.node]
    assert ("Resize" in ops) == spelled
