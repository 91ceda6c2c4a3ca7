"""The procedural shapes dataset: deterministic, well-formed, and its ground truth exact."""
import numpy as np
import pytest
from PIL import Image

from onnxviz.synthetic import CLASSES, Shapes, make_shapes, save_folder


@pytest.fixture(scope="module")
def data() -> Shapes:
    return make_shapes(600, size=64, seed=3)


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = make_shapes(20, seed=5), make_shapes(20, seed=5), make_shapes(20, seed=6)
    for field in ("images", "labels", "boxes", "masks"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.images, c.images)


def test_shapes_and_dtypes(data):
    n = len(data)
    assert data.images.shape == (n, 64, 64, 3) and data.images.dtype == np.uint8
    assert data.labels.shape == (n,) and data.labels.dtype == np.int64
    assert data.boxes.shape == (n, 4) and np.issubdtype(data.boxes.dtype, np.integer)
    assert data.masks.shape == (n, 64, 64) and data.masks.dtype == bool
    assert data.classes == CLASSES


def test_other_sizes_and_empty():
    big = make_shapes(4, size=100, seed=0)
    assert big.images.shape == (4, 100, 100, 3) and big.masks.shape == (4, 100, 100)
    assert len(make_shapes(0)) == 0


def test_boxes_are_the_tight_boxes_of_the_masks(data):
    for mask, (x0, y0, x1, y1) in zip(data.masks, data.boxes):
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        inside = np.zeros_like(mask)
        inside[y0:y1, x0:x1] = True
        assert not (mask & ~inside).any()
        # Tight: every edge row and column of the box holds object pixels.
        assert mask[y0, x0:x1].any() and mask[y1 - 1, x0:x1].any()
        assert mask[y0:y1, x0].any() and mask[y0:y1, x1 - 1].any()


def test_object_size_is_a_quarter_to_half_the_side(data):
    side = np.maximum(data.boxes[:, 2] - data.boxes[:, 0], data.boxes[:, 3] - data.boxes[:, 1]) / 64
    assert side.min() >= 0.18 and side.max() <= 0.5
    assert 0.25 <= np.median(side) <= 0.45


def test_classes_are_balanced(data):
    counts = np.bincount(data.labels, minlength=len(CLASSES))
    assert counts.max() - counts.min() <= 1


def test_class_subset_relabels():
    sub = make_shapes(30, seed=1, classes=("star", "ring"))
    assert sub.classes == ("star", "ring")
    assert set(sub.labels.tolist()) == {0, 1}
    with pytest.raises(ValueError, match="hexagon"):
        make_shapes(3, classes=("circle", "hexagon"))


def test_object_stands_out_from_its_surroundings(data):
    # Object colour vs the background in a frame around it: far apart in RGB.
    for image, mask, (x0, y0, x1, y1) in zip(data.images.astype(float), data.masks, data.boxes):
        frame = np.zeros_like(mask)
        frame[max(0, y0 - 4):y1 + 4, max(0, x0 - 4):x1 + 4] = True
        frame &= ~mask
        gap = np.linalg.norm(image[mask].mean(0) - image[frame].mean(0))
        assert gap > 40


def test_classes_differ_by_shape_not_colour(data):
    # Mean object colour per class stays near the middle: no class owns a colour.
    colours = np.stack([img[m].mean(0) for img, m in zip(data.images, data.masks)])
    per_class = np.stack([colours[data.labels == k].mean(0) for k in range(len(CLASSES))])
    assert np.ptp(per_class, axis=0).max() < 40


def test_save_folder_writes_one_png_per_image_per_class(tmp_path):
    small = make_shapes(12, seed=2)
    paths = save_folder(small, tmp_path)
    assert len(paths) == 12
    assert {p.parent.name for p in paths} == set(CLASSES)
    back = np.asarray(Image.open(paths[0]))
    np.testing.assert_array_equal(back, small.images[0])

    numbered = save_folder(small, tmp_path / "numbered", class_names=False)
    assert {p.parent.name for p in numbered} == {str(k) for k in range(len(CLASSES))}
