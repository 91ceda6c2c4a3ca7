"""The pointing game: does the map's peak fall inside the object's box?

The sample model (models/shapes_cnn.onnx) was trained on onnxviz.synthetic's shapes, whose
boxes are known. For 200 images from a seed no training or model check used, each method's
map maximum for the true class must lie inside the box for at least 90% of the images.
Run with ``-s`` to see the rates.
"""
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import onnxviz

MODEL = Path(os.environ.get("ONNXVIZ_SHAPES_MODEL",
                            Path(__file__).resolve().parents[1] / "models" / "shapes_cnn.onnx"))
SEED, N, MIN_RATE = 7001, 200, 0.90

METHODS = {
    "Grad-CAM": lambda m, x, t: onnxviz.grad_cam(m, x, target=t),
    "CAM": lambda m, x, t: onnxviz.cam(m, x, target=t),
    # an 8-pixel window is a third to a half of an object; larger ones leak drops past the box edges
    "occlusion": lambda m, x, t: onnxviz.occlusion(m, x, target=t, window=8, stride=4, batch_size=256),
}


@pytest.fixture(scope="module")
def game():
    if not MODEL.exists():
        pytest.skip(f"the sample model {MODEL} is not built (scripts/build_sample_model.py)")
    synthetic = pytest.importorskip("onnxviz.synthetic")
    model = onnxviz.load(str(MODEL), device="cpu")
    data = synthetic.make_shapes(N, size=64, seed=SEED)
    pre = onnxviz.Preprocess(norm="imagenet", resize="stretch", size=(64, 64))
    x = onnxviz.preprocess([Image.fromarray(im) for im in data.images], model.input, pre)
    return model, x, data


def hits(maps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Whether each (H, W) map's maximum lies in its (x0, y0, x1, y1) box (x1, y1 exclusive)."""
    py, px = np.divmod(maps.reshape(len(maps), -1).argmax(1), maps.shape[2])
    x0, y0, x1, y1 = boxes.T
    return (px >= x0) & (px < x1) & (py >= y0) & (py < y1)


# occlusion runs 200 images x 225 windows (75 s on 2 cores): a slow whole-model check
@pytest.mark.parametrize("method", [pytest.param(m, marks=[pytest.mark.slow] if m == "occlusion" else []) for m in METHODS])
def test_pointing_game(game, method):
    model, x, data = game
    result = METHODS[method](model, x, data.labels)
    np.testing.assert_array_equal(result.target, data.labels)
    rate = hits(result.map, data.boxes).mean()
    print(f"\npointing game, {method} ({result.layer or 'input'}): {rate:.1%} of {N} images "
          f"(seed {SEED}, true class)")
    assert rate >= MIN_RATE, f"{method}: the map's peak is in the box for only {rate:.1%} of the images"
