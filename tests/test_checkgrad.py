"""check-grad never cries wolf: huge scores get a larger step or an "inconclusive" verdict with
the reason, float32 rounding at ties is re-judged by the float64 graph, a wrong rule still fails.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import onnxviz
from builders import save, tiny_cnn
from onnxviz.checkgrad import check_gradients, format_rows, verdict
from onnxviz.cli import main
from test_models_grad import WRONG, image, overlap_model


def constant_weights(model: onnx.ModelProto, value: float, bias: float = 0.0) -> onnx.ModelProto:
    """Every weight ``value`` and every bias ``bias``: like the light models' stock weights, whose
    logits reach 1e10 (SqueezeNet, ResNet-50) and whose filters are all identical."""
    for k, t in enumerate(model.graph.initializer):
        a = numpy_helper.to_array(t)
        fill = value if a.ndim > 1 else bias
        model.graph.initializer[k].CopyFrom(numpy_helper.from_array(np.full_like(a, fill), t.name))
    return model


@pytest.fixture
def huge(tmp_path):
    """Logits ~1e16: weights 3000 through two convolutions and a fully connected layer (the former
    check-grad, with fixed steps, measured exactly 0 at relu2 and failed)."""
    return save(constant_weights(tiny_cnn(softmax=False, size=16), 3000.0), tmp_path / "huge.onnx")


@pytest.fixture
def offset(tmp_path):
    """A logit of 1e12 plus a small input-dependent part: no float64 difference resolves it."""
    m = tiny_cnn(softmax=False, size=16)
    fc_b = next(t for t in m.graph.initializer if t.name == "fc_b")
    fc_b.CopyFrom(numpy_helper.from_array(np.full(4, 1e12, np.float32), "fc_b"))
    return save(m, tmp_path / "offset.onnx")


def test_huge_scores_are_checked_with_a_scaled_step(huge):
    model = onnxviz.load(huge, device="cpu")
    x = image(model, batch=1)
    assert float(np.abs(model.run(x)["logits"]).max()) > 1e8
    rows = check_gradients(model, x, layers=["relu2"], directions=2)
    assert all(r.status != "FAIL" for r in rows), format_rows(rows)
    assert verdict(rows, 1e-3)[0] == "exact", format_rows(rows)


def test_unresolvable_scores_are_inconclusive_not_failures(offset):
    model = onnxviz.load(offset, device="cpu")
    rows = check_gradients(model, image(model), layers=["relu2"], directions=2)
    assert not any(r.status == "FAIL" for r in rows), format_rows(rows)
    word, why = verdict(rows, 1e-3)
    assert word == "inconclusive" and "too large" in why, (word, why)


def test_cli_prints_the_verdict_on_stderr_and_exits_0_when_inconclusive(offset):
    result = CliRunner().invoke(main, ["check-grad", offset, "--directions", "1"])
    assert result.exit_code == 0, result.output
    assert "check-grad: INCONCLUSIVE:" in result.stderr and "too large" in result.stderr
    assert "check-grad: INCONCLUSIVE:" in result.stdout and "FAIL" not in result.stdout


def test_a_wrong_rule_still_fails(tmp_path):
    model = onnxviz.load(overlap_model(tmp_path / "overlap.onnx"), device="cpu")
    rows = check_gradients(model, image(model, batch=2), layers=["r2"], rules=WRONG["AveragePool-kernel-area"])
    assert any(r.status == "FAIL" for r in rows), format_rows(rows)
    assert verdict(rows, 1e-3)[0] == "not exact"


def test_float32_rounding_is_rejudged_by_the_float64_graph(tmp_path, monkeypatch):
    """A float32 gradient 2% off (as at float32 ties in deep nets) with a right graph: "ok", noted."""
    model = onnxviz.load(save(tiny_cnn(softmax=False), tmp_path / "t.onnx"), device="cpu")
    real = model.gradients

    def rounded(*args, **kwargs):
        g = real(*args, **kwargs)
        rng = np.random.default_rng(5)
        for k in list(g):
            g[k] = (g[k] * (1 + 0.05 * rng.standard_normal(g[k].shape))).astype(g[k].dtype)
        return g

    monkeypatch.setattr(model, "gradients", rounded)
    rows = check_gradients(model, image(model), layers=["relu2"], directions=2)
    assert all(r.status == "ok" for r in rows), format_rows(rows)
    assert any("float32 rounding" in r.reason for r in rows), format_rows(rows)


def _relu_gap(tmp_path) -> str:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Flatten", ["p"], ["y"])], "relu_gap",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])])
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "relu.onnx")


def test_a_difference_across_a_relu_kink_is_redrawn_not_blamed_on_the_graph(tmp_path, monkeypatch):
    """A pre-activation 3e-9 from zero sits inside the 1e-8 step: directions whose difference
    crosses it are redrawn (the difference at h/8 disagrees), so the exact graph is not failed."""
    import onnxviz.checkgrad as cg
    from onnxviz.checkgrad import directional_errors_float64

    model = onnxviz.load(_relu_gap(tmp_path), device="cpu")
    rng = np.random.default_rng(3)
    x = (np.sign(rng.standard_normal((1, 2, 4, 4))) * rng.uniform(0.5, 1.5, (1, 2, 4, 4))).astype(np.float32)
    x[0, 0, 1, 2] = 3e-9
    kept = directional_errors_float64(model, x, target=0, directions=3, seed=0)["input"]
    assert max(kept) < 1e-6, kept
    monkeypatch.setattr(cg, "KINK_CHECK", np.inf)  # no re-check: some direction crosses the kink
    blamed = directional_errors_float64(model, x, target=0, directions=3, seed=0)["input"]
    assert max(blamed) > 1e-3, blamed
