"""Backward rules of MaxPool, AveragePool and LpPool.

ORT's CPU build has no float64 pooling kernels: MaxPool and LpPool are checked in float32 by
central differences with eps = 1e-2 on inputs without near-ties (distinct values on a grid
0.05 apart), AveragePool (linear) by the exact adjoint identity.
"""
import numpy as np
import pytest

from gradcheck import Case, Draw, assert_case, check_case, gradients, node_model

from onnxviz.autodiff import STANDARD

f32 = np.float32
draw = Draw(dtype=f32)
rng = draw.rng
r = draw.r


def distinct(*shape):
    """A random permutation of values 0.05 apart: no two elements of a window within 2*eps."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.05 - n * 0.025).astype(f32).reshape(shape)


def maxpool(name, shape, attrs, opset=17, **kw):
    return Case("MaxPool", {"x": distinct(*shape)}, attrs=attrs, opset=opset, eps=1e-2, rtol=1e-3,
                id="MaxPool-" + name, **kw)


def avgpool(name, shape, attrs, opset=17, **kw):
    return Case("AveragePool", {"x": r(*shape)}, attrs=attrs, opset=opset, check="adjoint", rtol=1e-5,
                id="AveragePool-" + name, **kw)


K3S2 = {"kernel_shape": [3, 3], "strides": [2, 2]}

CASES = [
    maxpool("2x2", (2, 3, 4, 6), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    maxpool("3x3-s2-overlap", (1, 2, 7, 7), K3S2),
    maxpool("3x3-s1", (1, 1, 5, 6), {"kernel_shape": [3, 3]}),
    maxpool("ceil-mode", (1, 2, 6, 7), {**K3S2, "ceil_mode": 1}),
    # ORT drops the last ceil_mode window (it would start in the end padding); onnx's inference keeps it
    maxpool("ceil-window-in-padding", (1, 2, 4, 7), {"kernel_shape": [2, 3], "strides": [2, 3], "pads": [0, 1, 1, 2],
                                                     "ceil_mode": 1}),
    maxpool("pads", (2, 2, 6, 5), {**K3S2, "pads": [1, 0, 1, 2]}),
    maxpool("dilations", (1, 2, 7, 8), {"kernel_shape": [2, 3], "dilations": [2, 2], "strides": [1, 2]}),
    maxpool("storage-order", (2, 2, 5, 6), {**K3S2, "storage_order": 1, "pads": [1, 1, 1, 1]}),
    maxpool("same-upper", (1, 2, 6, 7), {**K3S2, "auto_pad": "SAME_UPPER"}),
    maxpool("same-lower", (1, 2, 6, 7), {"kernel_shape": [2, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    maxpool("1d", (2, 3, 9), {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
    maxpool("3d", (1, 2, 4, 5, 4), {"kernel_shape": [2, 3, 2], "strides": [1, 2, 2]}),
    maxpool("3d-storage-order", (1, 1, 4, 5, 3), {"kernel_shape": [2, 2, 2], "storage_order": 1}),
    maxpool("dynamic", (2, 2, 7, 6), {**K3S2, "auto_pad": "SAME_UPPER"}, dynamic=(0, 1, 2, 3)),
    maxpool("opset12-overlap", (1, 2, 7, 7), {**K3S2, "ceil_mode": 1}, opset=12),
    maxpool("opset10-overlap", (1, 2, 7, 6), {"kernel_shape": [3, 2], "strides": [1, 1]}, opset=10),
    maxpool("opset11-2x2", (1, 2, 4, 4), {"kernel_shape": [2, 2], "strides": [2, 2]}, opset=11),
    # below opset 16 the window-offsets spelling runs: its geometry cases
    maxpool("opset15-pads-ceil", (1, 2, 6, 7), {**K3S2, "pads": [1, 0, 1, 2], "ceil_mode": 1}, opset=15),
    maxpool("opset15-dilations", (1, 2, 7, 8), {"kernel_shape": [2, 3], "dilations": [2, 2], "strides": [1, 2]},
            opset=15),
    maxpool("opset15-same-upper", (1, 2, 6, 7), {**K3S2, "auto_pad": "SAME_UPPER"}, opset=15),
    # AveragePool
    avgpool("3x3-s2", (2, 3, 7, 7), K3S2),
    avgpool("pads-include", (1, 2, 6, 5), {**K3S2, "pads": [1, 0, 2, 1], "count_include_pad": 1}),
    avgpool("pads-exclude", (1, 2, 6, 5), {**K3S2, "pads": [1, 0, 2, 1]}),
    avgpool("ceil-include", (1, 2, 6, 8), {**K3S2, "pads": [1, 1, 1, 1], "ceil_mode": 1, "count_include_pad": 1}),
    avgpool("ceil-exclude", (1, 2, 6, 8), {**K3S2, "pads": [0, 1, 1, 0], "ceil_mode": 1}),
    avgpool("same-upper", (1, 2, 6, 7), {**K3S2, "auto_pad": "SAME_UPPER", "count_include_pad": 1}),
    avgpool("same-lower", (1, 2, 6, 7), {"kernel_shape": [2, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    avgpool("dilations", (1, 2, 8, 9), {**K3S2, "dilations": [2, 1], "pads": [1, 1, 2, 0], "ceil_mode": 1}, opset=19),
    avgpool("1d", (2, 3, 9), {"kernel_shape": [4], "strides": [3], "pads": [2, 1], "ceil_mode": 1}),
    avgpool("3d", (1, 2, 4, 5, 4), {"kernel_shape": [2, 3, 2], "strides": [2, 2, 1], "pads": [1, 0, 1, 1, 1, 0]}),
    avgpool("dynamic-same", (2, 3, 7, 6), {**K3S2, "auto_pad": "SAME_UPPER"}, dynamic=(0, 1, 2, 3)),
    avgpool("dynamic-ceil", (2, 3, 7, 6), {**K3S2, "pads": [1, 1, 0, 1], "ceil_mode": 1}, dynamic=(0, 1, 2, 3)),
    avgpool("opset7-pads", (1, 2, 6, 5), {**K3S2, "pads": [1, 0, 2, 1]}, opset=7),
    avgpool("opset7-include", (1, 2, 7, 5), {**K3S2, "pads": [1, 1, 0, 1], "count_include_pad": 1}, opset=7),
    avgpool("opset10-ceil", (1, 2, 6, 8), {**K3S2, "pads": [1, 1, 1, 1], "ceil_mode": 1}, opset=10),
    # LpPool (float only in ORT): away from zero so |x|^(p-1) sign(x) is smooth
    Case("LpPool", {"x": distinct(1, 2, 6, 6) + f32(0.01)}, attrs={**K3S2, "p": 1, "pads": [1, 1, 1, 1]},
         eps=1e-3, rtol=1e-3, id="LpPool-p1"),
    Case("LpPool", {"x": distinct(1, 2, 6, 7) + f32(0.01)}, attrs={**K3S2, "pads": [1, 0, 1, 1]}, eps=1e-3,
         rtol=2e-3, id="LpPool-p2"),
    Case("LpPool", {"x": distinct(1, 2, 5, 5) + f32(0.01)}, attrs={"kernel_shape": [2, 2], "p": 3}, eps=1e-3,
         rtol=2e-3, id="LpPool-p3"),
    Case("LpPool", {"x": distinct(1, 2, 7, 6) + f32(0.01)}, attrs={**K3S2, "ceil_mode": 1, "dilations": [1, 2]},
         opset=18, eps=1e-3, rtol=2e-3, id="LpPool-ceil-dilated"),
    Case("LpPool", {"x": distinct(1, 2, 5, 6) + f32(0.01)}, attrs={"kernel_shape": [2, 2], "strides": [2, 2]},
         opset=7, eps=1e-3, rtol=2e-3, id="LpPool-opset7"),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_rule(case):
    assert_case(case)


def test_maxpool_reuses_an_existing_indices_output():
    case = maxpool("with-indices", (1, 2, 7, 7), K3S2)
    case.outputs = 2
    assert check_case(case) < 1e-3


def test_maxpool_indices_are_flat_over_the_whole_tensor():
    """ORT numbers Indices over N*C*H*W (not per channel): the rule relies on it."""
    from gradcheck import session

    x = distinct(2, 3, 4, 4)
    case = Case("MaxPool", {"x": x}, attrs={"kernel_shape": [2, 2], "strides": [2, 2]}, outputs=2)
    y, idx = session(node_model(case)).run(["y0", "y1"], {"x": x})
    assert idx.max() >= 3 * 16  # offsets of later channels and images included
    np.testing.assert_array_equal(x.ravel()[idx], y)


def test_maxunpool_variant_would_fail():
    """MaxUnpool overwrites where overlapping windows share their max: the FD check catches it."""
    def maxunpool(e, node, dys):
        idx = e.add_output(node.proto, 1)
        return [e.op("MaxUnpool", dys[0], idx, e.shape_of(node.inputs[0]), kernel_shape=node.attr("kernel_shape"),
                     strides=node.attr("strides"))]

    case = maxpool("overlap", (1, 2, 7, 7), K3S2, rules=STANDARD.replace(MaxPool=maxunpool))
    assert check_case(case) > 0.1
    assert check_case(Case(**{**case.__dict__, "rules": None})) < 1e-3


def test_kernel_area_divisor_variant_would_fail():
    """Dividing by the kernel area ignores count_include_pad=0 at padded borders: caught."""
    def kernel_area(e, node, dys):
        k = node.attr("kernel_shape")
        c = e.shape(node.inputs[0])[1]
        w = e.const(np.full([c, 1, *k], 1.0 / np.prod(k), np.float32))
        return [e.op("ConvTranspose", dys[0], w, group=c, strides=node.attr("strides"), pads=node.attr("pads"),
                     kernel_shape=k)]

    case = avgpool("exclude", (1, 2, 7, 7), {**K3S2, "pads": [1, 1, 1, 1]},
                   rules=STANDARD.replace(AveragePool=kernel_area))
    assert check_case(case) > 1e-2
    assert check_case(Case(**{**case.__dict__, "rules": None})) < 1e-5


def test_avgpool_by_hand():
    """1-D, kernel 2, pad 1 each side, count_include_pad=0: windows {x0}, {x0,x1}, {x1,x2}, {x2}."""
    x = np.array([[[1.0, 2.0, 3.0]]], f32)
    case = Case("AveragePool", {"x": x}, attrs={"kernel_shape": [2], "pads": [1, 1]})
    g = gradients(node_model(case), {"x": x}, "y0", ["x"], np.array([[[1.0, 2.0, 4.0, 8.0]]], f32))["x"]
    np.testing.assert_allclose(g, [[[1 + 2 / 2, 2 / 2 + 4 / 2, 4 / 2 + 8]]])


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("pad", [0, 1])
def test_maxpool_against_torch(ceil_mode, pad):
    torch = pytest.importorskip("torch")
    x = distinct(2, 3, 8, 9)
    case = Case("MaxPool", {"x": x}, attrs={**K3S2, "pads": [pad] * 4, "ceil_mode": int(ceil_mode)})
    model = node_model(case)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.max_pool2d(tx, 3, 2, padding=pad, ceil_mode=ceil_mode)
    seed = r(*ty.shape)
    (ty * torch.tensor(seed)).sum().backward()
    g = gradients(model, {"x": x}, "y0", ["x"], seed)["x"]
    # atol: two overlapping windows' contributions summed in another order (float32 rounding)
    np.testing.assert_allclose(g, tx.grad.numpy(), rtol=1e-6, atol=1e-6)


def ties(*shape, levels=3):
    """Few distinct values: most windows hold their maximum more than once."""
    return rng.integers(0, levels, shape).astype(f32)


TIE_CASES = [
    ("2x2", (2, 3, 6, 8), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("3x3-s2-pads", (2, 2, 9, 8), {**K3S2, "pads": [1, 1, 1, 1]}),
    ("ceil-asym-pads", (1, 3, 8, 7), {**K3S2, "pads": [0, 1, 1, 0], "ceil_mode": 1}),
    ("dilated-s1", (1, 2, 7, 8), {"kernel_shape": [2, 3], "dilations": [2, 2]}),
    ("1d", (2, 3, 11), {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
    ("3d", (1, 2, 4, 5, 4), {"kernel_shape": [2, 3, 2], "strides": [1, 2, 2]}),
]


def _by_offsets(e, node, dys):
    from onnxviz.autodiff.rules.pool import max_pool_by_offsets

    dx = max_pool_by_offsets(e, node, dys[0])
    assert dx is not None  # the case is one this spelling takes
    return [dx]


BY_OFFSETS = STANDARD.replace(MaxPool=_by_offsets)  # the spelling of graphs below opset 16


@pytest.mark.parametrize("name,shape,attrs", TIE_CASES, ids=[c[0] for c in TIE_CASES])
def test_maxpool_ties_follow_ort_indices(name, shape, attrs):
    """Ties go to the first maximum in row-major window order, as the scatter at ORT's Indices does:
    the window-offsets spelling (graphs below opset 16) against the default scatter."""
    from onnxviz.autodiff import gradient_graph

    x = ties(*shape)
    model = node_model(Case("MaxPool", {"x": x}, attrs=attrs))
    seed = r(*session_output_shape(model, x))
    scatter = gradients(model, {"x": x}, "y0", ["x"], seed)["x"]
    offsets = gradients(model, {"x": x}, "y0", ["x"], seed, rules=BY_OFFSETS)["x"]
    np.testing.assert_allclose(offsets, scatter, rtol=1e-6, atol=1e-6)
    nodes = gradient_graph(model, "y0", ["x"], STANDARD).proto.graph.node
    ops = {n.op_type for n in nodes}
    assert "ScatterElements" in ops and "ConvTranspose" not in ops  # the default is the scatter
    # at a twin's Indices: the model's own MaxPool keeps its one output (and onnxruntime's blocked layout)
    pools = [n for n in nodes if n.op_type == "MaxPool"]
    assert [len([o for o in n.output if o]) for n in pools] == [1, 2]


def session_output_shape(model, x):
    from gradcheck import session

    return session(model).run(["y0"], {"x": x})[0].shape


def test_maxpool_ties_by_hand():
    """Windows [2, 2 | 1, 2] and [2, 1 | 2, 2] (2x2, stride 2): each passes dy to its first 2 only."""
    x = np.array([[[[2, 2, 2, 1], [1, 2, 2, 2]]]], f32)
    model = node_model(Case("MaxPool", {"x": x}, attrs={"kernel_shape": [2, 2], "strides": [2, 2]}))
    g = gradients(model, {"x": x}, "y0", ["x"], np.array([[[[3.0, 5.0]]]], f32))["x"]
    np.testing.assert_array_equal(g, [[[[3, 0, 5, 0], [0, 0, 0, 0]]]])


def test_maxpool_ties_overlapping_by_hand():
    """1-D kernel 3, stride 1 over [1, 1, 1, 0]: both windows' first max is x0 and x1; they sum there."""
    x = np.array([[[1, 1, 1, 0]]], f32)
    model = node_model(Case("MaxPool", {"x": x}, attrs={"kernel_shape": [3]}))
    g = gradients(model, {"x": x}, "y0", ["x"], np.array([[[2.0, 7.0]]], f32))["x"]
    np.testing.assert_array_equal(g, [[[2, 7, 0, 0]]])


def test_maxpool_ties_against_torch():
    torch = pytest.importorskip("torch")
    x = ties(2, 3, 9, 9)
    model = node_model(Case("MaxPool", {"x": x}, attrs={**K3S2, "pads": [1, 1, 1, 1]}))
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.max_pool2d(tx, 3, 2, padding=1)
    seed = r(*ty.shape)
    (ty * torch.tensor(seed)).sum().backward()
    g = gradients(model, {"x": x}, "y0", ["x"], seed)["x"]
    np.testing.assert_allclose(g, tx.grad.numpy(), rtol=1e-6, atol=1e-6)


def test_maxpool_last_max_variant_would_fail():
    """Giving ties to every maximum (no ``taken`` chain) in the offsets spelling double-counts: the
    tie check catches it."""
    import onnxviz.autodiff.rules.pool as pool

    x = ties(1, 2, 6, 6)
    model = node_model(Case("MaxPool", {"x": x}, attrs={"kernel_shape": [2, 2], "strides": [2, 2]}))
    seed = r(1, 2, 3, 3)
    right = gradients(model, {"x": x}, "y0", ["x"], seed)["x"]
    real_and = pool.Emitter.op

    def every_max(self, op_type, *inputs, **kw):
        if op_type == "And":  # drop the "not taken yet" condition
            return inputs[0]
        return real_and(self, op_type, *inputs, **kw)

    pool.Emitter.op = every_max
    try:
        wrong = gradients(model, {"x": x}, "y0", ["x"], seed, rules=BY_OFFSETS)["x"]
    finally:
        pool.Emitter.op = real_and
    assert np.abs(wrong - right).max() > 0.1


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("include", [False, True])
def test_avgpool_against_torch(ceil_mode, include):
    torch = pytest.importorskip("torch")
    from gradcheck import forward

    x = r(2, 3, 8, 9)
    case = Case("AveragePool", {"x": x}, attrs={**K3S2, "pads": [1, 1, 1, 1], "ceil_mode": int(ceil_mode),
                                                 "count_include_pad": int(include)})
    model = node_model(case)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.avg_pool2d(tx, 3, 2, padding=1, ceil_mode=ceil_mode, count_include_pad=include)
    np.testing.assert_allclose(forward(model, "y0")({"x": x}), ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    seed = r(*ty.shape)
    (ty * torch.tensor(seed)).sum().backward()
    g = gradients(model, {"x": x}, "y0", ["x"], seed)["x"]
    np.testing.assert_allclose(g, tx.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", [
    maxpool("opset22", (1, 2, 7, 7), {**K3S2, "ceil_mode": 1}),
    avgpool("opset22", (1, 2, 7, 6), {**K3S2, "pads": [1, 1, 1, 0], "ceil_mode": 1}),
    Case("LpPool", {"x": distinct(1, 2, 6, 6) + f32(0.01)}, attrs={**K3S2}, eps=1e-3, rtol=2e-3, id="LpPool"),
], ids=lambda c: f"{c}-opset22")
def test_rule_at_opset22(case):
    case.opset = 22
    assert_case(case)


@pytest.mark.parametrize("kernel,shape", [((2, 2), (2, 16, 6, 8)), ((3, 2), (1, 8, 9, 4)), ((2, 2), (2, 3, 7, 8))])
def test_tiling_average_pool_is_an_upsample(kernel, shape):
    """Windows that tile the input (kernel = stride, no pads): dx = nearest-upsampled dy / (kh*kw),
    checked by the adjoint identity; an input the windows do not cover keeps the general rule."""
    from gradcheck import node_model
    from onnxviz.autodiff import STANDARD, gradient_graph

    case = Case("AveragePool", {"x": r(*shape)}, attrs={"kernel_shape": list(kernel), "strides": list(kernel)},
                check="adjoint", rtol=1e-5, id="AveragePool-tiles")
    assert_case(case)
    ops = {n.op_type for n in gradient_graph(node_model(case), "y0", ["x"], STANDARD).proto.graph.node}
    tiles = all(h % k == 0 for h, k in zip(shape[2:], kernel))
    assert ("ConvTranspose" not in ops and "Resize" in ops) if tiles else "ConvTranspose" in ops
