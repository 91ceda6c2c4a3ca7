"""report --no-check-grad and --classvis-steps N; the gradient check reports progress."""
from __future__ import annotations

from click.testing import CliRunner

import onnxviz
from onnxviz.report import read_inputs
from onnxviz.cli import main
from onnxviz.report.sections import gradient_check

MODEL, IMAGE = "models/shapes_cnn.onnx", "models/images/star_0.png"


def test_no_check_grad_and_classvis_steps(tmp_path):
    out = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["report", MODEL, IMAGE, "-o", str(out), "--no-check-grad",
                                       "--classvis-steps", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "Gradient check: skipped" in result.stderr and "gradient check:" not in result.stderr
    html = out.read_text()
    assert "--no-check-grad" in html


def test_classvis_steps_reach_the_method(monkeypatch):
    from onnxviz.methods import classvis as method
    seen = {}
    real = method.class_visualization

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(method, "class_visualization", spy)
    r = onnxviz.report(MODEL, [IMAGE], device="cpu", check_grad=False, classvis_steps=3)
    assert seen.get("steps") == 3 and r.section("classvis").result.steps == 3
    assert r.section("gradcheck").status == "skipped"


def test_gradient_check_reports_progress():
    model = onnxviz.load(MODEL, device="cpu")
    inputs = read_inputs(model, [IMAGE], onnxviz.Preprocess.from_options(resize="stretch"))
    lines = []
    inputs.progress = lines.append
    check = gradient_check(inputs)
    assert check.rows and any("finite differences" in line for line in lines), lines
