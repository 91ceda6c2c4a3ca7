"""Deletion, insertion, ROAD and pointing: hand-computed cases, and the sample model's known objects."""
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

import onnxviz
from builders import make_model, save
from onnxviz.errors import OnnxvizError
from onnxviz.methods.faithfulness import (box_masks, energy_pointing, impute, pointing_game, road,
                                          step_counts)

C, H, W, K = 2, 3, 4, 3
SAMPLE = Path(os.environ.get("ONNXVIZ_SHAPES_MODEL",
                             Path(__file__).resolve().parents[1] / "models" / "shapes_cnn.onnx"))


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """logit_k = Σ w_k ⊙ x + b_k: one Conv whose kernel covers the whole image, then Flatten."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((K, C, H, W)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    proto = make_model([helper.make_node("Conv", ["image", "w", "b"], ["conv"]),
                        helper.make_node("Flatten", ["conv"], ["logits"])],
                       {"w": w, "b": b}, ["N", C, H, W], "logits", K, name="linear")
    path = save(proto, tmp_path_factory.mktemp("linear") / "linear.onnx")
    return onnxviz.load(path, device="cpu"), w.astype(np.float64), b.astype(np.float64)


def by_hand(w, b, x, m, start, end, steps, score, target):
    """The score after each step, from the closed form: positions in map order, Python's stable sort."""
    order = sorted(range(H * W), key=lambda i: -m.reshape(-1)[i])
    size = -(-H * W // steps)
    out = []
    for k in range(steps + 1):
        taken = set(order[:min(k * size, H * W)])
        img = np.array([[[end[c, i // W, i % W] if i in taken else start[c, i // W, i % W]
                          for i in range(H * W)]] for c in range(C)]).reshape(C, H, W)
        logits = np.array([np.sum(w[j] * img) + b[j] for j in range(K)])
        if score == "prob":
            logits = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        out.append(logits[target])
    return np.array(out)


def trapezoid_by_hand(ys, xs):
    return sum((ys[i] + ys[i + 1]) / 2 * (xs[i + 1] - xs[i]) for i in range(len(ys) - 1))


@pytest.mark.parametrize("score", ["logit", "prob"])
@pytest.mark.parametrize("steps", [4, 5, 12])
def test_deletion_and_insertion_match_the_closed_form(linear, score, steps):
    model, w, b = linear
    rng = np.random.default_rng(steps)
    x = rng.standard_normal((2, C, H, W)).astype(np.float32)
    maps = rng.integers(0, 4, size=(2, H, W)).astype(np.float32)  # many ties: order falls back on position
    target = [1, 2]
    dele = onnxviz.deletion(model, x, maps, target=target, steps=steps, baseline=0.25, score=score)
    base = rng.standard_normal((2, C, H, W)).astype(np.float32)
    ins = onnxviz.insertion(model, x, maps, target=target, steps=steps, baseline=base, score=score)
    size = -(-H * W // steps)
    fractions = [min(k * size, H * W) / (H * W) for k in range(steps + 1)]
    np.testing.assert_allclose(dele.fractions, fractions, atol=1e-12)
    for n in range(2):
        xd = x[n].astype(np.float64)
        want_d = by_hand(w, b, xd, maps[n], xd, np.full_like(xd, 0.25), steps, score, target[n])
        want_i = by_hand(w, b, xd, maps[n], base[n].astype(np.float64), xd, steps, score, target[n])
        np.testing.assert_allclose(dele.scores[n], want_d, atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(ins.scores[n], want_i, atol=1e-6, rtol=1e-6)
        assert abs(dele.auc[n] - trapezoid_by_hand(want_d, fractions)) < 1e-6
        assert abs(ins.auc[n] - trapezoid_by_hand(want_i, fractions)) < 1e-6


def test_linear_deletion_drop_per_step_is_w_times_x(linear):
    """Removing position i (baseline 0) lowers the logit by Σ_c w_c,i · x_c,i, exactly."""
    model, w, b = linear
    x = np.random.default_rng(1).standard_normal((1, C, H, W)).astype(np.float32)
    maps = np.arange(H * W, dtype=np.float32)[::-1].reshape(1, H, W)  # raster order
    c = onnxviz.deletion(model, x, maps, target=0, steps=H * W, score="logit")
    contrib = (w[0] * x[0]).sum(axis=0).reshape(-1)
    np.testing.assert_allclose(-np.diff(c.scores[0]), contrib, atol=1e-5)


def test_default_target_is_the_prediction_and_blur_baseline(linear):
    model, w, b = linear
    x = np.random.default_rng(2).standard_normal((3, C, H, W)).astype(np.float32)
    logits = np.einsum("kchw,nchw->nk", w, x) + b
    maps = np.random.default_rng(3).random((3, H, W))
    c = onnxviz.insertion(model, x, maps, steps=3)
    np.testing.assert_array_equal(c.target, logits.argmax(1))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(c.scores[:, -1], probs.max(1), atol=1e-6)  # everything restored: the image


def test_bad_maps_and_steps_are_clear_errors(linear):
    model, _, _ = linear
    x = np.zeros((2, C, H, W), np.float32)
    with pytest.raises(OnnxvizError, match="do not fit"):
        onnxviz.deletion(model, x, np.zeros((2, H + 1, W)))
    with pytest.raises(OnnxvizError, match="steps"):
        onnxviz.deletion(model, x, np.zeros((2, H, W)), steps=0)
    with pytest.raises(OnnxvizError, match="NaN"):
        onnxviz.deletion(model, x, np.full((2, H, W), np.nan))
    assert step_counts(10, 4).tolist() == [0, 3, 6, 9, 10]


# ---------------------------------------------------------------------------- ROAD


def test_imputation_reproduces_a_hand_solved_3x3_case():
    """Removed: the corner a and the centre c. Corner: (5/12)a = (1/6)(1 + 2) + (1/12)c;
    centre: c = (1/6)(1 + 2 + 4 + 8) + (1/12)(a + 3 + 5 + 6). Solved: c = 226/59, a = 116/59."""
    image = np.array([[[9, 1, 3], [2, 9, 4], [5, 8, 6]]], np.float64)
    removed = np.zeros((3, 3), bool)
    removed[0, 0] = removed[1, 1] = True
    got = impute(image, removed, noise=0.0)
    a, c = Fraction(116, 59), Fraction(226, 59)
    assert Fraction(5, 12) * a == Fraction(1, 6) * 3 + Fraction(1, 12) * c  # the hand solution is one
    assert c == Fraction(15, 6) + Fraction(1, 12) * (a + 14)
    np.testing.assert_allclose(got[0, 0, 0], float(a), atol=1e-12)
    np.testing.assert_allclose(got[0, 1, 1], float(c), atol=1e-12)
    keep = ~removed
    np.testing.assert_array_equal(got[0][keep], image[0][keep])


def test_imputation_noise_is_seeded_with_the_given_std():
    image = np.random.default_rng(0).random((3, 40, 40))
    removed = np.zeros((40, 40), bool)
    removed[5:35, 5:35] = True
    clean = impute(image, removed, noise=0.0)
    one = impute(image, removed, 0.01, np.random.default_rng(4))
    two = impute(image, removed, 0.01, np.random.default_rng(4))
    np.testing.assert_array_equal(one, two)
    diff = (one - clean)[:, removed]
    assert abs(diff.std() - 0.01) < 0.001 and abs(diff.mean()) < 0.001
    assert np.all(one[:, ~removed] == image[:, ~removed])


def test_road_on_a_linear_model(linear):
    """MoRF removes the largest contributions, LeRF the smallest: with a map equal to the
    contributions the combined score is positive, with its negation negative."""
    model, w, b = linear
    x = np.random.default_rng(6).standard_normal((2, C, H, W)).astype(np.float32)
    contrib = np.einsum("chw,nchw->nhw", w[0], x)
    good = road(model, x, contrib, target=0, percentiles=[25, 50], score="logit", noise=0.0)
    bad = road(model, x, -contrib, target=0, percentiles=[25, 50], score="logit", noise=0.0)
    assert good.morf.shape == (2, 2)
    assert (good.combined > 0).all() and (bad.combined < 0).all()
    np.testing.assert_allclose(good.morf, bad.lerf)


# ---------------------------------------------------------------------------- pointing


def test_pointing_game_and_energy_by_hand():
    maps = np.zeros((2, 4, 5))
    maps[0, 1, 2] = 3.0  # inside the box
    maps[0, 3, 4] = 1.0  # outside
    maps[1, 0, 0] = 2.0  # outside
    maps[1, 2, 1] = 2.0
    boxes = np.array([[1, 1, 4, 3], [1, 1, 3, 3]])  # x0, y0, x1, y1 (exclusive)
    assert pointing_game(maps, boxes).tolist() == [True, False]  # a tie goes to the first in raster order
    np.testing.assert_allclose(energy_pointing(maps, boxes), [0.75, 0.5])
    masks = box_masks(boxes, (4, 5))
    assert masks[0].sum() == 6 and masks[0, 1, 1] and not masks[0, 3, 1]
    np.testing.assert_array_equal(pointing_game(maps, masks=masks), [True, False])


# ---------------------------------------------------------------------------- the sample model


@pytest.mark.slow
def test_grad_cam_beats_a_random_map_on_fresh_shapes():
    """50 images from a seed no training used: Grad-CAM's deletion AUC is lower and its insertion AUC
    higher than a random map's. The random map has Grad-CAM's resolution (8x8, upsampled the same
    way): per-pixel noise would delete salt-and-pepper, which breaks the model faster than any
    object-shaped deletion and says more about the baseline than about the map."""
    if not SAMPLE.exists():
        pytest.skip(f"the sample model {SAMPLE} is not built (scripts/build_sample_model.py)")
    from PIL import Image

    from onnxviz.methods.results import upsampled
    from onnxviz.synthetic import make_shapes

    model = onnxviz.load(str(SAMPLE), device="cpu")
    data = make_shapes(50, size=64, seed=8101)
    pre = onnxviz.Preprocess(norm="imagenet", resize="stretch", size=(64, 64))
    x = onnxviz.preprocess([Image.fromarray(im) for im in data.images], model.input, pre)
    cam = onnxviz.grad_cam(model, x, target=data.labels)
    rand = upsampled(np.random.default_rng(0).random(cam.raw.shape).astype(np.float32), (64, 64))
    aucs = {}
    for name, maps in (("gradcam", cam.map), ("random", rand)):
        aucs[name] = (onnxviz.deletion(model, x, maps, target=data.labels).auc.mean(),
                      onnxviz.insertion(model, x, maps, target=data.labels).auc.mean())
    print(f"\ndeletion / insertion AUC on 50 fresh shapes: {aucs}")
    assert aucs["gradcam"][0] < aucs["random"][0]
    assert aucs["gradcam"][1] > aucs["random"][1]
    assert pointing_game(cam.map, data.boxes).mean() > 0.9
    assert energy_pointing(cam.map, data.boxes).mean() > energy_pointing(rand, data.boxes).mean()


def test_target_out_of_range(linear):
    model, _, _ = linear
    x = np.zeros((1, C, H, W), np.float32)
    with pytest.raises(OnnxvizError, match="out of range"):
        onnxviz.deletion(model, x, np.zeros((1, H, W)), target=K)


def test_channels_last_models_score_the_same(tmp_path):
    """The NHWC twin of a model (a Transpose in front, same weights) gives the same curves and ROAD."""
    from builders import tiny_cnn

    nchw = onnxviz.load(save(tiny_cnn(size=12), tmp_path / "a.onnx"), device="cpu")
    nhwc = onnxviz.load(save(tiny_cnn(layout="NHWC", size=12), tmp_path / "b.onnx"), device="cpu")
    x = np.random.default_rng(3).standard_normal((2, 3, 12, 12)).astype(np.float32)
    xt = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    maps = np.random.default_rng(4).random((2, 12, 12))
    for fn in (onnxviz.deletion, onnxviz.insertion):
        a, b = fn(nchw, x, maps, steps=6), fn(nhwc, xt, maps, steps=6)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    a, b = road(nchw, x, maps, percentiles=[30, 60]), road(nhwc, xt, maps, percentiles=[30, 60])
    np.testing.assert_allclose(a.morf, b.morf, atol=1e-5)
    np.testing.assert_allclose(a.lerf, b.lerf, atol=1e-5)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_ranked_fill_equals_masks_in_any_chunking(layout):
    """The incremental fill (each copy from the one before) equals the definition: copy k of row r
    is ``end`` at the first counts[k] positions of order[r] and ``start`` elsewhere, however the
    copies are chunked (rows split across batches, copies out of order)."""
    from onnxviz.methods.perturb import pixel_order, ranked_filler
    from onnxviz.spec import InputSpec

    rng = np.random.default_rng(3)
    n, c, h, w = 2, 3, 5, 7
    spec = InputSpec("image", layout, c, h, w, np.dtype(np.float32))
    shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    start, end = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    order = pixel_order(np.round(rng.random((n, h, w)) * 4))  # ties: raster order among them
    counts = step_counts(h * w, 6)
    want = np.empty((n, len(counts), *shape[1:]), np.float32)
    for r in range(n):
        for k, m in enumerate(counts):
            mask = np.zeros(h * w, bool)
            mask[order[r, :m]] = True
            mask = mask.reshape(h, w)[None] if layout == "NCHW" else mask.reshape(h, w)[..., None]
            want[r, k] = np.where(mask, end[r], start[r])
    fill = ranked_filler(start, end, order, counts, spec)
    rows, copies = np.divmod(np.arange(n * len(counts)), len(counts))
    for chunks in ([np.arange(n * len(counts))], np.array_split(np.arange(n * len(counts)), 4),
                   [rng.permutation(n * len(counts))]):
        for idx in chunks:
            batch = np.empty((len(idx), *shape[1:]), np.float32)
            fill(batch, rows[idx], copies[idx])
            np.testing.assert_array_equal(batch, want[rows[idx], copies[idx]])
