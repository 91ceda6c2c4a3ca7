"""Feature extraction over image folders: the default layer, pooling, the resumable cache, bad files."""
import json
import os
import tracemalloc

import numpy as np
import pytest
from onnx import helper, numpy_helper
from PIL import Image

import onnxviz
from builders import save, tiny_cnn
from onnxviz.datasets import scan_folder
from onnxviz.errors import ImageError, OnnxvizError
from onnxviz.images import Preprocess, preprocess, read_image
from onnxviz.methods import embed as embed_mod
from onnxviz.methods.embed import FEATURES, MANIFEST, STATUS, embed, penultimate_layer
from onnxviz.methods.layers import layer_axes, to_nchw
from onnxviz.synthetic import make_shapes, save_folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return onnxviz.load(save(tiny_cnn(size=32), tmp_path_factory.mktemp("m") / "tiny.onnx"))


def shapes_folder(path, n=24, size=32, seed=1):
    save_folder(make_shapes(n, size, seed=seed), path)
    return path


def counting(model):
    """Count onnxruntime runs of ``model`` (every batch goes through Runtime.run)."""
    calls = []
    run = model.runtime.run

    def wrapped(*args, **kwargs):
        calls.append(1)
        return run(*args, **kwargs)

    model.runtime.run = wrapped
    return calls


def reference(model, paths, layer, pool="avg"):
    """Features computed the plain way: one batch, exposed tensor, numpy pooling."""
    pre = Preprocess(size=model.input.size)
    x = preprocess([read_image(p) for p in paths], model.input, pre)
    values = model.activations(x, [layer])[layer]
    if values.ndim == 4:
        values = to_nchw(values, layer_axes(model, layer, strict=False))
        values = values.mean(axis=(2, 3)) if pool == "avg" else values.reshape(len(values), -1)
    return values.reshape(len(values), -1)


# ---------------------------------------------------------------------------- which layer

def _pooled_conv_classifier():
    """SqueezeNet-style head: conv -> relu -> 1x1 conv (classes) -> relu -> GAP -> flatten -> softmax."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((5, 4, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Softmax", ["flat"], ["prob"], axis=1)]
    graph = helper.make_graph(nodes, "sq", [helper.make_tensor_value_info("x", 1, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("prob", 1, ["N", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_default_layer_is_the_input_of_the_final_fully_connected_op(tmp_path, tiny):
    assert penultimate_layer(tiny) == "flat"  # Gemm(flat) after GAP -> Flatten, before Softmax
    nhwc = onnxviz.load(save(tiny_cnn("NHWC", size=32, softmax=False), tmp_path / "nhwc.onnx"))
    assert penultimate_layer(nhwc) == "flat"
    squeeze = onnxviz.load(save(_pooled_conv_classifier(), tmp_path / "sq.onnx"))
    assert penultimate_layer(squeeze) == "r1"  # the input of the 1x1 classifier conv, pooled by embed


def test_a_head_without_a_fully_connected_op_asks_for_a_layer(tmp_path):
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", 1, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", 1, ["N", 3, 8, 8])])
    m = onnxviz.load(save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
                          tmp_path / "relu.onnx"))
    with pytest.raises(OnnxvizError, match="--layer"):
        penultimate_layer(m)


# ---------------------------------------------------------------------------- values

def test_features_equal_a_plain_forward_for_every_pooling(tmp_path, tiny):
    data = shapes_folder(tmp_path / "d", n=10)
    paths = scan_folder(data).paths
    for layer, pool in [("flat", "avg"), ("relu2", "avg"), ("relu2", "flatten")]:
        emb = embed(tiny, data, layer, pool=pool, batch_size=3)
        np.testing.assert_allclose(emb.features, reference(tiny, paths, layer, pool), rtol=1e-5, atol=1e-6)
        assert emb.paths == paths and emb.layer == layer and emb.computed == 10
    emb = embed(tiny, data, "relu2", pool="max")
    x = preprocess([read_image(p) for p in paths], tiny.input, Preprocess(size=(32, 32)))
    acts = to_nchw(tiny.activations(x, ["relu2"])["relu2"], layer_axes(tiny, "relu2", strict=False))
    np.testing.assert_allclose(emb.features, acts.max(axis=(2, 3)), rtol=1e-6)


def test_channels_last_models_pool_over_their_own_spatial_axes(tmp_path):
    data = shapes_folder(tmp_path / "d", n=6)
    nchw = onnxviz.load(save(tiny_cnn("NCHW", size=32), tmp_path / "a.onnx"))
    nhwc = onnxviz.load(save(tiny_cnn("NHWC", size=32), tmp_path / "b.onnx"))  # same weights
    for pool in ("avg", "max", "flatten"):
        a, b = (embed(m, data, "relu2", pool=pool).features for m in (nchw, nhwc))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_labels_come_from_the_first_sub_folder(tmp_path, tiny):
    data = shapes_folder(tmp_path / "d", n=12)
    Image.new("RGB", (20, 30), "red").save(data / "loose.png")
    (data / "star" / "deeper").mkdir()
    Image.new("RGB", (20, 30), "blue").save(data / "star" / "deeper" / "x.jpg")
    emb = embed(tiny, data)
    names = [emb.label_name(i) for i in range(len(emb))]
    assert names[emb.paths.index(data / "loose.png")] == ""
    assert names[emb.paths.index(data / "star" / "deeper" / "x.jpg")] == "star"
    assert set(emb.classes) == {"circle", "cross", "ring", "square", "star", "triangle"}


# ---------------------------------------------------------------------------- the cache

def test_a_second_run_reads_the_cache_without_running_the_model(tmp_path, tiny):
    data, cache = shapes_folder(tmp_path / "d", n=20), tmp_path / "cache"
    first = embed(tiny, data, cache=cache, batch_size=4)
    calls = counting(tiny)
    try:
        again = embed(tiny, data, cache=cache, batch_size=4)
    finally:
        del tiny.runtime.run
    assert calls == [] and again.computed == 0 and again.reused == 20
    np.testing.assert_array_equal(first.features, again.features)
    manifest = json.loads((cache / MANIFEST).read_text())
    assert manifest["complete"] and manifest["layer"] == "flat" and len(manifest["files"]) == 20
    assert manifest["model"]["sha256"] == embed_mod.model_digest(tiny)
    np.testing.assert_array_equal(np.load(cache / FEATURES), first.features)  # row i = files[i]


def test_ctrl_c_leaves_a_valid_partial_cache_that_the_next_run_completes(tmp_path, tiny):
    data, cache = shapes_folder(tmp_path / "d", n=20), tmp_path / "cache"
    clean = embed(tiny, data, batch_size=4)
    calls = counting(tiny)
    run = tiny.runtime.run

    def interrupt_third(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        return run(*args, **kwargs)

    tiny.runtime.run = interrupt_third
    try:
        with pytest.raises(KeyboardInterrupt):
            embed(tiny, data, cache=cache, batch_size=4)
    finally:
        del tiny.runtime.run
    manifest = json.loads((cache / MANIFEST).read_text())
    status = np.load(cache / STATUS)
    assert not manifest["complete"] and (status == 1).sum() == 8 and manifest["counts"]["done"] == 8
    calls = counting(tiny)
    try:
        resumed = embed(tiny, data, cache=cache, batch_size=4)
    finally:
        del tiny.runtime.run
    assert len(calls) == 3 and resumed.computed == 12 and resumed.reused == 8  # only the 12 missing images
    np.testing.assert_allclose(resumed.features, clean.features, rtol=1e-6)


def test_only_added_and_changed_files_are_computed(tmp_path, tiny):
    data, cache = shapes_folder(tmp_path / "d", n=12), tmp_path / "cache"
    embed(tiny, data, cache=cache)
    paths = scan_folder(data).paths
    os.remove(paths[0])
    Image.fromarray(make_shapes(1, 32, seed=99).images[0]).save(paths[1])  # new content
    os.utime(paths[1], ns=(1, 1))
    Image.new("RGB", (32, 32), "green").save(data / "new.png")
    calls = counting(tiny)
    try:
        emb = embed(tiny, data, cache=cache)
    finally:
        del tiny.runtime.run
    assert emb.computed == 2 and emb.reused == 10 and len(calls) == 1 and len(emb) == 12
    np.testing.assert_allclose(emb.features, reference(tiny, emb.paths, "flat"), rtol=1e-5, atol=1e-6)


def test_another_layer_pooling_or_preprocessing_recomputes(tmp_path, tiny):
    data, cache = shapes_folder(tmp_path / "d", n=6), tmp_path / "cache"
    embed(tiny, data, cache=cache)
    assert embed(tiny, data, "relu2", cache=cache).computed == 6
    assert embed(tiny, data, "relu2", pool="max", cache=cache).computed == 6
    assert embed(tiny, data, "relu2", Preprocess(norm="unit"), pool="max", cache=cache).computed == 6
    assert embed(tiny, data, "relu2", Preprocess(norm="unit"), pool="max", cache=cache).computed == 0


def test_memory_stays_flat_as_the_folder_grows(tmp_path, tiny):
    peaks = []
    for n in (60, 480):
        data = shapes_folder(tmp_path / f"d{n}", n=n, seed=n)
        tracemalloc.start()
        emb = embed(tiny, data, "relu2", pool="flatten", cache=tmp_path / f"c{n}", batch_size=16)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert isinstance(emb.features, np.memmap) and emb.features.shape == (n, 8 * 16 * 16)
    # 480 images x 8 KB of features would add 3.9 MB if they were held in memory
    assert peaks[1] < peaks[0] + 1_500_000, peaks


# ---------------------------------------------------------------------------- bad inputs

def test_an_empty_folder_or_one_without_images_is_a_clear_error(tmp_path, tiny):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="no image files"):
        embed(tiny, tmp_path / "empty")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hi")
    with pytest.raises(ImageError, match="1 other file.*readme.txt"):
        embed(tiny, tmp_path / "docs")
    with pytest.raises(ImageError, match="not found"):
        embed(tiny, tmp_path / "missing")


def test_bad_files_are_reported_and_skipped_never_fatal(tmp_path, tiny):
    data = shapes_folder(tmp_path / "d", n=6)
    (data / "notes.txt").write_text("not an image")
    (data / "fake.png").write_bytes(b"definitely not a png")
    good = (data / "circle").iterdir().__next__()
    (data / "cut.png").write_bytes(good.read_bytes()[:200])  # truncated
    (data / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(data / ".hidden" / "ignored.png")
    emb = embed(tiny, data, cache=tmp_path / "cache", batch_size=2)
    assert len(emb) == 6
    assert {f.path.name for f in emb.failures} == {"fake.png", "cut.png"}
    assert all(f.reason for f in emb.failures)
    assert [s.path.name for s in emb.skipped] == ["notes.txt"]
    manifest = json.loads((tmp_path / "cache" / MANIFEST).read_text())
    errors = {f["path"]: f["error"] for f in manifest["files"] if "error" in f}
    assert set(errors) == {"fake.png", "cut.png"} and manifest["skipped"][0]["path"].endswith("notes.txt")
    # failures are retried (and reported) again on the next run, still without running the model
    calls = counting(tiny)
    try:
        again = embed(tiny, data, cache=tmp_path / "cache")
    finally:
        del tiny.runtime.run
    assert calls == [] and {f.path.name for f in again.failures} == {"fake.png", "cut.png"}


def test_no_readable_image_at_all_is_an_error_naming_them(tmp_path, tiny):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jpg").write_bytes(b"xx")
    with pytest.raises(ImageError, match="none of the 1 image files.*a.jpg"):
        embed(tiny, tmp_path / "d", cache=tmp_path / "cache")
    assert "error" in json.loads((tmp_path / "cache" / MANIFEST).read_text())["files"][0]


def test_mixed_sizes_and_modes_are_all_embedded(tmp_path, tiny):
    d = tmp_path / "d"
    d.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(d / "grey.png")
    Image.fromarray(np.dstack([rgb, np.full((40, 56), 128, np.uint8)])).save(d / "rgba.png")
    Image.fromarray(rgb).convert("P").save(d / "palette.gif")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65535, (20, 90))).astype(np.uint16)).save(d / "deep.tif")
    Image.fromarray(rgb[:10, :12]).save(d / "tiny.bmp")
    emb = embed(tiny, d, batch_size=3)
    assert len(emb) == 7 and not emb.failures
    np.testing.assert_allclose(emb.features, reference(tiny, emb.paths, "flat"), rtol=1e-5, atol=1e-6)


def test_an_image_that_disappears_mid_run_is_reported(tmp_path, tiny):
    data = shapes_folder(tmp_path / "d", n=16)
    last = scan_folder(data).paths[-1]
    run = tiny.runtime.run

    def delete_then_run(*args, **kwargs):
        if last.exists():
            last.unlink()
        return run(*args, **kwargs)

    tiny.runtime.run = delete_then_run
    try:
        emb = embed(tiny, data, cache=tmp_path / "cache", batch_size=2, workers=1)
    finally:
        del tiny.runtime.run
    assert len(emb) == 15 and [f.path for f in emb.failures] == [last]
    assert "disappeared" in emb.failures[0].reason
    again = embed(tiny, data, cache=tmp_path / "cache")  # the file is gone from the scan now
    assert len(again) == 15 and not again.failures and again.computed == 0


def test_dynamic_size_models_need_a_size(tmp_path):
    data = shapes_folder(tmp_path / "d", n=4)
    m = onnxviz.load(save(tiny_cnn(dynamic=True), tmp_path / "dyn.onnx"))
    with pytest.raises(ImageError, match="dynamic size"):
        embed(m, data)
    assert embed(m, data, pre=Preprocess(size=24)).features.shape == (4, 8)


def test_a_batch_one_model_runs_image_by_image(tmp_path):
    model = tiny_cnn(size=32)
    for vi in [*model.graph.input, *model.graph.output]:
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    m = onnxviz.load(save(model, tmp_path / "b1.onnx"), verify=False)
    assert m.input.batch == 1
    data = shapes_folder(tmp_path / "d", n=5)
    emb = embed(m, data, batch_size=4)
    assert emb.features.shape == (5, 8)


def test_default_layer_on_real_architectures():
    from builders import LIGHT_MODELS

    # (AlexNet and VGG, whose FC inputs are 4096-wide Dropout outputs, take seconds to load; not here)
    expected = {"light_resnet50": (2048,), "light_squeezenet": (512, 13, 13), "light_densenet121": (1024, 1, 1),
                "light_inception_v1": (1024,), "light_shufflenet": (544,)}
    for path in LIGHT_MODELS:
        name = os.path.basename(path)[:-5]
        if name in expected:
            model = onnxviz.load(path, verify=False)
            assert tuple(model.tensor_shape(penultimate_layer(model))[1:]) == expected[name], name
