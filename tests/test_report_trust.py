"""The report's "Can these maps be trusted?" section: its numbers, its page, and failing on its own."""
from pathlib import Path

import numpy as np
import pytest
from test_report import unsupported_model

import onnxviz
from onnxviz.report import read_inputs
from onnxviz.report import trust as trust_mod
from onnxviz.report.html import section_html
from onnxviz.report.sections import Section, run_section

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "shapes_cnn.onnx"
IMAGES = [str(ROOT / "models" / "images" / n) for n in ("star_0.png", "ring_0.png", "cross_0.png")]

pytestmark = pytest.mark.skipif(not MODEL.exists(), reason="the sample model is not built")


@pytest.fixture(scope="module")
def inputs():
    model = onnxviz.load(str(MODEL), device="cpu")
    pre = onnxviz.Preprocess.from_options(norm="imagenet", resize="stretch", size=(64, 64))
    return read_inputs(model, IMAGES, pre)


def test_trust_section_scores_every_method(inputs):
    s = run_section("trust", "Can these maps be trusted?", trust_mod.trust_section, inputs)
    assert s.status == "ok", s.message
    view = s.result
    assert [r.title for r in view.rows] == ["Grad-CAM", "Gradient", "Guided backprop"]
    cam = onnxviz.grad_cam(inputs.model, inputs.x)
    want = onnxviz.deletion(inputs.model, inputs.x, cam.map, target=cam.target, steps=trust_mod.STEPS).auc.mean()
    assert abs(view.rows[0].deletion - want) < 1e-9
    row = view.rows[0]
    # the similarity columns are the public tests' numbers, recomputed here on the same maps' classes
    sanity = onnxviz.sanity_check(inputs.model, inputs.x, method="gradcam", target=cam.target)
    assert abs(row.randomized - sanity.spearman_abs[-1].mean()) < 1e-9
    other, _, _ = onnxviz.random_logit_test(inputs.model, inputs.x, "gradcam")
    assert abs(row.random_class - other.spearman_abs.mean()) < 1e-9
    assert row.layers == 5 and row.passes == (row.randomized < 0.5)  # 3 images: too few to expect a side
    assert row.verdict == ("passes the randomization test" if row.passes else
                           "does not depend on the model's weights (similarity stays above 0.5 with all "
                           "layers randomized)")
    page = section_html(s)
    assert page.count("<tr>") == 4 and page.count("<img") == 2
    assert "Grad-CAM</td><td class=num>" in page and row.verdict in page.replace("&#x27;", "'")


def test_a_method_that_cannot_run_is_listed_and_the_others_scored(inputs, monkeypatch):
    monkeypatch.setattr(trust_mod, "METHODS", (("cam", "CAM"), ("gradcam", "Grad-CAM")))
    s = run_section("trust", "Can these maps be trusted?", trust_mod.trust_section, inputs)
    assert s.status == "ok" and [r.title for r in s.result.rows] == ["Grad-CAM"]
    assert [p.name for p in s.result.unavailable] == ["CAM"]
    assert "Not scored for this model" in section_html(s)


def test_section_fails_alone_when_no_gradient_rule(tmp_path):
    path = unsupported_model(tmp_path)  # Atan, which has no gradient rule, before the classifier
    from PIL import Image

    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(img)
    model = onnxviz.load(str(path), device="cpu")
    s = run_section("trust", "Can these maps be trusted?", trust_mod.trust_section,
                    read_inputs(model, [str(img)], onnxviz.Preprocess()))
    assert s.status == "skipped" and "'Atan'" in s.message
    assert "Not included" in section_html(Section(s.key, s.title, s.status, s.seconds, s.result, s.message))
