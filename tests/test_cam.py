"""CAM family: closed forms on GAP+FC networks, finite differences, layouts, sizes, targets, errors."""
import numpy as np
import pytest

import onnxviz
from builders import flatten_head_cnn, keras_cnn, save, strided_cnn, tiny_cnn, weights
from onnxviz.errors import OnnxvizError
from onnxviz.fd import channel_gradient_sums
from onnxviz.methods.results import upsampled
from onnxviz.render import normalize01, upsample

CAMS = [onnxviz.grad_cam, onnxviz.cam, onnxviz.grad_cam_pp, onnxviz.score_cam, onnxviz.layer_cam]


@pytest.fixture(scope="module")
def strided(tmp_path_factory):
    return onnxviz.load(save(strided_cnn(), tmp_path_factory.mktemp("m") / "strided.onnx"), device="cpu")


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)


def features(model, x, layer="feat"):
    return model.activations(x, [layer])[layer].astype(np.float64)


def fc():
    w = weights()
    return w["fc_w"].astype(np.float64), w["fc_b"].astype(np.float64)  # (channels, classes), (classes,)


# ---------------------------------------------------------------------------- closed forms


def test_grad_cam_equals_cam_over_positions(strided, x):
    """On GAP+FC, ∂y^c/∂A^k_ij = w_kc / (h·w): Grad-CAM's raw map is CAM's divided by h·w."""
    g, c = onnxviz.grad_cam(strided, x), onnxviz.cam(strided, x)
    h, w = g.raw.shape[1:]
    assert (h, w) == (8, 8) and g.layer == c.layer == "feat"
    assert c.raw.max() > 0
    np.testing.assert_allclose(g.raw * (h * w), c.raw, rtol=1e-5, atol=1e-5 * c.raw.max())
    np.testing.assert_allclose(g.map, c.map, atol=1e-5)
    np.testing.assert_array_equal(g.target, c.target)
    np.testing.assert_allclose(g.score, c.score, rtol=1e-6)


def test_cam_is_the_fc_weighted_sum(strided, x):
    target = np.array([0, 2, 3])
    c = onnxviz.cam(strided, x, target=target)
    a = features(strided, x)
    w, b = fc()
    expected = np.maximum(np.einsum("nk,nkhw->nhw", w[:, target].T, a), 0)
    np.testing.assert_allclose(c.raw, expected, rtol=1e-5, atol=1e-5)
    logits = a.mean(axis=(2, 3)) @ w + b
    np.testing.assert_allclose(c.score, logits[np.arange(3), target], rtol=1e-5)


def test_grad_cam_weights_match_finite_differences(strided, x):
    """α_k = Σ_ij ∂y/∂A_kij / (h·w), the sums measured by shifting whole channels."""
    g = onnxviz.grad_cam(strided, x, target=[1, 0, 3])
    sums, chosen = channel_gradient_sums(strided, x, "feat", target=[1, 0, 3])
    np.testing.assert_array_equal(chosen, g.target)
    np.testing.assert_allclose(g.weights, sums / 64, rtol=1e-3, atol=1e-5)
    expected = np.maximum(np.einsum("nk,nkhw->nhw", sums / 64, features(strided, x)), 0)
    np.testing.assert_allclose(g.raw, expected, rtol=1e-3, atol=1e-4 * expected.max())


def test_grad_cam_pp_closed_form(strided, x):
    """Constant gradients g_k = w_kc/(hw): α = g²/(2g² + S_k g³) at every position, weight = hw·α·ReLU(g)."""
    h = onnxviz.grad_cam_pp(strided, x, target=2)
    a = features(strided, x)
    g = fc()[0][:, 2] / 64
    s = a.sum(axis=(2, 3))
    alpha = g ** 2 / (2 * g ** 2 + s * g ** 3)
    weight = 64 * alpha * np.maximum(g, 0)
    np.testing.assert_allclose(h.weights, weight, rtol=1e-4, atol=1e-8)
    expected = np.maximum(np.einsum("nk,nkhw->nhw", weight, a), 0)
    np.testing.assert_allclose(h.raw, expected, rtol=1e-4, atol=1e-5 * expected.max())


def test_layer_cam_closed_form(strided, x):
    h = onnxviz.layer_cam(strided, x, target=1)
    a = features(strided, x)
    g = fc()[0][:, 1] / 64
    expected = np.maximum(np.einsum("k,nkhw->nhw", np.maximum(g, 0), a), 0)
    np.testing.assert_allclose(h.raw, expected, rtol=1e-5, atol=1e-6)
    assert h.weights.shape == a.shape


def test_score_cam_closed_form(strided, x):
    """Head after the layer = GAP → Gemm: weight_k = softmax(W·mean(A ⊙ norm(A_k)) + b)_c."""
    h = onnxviz.score_cam(strided, x, target=[0, 1, 2], batch_size=5)  # chunks straddle images
    a = features(strided, x)
    w, b = fc()
    masks = normalize01(a, axis=(2, 3))
    pooled = np.einsum("nkhw,njhw->njk", a, masks) / 64  # copy j: mean over positions of A ⊙ M_j
    logits = pooled @ w + b
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    weight = p[np.arange(3), :, [0, 1, 2]]
    np.testing.assert_allclose(h.weights, weight, rtol=1e-4, atol=1e-7)
    expected = np.maximum(np.einsum("nk,nkhw->nhw", weight, a), 0)
    np.testing.assert_allclose(h.raw, expected, rtol=1e-4, atol=1e-6)


def test_grad_cam_is_one_gradient_run(strided, x, monkeypatch):
    """Activations, gradients, target and score come out of one run of the gradient graph."""
    onnxviz.grad_cam(strided, x)  # warm the caches
    calls = []
    real = strided.runtime.run
    monkeypatch.setattr(strided.runtime, "run", lambda *a, **k: calls.append(k.get("key")) or real(*a, **k))
    onnxviz.grad_cam(strided, x)
    assert len(calls) == 1 and "grad" in calls[0]


# ---------------------------------------------------------------------------- maps and targets


def test_map_is_upsampled_half_pixel_and_scaled(strided, x):
    h = onnxviz.grad_cam(strided, x)
    assert h.map.shape == (3, 16, 16) and h.map.dtype == np.float32
    assert np.allclose(h.map.min(axis=(1, 2)), 0) and np.allclose(h.map.max(axis=(1, 2)), 1)
    np.testing.assert_allclose(h.map, normalize01(upsample(h.raw, (16, 16)), axis=(1, 2)), atol=1e-6)


def test_all_zero_raw_gives_zero_map():
    m = upsampled(np.zeros((2, 4, 4), np.float32), (8, 8))
    assert m.shape == (2, 8, 8) and not np.isnan(m).any() and not m.any()


def test_mixed_targets_in_one_batch(strided, x):
    both = onnxviz.grad_cam(strided, x, target=[3, 0, 1])
    for i, t in enumerate([3, 0, 1]):
        one = onnxviz.grad_cam(strided, x[i:i + 1], target=t)
        np.testing.assert_allclose(both.raw[i], one.raw[0], rtol=1e-5, atol=1e-7)
        assert both.target[i] == t and one.target[0] == t


def test_default_target_is_the_prediction(strided, x):
    logits = strided.activations(x, ["logits"])["logits"]
    h = onnxviz.grad_cam(strided, x)
    np.testing.assert_array_equal(h.target, logits.argmax(1))
    np.testing.assert_allclose(h.score, logits.max(1), rtol=1e-6)
    np.testing.assert_array_equal(h.image, [0, 1, 2])


def test_top_k_gives_a_row_per_image_and_class(strided, x):
    logits = strided.activations(x, ["logits"])["logits"]
    h = onnxviz.grad_cam(strided, x, top_k=2)
    np.testing.assert_array_equal(h.image, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(h.target.reshape(3, 2), np.argsort(-logits, axis=1)[:, :2])
    single = onnxviz.grad_cam(strided, x[1:2], target=int(h.target[3]))
    np.testing.assert_allclose(h.raw[3], single.raw[0], rtol=1e-5, atol=1e-7)


def test_any_tensor_can_be_the_layer(strided, x):
    assert onnxviz.grad_cam(strided, x, layer="relu1").raw.shape == (3, 16, 16)
    h = onnxviz.grad_cam(strided, x, layer="conv2")
    assert h.layer == "conv2" and h.raw.shape == (3, 8, 8) and h.map.shape == (3, 16, 16)


def test_probability_score_is_explained_on_request(strided, x):
    p = onnxviz.grad_cam(strided, x, score="prob")
    probs = strided.run(x)["prob"]
    np.testing.assert_allclose(p.score, probs.max(1), rtol=1e-5)


# ---------------------------------------------------------------------------- layouts and sizes


@pytest.mark.parametrize("method", CAMS, ids=lambda f: f.__name__)
def test_nhwc_model_gives_the_same_maps(tmp_path, x, method):
    """A Keras-style NHWC model (channels-last layers between Transposes) = its NCHW twin."""
    nchw = onnxviz.load(save(strided_cnn(), tmp_path / "a.onnx"), device="cpu")
    nhwc = onnxviz.load(save(keras_cnn(), tmp_path / "b.onnx"), device="cpu")
    assert nhwc.input.layout == "NHWC"
    a, b = method(nchw, x, target=[0, 1, 2]), method(nhwc, x.transpose(0, 2, 3, 1), target=[0, 1, 2])
    assert b.layer == "feat" and nhwc.tensor_shape("feat")[3] == 8  # the chosen layer is channels-last
    np.testing.assert_allclose(b.raw, a.raw, rtol=1e-5, atol=1e-5 * a.raw.max())
    np.testing.assert_allclose(b.map, a.map, atol=1e-5)


def test_nhwc_input_transpose_model(tmp_path, x):
    a = onnxviz.grad_cam(onnxviz.load(save(tiny_cnn(), tmp_path / "a.onnx"), device="cpu"), x)
    b = onnxviz.grad_cam(onnxviz.load(save(tiny_cnn(layout="NHWC"), tmp_path / "b.onnx"), device="cpu"),
                         x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(b.raw, a.raw, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", CAMS, ids=lambda f: f.__name__)
def test_dynamic_size_model_at_several_sizes(tmp_path, method):
    dynamic = onnxviz.load(save(strided_cnn(dynamic=True), tmp_path / "d.onnx"), device="cpu")
    assert dynamic.input.size is None
    rng = np.random.default_rng(5)
    for size in (12, 16, 22):
        x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
        fixed = onnxviz.load(save(strided_cnn(size=size), tmp_path / f"f{size}.onnx"), device="cpu")
        a, b = method(dynamic, x), method(fixed, x)
        assert a.raw.shape == (2, (size + 1) // 2, (size + 1) // 2) and a.map.shape == (2, size, size)
        np.testing.assert_allclose(a.raw, b.raw, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- guided Grad-CAM


def test_guided_grad_cam_is_guided_backprop_times_cam(strided, x):
    gg = onnxviz.guided_grad_cam(strided, x, target=[0, 1, 2])
    cam = onnxviz.grad_cam(strided, x, target=[0, 1, 2])
    guided = onnxviz.saliency(strided, x, target=[0, 1, 2], method="guided")
    assert gg.raw.shape == x.shape and gg.map.shape == (3, 16, 16) and gg.layer == "feat"
    np.testing.assert_allclose(gg.raw, guided.raw * cam.map[:, None], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(gg.map, normalize01(np.abs(gg.raw).max(1), axis=(1, 2)), atol=1e-6)


# ---------------------------------------------------------------------------- errors


def test_unknown_layer(strided, x):
    with pytest.raises(OnnxvizError, match="no tensor named 'nope'.*candidates: feat"):
        onnxviz.grad_cam(strided, x, layer="nope")


@pytest.mark.parametrize("layer", ["flat", "gap", "logits"])
def test_layer_without_spatial_extent(strided, x, layer):
    with pytest.raises(OnnxvizError, match="spatial extent|height and width are 1"):
        onnxviz.grad_cam(strided, x, layer=layer)


def test_cam_needs_a_gap_fc_head(tmp_path):
    model = onnxviz.load(save(flatten_head_cnn(), tmp_path / "vgg.onnx"), device="cpu")
    x = np.ones((1, 3, 8, 8), np.float32)
    with pytest.raises(OnnxvizError, match="global-average-pool.*use Grad-CAM"):
        onnxviz.cam(model, x)
    h = onnxviz.grad_cam(model, x)  # the tensor the Flatten head reads
    assert h.layer == "relu1" and h.raw.shape == (1, 8, 8)


def test_cam_refuses_another_layer(strided, x):
    with pytest.raises(OnnxvizError, match="CAM is defined on the tensor its head pools, 'feat'"):
        onnxviz.cam(strided, x, layer="relu1")


def test_bad_targets(strided, x):
    with pytest.raises(OnnxvizError, match="out of range"):
        onnxviz.grad_cam(strided, x, target=7)
    with pytest.raises(OnnxvizError, match="out of range"):
        onnxviz.score_cam(strided, x, target=4)
    with pytest.raises(OnnxvizError, match="got 2 targets for 3 images"):
        onnxviz.grad_cam(strided, x, target=[0, 1])
    with pytest.raises(OnnxvizError, match=r"either a target \(--target\) or top_k \(--top-k\)"):
        onnxviz.grad_cam(strided, x, target=1, top_k=2)
