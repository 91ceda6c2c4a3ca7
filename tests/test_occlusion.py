"""Occlusion: analytic drops on linear models, window grids, batching, layouts, layer occlusion."""
import numpy as np
import pytest

import onnxviz
from builders import linear_model, save, strided_cnn, weights
from onnxviz.errors import OnnxvizError
from onnxviz.methods.occlusion import coverage, window_starts
from onnxviz.render import normalize01


def reference(x, w, target, window, stride, baseline):
    """Plain loops: per pixel, the mean over covering windows of the linear score's drop."""
    n, c, h, wd = x.shape
    wh, ww = min(window, h), min(window, wd)
    total, count = np.zeros((n, h, wd)), np.zeros((h, wd))
    for y0 in window_starts(h, wh, stride):
        for x0 in window_starts(wd, ww, stride):
            occluded = x.astype(np.float64).copy()
            occluded[:, :, y0:y0 + wh, x0:x0 + ww] = baseline
            drop = ((x - occluded).reshape(n, -1) * w[:, target].T).sum(1)
            total[:, y0:y0 + wh, x0:x0 + ww] += drop[:, None, None]
            count[y0:y0 + wh, x0:x0 + ww] += 1
    return total / count


@pytest.mark.parametrize("window,stride", [(3, 2), (4, 4), (5, 3), (20, 1)])
def test_linear_model_matches_loops(tmp_path, window, stride):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3 * 9 * 11, 3)).astype(np.float32)
    model = onnxviz.load(save(linear_model(w, size=(9, 11)), tmp_path / "lin.onnx"), device="cpu")
    x = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
    h = onnxviz.occlusion(model, x, target=[2, 0], window=window, stride=stride, baseline=0.25, batch_size=7)
    expected = reference(x, w, [2, 0], window, stride, 0.25)
    assert h.raw.shape == (2, 9, 11) and h.layer is None
    np.testing.assert_allclose(h.raw, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(h.map, normalize01(h.raw, axis=(1, 2)), atol=1e-6)


def test_constant_region_of_a_constant_sensitive_model(tmp_path):
    """score = a·Σx: a window inside a region of constant value v drops the score by a·C·(v − b)·area."""
    a, v, b, window = 0.5, 2.0, -1.0, 4
    model = onnxviz.load(save(linear_model(np.full((3 * 16 * 16, 1), a, np.float32), size=(16, 16)),
                              tmp_path / "c.onnx"), device="cpu")
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    x[:, :, :, :8] = v  # the left half is constant
    h = onnxviz.occlusion(model, x, target=0, window=window, stride=2, baseline=b)
    drop = a * 3 * (v - b) * window * window
    # pixels of columns 0-3 are covered only by windows inside the left half
    np.testing.assert_allclose(h.raw[0, :, :4], drop, rtol=1e-5)
    assert not np.allclose(h.raw[0, :, 12:], drop)


def test_window_grid_covers_every_pixel():
    np.testing.assert_array_equal(window_starts(10, 4, 3), [0, 3, 6])
    np.testing.assert_array_equal(window_starts(11, 4, 3), [0, 3, 6, 7])  # one flush with the end
    np.testing.assert_array_equal(window_starts(5, 8, 2), [0])
    cover = coverage(window_starts(11, 4, 3), 4, 11)
    assert cover.shape == (4, 11) and (cover.sum(0) >= 1).all() and (cover.sum(1) == 4).all()


@pytest.fixture(scope="module")
def strided(tmp_path_factory):
    return onnxviz.load(save(strided_cnn(), tmp_path_factory.mktemp("s") / "s.onnx"), device="cpu")


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(2).standard_normal((3, 3, 16, 16)).astype(np.float32)


def test_batching_does_not_change_the_result(strided, x):
    a = onnxviz.occlusion(strided, x, window=6, stride=3, batch_size=5)
    b = onnxviz.occlusion(strided, x, window=6, stride=3, batch_size=1000)
    np.testing.assert_allclose(a.raw, b.raw, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.target, b.target)


def test_only_the_plain_forward_graph_runs(strided, x, monkeypatch):
    calls = []
    real = strided.runtime.run
    monkeypatch.setattr(strided.runtime, "run", lambda *a, **k: calls.append((k.get("key"), len(a[1]["image"])))
                        or real(*a, **k))
    onnxviz.occlusion(strided, x, window=8, stride=4, batch_size=20)  # 3 images × 9 windows = 27 copies
    assert [n for _, n in calls] == [3, 20, 7]
    assert all(key.startswith("expose:") for key, _ in calls)


def test_score_and_target(strided, x):
    logits = strided.activations(x, ["logits"])["logits"]
    h = onnxviz.occlusion(strided, x, target=[1, 2, 3], window=8, stride=8)
    np.testing.assert_array_equal(h.target, [1, 2, 3])
    np.testing.assert_allclose(h.score, logits[np.arange(3), [1, 2, 3]], rtol=1e-6)
    top = onnxviz.occlusion(strided, x, top_k=2, window=8, stride=8)
    np.testing.assert_array_equal(top.image, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(top.target.reshape(3, 2), np.argsort(-logits, 1)[:, :2])


def test_nhwc_gives_the_same_map(tmp_path, x):
    nhwc = onnxviz.load(save(strided_cnn("NHWC"), tmp_path / "n.onnx"), device="cpu")
    nchw = onnxviz.load(save(strided_cnn(), tmp_path / "c.onnx"), device="cpu")
    for baseline in (0.0, "blur", "mean"):
        a = onnxviz.occlusion(nchw, x, window=5, stride=3, baseline=baseline)
        b = onnxviz.occlusion(nhwc, x.transpose(0, 2, 3, 1), window=5, stride=3, baseline=baseline)
        np.testing.assert_allclose(b.raw, a.raw, rtol=1e-4, atol=1e-5 * np.abs(a.raw).max())


def test_dynamic_size_model(tmp_path):
    model = onnxviz.load(save(strided_cnn(dynamic=True), tmp_path / "d.onnx"), device="cpu")
    for size in (10, 20):
        x = np.random.default_rng(size).standard_normal((2, 3, size, size)).astype(np.float32)
        fixed = onnxviz.load(save(strided_cnn(size=size), tmp_path / f"{size}.onnx"), device="cpu")
        a, b = onnxviz.occlusion(model, x, window=4, stride=2), onnxviz.occlusion(fixed, x, window=4, stride=2)
        assert a.raw.shape == (2, size, size)
        np.testing.assert_allclose(a.raw, b.raw, rtol=1e-5, atol=1e-6)


def test_layer_occlusion_on_gap_fc_is_analytic(strided, x):
    """Zeroing position (i, j) of the pooled layer drops logit c by Σ_k w_kc A_kij / (h·w)."""
    h = onnxviz.occlusion(strided, x, target=[0, 1, 2], window=1, stride=1, layer="feat")
    a = strided.activations(x, ["feat"])["feat"].astype(np.float64)
    w = weights()["fc_w"][:, [0, 1, 2]].T
    expected = np.einsum("nk,nkhw->nhw", w, a) / 64
    assert h.layer == "feat" and h.raw.shape == (3, 8, 8) and h.map.shape == (3, 16, 16)
    np.testing.assert_allclose(h.raw, expected, rtol=1e-4, atol=1e-5)


def test_baseline_array_and_errors(strided, x):
    same = onnxviz.occlusion(strided, x, window=4, stride=4, baseline=np.zeros((3, 16, 16), np.float32))
    np.testing.assert_allclose(same.raw, onnxviz.occlusion(strided, x, window=4, stride=4).raw, rtol=1e-6)
    with pytest.raises(OnnxvizError, match="baseline 'fog'"):
        onnxviz.occlusion(strided, x, baseline="fog")
    with pytest.raises(OnnxvizError, match="window must be a positive int"):
        onnxviz.occlusion(strided, x, window=0)
    with pytest.raises(OnnxvizError, match="does not fit"):
        onnxviz.occlusion(strided, x, baseline=np.zeros((2, 2)))


def test_a_stride_wider_than_the_window_is_refused(strided, x):
    """Pixels between windows would be occluded by none: refused, naming both flags, not a NaN map."""
    with pytest.raises(OnnxvizError, match=r"stride 8 is larger than the window 4 along width.*--stride.*--window"):
        onnxviz.occlusion(strided, x, window=(8, 4), stride=8)
    h = onnxviz.occlusion(strided, x, window=4, stride=4)  # touching windows cover every pixel
    assert np.isfinite(h.map).all()
