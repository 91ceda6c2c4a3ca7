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
