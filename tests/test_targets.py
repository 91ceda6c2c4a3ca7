"""General targets on non-classifier models: boxes, masks, predicted maps, sequence steps, negation,
multi-label sums, raw seeds and extra inputs.

Each target is checked two ways: against the same gradient run with an explicit seed array
written here from the documented definition, and against float64 central differences of the
forward model (check-grad's referee).
"""
import json
from pathlib import Path

import numpy as np
import pytest

import onnxviz
from onnxviz.checkgrad import check_gradients
from onnxviz.errors import OnnxvizError
from onnxviz.methods.layers import resolve_layer
from onnxviz.targets import Target
from builders import tiny_cnn
from target_models import ctc_net, save, seg_net, seg_net_nhwc, seg_weights, two_input_net

RTOL = 1e-5


def close(a, b, rtol=RTOL):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.abs(a - b).max() <= rtol * max(np.abs(b).max(), 1e-12), np.abs(a - b).max()


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    return onnxviz.load(save(seg_net()[0], tmp_path_factory.mktemp("seg") / "seg.onnx"), device="cpu")


@pytest.fixture(scope="module")
def ctc(tmp_path_factory):
    return onnxviz.load(save(ctc_net(), tmp_path_factory.mktemp("ctc") / "ctc.onnx"), device="cpu")


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)


def explicit(seg, x, k=None):
    """Seed arrays written from the definitions, on the (N, 3, 16, 16) pre-softmax logits."""
    box = np.zeros((2, 3, 16, 16))
    box[:, 1, 0:8, 2:9] = 1  # box (2, 0, 9, 8): x 2..9, y 0..8 at the input's own resolution
    mask = (np.random.default_rng(5).random((16, 16)) > 0.6).astype(np.float64)
    masked = np.zeros((2, 3, 16, 16))
    masked[:, 2] = mask
    logits = seg.activations(x, ["logits"])["logits"]
    predicted = (np.arange(3)[None, :, None, None] == logits.argmax(1)[:, None]).astype(np.float64)
    return {"box": (Target(1, box=(2, 0, 9, 8)), box), "mask": (Target(2, mask=mask), masked),
            "predicted": ("predicted", predicted)}


@pytest.mark.parametrize("kind", ["box", "mask", "predicted"])
def test_dense_targets_equal_explicit_seeds(seg, x, kind):
    target, seed = explicit(seg, x)[kind]
    g = seg.gradients(x, target=target, wrt=["input", "r4"])
    ref = seg.gradients(x, target=seed, wrt=["input", "r4"])
    close(g["input"], ref["input"])
    close(g["r4"], ref["r4"])
    logits = seg.activations(x, ["logits"])["logits"].astype(np.float64)
    close(g.score, (seed * logits).sum(axis=(1, 2, 3)))
    assert np.abs(g["input"]).max() > 0


def test_guided_grad_cam_explains_the_general_target(seg, x):
    target = Target(1, box=(0, 0, 8, 8))
    guided = onnxviz.saliency(seg, x, target=target, method="guided")
    h = onnxviz.guided_grad_cam(seg, x, target=target)
    cam_map = onnxviz.grad_cam(seg, x, target=target).map
    close(h.raw, guided.raw * cam_map[:, None])


@pytest.mark.parametrize("kind", ["box", "mask", "predicted"])
def test_dense_targets_match_float64_finite_differences(seg, x, kind):
    target, _ = explicit(seg, x)[kind]
    rows = check_gradients(seg, x[:1], layers=["r4"], target=target, directions=2, tolerance=1e-4)
    assert all(r.ok for r in rows), rows
    assert sum(r.status == "ok" for r in rows) >= 2


def test_predicted_is_the_default_for_dense_outputs(seg, x):
    g = seg.gradients(x, wrt=["r4"])
    ref = seg.gradients(x, target=explicit(seg, x)["predicted"][1], wrt=["r4"])
    close(g["r4"], ref["r4"])
    assert g.explained == "predicted class at each position"
    assert (g.target == -1).all()


def test_prob_score_with_a_box(seg, x):
    seed = np.zeros((2, 3, 16, 16))
    seed[:, 0, 8:16, 8:16] = 1
    g = seg.gradients(x, target=Target(0, box=(8, 8, 16, 16)), score="prob", wrt=["r4"])
    close(g["r4"], seg.gradients(x, target=seed, score="prob", wrt=["r4"])["r4"])
    close(g.score, (seg.run(x)["seg"] * seed).sum(axis=(1, 2, 3)))


def test_box_maps_to_a_coarser_output_by_the_size_ratio(seg, x):
    """Explaining the 4x4 tensor c3 of a 16x16 input: box x 5..9, y 3..11 covers rows 0..2, cols 1..2."""
    g = seg.gradients(x, target=Target(4, box=(5, 3, 9, 11)), output="c3", wrt=["r2"])
    seed = np.zeros((2, 8, 4, 4))
    seed[:, 4, 0:3, 1:3] = 1
    close(g["r2"], seg.gradients(x, target=seed, output="c3", wrt=["r2"])["r2"])
    mask = np.random.default_rng(2).random((16, 16))
    g = seg.gradients(x, target=Target(4, mask=mask), output="c3", wrt=["r2"])
    seed = np.zeros((2, 8, 4, 4))
    seed[:, 4] = mask[2::4, 2::4]  # nearest sample at each cell's centre
    close(g["r2"], seg.gradients(x, target=seed, output="c3", wrt=["r2"])["r2"])


def test_channels_last_dense_output(tmp_path):
    """(N, H, W, C) output: the class axis is the last, a box selects rows and columns of axes 1 and 2."""
    m = onnxviz.load(save(seg_net_nhwc(), tmp_path / "nhwc.onnx"), device="cpu")
    x = np.random.default_rng(4).standard_normal((2, 16, 16, 3)).astype(np.float32)
    seed = np.zeros((2, 16, 16, 3))
    seed[:, 4:12, 0:5, 2] = 1
    g = m.gradients(x, target=Target(2, box=(0, 4, 5, 12)), wrt=["input", "r2"])
    ref = m.gradients(x, target=seed, wrt=["input", "r2"])
    close(g["input"], ref["input"])
    close(g.score, (m.run(x)["out"] * seed).sum(axis=(1, 2, 3)))
    assert resolve_layer(m) == "r2"
    rows = check_gradients(m, x[:1], layers=["r2"], target=Target(2, box=(0, 4, 5, 12)), tolerance=1e-4)
    assert all(r.ok for r in rows), rows


def test_negate_and_multilabel(seg, x, tmp_path):
    one, two = (seg.gradients(x, target=k, wrt=["input", "r4"]) for k in (0, 2))
    neg = seg.gradients(x, target=Target(0, negate=True), wrt=["input", "r4"])
    both = seg.gradients(x, target=Target([0, 2]), wrt=["input", "r4"])
    for name in ("input", "r4"):
        close(neg[name], -one[name])
        close(both[name], one[name] + two[name])
    close(neg.score, -one.score)
    cls = onnxviz.load(save(tiny_cnn(), tmp_path / "c.onnx"), device="cpu")
    xc = x[:, :, :16, :16]
    a, b = cls.gradients(xc, target=1), cls.gradients(xc, target=3)
    close(cls.gradients(xc, target=Target([1, 3]))["input"], a["input"] + b["input"])
    close(cls.gradients(xc, target=Target(1, negate=True))["input"], -a["input"])
    assert (cls.gradients(xc, target=Target(1)).target == 1).all()


def test_default_layer_of_dense_and_sequence_heads(seg, ctc):
    assert resolve_layer(seg) == "r4"  # the deepest tensor at the coarsest resolution, before upsampling
    assert resolve_layer(ctc) in ("features", "nwch")  # the last 4-D tensor before the sequence reshape
    h = onnxviz.grad_cam(seg, np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32))
    assert h.layer == "r4" and h.raw.shape == (1, 4, 4) and h.map.shape == (1, 16, 16)


def test_sequence_steps_match_float64_finite_differences(ctc):
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 16)).astype(np.float32)
    for target in (Target(2, step=3), Target([1, 4], step=slice(2, 6)), Target(step=5)):
        rows = check_gradients(ctc, x, layers=["features"], target=target, directions=2, tolerance=1e-4)
        assert all(r.ok for r in rows), (target, rows)
    g = ctc.gradients(x, target=Target(2, step=3), wrt=["features"])
    seed = np.zeros((1, 8, 5))
    seed[0, 3, 2] = 1
    close(g["features"], ctc.gradients(x, target=seed, wrt=["features"])["features"])
    logits = ctc.activations(x, ["logits"])["logits"]
    close(g.score, logits[:, 3, 2])


def test_targets_that_do_not_fit_name_the_shape(seg, ctc, x):
    with pytest.raises(OnnxvizError, match=r"step needs a sequence output .*\(2, 3, 16, 16\)"):
        seg.gradients(x, target=Target(1, step=2))
    with pytest.raises(OnnxvizError, match=r"box needs an output with two spatial axes.*\(1, 8, 5\)"):
        ctc.gradients(np.zeros((1, 3, 8, 16), np.float32), target=Target(1, box=(0, 0, 4, 4)))
    with pytest.raises(OnnxvizError, match=r"out of range.*\(2, 3, 16, 16\)"):
        seg.gradients(x, target=Target([1, 7]))
    with pytest.raises(OnnxvizError, match=r"seed of shape \(4, 4\) does not fit.*\(2, 3, 16, 16\)"):
        seg.gradients(x, target=np.ones((4, 4)))
    with pytest.raises(OnnxvizError, match="step 9 is out of range"):
        ctc.gradients(np.zeros((1, 3, 8, 16), np.float32), target=Target(1, step=9))


def test_methods_accept_general_targets(seg, x):
    """Every method explains Σ seed·y: the scores they report agree with the gradient run's."""
    target = Target(1, box=(0, 0, 8, 8))
    score = seg.gradients(x, target=target).score
    for h in (onnxviz.grad_cam(seg, x, target=target), onnxviz.saliency(seg, x, target=target),
              onnxviz.saliency(seg, x, target=target, method="integrated", steps=4),
              onnxviz.occlusion(seg, x, target=target, window=8, stride=8),
              onnxviz.score_cam(seg, x, target=target), onnxviz.layer_cam(seg, x, target=target),
              onnxviz.guided_grad_cam(seg, x, target=target)):
        close(h.score, score, 1e-4)
        assert (h.target == 1).all() and np.isfinite(h.map).all()
        assert h.explains == {"output": "seg", "tensor": "logits", "score": "logit",
                              "target": "class 1 in box (0, 0, 8, 8)"}


def test_grad_cam_with_a_mask_equals_the_torch_reference(seg, x):
    """pytorch-grad-cam's SemanticSegmentationTarget: (output[k] * mask).sum() on the logits; Grad-CAM at r4."""
    torch = pytest.importorskip("torch")
    from torch.nn import functional as F

    w = {k: torch.from_numpy(v) for k, v in seg_weights().items()}
    mask = (np.random.default_rng(7).random((16, 16)) > 0.5).astype(np.float32)

    xt = torch.from_numpy(x)
    r1 = F.relu(F.conv2d(xt, w["w1"], w["b1"], padding=1))
    r2 = F.relu(F.conv2d(r1, w["w2"], w["b2"], padding=1, stride=2))
    r3 = F.relu(F.conv2d(r2, w["w3"], w["b3"], padding=1, stride=2))
    r4 = F.relu(F.conv2d(r3, w["w4"], w["b4"], padding=1)).detach().requires_grad_()
    r5 = F.relu(F.conv_transpose2d(r4, w["wt"], w["bt"], stride=2))
    fused = F.interpolate(r5, scale_factor=2, mode="nearest") + F.conv2d(r1, w["ws"], w["bs"])
    logits = F.conv2d(F.relu(fused), w["w5"], w["b5"], padding=1)
    (logits[:, 2] * torch.from_numpy(mask)).sum().backward()
    acts, grads = r4.detach().numpy(), r4.grad.numpy()
    expected = np.maximum((grads.mean(axis=(2, 3))[:, :, None, None] * acts).sum(axis=1), 0)

    h = onnxviz.grad_cam(seg, x, target=Target(2, mask=mask))
    assert h.layer == "r4"
    for n in range(len(x)):
        assert np.abs(h.raw[n] - expected[n]).max() <= 1e-4 * expected[n].max()
    assert expected.max() > 0


def test_two_input_model_with_feeds(tmp_path):
    path = save(two_input_net(), tmp_path / "two.onnx")
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    scale = np.array([[0.5, -2.0, 1.5, 3.0]], np.float32)
    bare = onnxviz.load(path, device="cpu")
    with pytest.raises(OnnxvizError, match=r"input scale float\[N, 4\] is not fed"):
        bare.gradients(x)
    m = onnxviz.load(path, device="cpu", feeds={"scale": scale})
    g = m.gradients(x, target=2)
    close(g.score, m.run(x)["y"][:, 2])
    rows = check_gradients(m, x[:1], layers=["r1"], target=2, tolerance=1e-4)
    assert all(r.ok for r in rows) and any(r.status == "ok" for r in rows), rows
    bare.set_feeds({"scale": np.ones((2, 4), np.float32)})  # one row per image
    close(m.run(x)["y"], bare.run(x)["y"] * scale)
    close(g["input"], bare.gradients(x, target=2)["input"] * scale[0, 2])
    with pytest.raises(OnnxvizError, match="cannot feed 'nope'"):
        m.set_feeds({"nope": scale})


def _cli(*args):
    from click.testing import CliRunner

    from onnxviz.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_targets_and_feeds(seg, tmp_path):
    from PIL import Image

    img = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)).save(img)
    seg_path = seg.path
    out = tmp_path / "box"
    r = _cli("cam", seg_path, img, "--target", "1", "--box", "0,0,8,8", "--negate", "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "results.json").read_text())
    assert summary["explained"] == {"output": "seg", "tensor": "logits", "score": "logit",
                                    "target": "minus class 1 in box (0, 0, 8, 8)"}
    assert summary["images"][0]["maps"][0]["layer"] == "r4"
    mask = np.zeros((16, 16, 3), np.uint8)
    mask[4:10, 2:12] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    seed = np.zeros((3, 16, 16), np.float32)
    seed[2, 4:10, 2:12] = 1
    np.save(tmp_path / "seed.npy", seed)
    for args, what in ((["--seed", tmp_path / "seed.npy"], "seed array of shape (3, 16, 16)"),
                       (["--target", "2", "--mask", tmp_path / "mask.png"], "class 2 in mask")):
        r = _cli("saliency", seg_path, img, *args, "--out", tmp_path / what[:5], "--device", "cpu")
        assert r.exit_code == 0, r.output
        summary = json.loads((tmp_path / what[:5] / "results.json").read_text())
        assert summary["explained"]["target"] == what
        maps = summary["images"][0]["maps"][0]
        if what.startswith("seed"):
            reference = maps["score"]
        else:
            assert maps["score"] == pytest.approx(reference, rel=1e-5)  # the same region, two ways
    r = _cli("cam", seg_path, img, "--target", "1", "--step", "2", "--out", tmp_path / "bad", "--device", "cpu")
    assert r.exit_code != 0 and "step needs a sequence output" in r.output and "(1, 3, 16, 16)" in r.output
    assert "Traceback" not in r.output

    two = save(two_input_net(size=16), tmp_path / "two.onnx")
    np.save(tmp_path / "scale.npy", np.ones((1, 4), np.float32))
    r = _cli("saliency", two, img, "--out", tmp_path / "two", "--device", "cpu")
    assert r.exit_code != 0 and "scale" in r.output and "--feed" in r.output and "Traceback" not in r.output
    r = _cli("saliency", two, img, "--feed", f"scale={tmp_path / 'scale.npy'}", "--target", "0", "--target", "3",
             "--out", tmp_path / "two", "--device", "cpu")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "two" / "results.json").read_text())
    assert summary["explained"]["target"] == "sum of classes 0, 3"


# ---------------------------------------------------------------------------- the bundled dense model

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_bundled_dense_model_is_the_classifier_head_per_pixel():
    """shapes_seg's class map averaged over positions is shapes_cnn's logits (GAP and the linear layer commute)."""
    seg = onnxviz.load(str(MODELS / "shapes_seg.onnx"), device="cpu")
    cls = onnxviz.load(str(MODELS / "shapes_cnn.onnx"), device="cpu")
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    class_map = seg.activations(x, ["class_map"])["class_map"]
    logits = cls.activations(x, ["/fc/Gemm_output_0"])["/fc/Gemm_output_0"]
    close(class_map.mean(axis=(2, 3)), logits, 1e-5)
    assert seg.run(x)["seg"].shape == (2, 6, 64, 64)
    assert resolve_layer(seg) == "/features/features.14/Relu_output_0"  # the features, not the class map


def test_demo_dense_section(tmp_path):
    from onnxviz.cli.demo import dense_demo

    images = [MODELS / "images" / "star_0.png", MODELS / "images" / "ring_0.png"]
    summary = dense_demo(str(MODELS / "shapes_seg.onnx"), images, tmp_path, "cpu")
    assert [e["label"] for e in summary["images"]] == ["star", "ring"]
    for e in summary["images"]:
        assert (tmp_path / Path(e["image"]).stem / "gradcam_mask.png").is_file()
        assert e["maps"]["gradcam_mask.png"]["target"] == f"class {e['class']} in mask"
        assert e["maps"]["gradcam_predicted.png"]["target"] == "predicted class at each position"
    assert json.loads((tmp_path / "results.json").read_text())["layer"] == summary["layer"]


def test_class_index_methods_refuse_general_targets_clearly(seg, x):
    from onnxviz.methods.faithfulness import deletion

    maps = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    with pytest.raises(OnnxvizError, match="takes class indices; the target 'class 1 in box"):
        deletion(seg, x, maps, target=Target(1, box=(0, 0, 8, 8)))
