"""Reductions and global pools: axes as attribute (before 13/18) or input, keepdims, noop_with_empty_axes."""
import numpy as np
import pytest

from gradcheck import Case, Draw, assert_case, check_case, forward, gradients, node_model, numeric_vjp
from onnxviz.autodiff import STANDARD

f32, f64 = np.float32, np.float64
draw = Draw(dtype=f64)
rng = draw.rng
r, pos = draw.r, draw.pos


def distinct(*shape, dtype=f32):
    """Values 0.1 apart, so float32 differences (eps 1e-2) never swap the maximum."""
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 1).astype(dtype)


def axes(*a):
    return {"axes": np.array(a, np.int64)}


X = r(2, 3, 4, 5)
CASES = [
    # ReduceSum: axes attribute before 13, input from 13
    Case("ReduceSum", {"x": r(2, 3, 4)}, attrs={"axes": [1], "keepdims": 0}, opset=11, id="ReduceSum-11-keepdims0"),
    Case("ReduceSum", {"x": r(2, 3, 4)}, attrs={"axes": [0, 2]}, opset=7, id="ReduceSum-7-keepdims1"),
    Case("ReduceSum", {"x": r(2, 3, 4)}, attrs={"keepdims": 0}, opset=7, id="ReduceSum-7-all"),
    Case("ReduceSum", {"x": X}, consts=axes(-1, 1), attrs={"keepdims": 0}, opset=13, id="ReduceSum-13-neg-axes"),
    Case("ReduceSum", {"x": r(2, 3, 4)}, attrs={"keepdims": 0}, opset=13, id="ReduceSum-13-all"),
    Case("ReduceSum", {"x": r(2, 3, 4)}, consts=axes(), attrs={"keepdims": 0}, opset=13,
         id="ReduceSum-13-empty-axes-all"),
    Case("ReduceSum", {"x": r(2, 3, 4)}, attrs={"noop_with_empty_axes": 1, "keepdims": 0}, opset=13,
         id="ReduceSum-13-noop"),
    # ReduceMean: attribute until 17, input from 18
    Case("ReduceMean", {"x": X}, attrs={"axes": [2, 3]}, opset=13, id="ReduceMean-13-spatial"),
    Case("ReduceMean", {"x": X}, attrs={"axes": [-2], "keepdims": 0}, opset=13, id="ReduceMean-13-neg-keepdims0"),
    Case("ReduceMean", {"x": X}, attrs={"keepdims": 0}, opset=11, id="ReduceMean-11-all"),
    Case("ReduceMean", {"x": X}, consts=axes(-1, 1), attrs={"keepdims": 0}, opset=18, id="ReduceMean-18-keepdims0"),
    Case("ReduceMean", {"x": X}, consts=axes(3), opset=18, id="ReduceMean-18-keepdims1"),
    Case("ReduceMean", {"x": r(3, 4)}, attrs={"noop_with_empty_axes": 1}, opset=18, id="ReduceMean-18-noop"),
    # ReduceMax/Min: random values (no ties) for finite differences
    Case("ReduceMax", {"x": X}, attrs={"axes": [1], "keepdims": 0}, opset=13, id="ReduceMax-13"),
    Case("ReduceMax", {"x": X}, consts=axes(-1, 2), opset=18, id="ReduceMax-18"),
    Case("ReduceMax", {"x": r(3, 4)}, opset=18, id="ReduceMax-18-all"),
    Case("ReduceMin", {"x": X}, attrs={"axes": [0, 3], "keepdims": 0}, opset=11, id="ReduceMin-11"),
    Case("ReduceMin", {"x": X}, consts=axes(2), attrs={"keepdims": 0}, opset=20, id="ReduceMin-20"),
    # the rest of the family
    Case("ReduceL1", {"x": np.where(np.abs(X) < 0.1, 0.3, X)}, attrs={"axes": [1]}, opset=13),
    Case("ReduceL2", {"x": X}, attrs={"axes": [2, 3], "keepdims": 0}, opset=13),
    Case("ReduceL2", {"x": X}, consts=axes(1), opset=18, id="ReduceL2-18"),
    Case("ReduceSumSquare", {"x": X}, attrs={"axes": [-1]}, opset=11),
    Case("ReduceSumSquare", {"x": r(3, 4)}, attrs={"noop_with_empty_axes": 1}, opset=18,
         id="ReduceSumSquare-18-noop"),
    Case("ReduceLogSumExp", {"x": X}, attrs={"axes": [1], "keepdims": 0}, opset=13),
    Case("ReduceLogSumExp", {"x": X}, consts=axes(0, 2), opset=18, id="ReduceLogSumExp-18"),
    Case("ReduceLogSum", {"x": pos(2, 3, 4)}, attrs={"axes": [2]}, opset=13),
    Case("ReduceLogSum", {"x": pos(2, 3, 4)}, consts=axes(0), attrs={"keepdims": 0}, opset=18,
         id="ReduceLogSum-18"),
    # global pools (float only in onnxruntime)
    Case("GlobalAveragePool", {"x": r(2, 3, 4, 5, dtype=f32)}, opset=13),
    Case("GlobalAveragePool", {"x": r(1, 2, 3, 3, 2, dtype=f32)}, opset=7, id="GlobalAveragePool-3d-opset7"),
    Case("GlobalMaxPool", {"x": distinct(2, 3, 4, 5)}, opset=13),
    Case("GlobalMaxPool", {"x": distinct(1, 3, 7)}, opset=7, id="GlobalMaxPool-1d-opset7"),
    # symbolic dims: counts from Size, expansion to Shape(x)
    Case("ReduceMean", {"x": X}, consts=axes(1, -1), attrs={"keepdims": 0}, opset=18, dynamic=(0, 1, 2, 3),
         id="ReduceMean-18-dynamic"),
    Case("ReduceSum", {"x": X}, attrs={"keepdims": 0}, opset=13, dynamic=(0, 2), id="ReduceSum-all-dynamic"),
    Case("ReduceMax", {"x": X}, attrs={"axes": [2], "keepdims": 0}, opset=13, dynamic=(0, 2),
         id="ReduceMax-dynamic"),
    Case("ReduceLogSum", {"x": pos(2, 3, 4)}, attrs={"axes": [1]}, opset=13, dynamic=(0, 1, 2),
         id="ReduceLogSum-dynamic"),
    Case("GlobalAveragePool", {"x": r(2, 3, 4, 5, dtype=f32)}, opset=13, dynamic=(0, 2, 3),
         id="GlobalAveragePool-dynamic"),
    Case("GlobalMaxPool", {"x": distinct(2, 3, 4, 5)}, opset=13, dynamic=(0, 2, 3), id="GlobalMaxPool-dynamic"),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_rule(case):
    assert_case(case)


def test_mean_without_count_fails_the_check():
    """The known-wrong variant: ReduceMean's gradient without the 1/count."""
    from onnxviz.autodiff.rules import reduce

    case = Case("ReduceMean", {"x": X}, attrs={"axes": [2, 3]}, opset=13,
                rules=STANDARD.replace(ReduceMean=reduce.reduce_sum))
    assert check_case(case) > 0.5


def _grad(case, seed):
    return gradients(node_model(case), case.inputs, "y0", ["x"], seed)["x"]


@pytest.mark.parametrize("op,sign", [("ReduceMax", 1), ("ReduceMin", -1), ("GlobalMaxPool", 1)])
def test_ties_split_equally(op, sign):
    """Three tied extrema get a third each; a single one gets all."""
    x = sign * np.array([[3.0, 1.0, 3.0, 3.0], [0.0, 2.0, 1.0, -1.0]], f32).reshape(1, 2, 2, 2)
    case = Case(op, {"x": x}, attrs={} if op.startswith("Global") else {"axes": [2, 3]}, opset=13)
    g = _grad(case, np.array([6.0, 5.0], f32).reshape(1, 2, 1, 1))
    assert np.allclose(g.reshape(2, 4), [[2, 0, 2, 2], [0, 5, 0, 0]])


def test_l2_of_zeros_has_zero_gradient():
    case = Case("ReduceL2", {"x": np.zeros((2, 3))}, attrs={"axes": [1], "keepdims": 0}, opset=13)
    assert np.array_equal(_grad(case, np.ones(2)), np.zeros((2, 3)))


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_axes_known_only_at_run_time(op, keepdims):
    """An axes input that is not a constant (a graph input here) is unsqueezed and reduced at run time."""
    x = r(2, 3, 4)
    model = node_model(Case(op, {"x": x, "axes": np.array([-1, 0], np.int64)}, attrs={"keepdims": keepdims},
                            opset=18))
    feeds = {"x": x, "axes": np.array([-1, 0], np.int64)}
    y = forward(model, "y0")(feeds)
    seed = rng.standard_normal(y.shape)
    g = gradients(model, feeds, "y0", ["x"], seed)["x"]
    dirs, nums = numeric_vjp(forward(model, "y0"), feeds, "x", seed, 1e-6)
    assert np.allclose([np.sum(g * d) for d in dirs], nums, atol=1e-6)


def test_global_pools_against_torch():
    torch = pytest.importorskip("torch")
    x = r(2, 3, 5, 4, dtype=f32)
    seed = r(2, 3, 1, 1, dtype=f32)
    for op, fn in [("GlobalAveragePool", torch.nn.functional.adaptive_avg_pool2d),
                   ("GlobalMaxPool", torch.nn.functional.adaptive_max_pool2d)]:
        xt = torch.tensor(x, requires_grad=True)
        fn(xt, 1).backward(torch.tensor(seed))
        np.testing.assert_allclose(_grad(Case(op, {"x": x}), seed), xt.grad.numpy(), rtol=1e-6, atol=1e-7)
