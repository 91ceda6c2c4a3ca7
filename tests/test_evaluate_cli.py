"""onnxviz evaluate: metrics.json per image/method/metric, plots, verdicts, boxes, errors."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import onnxviz
from onnxviz.cli import main
from onnxviz.cli.evaluate import read_boxes
from onnxviz.errors import OnnxvizError
from onnxviz.images import Geometry

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "shapes_cnn.onnx"
IMAGES = [ROOT / "models" / "images" / n for n in ("star_0.png", "ring_0.png")]
BOXES = ROOT / "models" / "images" / "boxes.json"

pytestmark = pytest.mark.skipif(not MODEL.exists(), reason="the sample model is not built")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_evaluate_writes_metrics_plots_and_verdicts(tmp_path):
    out = tmp_path / "ev"
    r = run("evaluate", MODEL, *IMAGES, "--method", "gradcam,guided", "--metrics",
            "deletion,insertion,road,pointing,sanity", "--boxes", BOXES, "--steps", 10, "--out", out,
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    data = json.loads((out / "metrics.json").read_text())
    assert [Path(e["image"]).name for e in data["images"]] == ["star_0.png", "ring_0.png"]
    for entry in data["images"]:
        for method in ("gradcam", "guided"):
            m = entry["methods"][method]
            assert len(m["deletion_curve"]) == 11 and len(m["insertion_curve"]) == 11
            assert len(m["road"]["morf"]) == 9 and isinstance(m["pointing"], bool)
            assert len(m["sanity"]["spearman_abs"]) == 5 and m["random_logit"]["class"] != m["target"]
    for method in ("gradcam", "guided"):
        s = data["summary"][method]
        assert s["sanity"]["layers"][0] == "/fc/Gemm"
        assert s["sanity"]["verdict"] in r.output
        assert f"{method}: deletion AUC {s['deletion']['auc']:.3f}" in r.output
    for name in ("deletion.png", "insertion.png", "sanity.png"):
        assert (out / name).stat().st_size > 5000
    assert data["errors"] == {}
    assert data["sanity_resolution"] == "native" and data["summary"]["gradcam"]["sanity"]["resolution"] == "native"

    # the numbers are the API's on the same batch
    model = onnxviz.load(str(MODEL), device="cpu")
    pre = onnxviz.Preprocess.from_options(norm="imagenet", resize="stretch", size=(64, 64))
    x = onnxviz.preprocess([onnxviz.read_image(p) for p in IMAGES], model.input, pre)
    cam = onnxviz.grad_cam(model, x)
    auc = onnxviz.deletion(model, x, cam.map, target=cam.target, steps=10).auc
    np.testing.assert_allclose([e["methods"]["gradcam"]["deletion_auc"] for e in data["images"]], auc, atol=1e-6)


def test_sanity_resolution_input(tmp_path):
    """--sanity-resolution input compares the upsampled CAM maps, records it, and gives the API's numbers."""
    out = tmp_path / "ev"
    r = run("evaluate", MODEL, *IMAGES, "--method", "gradcam", "--metrics", "sanity", "--sanity-resolution", "input",
            "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    data = json.loads((out / "metrics.json").read_text())
    assert data["sanity_resolution"] == "input" and data["summary"]["gradcam"]["sanity"]["resolution"] == "input"
    model = onnxviz.load(str(MODEL), device="cpu")
    pre = onnxviz.Preprocess.from_options(norm="imagenet", resize="stretch", size=(64, 64))
    x = onnxviz.preprocess([onnxviz.read_image(p) for p in IMAGES], model.input, pre)
    want = {res: onnxviz.sanity_check(model, x, "gradcam", resolution=res).ssim for res in ("input", "native")}
    got = np.array([e["methods"]["gradcam"]["sanity"]["ssim"] for e in data["images"]]).T
    np.testing.assert_allclose(got, want["input"], atol=1e-9)
    assert not np.allclose(got, want["native"], atol=1e-3)  # the option reached the test
    r = run("evaluate", MODEL, IMAGES[0], "--sanity-resolution", "screen", "--out", out, "--device", "cpu")
    assert r.exit_code == 2 and "screen" in r.output
    sharded = tmp_path / "s"  # the dataset path (--shard; --engine ray shares it) carries the option to its workers
    r = run("evaluate", MODEL, *IMAGES, "--method", "gradcam", "--metrics", "sanity", "--sanity-resolution", "input",
            "--shard", "0/1", "--out", sharded, "--device", "cpu")
    assert r.exit_code == 0, r.output
    parts = json.loads(next(sharded.glob("metrics.*.json")).read_text())
    assert parts["sanity_resolution"] == "input"
    np.testing.assert_allclose(np.array([e["methods"]["gradcam"]["sanity"]["ssim"] for e in parts["images"]]).T,
                               want["input"], atol=1e-9)


def test_a_failing_method_is_reported_and_the_others_kept(tmp_path):
    out = tmp_path / "ev"
    r = run("evaluate", MODEL, IMAGES[0], "--method", "cam,vanilla", "--metrics", "deletion,sanity",
            "--steps", 4, "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    data = json.loads((out / "metrics.json").read_text())
    assert "reads the classifier's weights" in data["errors"]["cam"]
    assert "vanilla" in data["summary"] and "cam" not in data["summary"]


def test_a_model_failure_is_recorded_whatever_its_wording(tmp_path, monkeypatch):
    """Only mistakes in the request (OptionError) stop the run; a method failing on this model
    is recorded even when its message says "unknown" (the CLI once triaged by message text)."""
    import onnxviz.cli.evaluate as cli_evaluate

    real = cli_evaluate.evaluate

    def failing(model, x, method, *args, **kwargs):
        if method == "gradcam":
            raise OnnxvizError("the rank of 'logits' is unknown; cannot pick a class axis")
        return real(model, x, method, *args, **kwargs)

    monkeypatch.setattr(cli_evaluate, "evaluate", failing)
    out = tmp_path / "ev"
    r = run("evaluate", MODEL, IMAGES[0], "--method", "gradcam,vanilla", "--metrics", "deletion", "--steps", 4,
            "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    data = json.loads((out / "metrics.json").read_text())
    assert "is unknown" in data["errors"]["gradcam"] and "vanilla" in data["summary"]


@pytest.mark.parametrize("args, message", [
    (["--metrics", "deletion,vibes"], "unknown metric 'vibes'"),
    (["--metrics", "pointing"], "needs the objects' boxes"),
    (["--method", "astrology"], "unknown method 'astrology'"),
    (["--method", ","], "--method is empty"),
])
def test_clear_errors(tmp_path, args, message):
    r = run("evaluate", MODEL, IMAGES[0], "--out", tmp_path / "ev", "--device", "cpu", *args)
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output


def test_bad_boxes_file(tmp_path):
    bad = tmp_path / "boxes.json"
    bad.write_text('{"star_0.png": [1, 2, 3]}')
    r = run("evaluate", MODEL, IMAGES[0], "--boxes", bad, "--out", tmp_path / "ev", "--device", "cpu")
    assert r.exit_code == 1 and "must be [x0, y0, x1, y1]" in r.output
    bad.write_text("{not json")
    r = run("evaluate", MODEL, IMAGES[0], "--boxes", bad, "--out", tmp_path / "ev", "--device", "cpu")
    assert r.exit_code == 1 and "cannot read boxes" in r.output


def test_boxes_follow_the_resize_and_crop(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"a.png": {"box": [0, 0, 64, 64]},
                                "b.png": [[0, 0, 32, 32], [96, 96, 128, 128]]}))
    half = Geometry.fit((128, 128), (64, 64), "stretch")
    masks = read_boxes(str(path), ["dir/a.png", "b.png"], [half, half], (64, 64))
    want = np.zeros((64, 64), bool)
    want[:32, :32] = True
    np.testing.assert_array_equal(masks[0], want)
    two = np.zeros((64, 64), bool)
    two[:16, :16] = two[48:, 48:] = True  # two boxes: one mask, their union
    np.testing.assert_array_equal(masks[1], two)
    # a 200x100 (h x w) image: shorter side to 64 (scale 0.64, 128 rows), then 32 rows cut from the top.
    # Its box (0, 0, 64, 64) becomes x in [0, 40.96), y in [-32, 8.96): pixel centres in 9 rows, 41 columns
    crop = Geometry.fit((200, 100), (64, 64), "shorter")
    assert crop.offset == (32, 0) and crop.scale == (0.64, 0.64)
    (mask,) = read_boxes(str(path), ["a.png"], [crop], (64, 64))
    want = np.zeros((64, 64), bool)
    want[:9, :41] = True
    np.testing.assert_array_equal(mask, want)
    with pytest.raises(OnnxvizError, match="no box for c.png"):
        read_boxes(str(path), ["c.png"], [half], (64, 64))


def test_help_has_an_example():
    r = run("evaluate", "--help")
    assert r.exit_code == 0 and "onnxviz evaluate models/shapes_cnn.onnx" in r.output


def test_sample_images_keep_their_boxes(tmp_path):
    """The bundled boxes.json reaches the model input unchanged (64x64 images, stretch to 64x64)."""
    data = json.loads(BOXES.read_text())
    geoms = [Geometry.fit((64, 64), (64, 64), "stretch")] * len(IMAGES)
    masks = read_boxes(str(BOXES), [str(p) for p in IMAGES], geoms, (64, 64))
    for m, p in zip(masks, IMAGES):
        x0, y0, x1, y1 = data[p.name]["box"]
        ys, xs = np.nonzero(m)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
