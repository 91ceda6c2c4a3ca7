"""Normalization layers: BatchNormalization (inference and training mode), InstanceNorm, LayerNorm, MVN, LRN."""
import numpy as np
import pytest
from onnx.reference import ReferenceEvaluator

from gradcheck import Case, Draw, assert_case, check_case, forward, gradients, node_model
from onnxviz.autodiff import STANDARD
from onnxviz.graph.double import spec_lrn

f32, f64 = np.float32, np.float64
draw = Draw(dtype=f64)
rng = draw.rng
r, pos = draw.r, draw.pos


def bn_params(*shape, dtype=f64):
    return {"scale": r(*shape, dtype=dtype), "B": r(*shape, dtype=dtype), "mean": r(*shape, dtype=dtype),
            "var": pos(*shape, dtype=dtype)}


def spec_lrn_runtime(model):
    """onnxruntime's CPU LRN takes odd sizes and 4-D only; onnx.reference's sums the wrong axis."""
    return ReferenceEvaluator(model, new_ops=[spec_lrn()])


BN_ORDER = ["x", "scale", "B", "mean", "var"]

CASES = [
    # inference form, per channel (axis 1) broadcast over N, H, W
    Case("BatchNormalization", {"x": r(2, 3, 4, 5)}, consts=bn_params(3), opset=15, id="BN-15"),
    Case("BatchNormalization", {"x": r(2, 3, 4, 5, dtype=f32)}, consts=bn_params(3, dtype=f32),
         attrs={"epsilon": 1e-3}, opset=9, id="BN-9-f32"),
    Case("BatchNormalization", {"x": r(4, 3)}, consts=bn_params(3), opset=15, id="BN-15-2d"),
    Case("BatchNormalization", {"x": r(2, 3, 2, 2, 2)}, consts=bn_params(3), opset=15, id="BN-15-3d"),
    Case("BatchNormalization", {"x": r(2, 3, 4), **bn_params(3)}, order=BN_ORDER, opset=15,
         id="BN-15-every-input"),
    Case("BatchNormalization", {"x": r(2, 3, 4, 5, dtype=f32)}, consts=bn_params(3, dtype=f32), opset=7,
         id="BN-7-spatial"),
    Case("BatchNormalization", {"x": r(2, 3, 2, 4, dtype=f32)}, consts=bn_params(3, 2, 4, dtype=f32),
         attrs={"spatial": 0}, opset=7, id="BN-7-per-activation"),
    Case("BatchNormalization", {"x": r(2, 3, 2, 2, dtype=f32), **bn_params(3, 2, 2, dtype=f32)},
         order=BN_ORDER, attrs={"spatial": 0}, opset=7, id="BN-7-per-activation-every-input"),
    # training mode: batch statistics over every axis but 1
    Case("BatchNormalization", {"x": r(2, 3, 2, 3), "scale": r(3), "B": r(3)},
         consts={"mean": r(3), "var": pos(3)}, order=BN_ORDER, attrs={"training_mode": 1}, outputs=3,
         opset=15, id="BN-15-training"),
    Case("BatchNormalization", {"x": r(3, 2, 4)}, consts=bn_params(2), outputs=5, opset=9,
         id="BN-9-training-5-outputs"),
    # instance / layer / mean-variance normalization
    Case("InstanceNormalization", {"x": r(2, 3, 4, 5, dtype=f32)},
         consts={"scale": r(3, dtype=f32), "B": r(3, dtype=f32)}, opset=7),
    Case("InstanceNormalization", {"x": r(2, 3, 6, dtype=f32), "scale": r(3, dtype=f32), "B": r(3, dtype=f32)},
         attrs={"epsilon": 1e-2}, opset=22, id="InstanceNorm-1d-every-input"),
    Case("LayerNormalization", {"x": r(2, 3, 4)}, consts={"scale": r(4), "B": r(4)}, opset=17),
    Case("LayerNormalization", {"x": r(2, 3, 2, 2), "scale": r(3, 2, 2), "B": r(2, 1)},
         attrs={"axis": 1, "epsilon": 1e-3}, opset=17, id="LayerNorm-axis1-every-input"),
    Case("LayerNormalization", {"x": r(2, 3, 4)}, consts={"scale": r(3, 4)}, attrs={"axis": -2}, opset=22,
         id="LayerNorm-axis-2-no-bias"),
    Case("MeanVarianceNormalization", {"x": r(2, 3, 4, 5, dtype=f32)}, opset=9),
    Case("MeanVarianceNormalization", {"x": r(2, 3, 4, 5, dtype=f32)}, attrs={"axes": [2, 3]}, opset=13,
         id="MVN-spatial"),
    # LRN: strong alpha so the normalization is far from the identity; even sizes are asymmetric
    Case("LRN", {"x": r(2, 5, 3, 3, dtype=f32)}, attrs={"size": 3, "alpha": 1.0, "beta": 0.75, "bias": 1.0},
         opset=13, id="LRN-size3"),
    Case("LRN", {"x": r(1, 8, 4, 4, dtype=f32)}, attrs={"size": 5}, opset=13, id="LRN-defaults"),
    # onnxruntime's CPU LRN takes odd sizes and 4-D inputs only: the spec's formula referees the rest, in float64
    Case("LRN", {"x": r(2, 6, 3, 3)}, attrs={"size": 4, "alpha": 2.0, "beta": 0.5, "bias": 2.0},
         opset=13, runtime=spec_lrn_runtime, id="LRN-size4"),
    Case("LRN", {"x": r(1, 7, 5)}, attrs={"size": 2, "alpha": 1.5}, opset=7, runtime=spec_lrn_runtime,
         id="LRN-size2-1d"),
    Case("LRN", {"x": r(1, 6, 2, 2, 2)}, attrs={"size": 6, "alpha": 1.0, "beta": 0.9}, opset=13,
         runtime=spec_lrn_runtime, id="LRN-size6-3d"),
    # symbolic dims
    Case("BatchNormalization", {"x": r(2, 3, 4, 5)}, consts=bn_params(3), opset=15, dynamic=(0, 2, 3),
         id="BN-15-dynamic"),
    Case("BatchNormalization", {"x": r(2, 3, 2, 3), "scale": r(3)}, consts={"B": r(3), "mean": r(3), "var": pos(3)},
         order=BN_ORDER, attrs={"training_mode": 1}, outputs=3, opset=15, dynamic=(0, 2, 3),
         id="BN-15-training-dynamic"),
    Case("InstanceNormalization", {"x": r(2, 3, 4, 5, dtype=f32)},
         consts={"scale": r(3, dtype=f32), "B": r(3, dtype=f32)}, opset=13, dynamic=(0, 2, 3),
         id="InstanceNorm-dynamic"),
    Case("LayerNormalization", {"x": r(2, 3, 4), "scale": r(4)}, consts={"B": r(4)}, opset=17, dynamic=(0, 1, 2),
         id="LayerNorm-dynamic"),
    Case("LRN", {"x": r(2, 5, 3, 3, dtype=f32)}, attrs={"size": 3, "alpha": 1.0}, opset=13, dynamic=(0, 2, 3),
         id="LRN-dynamic"),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_rule(case):
    assert_case(case)


def test_lrn_torch_window_fails_the_check():
    """torch's window for even sizes (size//2 channels before, (size-1)//2 after) is caught."""
    from onnxviz.autodiff.rules import norm

    def lrn_torch_window(e, node, dys):
        size = node.attr("size")
        return norm._lrn(e, node, dys, size // 2, (size - 1) // 2)

    attrs = {"size": 4, "alpha": 2.0, "beta": 0.5, "bias": 2.0}
    x = r(2, 6, 3, 3)
    wrong = Case("LRN", {"x": x}, attrs=attrs, runtime=spec_lrn_runtime, rules=STANDARD.replace(LRN=lrn_torch_window))
    assert check_case(wrong) > 0.05
    assert check_case(Case("LRN", {"x": x}, attrs=attrs, runtime=spec_lrn_runtime)) < 1e-6


@pytest.mark.parametrize("size", [3, 5])
def test_lrn_against_torch(size):
    torch = pytest.importorskip("torch")
    x = r(2, 7, 3, 4, dtype=f32)
    seed = r(2, 7, 3, 4, dtype=f32)
    attrs = {"size": size, "alpha": 1.0, "beta": 0.75, "bias": 1.5}
    ours = gradients(node_model(Case("LRN", {"x": x}, attrs=attrs, opset=13)), {"x": x}, "y0", ["x"], seed)["x"]
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.local_response_norm(xt, size, alpha=1.0, beta=0.75, k=1.5).backward(torch.tensor(seed))
    np.testing.assert_allclose(ours, xt.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_layer_and_instance_norm_against_torch():
    torch = pytest.importorskip("torch")
    x, seed = r(2, 3, 4, 5, dtype=f32), r(2, 3, 4, 5, dtype=f32)
    scale = r(3, dtype=f32)
    case = Case("InstanceNormalization", {"x": x}, consts={"scale": scale, "B": r(3, dtype=f32)}, opset=13)
    ours = gradients(node_model(case), {"x": x}, "y0", ["x"], seed)["x"]
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.instance_norm(xt, weight=torch.tensor(scale), eps=1e-5).backward(torch.tensor(seed))
    np.testing.assert_allclose(ours, xt.grad.numpy(), rtol=1e-3, atol=1e-5)

    scale = r(4, 5, dtype=f32)
    case = Case("LayerNormalization", {"x": x}, consts={"scale": scale}, attrs={"axis": 2}, opset=17)
    ours = gradients(node_model(case), {"x": x}, "y0", ["x"], seed)["x"]
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.layer_norm(xt, (4, 5), weight=torch.tensor(scale)).backward(torch.tensor(seed))
    np.testing.assert_allclose(ours, xt.grad.numpy(), rtol=1e-3, atol=1e-5)


def testspec_lrn_referee_agrees_with_onnxruntime_on_odd_sizes():
    x = r(2, 7, 3, 4, dtype=f32)
    for size in (3, 5):
        model = node_model(Case("LRN", {"x": x}, attrs={"size": size, "alpha": 1.0, "bias": 1.5}, opset=13))
        ours, ort = forward(model, "y0", spec_lrn_runtime)({"x": x}), forward(model, "y0")({"x": x})
        np.testing.assert_allclose(ours, ort, rtol=1e-5, atol=1e-6)


LP_CASES = [Case("LpNormalization", {"x": r(3, 4, 2)}, attrs={"p": p, "axis": axis}, id=f"LpNormalization-p{p}-axis{axis}")
            for p, axis in [(2, -1), (2, 1), (1, 0)]]


@pytest.mark.parametrize("case", LP_CASES, ids=str)
def test_lp_normalization(case):
    assert_case(case)
