"""Saliency family: linear models, a hand-computed ReLU network, finite differences, completeness."""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

import onnxviz
from builders import linear_model, save, strided_cnn, two_layer_relu
from onnxviz.errors import OnnxvizError
from onnxviz.fd import gradient_fd
from onnxviz.render import normalize01

METHODS = ["vanilla", "deconvnet", "guided", "smoothgrad", "integrated"]


@pytest.fixture(scope="module")
def strided(tmp_path_factory):
    return onnxviz.load(save(strided_cnn(size=8), tmp_path_factory.mktemp("s") / "s.onnx"), device="cpu")


def nchw_x(n=2, seed=0, shape=(3, 4, 5)):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


# ---------------------------------------------------------------------------- linear model: saliency = weights


@pytest.mark.parametrize("method", ["vanilla", "deconvnet", "guided", "smoothgrad"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_linear_model_saliency_is_the_weights(linear, weight, method, layout):
    x = nchw_x()
    model = linear[layout]
    xin = x if layout == "NCHW" else x.transpose(0, 2, 3, 1)
    s = onnxviz.saliency(model, xin, target=[1, 3], method=method)
    expected = weight[:, [1, 3]].T.reshape(2, 3, 4, 5)
    if layout == "NHWC":
        expected = expected.transpose(0, 2, 3, 1)
    assert s.raw.shape == xin.shape and s.raw.dtype == np.float32
    np.testing.assert_allclose(s.raw, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.map, normalize01(np.abs(weight[:, [1, 3]].T.reshape(2, 3, 4, 5)).max(1),
                                                  axis=(1, 2)), atol=1e-6)
    np.testing.assert_allclose(s.score, np.einsum("nf,fn->n", x.reshape(2, -1), weight[:, [1, 3]]), rtol=1e-5)


def test_linear_integrated_gradients(linear, weight):
    x = nchw_x()
    w = weight[:, 2].reshape(3, 4, 5)
    ig = onnxviz.saliency(linear["NCHW"], x, target=2, method="integrated", steps=4)
    np.testing.assert_allclose(ig.raw, x * w, rtol=1e-5, atol=1e-6)
    blur = onnxviz.saliency(linear["NCHW"], x, target=2, method="integrated", baseline="blur", sigma=1.5)
    base = gaussian_filter(x.astype(np.float64), (0, 0, 1.5, 1.5), mode="nearest")
    np.testing.assert_allclose(blur.raw, (x - base) * w, rtol=1e-4, atol=1e-5)
    const = onnxviz.saliency(linear["NCHW"], x, target=2, method="integrated", baseline=0.5)
    np.testing.assert_allclose(const.raw, (x - 0.5) * w, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- hand-computed ReLU network

W1 = np.array([[1, -1, 0], [0, 1, 1], [1, 0, -1], [-1, 1, 1]], np.float32)
B1 = np.array([0.5, 0, -5], np.float32)
W2 = np.array([[2, 0], [-3, 1], [4, 1]], np.float32)
X = np.array([[[[1, 2], [-1, 0]]]], np.float32)
# h = [0.5, 1, -2] → ReLU mask [1, 1, 0]; ∂logit/∂r is W2's column.
HAND = {  # (method, class): ∂/∂x by hand
    ("vanilla", 0): [[5, -3], [2, -5]],      # W1 · ([2, -3, 4] ⊙ mask)
    ("guided", 0): [[2, 0], [2, -2]],        # W1 · (ReLU([2, -3, 4]) ⊙ mask)
    ("deconvnet", 0): [[2, 4], [-2, 2]],     # W1 · ReLU([2, -3, 4])
    ("vanilla", 1): [[-1, 1], [0, 1]],
    ("guided", 1): [[-1, 1], [0, 1]],
    ("deconvnet", 1): [[-1, 2], [-1, 2]],    # the masked-out unit passes its positive gradient
}


@pytest.mark.parametrize("method,target", list(HAND), ids=lambda v: str(v))
def test_guided_and_deconvnet_match_hand_computed(tmp_path, method, target):
    model = onnxviz.load(save(two_layer_relu(W1, B1, W2), tmp_path / "m.onnx"), device="cpu")
    s = onnxviz.saliency(model, X, target=target, method=method)
    np.testing.assert_array_equal(s.raw, np.array(HAND[method, target], np.float32)[None, None])


# ---------------------------------------------------------------------------- a real CNN


def test_vanilla_matches_finite_differences(strided):
    x = nchw_x(2, seed=4, shape=(3, 8, 8))
    s = onnxviz.saliency(strided, x, target=[0, 3])
    fd, chosen = gradient_fd(strided, x, target=[0, 3], eps=1e-3)
    np.testing.assert_array_equal(chosen, s.target)
    np.testing.assert_allclose(s.raw, fd, rtol=2e-2, atol=2e-2 * np.abs(fd).max())


def test_integrated_gradients_completeness(strided):
    """Σ attributions = score(x) − score(baseline) (up to the quadrature of a piecewise-linear path)."""
    x = nchw_x(2, seed=5, shape=(3, 8, 8))
    ig = onnxviz.saliency(strided, x, target=[1, 2], method="integrated", steps=64, batch_size=50)
    logits = lambda a: strided.activations(a, ["logits"])["logits"][np.arange(2), [1, 2]]
    gap = logits(x) - logits(np.zeros_like(x))
    np.testing.assert_allclose(ig.raw.sum(axis=(1, 2, 3)), gap, rtol=2e-2, atol=1e-3)
    np.testing.assert_allclose(ig.score, logits(x), rtol=1e-5)


def test_smoothgrad_without_noise_is_vanilla(strided):
    x = nchw_x(2, seed=6, shape=(3, 8, 8))
    a = onnxviz.saliency(strided, x, method="smoothgrad", noise=0.0, samples=3)
    b = onnxviz.saliency(strided, x)
    np.testing.assert_allclose(a.raw, b.raw, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(a.target, b.target)


@pytest.mark.parametrize("batch_size", [None, 3, 5])
def test_smoothgrad_is_the_mean_gradient_over_its_noisy_copies(strided, batch_size):
    """The documented noise (one normal draw per (image, sample) row in NCHW, std noise x range),
    reproduced here; chunks of 3 or 5 rows straddle images."""
    x = nchw_x(2, seed=10, shape=(3, 8, 8))
    samples, noise = 4, 0.3
    s = onnxviz.saliency(strided, x, method="smoothgrad", samples=samples, noise=noise, seed=5,
                         batch_size=batch_size)
    draws = np.random.default_rng(5).standard_normal((2 * samples, 3, 8, 8), dtype=np.float32)
    spread = (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3))) * noise
    noisy = np.repeat(x, samples, axis=0) + draws * np.repeat(spread, samples)[:, None, None, None]
    clean = strided.activations(x, ["logits"])["logits"].argmax(1)
    grads = onnxviz.saliency(strided, noisy, target=np.repeat(clean, samples)).raw
    np.testing.assert_allclose(s.raw, grads.reshape(2, samples, 3, 8, 8).mean(axis=1), rtol=1e-5,
                               atol=1e-6 * np.abs(grads).max())
    assert np.abs(s.raw - onnxviz.saliency(strided, x, target=clean).raw).max() > 1e-3  # the noise mattered


def test_smoothgrad_keeps_the_clean_images_target(strided):
    x = nchw_x(2, seed=7, shape=(3, 8, 8))
    predicted = strided.activations(x, ["logits"])["logits"].argmax(1)
    s = onnxviz.saliency(strided, x, method="smoothgrad", noise=0.5, samples=8)
    np.testing.assert_array_equal(s.target, predicted)


@pytest.mark.parametrize("method", METHODS)
def test_nhwc_input_same_maps(tmp_path, method):
    x = nchw_x(2, seed=8, shape=(3, 8, 8))
    a = onnxviz.saliency(onnxviz.load(save(strided_cnn(size=8), tmp_path / "a.onnx"), device="cpu"), x,
                         method=method, samples=4, steps=8)
    b = onnxviz.saliency(onnxviz.load(save(strided_cnn("NHWC", size=8), tmp_path / "b.onnx"), device="cpu"),
                         x.transpose(0, 2, 3, 1), method=method, samples=4, steps=8)
    assert b.raw.shape == (2, 8, 8, 3) and b.map.shape == (2, 8, 8)
    np.testing.assert_allclose(b.raw.transpose(0, 3, 1, 2), a.raw, rtol=1e-5, atol=1e-6 * np.abs(a.raw).max())
    np.testing.assert_allclose(b.map, a.map, atol=1e-5)


def test_top_k_and_mixed_targets(strided):
    x = nchw_x(2, seed=9, shape=(3, 8, 8))
    top = onnxviz.saliency(strided, x, top_k=3, method="guided")
    assert top.raw.shape == (6, 3, 8, 8)
    np.testing.assert_array_equal(top.image, [0, 0, 0, 1, 1, 1])
    mixed = onnxviz.saliency(strided, x[[0, 1]], target=top.target[[1, 5]], method="guided")
    np.testing.assert_allclose(mixed.raw, top.raw[[1, 5]], rtol=1e-6)


def test_all_zero_gradient_gives_zero_map(tmp_path):
    model = onnxviz.load(save(linear_model(np.zeros((60, 2), np.float32)), tmp_path / "z.onnx"), device="cpu")
    s = onnxviz.saliency(model, nchw_x(1))
    assert not s.raw.any() and not s.map.any() and not np.isnan(s.map).any()


def test_bad_options(linear):
    x = nchw_x(1)
    with pytest.raises(OnnxvizError, match="unknown saliency method 'magic'"):
        onnxviz.saliency(linear["NCHW"], x, method="magic")
    with pytest.raises(OnnxvizError, match="baseline 'fog'"):
        onnxviz.saliency(linear["NCHW"], x, method="integrated", baseline="fog")
    with pytest.raises(OnnxvizError, match="steps must be at least 1"):
        onnxviz.saliency(linear["NCHW"], x, method="integrated", steps=0)


@pytest.mark.parametrize("method", ["vanilla", "guided", "smoothgrad", "integrated"])
def test_an_empty_batch_gives_empty_maps(strided, method):
    """A batch of no images (an empty folder's worth) is no error: every method returns zero maps."""
    x = np.zeros(strided.input.shape(0, 8, 8), np.float32)
    result = onnxviz.saliency(strided, x, method=method)
    assert result.raw.shape == x.shape and result.map.shape == (0, 8, 8)
