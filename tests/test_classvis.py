"""Class visualization and channel objectives: exact adjoints, the ascent's fixed point on a linear
model, layouts and grey inputs, the valid range, errors, the CLI and the sample model's criteria."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper
from PIL import Image

import onnxviz
from builders import save, tiny_cnn
from onnxviz.cli import main
from onnxviz.errors import OnnxvizError, UnsupportedOpError
from onnxviz.images import Preprocess
from onnxviz.methods import classvis as cv
from onnxviz.methods.parameterization import Fourier
from onnxviz.methods.transforms import Warp, blur, random_warp, total_variation

SAMPLE = Path(__file__).resolve().parents[1] / "models" / "shapes_cnn.onnx"
OFF = dict(jitter=0.0, zoom=None, rotate=0.0, blur_every=0, tv=0.0)  # no priors but L2


# ---------------------------------------------------------------------------- adjoints


@pytest.mark.parametrize("warp", [Warp((2, -3), 1.07, 4.0), Warp((0, 0), 0.93, -5.0), Warp((1, 2)),
                                  Warp((-4, 0), 1.0, 30.0)])
def test_warp_adjoint_is_exact(warp):
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((2, 3, 11, 13)), rng.standard_normal((2, 3, 11, 13))
    lhs, rhs = np.vdot(warp.apply(x), g), np.vdot(x, warp.adjoint(g))
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)


def test_warp_resamples_as_described():
    x = np.random.default_rng(1).standard_normal((1, 2, 9, 8))
    np.testing.assert_array_equal(Warp((2, -1)).apply(x), np.roll(x, (2, -1), axis=(2, 3)))
    # the gather path with an identity affine part is the same roll
    np.testing.assert_allclose(Warp((2, -1), 1.0 + 1e-12, 0.0).apply(x), np.roll(x, (2, -1), axis=(2, 3)),
                               atol=1e-9)
    # a quarter turn of a square image is rot90, clockwise on screen (about the centre, no interpolation)
    sq = x[:, :, :8, :8]
    np.testing.assert_allclose(Warp((0, 0), 1.0, 90.0).apply(sq), np.rot90(sq, -1, axes=(2, 3)), atol=1e-9)


def test_random_warp_ranges():
    rng = np.random.default_rng(0)
    warps = [random_warp(rng, (64, 40), 0.05, (0.9, 1.1), 5.0) for _ in range(200)]
    assert max(abs(w.shift[0]) for w in warps) == 3 and max(abs(w.shift[1]) for w in warps) == 2
    assert all(0.9 <= w.zoom <= 1.1 and abs(w.angle) <= 5 for w in warps)
    assert random_warp(rng, (64, 64), 0.0, None, 0.0) == Warp()


@pytest.mark.parametrize("shape", [(2, 3, 8, 10), (1, 1, 7, 9), (1, 3, 6, 5)])
@pytest.mark.parametrize("bgr", [False, True])
def test_fourier_backward_is_the_exact_gradient(shape, bgr):
    rng = np.random.default_rng(0)
    f = Fourier(shape, rng, std=1.0, bgr=bgr)
    s0, d, g = f.params.copy(), rng.standard_normal(f.params.shape), rng.standard_normal(shape)
    f.params = s0
    f.image()
    analytic = np.vdot(f.backward(g), d)
    h = 1e-6
    f.params = s0 + h * d
    up = np.vdot(f.image(), g)
    f.params = s0 - h * d
    down = np.vdot(f.image(), g)
    assert abs((up - down) / (2 * h) - analytic) <= 1e-6 * max(1.0, abs(analytic))


def test_fourier_image_is_in_range_and_low_contrast_at_start():
    p = Fourier((2, 3, 32, 32), np.random.default_rng(0)).image()
    assert p.shape == (2, 3, 32, 32) and 0 < p.min() and p.max() < 1
    assert abs(p.mean() - 0.5) < 0.05 and p.std() < 0.2


def test_total_variation_gradient():
    rng = np.random.default_rng(2)
    x, d = rng.standard_normal((2, 3, 5, 6)), rng.standard_normal((2, 3, 5, 6))
    value, grad = total_variation(x)
    h = 1e-6
    fd = (total_variation(x + h * d)[0] - total_variation(x - h * d)[0]) / (2 * h)
    np.testing.assert_allclose(fd, (grad * d).sum(axis=(1, 2, 3)), rtol=1e-6)
    assert total_variation(np.ones((1, 1, 4, 4)))[0][0] == 0


def test_blur_keeps_range_and_constants():
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 16, 16))
    b = blur(x, 1.0)
    assert b.min() >= x.min() and b.max() <= x.max() and b.std() < x.std()
    np.testing.assert_allclose(blur(np.full((1, 1, 8, 8), 0.3), 1.0), 0.3)


# ---------------------------------------------------------------------------- the ascent


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("norm", ["imagenet", "caffe"])
def test_linear_model_reaches_the_l2_fixed_point(linear, weight, layout, norm):
    """score = w·x: the normalized gradient ĝ is constant, so Adam settles where ĝ = 2λI:
    p = centre + ĝ/(2λ), whatever the layout, channel order or normalization."""
    pre = Preprocess(norm=norm)
    lam = 8.0
    vis = onnxviz.class_visualization(linear[layout], target=[1, 2], pre=pre, steps=400, lr=0.01, l2=lam,
                                      init_std=0.1, **OFF)
    mean, std = (np.asarray(v).reshape(1, 3, 1, 1) / 255 for v in pre.stats(3))
    g = weight[:, [1, 2]].T.reshape(2, 3, 4, 5) / std  # d score / d p, NCHW in the model's channel order
    g = g / np.sqrt((g ** 2).mean(axis=(1, 2, 3), keepdims=True))
    expected = mean + g / (2 * lam)
    p = linear[layout].input.to_nchw(vis.x.astype(np.float64)) * std + mean
    assert 0 < expected.min() and expected.max() < 1
    np.testing.assert_allclose(p, expected, atol=0.01)
    np.testing.assert_allclose(vis.norm, np.sqrt(((expected - mean) ** 2).sum(axis=(1, 2, 3))), rtol=0.03)
    np.testing.assert_allclose(vis.score, np.einsum("nf,fn->n", vis.x.reshape(2, -1) if layout == "NCHW" else
                                                    vis.x.transpose(0, 3, 1, 2).reshape(2, -1),
                                                    weight[:, [1, 2]]), rtol=1e-4)
    assert (vis.score > vis.start_score).all()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    out = {}
    for layout in ("NCHW", "NHWC"):
        for c in (3, 1):
            out[layout, c] = onnxviz.load(save(tiny_cnn(layout=layout, channels=c, size=24),
                                               folder / f"{layout}{c}.onnx"), device="cpu")
    out["dynamic"] = onnxviz.load(save(tiny_cnn(dynamic=True), folder / "dyn.onnx"), device="cpu")
    return out


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("param", ["pixel", "fourier"])
def test_layouts_give_the_same_images(tiny, channels, param):
    """The same network as NCHW and as NHWC (Keras-style Transpose) ascends to the same image."""
    a = onnxviz.class_visualization(tiny["NCHW", channels], target=[0, 1], steps=30, param=param)
    b = onnxviz.class_visualization(tiny["NHWC", channels], target=[0, 1], steps=30, param=param)
    assert b.x.shape == (2, 24, 24, channels) and a.x.shape == (2, channels, 24, 24)
    np.testing.assert_allclose(a.x, b.x.transpose(0, 3, 1, 2), atol=1e-4)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.image.shape == (2, 24, 24, 3) and a.image.dtype == np.uint8
    assert (a.score > a.start_score).all()
    np.testing.assert_allclose(a.score, b.score, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("key", [("NCHW", 3), ("NHWC", 3), ("NCHW", 1), ("NHWC", 1)])
def test_class_and_channel_objectives_rise(tiny, key):
    m = tiny[key]
    vis = onnxviz.class_visualization(m, target=[0, 3], batch=2, steps=60, subtract_others=True)
    assert len(vis) == 4 and list(vis.target) == [0, 0, 3, 3]
    assert (vis.score > vis.start_score).all()
    probs = m.run(vis.x)["prob"][np.arange(4), vis.target]
    np.testing.assert_allclose(vis.probability, probs, rtol=1e-5)
    assert not np.allclose(vis.x[0], vis.x[1])  # two starts, two images
    ch = onnxviz.channel_visualization(m, "relu2", [1, 5], steps=60)
    assert ch.kind == "channel" and ch.layer == "relu2" and ch.probability is None
    acts = m.activations(ch.x, ["relu2"])["relu2"]
    np.testing.assert_allclose(ch.score, acts[[0, 1], [1, 5]].mean(axis=(1, 2)), rtol=1e-5)
    assert (ch.score > 3 * ch.start_score).all()


def test_channel_of_a_channels_last_layer(tmp_path):
    """A layer in NHWC (Keras exports before their Transpose) takes its channel from the last axis."""
    base = tiny_cnn(size=16)
    nodes = list(base.graph.node)
    i = next(k for k, n in enumerate(nodes) if n.output[0] == "relu2")
    nodes.insert(i + 1, helper.make_node("Transpose", ["relu2"], ["relu2_nhwc"], perm=[0, 2, 3, 1]))
    nodes.insert(i + 2, helper.make_node("Transpose", ["relu2_nhwc"], ["relu2_back"], perm=[0, 3, 1, 2]))
    gap = next(n for n in nodes if n.op_type == "GlobalAveragePool")
    gap.input[0] = "relu2_back"
    del base.graph.node[:]
    base.graph.node.extend(nodes)
    m = onnxviz.load(save(base, tmp_path / "t.onnx"), device="cpu")
    a = onnxviz.channel_visualization(m, "relu2_nhwc", 4, steps=20)
    b = onnxviz.channel_visualization(m, "relu2", 4, steps=20)
    np.testing.assert_allclose(a.x, b.x, atol=1e-5)


def test_a_channel_dead_on_the_start_noise_comes_alive(tmp_path):
    """A large negative bias kills the channel on any grey-ish image: the standard gradient is zero,
    the redirected ReLU rule (lucid's) lets the ascent revive it."""
    model = tiny_cnn(size=16)
    b2 = next(t for t in model.graph.initializer if t.name == "b2")
    bias = onnx.numpy_helper.to_array(b2).copy()
    bias[3] = -6.0
    b2.CopyFrom(onnx.numpy_helper.from_array(bias, "b2"))
    m = onnxviz.load(save(model, tmp_path / "dead.onnx"), device="cpu")
    vis = onnxviz.channel_visualization(m, "relu2", [3, 4], steps=60)
    assert vis.start_score[0] == 0 and vis.score[0] > 0.5
    # the redirected rules were only used while needed: channel 4 follows the standard gradient alone
    alone = onnxviz.channel_visualization(m, "relu2", 4, steps=60)
    np.testing.assert_allclose(alone.score, vis.score[1:], rtol=0.2)


@pytest.mark.parametrize("norm", ["imagenet", "caffe", "unit", "symmetric"])
@pytest.mark.parametrize("param", ["pixel", "fourier"])
def test_images_stay_in_the_valid_range(tiny, norm, param):
    pre = Preprocess(norm=norm)
    m = tiny["NCHW", 3]
    vis = onnxviz.class_visualization(m, target=2, pre=pre, steps=40, lr=0.2, l2=0.0, tv=0.0, blur_every=0,
                                      param=param)
    mean, std = pre.stats(3)
    lo = ((0 - mean) / std).reshape(1, 3, 1, 1)
    hi = ((255 - mean) / std).reshape(1, 3, 1, 1)
    assert (vis.x >= lo - 1e-5).all() and (vis.x <= hi + 1e-5).all()
    if param == "pixel":  # lr 0.2 with no regularizer or blur drives pixels to the bounds
        assert np.isclose(vis.x, lo, atol=1e-4).any() and np.isclose(vis.x, hi, atol=1e-4).any()
    # what the PNG shows is the input, normalization undone
    shown = onnxviz.preprocess([Image.fromarray(vis.image[0])], m.input, pre)
    np.testing.assert_allclose(shown, vis.x, atol=0.51 / std.min() * 1.0001)


def test_snapshots_history_and_determinism(tiny):
    m = tiny["NCHW", 3]
    a = onnxviz.class_visualization(m, target=1, steps=20, snapshots=5)
    b = onnxviz.class_visualization(m, target=1, steps=20, snapshots=5)
    c = onnxviz.class_visualization(m, target=1, steps=20, snapshots=5, seed=1)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)
    assert list(a.snapshot_steps) == [0, 5, 10, 15, 20] and a.snapshots.shape == (5, 1, 24, 24, 3)
    np.testing.assert_array_equal(a.snapshots[-1], a.image)
    assert a.history.shape == (20, 1) and a.history[-1, 0] > a.history[0, 0]
    assert onnxviz.class_visualization(m, target=1, steps=3, snapshots=0).snapshots.shape[0] == 0


def test_dynamic_size_models_need_a_size(tiny):
    m = tiny["dynamic"]
    with pytest.raises(OnnxvizError, match="dynamic size"):
        onnxviz.class_visualization(m, target=0, steps=2)
    assert onnxviz.class_visualization(m, target=0, steps=2, size=(20, 28)).x.shape == (1, 3, 20, 28)
    assert onnxviz.class_visualization(m, target=0, steps=2, pre=Preprocess(size=18)).x.shape == (1, 3, 18, 18)


def test_the_gradient_graph_is_built_once_per_size(tiny, monkeypatch):
    m = tiny["dynamic"]
    calls = []
    real = cv.gradient_graph
    monkeypatch.setattr(cv, "gradient_graph", lambda *a, **k: calls.append(1) or real(*a, **k))
    for size in [(16, 16), (16, 16), (20, 16), (16, 16)]:
        onnxviz.class_visualization(m, target=0, steps=3, size=size)
    assert len(calls) == 2


def test_bad_arguments(tiny):
    m = tiny["NCHW", 3]
    with pytest.raises(OnnxvizError, match="out of range"):
        onnxviz.class_visualization(m, target=4, steps=1)
    with pytest.raises(OnnxvizError, match="out of range"):
        onnxviz.channel_visualization(m, "relu2", 8, steps=1)
    with pytest.raises(OnnxvizError, match="unknown option"):
        onnxviz.class_visualization(m, target=0, step=1)
    with pytest.raises(OnnxvizError, match="no layer"):
        onnxviz.channel_visualization(m, "nope", 0)
    with pytest.raises(OnnxvizError, match="param"):
        onnxviz.class_visualization(m, target=0, param="wavelet")
    with pytest.raises(OnnxvizError, match="target"):
        onnxviz.class_visualization(m, target=-1)
    with pytest.raises(OnnxvizError, match="batch"):
        onnxviz.class_visualization(m, target=0, batch=0)


def _with_atan(model: onnx.ModelProto) -> onnx.ModelProto:
    """tiny_cnn with an Atan (no backward rule) between the last ReLU and the pooling."""
    for node in model.graph.node:
        if node.op_type == "GlobalAveragePool":
            node.input[0] = "squashed"
    model.graph.node.insert(5, helper.make_node("Atan", ["relu2"], ["squashed"], name="squash"))
    return model


def test_unsupported_op_gives_the_autodiff_error(tmp_path):
    path = save(_with_atan(tiny_cnn(size=16)), tmp_path / "atan.onnx")
    m = onnxviz.load(path, device="cpu")
    with pytest.raises(UnsupportedOpError, match="Atan.*squash"):
        onnxviz.class_visualization(m, target=0, steps=2)
    # a channel before the Atan needs no rule for it
    assert onnxviz.channel_visualization(m, "relu2", 0, steps=2).x.shape == (1, 3, 16, 16)
    r = CliRunner().invoke(main, ["classvis", path, "--target", "0", "--steps", "2", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "no gradient rule for operator 'Atan'" in r.output
    assert "Traceback" not in r.output


def test_integer_inputs_are_refused(tmp_path):
    model = tiny_cnn(size=16)
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.UINT8
    model.graph.node.insert(0, helper.make_node("Cast", ["image"], ["image_f"], to=onnx.TensorProto.FLOAT))
    model.graph.node[1].input[0] = "image_f"
    m = onnxviz.load(save(model, tmp_path / "u8.onnx"), device="cpu")
    with pytest.raises(OnnxvizError, match="floating-point input"):
        onnxviz.class_visualization(m, target=0, steps=1, pre=Preprocess(norm="raw"))


# ---------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    path = save(tiny_cnn(size=20), folder / "m.onnx")
    (folder / "labels.txt").write_text("circle\nsquare\nstar\nring\n")
    (folder / "m.json").write_text(json.dumps({"preprocess": {"norm": "imagenet"}, "labels": "labels.txt"}))
    return path


def _run(*args):
    return CliRunner().invoke(main, ["classvis", *map(str, args)], catch_exceptions=False)


def test_cli_class_visualization_files(cli_model, tmp_path):
    out = tmp_path / "out"
    r = _run(cli_model, "--target", "star,0", "--steps", 12, "--batch", 2, "--snapshots", 4, "--out", out)
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "classvis.json").read_text())
    assert summary["kind"] == "class" and summary["settings"]["steps"] == 12 and summary["settings"]["batch"] == 2
    assert summary["snapshot_steps"] == [0, 4, 8, 12]
    items = summary["items"]
    assert [(e["target"], e["start"], e["label"]) for e in items] == [(2, 0, "star"), (2, 1, "star"),
                                                                      (0, 0, "circle"), (0, 1, "circle")]
    m = onnxviz.load(cli_model, device="cpu")
    for e in items:
        x = np.load(e["files"]["npy"])
        assert x.shape == (1, 3, 20, 20)
        assert abs(m.run(x)["prob"][0, e["target"]] - e["probability"]) < 1e-5
        assert Image.open(e["files"]["png"]).size == (20, 20)
        assert Image.open(e["files"]["steps"]).size == (4 * 120 + 3 * 2, 120)  # 20 px shown at 6x
    assert "star: score" in r.output


def test_cli_all_classes_and_channels(cli_model, tmp_path):
    r = _run(cli_model, "--target", "all", "--steps", 3, "--out", tmp_path / "a", "--param", "fourier",
             "--zoom", "1,1", "--rotate", 0)
    assert r.exit_code == 0, r.output
    assert [e["target"] for e in json.loads((tmp_path / "a" / "classvis.json").read_text())["items"]] == [0, 1, 2, 3]
    r = _run(cli_model, "--layer", "relu2", "--channel", "1,6", "--steps", 3, "--out", tmp_path / "c")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "c" / "classvis.json").read_text())
    assert summary["kind"] == "channel" and summary["layer"] == "relu2"
    assert [Path(e["files"]["png"]).name for e in summary["items"]] == ["relu2_ch1.png", "relu2_ch6.png"]


@pytest.mark.parametrize("args,message", [
    ((), "either --target"),
    (("--target", "0", "--layer", "relu2", "--channel", "0"), "either --target"),
    (("--layer", "relu2"), "needs --channel"),
    (("--target", "0", "--channel", "1"), "goes with --layer"),
    (("--target", "dog"), "neither a class index nor a label"),
    (("--target", "0", "--zoom", "x"), "LOW,HIGH"),
])
def test_cli_usage_errors(cli_model, tmp_path, args, message):
    r = CliRunner().invoke(main, ["classvis", cli_model, *args, "--steps", "1", "--out", str(tmp_path)])
    assert r.exit_code != 0 and message in r.output


def test_cli_help_has_an_example():
    r = CliRunner().invoke(main, ["classvis", "--help"])
    assert r.exit_code == 0 and "onnxviz classvis models/shapes_cnn.onnx --target all" in r.output


# ---------------------------------------------------------------------------- the sample model

needs_sample = pytest.mark.skipif(not SAMPLE.exists(), reason="models/shapes_cnn.onnx is not built")


@pytest.fixture(scope="module")
def sample():
    from onnxviz.session import open_session

    return open_session(str(SAMPLE), device="cpu")


@needs_sample
def test_sample_every_class_from_noise(sample):
    """Done means: from noise, for every class, the target's softmax probability of the final image
    fed back through plain Model.run is at least 0.9."""
    m, n = sample.model, len(sample.labels)
    vis = onnxviz.class_visualization(m, target=list(range(n)), pre=sample.pre)
    probs = m.run(vis.x)[m.outputs[0]][np.arange(n), np.arange(n)]
    print("per-class probability:", dict(zip(sample.labels, np.round(probs, 4).tolist())))
    np.testing.assert_allclose(probs, vis.probability, rtol=1e-4)
    assert (probs >= 0.9).all(), dict(zip(sample.labels, probs.tolist()))


def _norm_at_budget(vis, budget: float) -> np.ndarray:
    """‖I‖ of each row at the first step whose score reached ``budget`` (one, or one per row; inf
    when it never did)."""
    reached = vis.history >= budget
    first = reached.argmax(axis=0)
    return np.where(reached.any(axis=0), vis.norm_history[first, np.arange(len(first))], np.inf)


def test_norm_at_budget_helper():
    vis = cv.Visualization(*[None] * 6, history=np.array([[0, 1], [2, 1], [3, 5]], np.float32),
                           norm_history=np.array([[1, 1], [2, 2], [3, 3]], np.float32), **dict(
                               snapshots=None, snapshot_steps=None, kind="class", tensor="t"))
    np.testing.assert_array_equal(_norm_at_budget(vis, 2), [2, 3])
    assert _norm_at_budget(vis, 9)[0] == np.inf


@needs_sample
def test_sample_l2_lowers_the_norm_at_a_fixed_score_budget(sample):
    """The same starts and warps with and without λ: when the score first reaches the budget, the
    image ascended with the L2 term has the smaller norm."""
    m = sample.model
    kw = dict(target=[0, 2, 4], pre=sample.pre, steps=160)
    free = onnxviz.class_visualization(m, l2=0.0, **kw)
    held = onnxviz.class_visualization(m, l2=cv.Ascent().l2, **kw)
    budget = 0.8 * np.minimum(free.history.max(axis=0), held.history.max(axis=0))  # one per target
    a, b = _norm_at_budget(free, budget), _norm_at_budget(held, budget)
    print(f"norms at scores {budget} without/with L2: {a} {b}; final {free.norm} {held.norm}")
    assert np.isfinite(b).all() and (b < 0.8 * a).all()
    assert (held.norm < 0.8 * free.norm).all()


@needs_sample
@pytest.mark.parametrize("which", ["head", "mid"])
def test_sample_channel_objective_rises_tenfold(sample, which):
    """Channels 0-3 of the last block (the layer before the head) and of the second block."""
    from onnxviz.methods.layers import resolve_layer

    m = sample.model
    layer = resolve_layer(m) if which == "head" else [t.name for t in m.layers if t.op == "Relu"][1]
    vis = onnxviz.channel_visualization(m, layer, [0, 1, 2, 3], pre=sample.pre)
    print(f"{layer}: start {vis.start_score}, final {vis.score}")
    acts = m.activations(vis.x, [layer])[layer]
    np.testing.assert_allclose(vis.score, acts[np.arange(4), np.arange(4)].mean(axis=(1, 2)), rtol=1e-5)
    assert (vis.score >= 10 * np.maximum(vis.start_score, 1e-3)).all()
