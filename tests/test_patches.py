"""Maximally activating patches: receptive fields against input gradients, top-k against brute force."""
from pathlib import Path

import numpy as np
import pytest
from onnx import helper, numpy_helper
from PIL import Image

import onnxviz
from builders import save, tiny_cnn
from onnxviz.autodiff import STANDARD, gradient_graph
from onnxviz.datasets import scan_folder
from onnxviz.errors import OnnxvizError
from onnxviz.images import Geometry, Preprocess, preprocess, read_image
from onnxviz.methods.layers import layer_axes, to_nchw
from onnxviz.methods.patches import RunningTopK, layer_field, selectivity, to_json, top_patches
from onnxviz.render.dataset import patches_grid, patches_overview
from onnxviz.synthetic import make_shapes

SAMPLE = Path(__file__).resolve().parents[1] / "models" / "shapes_cnn.onnx"


# ---------------------------------------------------------------------------- test models

def conv_stack(layers, size=32, channels=3, seed=0, act="LeakyRelu"):
    """A chain of window ops given as (op, kernel, stride, pad, dilation); outputs "t<i>" per op."""
    rng = np.random.default_rng(seed)
    nodes, inits, x, c = [], [], "input", channels
    for i, (op, k, s, p, d) in enumerate(layers):
        out = f"t{i}"
        if op == "Conv":
            w = (rng.uniform(0.5, 1.5, (4, c, k, k)) * rng.choice([-1, 1], (4, c, k, k))).astype(np.float32)
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], kernel_shape=[k, k], strides=[s, s],
                                          pads=[p] * 4, dilations=[d, d]))
            nodes.append(helper.make_node(act, [f"c{i}"], [out]) if act else
                         helper.make_node("Identity", [f"c{i}"], [out]))
            c = 4
        else:
            nodes.append(helper.make_node(op, [x], [out], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4))
        x = out
    graph = helper.make_graph(nodes, "stack", [helper.make_tensor_value_info("input", 1, ["N", channels, size, size])],
                              [helper.make_tensor_value_info(x, 1, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def branches(size=24, seed=1):
    """Residual Add of a 3x3 and a dilated 3x3 branch, then Concat with a 5x5 stride-2 path, then a conv."""
    rng = np.random.default_rng(seed)

    def w(name, shape):
        return numpy_helper.from_array((rng.uniform(0.5, 1.5, shape) * rng.choice([-1, 1], shape))
                                       .astype(np.float32), name)

    inits = [w("wa", (4, 3, 3, 3)), w("wb", (4, 3, 3, 3)), w("wc", (4, 4, 5, 5)), w("wd", (4, 4, 3, 3)),
             w("we", (4, 8, 3, 3))]
    nodes = [
        helper.make_node("Conv", ["input", "wa"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["input", "wb"], ["b"], pads=[2, 2, 2, 2], dilations=[2, 2]),
        helper.make_node("Add", ["a", "b"], ["res"]),
        helper.make_node("Conv", ["res", "wc"], ["c"], pads=[2, 2, 2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["res", "wd"], ["d"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Concat", ["c", "d"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "we"], ["out"], pads=[0, 0, 0, 0]),
    ]
    graph = helper.make_graph(nodes, "branches", [helper.make_tensor_value_info("input", 1, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("out", 1, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def gradient_support(model, layer, unit, x):
    """Input pixels (H, W) where the gradient of the units at position (i, j) is non-zero.

    All channels at (i, j) are seeded, with random positive weights: a concatenation's channels
    each see one branch, and the position's field is their union."""
    h, w = model.input.hw(x)
    gm = gradient_graph(model.specialized(h, w), layer, [model.input.name], STANDARD)
    values = model.activations(x, [layer])[layer]
    seed = np.zeros(values.shape, np.float32)
    seed[0, :, unit[0], unit[1]] = np.random.default_rng(5).uniform(0.5, 1.5, values.shape[1])
    out = model.runtime.run(gm.proto, {model.input.name: x, gm.seed: seed}, outputs=[gm.grads[model.input.name]])
    return np.abs(next(iter(out.values()))[0]).sum(axis=0) > 0


def bbox(mask):
    ys, xs = np.nonzero(mask)
    return (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)


def check_field(model, layer, tight, size=None):
    """Every unit's gradient lies in its box; with ``tight``, the box of a unit away from the
    borders is the gradient's bounding box. (At borders the box may overshoot by a few pixels
    where an intermediate layer's padding falls in a dilated or strided window: padded units
    count as seeing the image.) Returns how many units were checked tight."""
    h, w = size or model.input.size
    x = np.random.default_rng(3).standard_normal((1, 3, h, w)).astype(np.float32)
    rf = layer_field(model, layer, (h, w))
    shape = model.activations(x, [layer])[layer].shape
    units = [(0, 0), (shape[2] // 2, shape[3] // 3), (shape[2] // 2, shape[3] // 2 + 1),
             (shape[2] - 1, shape[3] - 1), (1, shape[3] - 2)]
    checked = 0
    for i, j in units:
        mask = gradient_support(model, layer, (i, j), x)
        box = rf.box(i, j, clip_to=(h, w))
        y0, x0, y1, x1 = box
        inside = np.zeros_like(mask)
        inside[y0:y1, x0:x1] = True
        assert not (mask & ~inside).any(), f"{layer} unit {(i, j)}: gradient outside {box}"
        assert mask.any() or not tight  # a ReLU may block every channel at a unit
        if tight and rf.box(i, j) == box:  # not clipped by the input: away from the borders
            assert bbox(mask) == box, f"{layer} unit {(i, j)}: box {box} is not the support's {bbox(mask)}"
            checked += 1
    return checked


# ---------------------------------------------------------------------------- receptive fields

STACK = [("Conv", 3, 1, 1, 1), ("Conv", 3, 2, 1, 1), ("Conv", 3, 1, 2, 2), ("AveragePool", 2, 2, 0, 1),
         ("Conv", 5, 1, 2, 1), ("Conv", 1, 2, 0, 1), ("Conv", 3, 1, 0, 1)]


@pytest.mark.parametrize("layer", [f"t{i}" for i in range(len(STACK))])
def test_receptive_field_is_exactly_the_gradient_support_of_a_plain_conv_stack(tmp_path, layer):
    model = onnxviz.load(save(conv_stack(STACK, size=72), tmp_path / "stack.onnx"))
    assert check_field(model, layer, tight=True) >= 2


def test_receptive_field_covers_the_gradient_through_relu_and_maxpool(tmp_path):
    layers = [("Conv", 3, 1, 1, 1), ("MaxPool", 3, 2, 1, 1), ("Conv", 3, 1, 1, 1), ("MaxPool", 2, 2, 0, 1)]
    model = onnxviz.load(save(conv_stack(layers, act="Relu"), tmp_path / "relu.onnx"))
    for layer in ("t0", "t1", "t2", "t3"):
        check_field(model, layer, tight=False)


@pytest.mark.parametrize("layer", ["res", "c", "d", "cat", "out"])
def test_receptive_field_through_residual_additions_and_concatenations(tmp_path, layer):
    model = onnxviz.load(save(branches(size=32), tmp_path / "branches.onnx"))
    assert check_field(model, layer, tight=True) >= 2  # linear branches: the union of their windows


@pytest.mark.skipif(not SAMPLE.exists(), reason="sample model not built yet")
def test_receptive_fields_of_the_sample_model_cover_its_gradients():
    model = onnxviz.load(str(SAMPLE))
    maps = [layer.name for layer in model.layers if layer.op in ("Relu", "MaxPool")]
    assert len(maps) >= 4
    for layer in maps:
        check_field(model, layer, tight=False, size=(64, 64))


# ---------------------------------------------------------------------------- running top-k

def test_running_top_k_equals_sorting_everything_with_earlier_winning_ties():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 6, (3, 200)).astype(float)  # many ties
    keys = np.broadcast_to(np.arange(200)[None, :, None], (3, 200, 1))
    top = RunningTopK(3, 7, 1)
    for start in range(0, 200, 23):
        top.update(values[:, start:start + 23], keys[:, start:start + 23])
    for c in range(3):
        order = np.argsort(-values[c], kind="stable")[:7]
        np.testing.assert_array_equal(top.keys[c, :, 0], order)
        np.testing.assert_array_equal(top.values[c], values[c, order])


def test_running_top_k_with_fewer_candidates_than_k():
    top = RunningTopK(2, 5, 1)
    top.update(np.array([[1.0, 3.0], [2.0, np.nan]]), np.array([[[0], [1]], [[0], [1]]]))
    assert top.values[0, :2].tolist() == [3.0, 1.0] and top.keys[0, :2, 0].tolist() == [1, 0]
    assert np.isneginf(top.values[0, 2:]).all() and top.keys[1, 0, 0] == 0


def test_selectivity_is_a_z_score_of_the_top_images():
    peaks = np.array([[1.0, 2.0, 3.0, 10.0], [5.0, 5.0, 5.0, 5.0]])
    mean, std = peaks.mean(axis=1), peaks.std(axis=1)
    s = selectivity(np.array([[10.0, 3.0], [5.0, 5.0]]), mean, std)
    assert s[0] == pytest.approx((6.5 - 4.0) / peaks[0].std()) and s[1] == 0.0


# ---------------------------------------------------------------------------- top patches

def _folder(path, sizes, seed=0):
    """Shapes at several sizes and aspect ratios, so the preprocessing's resize/crop matters."""
    path.mkdir()
    rng = np.random.default_rng(seed)
    for k, (h, w) in enumerate(sizes):
        im = make_shapes(1, max(h, w), seed=seed + k).images[0][:h, :w]
        im = np.clip(im.astype(int) + rng.integers(-20, 20, im.shape), 0, 255).astype(np.uint8)
        Image.fromarray(im).save(path / f"{k:02d}.png")
    return path


SIZES = [(32, 32), (40, 56), (48, 30), (32, 32), (64, 64), (36, 36), (33, 47), (50, 40), (32, 32), (45, 45)]


def brute_force(model, folder, layer, pre):
    paths = scan_folder(folder).paths
    images = [read_image(p) for p in paths]
    x = preprocess(images, model.input, pre)
    acts = to_nchw(model.activations(x, [layer])[layer], layer_axes(model, layer, strict=False))
    return paths, images, acts


@pytest.mark.parametrize("resize", ["shorter", "stretch"])
def test_top_patches_are_the_argmax_units_of_a_brute_force_pass(tmp_path, resize):
    model = onnxviz.load(save(tiny_cnn(size=32), tmp_path / "tiny.onnx"))
    folder = _folder(tmp_path / "d", SIZES)
    pre = Preprocess(size=(32, 32), resize=resize, crop=0.875 if resize == "shorter" else 1.0)
    for layer in ("relu1", "conv2", "relu2"):
        result = top_patches(model, folder, layer, channels=[0, 3, 5], top=4, pre=pre, batch_size=3)
        paths, images, acts = brute_force(model, folder, layer, pre)
        n, c, h, w = acts.shape
        flat = acts.reshape(n, c, -1)
        rf = layer_field(model, layer, (32, 32))
        for cp in result.channels:
            peak = flat[:, cp.channel].max(axis=1)
            order = np.argsort(-peak, kind="stable")[:4]
            assert [p.path for p in cp.patches] == [paths[k] for k in order]
            np.testing.assert_allclose([p.value for p in cp.patches], peak[order], rtol=1e-5)
            for p, k in zip(cp.patches, order):
                i, j = divmod(int(flat[k, cp.channel].argmax()), w)
                assert p.unit == (i, j) and p.box == rf.box(i, j, clip_to=(32, 32))
                g = Geometry.fit((images[k].height, images[k].width), (32, 32), pre.resize, pre.crop)
                y0, x0, y1, x1 = p.box
                assert p.original_box == g.to_original((x0, y0, x1, y1))
                np.testing.assert_array_equal(p.image, np.asarray(g.crop(images[k], (x0, y0, x1, y1))))


def test_any_position_mode_ranks_every_unit(tmp_path):
    model = onnxviz.load(save(tiny_cnn(size=32), tmp_path / "tiny.onnx"))
    folder = _folder(tmp_path / "d", SIZES[:6])
    pre = Preprocess(size=(32, 32))
    result = top_patches(model, folder, "relu2", channels=[1, 2], top=10, pre=pre, distinct=False, batch_size=4)
    paths, _, acts = brute_force(model, folder, "relu2", pre)
    n, c, h, w = acts.shape
    for cp in result.channels:
        flat = acts[:, cp.channel].reshape(-1)  # image-major, then row-major
        order = np.argsort(-flat, kind="stable")[:10]
        got = [(paths.index(p.path), *p.unit) for p in cp.patches]
        assert got == [(k // (h * w), (k % (h * w)) // w, k % w) for k in order]
    assert len({p.path for p in result.channels[0].patches}) < 10  # several units of one image


def test_channels_chosen_by_selectivity(tmp_path):
    model = onnxviz.load(save(tiny_cnn(size=32), tmp_path / "tiny.onnx"))
    folder = _folder(tmp_path / "d", SIZES)
    pre = Preprocess(size=(32, 32))
    result = top_patches(model, folder, "relu2", n_channels=3, top=3, pre=pre, batch_size=4)
    _, _, acts = brute_force(model, folder, "relu2", pre)
    peaks = acts.reshape(*acts.shape[:2], -1).max(axis=2)  # (N, C)
    top = -np.sort(-peaks, axis=0)[:3]
    expected = (top.mean(axis=0) - peaks.mean(axis=0)) / peaks.std(axis=0)
    np.testing.assert_allclose(result.selectivity, expected, rtol=1e-4)
    assert [cp.channel for cp in result.channels] == list(np.argsort(-expected, kind="stable")[:3])


def test_channels_last_models_give_the_same_patches(tmp_path):
    folder = _folder(tmp_path / "d", SIZES[:5])
    pre = Preprocess(size=(32, 32))
    a, b = (top_patches(onnxviz.load(save(tiny_cnn(layout, size=32), tmp_path / f"{layout}.onnx")), folder,
                        "relu1", channels=[2], top=3, pre=pre) for layout in ("NCHW", "NHWC"))
    assert [(p.path, p.unit, p.box) for p in a.channels[0].patches] == \
           [(p.path, p.unit, p.box) for p in b.channels[0].patches]


def test_bad_layers_channels_and_files(tmp_path):
    model = onnxviz.load(save(tiny_cnn(size=32), tmp_path / "tiny.onnx"))
    folder = _folder(tmp_path / "d", SIZES[:3])
    (folder / "broken.png").write_bytes(b"nope")
    with pytest.raises(OnnxvizError, match="not a feature map"):
        top_patches(model, folder, "flat")
    with pytest.raises(OnnxvizError, match="no tensor"):
        top_patches(model, folder, "nope")
    with pytest.raises(OnnxvizError, match="out of range"):
        top_patches(model, folder, "relu2", channels=[8])
    with pytest.raises(OnnxvizError, match="not both"):
        top_patches(model, folder, "relu2", channels=[1], n_channels=2)
    result = top_patches(model, folder, "relu2", channels=[0], top=16)
    assert len(result.channels[0].patches) == 3 and result.images == 3  # fewer images than top
    assert [f.path.name for f in result.failures] == ["broken.png"]
    overview, grid = patches_overview(result), patches_grid(result.channels[0])
    assert overview.dtype == np.uint8 and overview.ndim == 3 and grid.shape[-1] == 3
    info = to_json(result)
    assert info["channels"][0]["patches"][0]["value"] == result.channels[0].patches[0].value


def test_a_winner_that_disappears_before_cropping_is_reported(tmp_path):
    model = onnxviz.load(save(tiny_cnn(size=32), tmp_path / "tiny.onnx"))
    folder = _folder(tmp_path / "d", SIZES[:3])
    first = scan_folder(folder).paths[0]
    run, calls = model.runtime.run, []

    def delete_on_last_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            first.unlink()  # read and run already; gone when its patch is cropped
        return run(*args, **kwargs)

    model.runtime.run = delete_on_last_batch
    result = top_patches(model, folder, "relu2", channels=[0], top=3, batch_size=1, workers=1)
    patches = result.channels[0].patches
    assert len(patches) == 3 and result.images == 3
    gone = [p for p in patches if p.path == first]
    assert gone[0].image is None and all(p.image is not None for p in patches if p.path != first)
    assert [f.path for f in result.failures] == [first] and "cannot crop" in result.failures[0].reason
    assert patches_grid(result.channels[0]).shape[-1] == 3  # drawn as a grey tile
