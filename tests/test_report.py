"""The audit report: sections and their results, self-containment, failing sections, CLI and demo."""
from __future__ import annotations

import base64
import dataclasses
import importlib
import io
import logging
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper
from PIL import Image

import onnxviz
from builders import flatten_head_cnn, save, tiny_cnn
from onnxviz.cli import main
from onnxviz.errors import OnnxvizError
from onnxviz.report import sections as sections_mod

report_pkg = importlib.import_module("onnxviz.report")  # the package; onnxviz.report is the function

LABELS = ["circle", "square", "triangle", "cross", "star", "ring"]
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" width="(\d+)" height="(\d+)"')


# ---------------------------------------------------------------------------- helpers


def write_images(folder: Path, n: int, size: int, seed: int = 0) -> list:
    """``n`` noisy images, each with one bright square, as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        a = rng.integers(0, 160, (size, size, 3), dtype=np.uint8)
        y, x = rng.integers(0, size // 2, 2)
        a[y:y + size // 2, x:x + size // 2] = rng.integers(180, 256, 3, dtype=np.uint8)
        path = folder / f"img{i}.png"
        Image.fromarray(a).save(path)
        paths.append(str(path))
    return paths


def write_dataset(folder: Path, per_class: int = 5, size: int = 16) -> Path:
    rng = np.random.default_rng(1)
    for c, name in enumerate(LABELS[:3]):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            a[..., c] = 255  # a class colour, so classes differ
            Image.fromarray(a).save(folder / name / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def unsupported_model(folder: Path) -> str:
    """tiny_cnn with Atan (no gradient rule) between the global pool and the classifier.

    Gradients of the output cross Atan, so check-grad, Grad-CAM and guided backprop cannot run;
    the head is no longer GAP → FC, so CAM cannot either; occlusion (forward only) still can.
    """
    m = tiny_cnn(size=16, classes=4)
    for node in m.graph.node:
        if node.op_type == "Flatten":
            node.input[0] = "squashed"
    m.graph.node.insert(next(i for i, n in enumerate(m.graph.node) if n.op_type == "Flatten"),
                        helper.make_node("Atan", ["gap"], ["squashed"], name="atan_node"))
    onnx.checker.check_model(m)
    return save(m, folder / "atan.onnx")


def pngs(page: str) -> list:
    """Every inlined image of the page, decoded."""
    out = []
    for data, w, h in IMG.findall(page):
        im = Image.open(io.BytesIO(base64.b64decode(data)))
        im.load()
        assert im.format == "PNG" and im.size == (int(w), int(h))
        out.append(im)
    return out


def _failed(row):
    return dataclasses.replace(row, error=0.5, status="FAIL")


def section_html(page: str, key: str) -> str:
    m = re.search(rf'<section id="{key}" class="card (\w+)">(.*?)</section>', page, re.S)
    assert m, f"no section {key}"
    return m.group(2)


@pytest.fixture
def no_classvis(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxviz.methods.classvis", None)  # import fails as if absent


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    return {
        "root": root,
        "model": save(tiny_cnn(size=16, classes=6), root / "tiny.onnx"),
        "images": write_images(root / "images", 3, 16),
        "dataset": write_dataset(root / "dataset"),
    }


@pytest.fixture(scope="module")
def full(files):
    """One report with every section, shared by the tests that only read it."""
    model = onnxviz.load(files["model"], device="cpu")
    lines = []
    out = files["root"] / "full.html"
    r = onnxviz.report(model, files["images"], out, dataset=files["dataset"], labels=LABELS, progress=lines.append)
    return r, out, lines


# ---------------------------------------------------------------------------- a full report


def test_every_section_ok_in_order(full):
    r, _, _ = full
    keys = [s.key for s in r.sections]
    assert keys[:6] == ["model", "gradcheck", "filters", "images", "trust", "dataset"]
    assert keys[6:] == (["classvis"] if sections_mod.classvis_available() else [])
    assert [(s.key, s.status, s.message) for s in r.sections if s.status != "ok"] == []
    assert all(s.seconds > 0 for s in r.sections)


def test_model_card(full, files):
    r, _, _ = full
    card = r.section("model").result
    assert card.name == "tiny.onnx" and len(card.sha256) == 64
    import hashlib

    assert card.sha256 == hashlib.sha256(Path(files["model"]).read_bytes()).hexdigest()
    assert card.info["opset"] == 17 and card.info["layers"]
    assert dict(card.preprocessing)["normalization"].startswith("ImageNet")
    assert "onnxruntime" in card.runtime
    assert card.images == ["img0.png", "img1.png", "img2.png"]


def test_dynamic_size_model_is_described_at_the_size_it_ran_at(files, tmp_path, no_classvis):
    model = save(tiny_cnn(dynamic=True), tmp_path / "dyn.onnx")
    r = onnxviz.report(model, files["images"][:1], None, device="cpu")
    info = r.section("model").result.info
    assert info["totals"]["macs_unknown"] == 0 and "16×16" in section_html(r.html, "model")


def test_gradient_check_on_the_first_image(full):
    check = full[0].section("gradcheck").result
    assert check.image == "img0.png" and {r.tensor for r in check.rows} == {"input", "relu2"}
    assert check.exact and check.failing == [] and check.worst < 1e-4
    assert "Gradients are exact." in section_html(full[0].html, "gradcheck")


def test_gradient_check_verdicts(files, tmp_path, monkeypatch):
    from onnxviz import checkgrad
    from onnxviz.report.html import gradcheck_html
    from onnxviz.report.sections import gradient_check

    model = onnxviz.load(files["model"], device="cpu")
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(noise)
    check = gradient_check(report_pkg.read_inputs(model, [noise], onnxviz.Preprocess()))
    assert check.exact and not check.kinks and "Gradients are exact." in gradcheck_html(check)

    real = checkgrad.check_gradients

    def wrong(*args, **kwargs):  # a broken rule: every input row off
        return [_failed(r) if r.tensor == "input" else r for r in real(*args, **kwargs)]

    monkeypatch.setattr(checkgrad, "check_gradients", wrong)
    check = gradient_check(report_pkg.read_inputs(model, [noise], onnxviz.Preprocess()))
    assert not check.exact and check.failing == ["input"] and check.worst == 0.5
    html = gradcheck_html(check)
    assert "Gradients are not exact." in html and "0.001 at input (worst relative error 5.0e-01)" in html
    assert html.count("<td class='bad'>NO</td>") == 2

    def kink(*args, **kwargs):  # one direction never got off a kink
        rows = real(*args, **kwargs)
        return [dataclasses.replace(rows[0], status="kink", error=0.9), *rows[1:]]

    monkeypatch.setattr(checkgrad, "check_gradients", kink)
    check = gradient_check(report_pkg.read_inputs(model, [noise], onnxviz.Preprocess()))
    assert check.exact and len(check.kinks) == 1 and check.worst < 1e-4
    html = gradcheck_html(check)
    assert "Gradients are exact." in html and "1 direction(s) could not be judged" in html
    assert "<td class='ok'>kink</td>" in html

    def unresolved(*args, **kwargs):  # constant weights: logits ~1e10, no difference resolves anything
        return [dataclasses.replace(r, status="inconclusive", numeric=0.0, error=1.0, reason="the score (1e+10) is "
                                    "too large") for r in real(*args, **kwargs)]

    monkeypatch.setattr(checkgrad, "check_gradients", unresolved)
    check = gradient_check(report_pkg.read_inputs(model, [noise], onnxviz.Preprocess()))
    assert not check.exact and check.failing == [] and check.verdict[0] == "inconclusive"
    html = gradcheck_html(check)
    assert "Gradient check inconclusive." in html and "not exact" not in html and "too large" in html


def test_images_section_has_every_method(full):
    ex = full[0].section("images").result
    assert ex.layer == "relu2" and ex.explained == "pre-softmax logit"
    assert [p.name for p in ex.parts] == ["Grad-CAM", "Guided Grad-CAM", "Guided backprop", "Occlusion", "CAM",
                                          "activations"]
    assert all(p.status == "ok" for p in ex.parts)
    for view in ex.images:
        assert len(view.predictions) == 5
        probs = [p.prob for p in view.predictions]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert [p.caption.split(" · ")[0] for p in view.panels] == ["Grad-CAM", "Guided Grad-CAM", "Guided backprop",
                                                                    "Occlusion", "CAM"]
        assert view.activations is not None and "relu2" in view.activations.caption
        assert view.predictions[0].label in view.caption and "relu2" in view.caption


def test_predictions_match_the_model(full, files):
    model = onnxviz.load(files["model"], device="cpu")
    x = onnxviz.preprocess([onnxviz.read_image(p) for p in files["images"]], model.input)
    probs = model.run(x)["prob"]
    for view, row in zip(full[0].section("images").result.images, probs):
        best = view.predictions[0]
        assert best.index == int(row.argmax()) and best.label == LABELS[best.index]
        assert best.prob == pytest.approx(float(row.max()), rel=1e-5)
        assert best.logit is not None


def test_dataset_section(full, files):
    view = full[0].section("dataset").result
    assert view.images == 15 and view.classes == ("circle", "square", "triangle")
    assert view.tsne is not None and [c for c, _ in view.legend] == list(view.classes)
    assert [s.query for s in view.neighbors] == ["img0.png", "img1.png", "img2.png"]
    assert all(len(s.pictures) == 1 + 6 for s in view.neighbors)
    assert view.patches_layer == "relu2" and len(view.channels) == 6
    assert all(p.status == "ok" for p in view.parts)


def test_page_is_self_contained(full):
    r, out, _ = full
    page = out.read_text(encoding="utf-8")
    assert page == r.html
    assert "<script" not in page.lower()
    assert re.search(r"(src|href)=\"(?!data:|#)", page) is None, "a link or source outside the page"
    assert "url(" not in page and "@import" not in page and "http://" not in page and "https://" not in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    images = pngs(page)
    assert len(images) == len(re.findall(r"<img ", page)) > 20
    assert "<details>" in page and "@media print" in page
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".full.html")], "temporary file left behind"


def test_page_shows_timings_and_progress(full):
    r, _, lines = full
    timings = section_html(r.html, "timings") if 'id="timings" class="card ' in r.html else \
        r.html[r.html.index('id="timings"'):]
    for s in r.sections:
        assert s.title in timings
    assert "Occlusion" in timings and "t-SNE map" in timings
    n = len(r.sections)
    assert lines[0] == f"[1/{n}] Model card ..." and any(line.startswith(f"[{n}/{n}]") for line in lines)
    steps = [line for line in lines if not line.startswith(" ")]  # indented: a long section's own steps
    assert all(re.search(r": (done|skipped|FAILED) in \d", line) for line in steps[1::2])
    assert any(line.startswith("    gradient check: finite differences") for line in lines)


def test_labels_are_escaped(files, tmp_path, no_classvis):
    evil = ["<script>alert(1)</script>", "a&b", '"quoted"', "ok", "x", "y"]
    r = onnxviz.report(files["model"], files["images"][:1], tmp_path / "r.html", labels=evil, device="cpu")
    assert "<script>alert" not in r.html and "&lt;script&gt;alert(1)&lt;/script&gt;" in r.html


# ---------------------------------------------------------------------------- sections that cannot apply


def test_model_without_cam_head_says_why(tmp_path, no_classvis):
    model = save(flatten_head_cnn(size=8, classes=3), tmp_path / "vgg.onnx")
    r = onnxviz.report(model, write_images(tmp_path / "i", 2, 8), tmp_path / "r.html", device="cpu")
    ex = r.section("images").result
    status = {p.name: p.status for p in ex.parts}
    assert status == {"Grad-CAM": "ok", "Guided Grad-CAM": "ok", "Guided backprop": "ok", "Occlusion": "ok",
                      "CAM": "skipped", "activations": "ok"}
    assert "global-average-pool" in next(p.message for p in ex.parts if p.name == "CAM")
    html = section_html(r.html, "images")
    assert "Not shown for this model" in html and "CAM</strong>: the model has no global-average-pool" in html
    assert all(len(v.panels) == 4 for v in ex.images)


def test_unsupported_op_on_the_gradient_path(tmp_path, no_classvis):
    r = onnxviz.report(unsupported_model(tmp_path), write_images(tmp_path / "i", 2, 16), tmp_path / "r.html",
                       device="cpu")
    by_key = {s.key: s for s in r.sections}
    assert by_key["model"].status == "ok" and by_key["filters"].status == "ok"
    assert by_key["gradcheck"].status == "error" and "'Atan'" in by_key["gradcheck"].message
    assert "atan_node" in by_key["gradcheck"].message
    ex = by_key["images"].result
    status = {p.name: p.status for p in ex.parts}
    assert status["Occlusion"] == "ok" and status["activations"] == "ok"
    assert status["Grad-CAM"] == status["Guided Grad-CAM"] == status["Guided backprop"] == "error"
    assert status["CAM"] == "skipped"
    assert all(len(v.panels) == 1 and v.panels[0].caption.startswith("Occlusion") for v in ex.images)
    assert "no gradient rule for operator &#x27;Atan&#x27;" in section_html(r.html, "images")
    assert "This section failed" in section_html(r.html, "gradcheck")
    assert "Sections that failed" in r.html


def test_a_bug_in_a_section_is_shown_and_logged(files, tmp_path, monkeypatch, caplog, no_classvis):
    def broken(inp):
        raise ZeroDivisionError("boom")

    plan = [(k, t, broken if k == "filters" else fn) for k, t, fn in report_pkg.SECTIONS]
    monkeypatch.setattr(report_pkg, "SECTIONS", tuple(plan))
    with caplog.at_level(logging.ERROR, logger="onnxviz"):
        r = onnxviz.report(files["model"], files["images"][:1], tmp_path / "r.html", device="cpu")
    s = r.section("filters")
    assert s.status == "error" and "internal error" in s.message and "ZeroDivisionError: boom" in s.message
    assert any(rec.exc_info and "Filters" in rec.getMessage() for rec in caplog.records)
    assert [x.status for x in r.sections if x.key != "filters"] == ["ok", "ok", "ok", "ok", "skipped"]
    assert "ZeroDivisionError: boom" in section_html(r.html, "filters")


def test_onnxviz_errors_are_shown_without_traceback(files, tmp_path, monkeypatch, caplog, no_classvis):
    def refuses(inp):
        raise OnnxvizError("this model is not for that")

    plan = [(k, t, refuses if k == "filters" else fn) for k, t, fn in report_pkg.SECTIONS]
    monkeypatch.setattr(report_pkg, "SECTIONS", tuple(plan))
    with caplog.at_level(logging.ERROR, logger="onnxviz"):
        r = onnxviz.report(files["model"], files["images"][:1], tmp_path / "r.html", device="cpu")
    assert r.section("filters").message == "this model is not for that"
    assert not caplog.records


def test_unreadable_images_are_listed(files, tmp_path, no_classvis):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    r = onnxviz.report(files["model"], [str(bad), files["images"][0]], tmp_path / "r.html", device="cpu")
    assert [s.status for s in r.sections] == ["ok", "ok", "ok", "ok", "ok", "skipped"]
    assert r.section("model").result.unreadable[0][0] == "bad.png"
    assert len(r.section("images").result.images) == 1
    assert "bad.png" in section_html(r.html, "model")


def test_no_readable_image_still_gives_a_report(files, tmp_path, no_classvis):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    r = onnxviz.report(files["model"], [str(bad)], tmp_path / "r.html", device="cpu")
    status = {s.key: s.status for s in r.sections}
    assert status == {"model": "ok", "gradcheck": "skipped", "filters": "ok", "images": "skipped",
                      "trust": "skipped", "dataset": "skipped"}
    assert "no image could be read" in r.section("images").message


def test_dataset_section_without_dataset_says_how(files, tmp_path, no_classvis):
    r = onnxviz.report(files["model"], files["images"][:1], None, device="cpu")
    s = r.section("dataset")
    assert s.status == "skipped" and "--dataset" in s.message
    assert r.path is None and "Not included" in r.html


def test_write_is_atomic(files, tmp_path, monkeypatch, no_classvis):
    out = tmp_path / "r.html"
    out.write_text("old")
    monkeypatch.setattr(report_pkg, "render", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        onnxviz.report(files["model"], files["images"][:1], out, device="cpu")
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.html"]


# ---------------------------------------------------------------------------- class visualizations


def test_without_classvis_there_is_no_section(files, tmp_path, no_classvis):
    assert not sections_mod.classvis_available()
    r = onnxviz.report(files["model"], files["images"][:1], None, device="cpu")
    assert "classvis" not in [s.key for s in r.sections] and 'id="classvis"' not in r.html


def test_classvis_section_when_present(files, tmp_path, monkeypatch):
    pytest.importorskip("onnxviz.methods.classvis")
    from onnxviz.methods import classvis

    calls = []
    real = classvis.class_visualization

    def quick(model, target, **kw):  # the real method, fewer steps
        calls.append(list(target))
        return real(model, target, steps=8, **kw)

    monkeypatch.setattr(classvis, "class_visualization", quick)
    r = onnxviz.report(files["model"], files["images"], None, labels=LABELS, device="cpu")
    s = r.section("classvis")
    assert s.status == "ok", s.message
    predicted = list(dict.fromkeys(v.predictions[0].index for v in r.section("images").result.images))
    assert calls == [predicted]
    assert [p.caption.split(" · ")[0] for p in s.result.pictures] == [LABELS[k] for k in predicted]
    assert s.result.steps == 8 and 'id="classvis"' in r.html


# ---------------------------------------------------------------------------- CLI and demo


def test_cli_report(files, tmp_path, no_classvis):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    out = tmp_path / "sub" / "report.html"
    r = CliRunner().invoke(main, ["report", files["model"], *files["images"][:2], "-o", str(out), "--labels",
                                  str(labels), "--device", "cpu", "--top", "3"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert f"wrote {out.resolve()}" in r.stdout
    assert "report: [1/6] Model card ..." in r.stderr and "report: [6/6] Dataset: skipped" in r.stderr
    page = out.read_text()
    assert page.count("<table class=preds>") == 2 and page.count("<tr class=top1>") == 2
    assert re.search(r"<td class=num>3</td>", page) and "<td class=num>4</td>" not in section_html(page, "images")


def test_cli_report_refuses_to_overwrite_an_input(files):
    r = CliRunner().invoke(main, ["report", files["model"], files["images"][0], "-o", files["images"][0]])
    assert r.exit_code != 0 and "is the input file" in r.output


def test_cli_report_reports_failed_sections(tmp_path, no_classvis):
    model = unsupported_model(tmp_path)
    r = CliRunner().invoke(main, ["report", model, *write_images(tmp_path / "i", 1, 16), "-o",
                                  str(tmp_path / "r.html"), "--device", "cpu"], catch_exceptions=False)
    assert r.exit_code == 0
    assert "Gradient check: FAILED" in r.stderr and "1 section(s) failed" in r.stderr


def test_demo_writes_the_report(tmp_path, no_classvis):
    folder = tmp_path / "bundle"
    model = save(tiny_cnn(size=16, classes=6), folder / "m.onnx") if folder.mkdir() is None else None
    write_images(folder / "images", 2, 16)
    out = tmp_path / "demo"
    r = CliRunner().invoke(main, ["demo", "--model", model, "--out", str(out), "--device", "cpu"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert (out / "report.html").is_file() and (out / "filters.png").is_file()  # the old outputs stay
    assert f"report: {(out / 'report.html').resolve()}" in r.output
    page = (out / "report.html").read_text()
    assert page.count('<article class="image"') == 2
