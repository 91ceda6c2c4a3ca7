"""Heatmap/Attribution .overlay(image) and .save(path, image=None): the README's way to keep a map."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import onnxviz
from onnxviz.methods.results import Attribution, Heatmap
from onnxviz.render.tiles import colorize

MODEL, IMAGE = "models/shapes_cnn.onnx", "models/images/star_0.png"


def _heat():
    ramp = np.linspace(0, 1, 16, dtype=np.float32)[None, None, :].repeat(8, 1)  # (1, 8, 16): left 0, right 1
    return Heatmap(raw=ramp * 3, map=ramp, target=np.array([2]), score=np.array([1.0]), method="gradcam")


def test_overlay_blends_the_map_over_an_image_of_another_size():
    img = np.full((32, 64, 3), 100, np.uint8)
    rgb = _heat().overlay(img, alpha=0.5)
    assert rgb.shape == (32, 64, 3) and rgb.dtype == np.uint8
    hot, cold = colorize(np.array([1.0]))[0], colorize(np.array([0.0]))[0]
    np.testing.assert_allclose(rgb[16, -1], np.rint(0.5 * 100 + 0.5 * hot), atol=8)  # right edge: the map's 1
    np.testing.assert_allclose(rgb[16, 0], np.rint(0.5 * 100 + 0.5 * cold), atol=8)  # left edge: its 0


def test_overlay_without_an_image_is_the_colourized_map():
    np.testing.assert_array_equal(_heat().overlay(), colorize(_heat().map[0]))
    with pytest.raises(IndexError, match="1 rows"):
        _heat().overlay(index=3)


def test_save_writes_png_or_raw_npy(tmp_path):
    heat = _heat()
    img = np.zeros((8, 16, 3), np.uint8)
    path = heat.save(tmp_path / "cam.png", image=img)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), heat.overlay(img))
    np.testing.assert_array_equal(np.asarray(Image.open(heat.save(tmp_path / "map.png"))), heat.overlay())
    np.testing.assert_array_equal(np.load(heat.save(tmp_path / "raw.npy")), heat.raw[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam.png", "map.png", "raw.npy"]  # nothing left over


def test_real_maps_save_and_overlay(tmp_path):
    model = onnxviz.load(MODEL, device="cpu")
    image = onnxviz.read_image(IMAGE)  # a PIL image: overlay takes it as it comes
    hw = np.asarray(image).shape[:2]
    x = onnxviz.preprocess([image], model.input, onnxviz.Preprocess.from_options(norm="imagenet", resize="stretch"))
    heat = onnxviz.grad_cam(model, x)
    sal = onnxviz.saliency(model, x, method="guided")
    assert isinstance(sal, Attribution)
    for result, name in ((heat, "cam.png"), (sal, "saliency.png")):
        out = result.save(tmp_path / name, image=image)
        assert np.asarray(Image.open(out)).shape == hw + (3,)
        assert result.overlay(image).shape == hw + (3,)
