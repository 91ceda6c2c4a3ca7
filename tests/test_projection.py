"""2-D maps: deterministic with a seed, PCA exact, small sets handled, CSV and pictures written."""
import csv

import numpy as np
import pytest

from onnxviz.errors import OnnxvizError
from onnxviz.images import Preprocess
from onnxviz.methods.embed import Embedding
from onnxviz.methods.projection import project, projection, save_csv
from onnxviz.render.dataset import scatter_figure, thumbnail_map


def blobs(n=90, d=64, seed=0):
    """Three well-separated clusters in d dimensions."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, d)) * 6
    labels = np.arange(n) % 3
    return centres[labels] + rng.standard_normal((n, d)), labels


@pytest.mark.parametrize("init", ["pca", "random"])
def test_tsne_is_deterministic_with_a_seed(init):
    x, _ = blobs()
    a, params = project(x, "tsne", perplexity=20, seed=3, init=init)
    b, _ = project(x, "tsne", perplexity=20, seed=3, init=init)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (90, 2)
    assert params == {"method": "tsne", "seed": 3, "pca_dims": 50, "perplexity": 20, "init": init}
    if init == "random":  # the seed draws the starting layout
        c, _ = project(x, "tsne", perplexity=20, seed=4, init=init)
        assert not np.allclose(a, c)



def test_tsne_keeps_clusters_apart():
    x, labels = blobs()
    coords, _ = project(x, "tsne", perplexity=20, seed=0)
    centroids = np.array([coords[labels == k].mean(axis=0) for k in range(3)])
    spread = max(np.linalg.norm(coords[labels == k] - centroids[k], axis=1).max() for k in range(3))
    gaps = [np.linalg.norm(centroids[i] - centroids[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > spread


def test_pca_is_the_top_two_principal_components():
    x, _ = blobs(d=8)
    coords, params = project(x, "pca", seed=0)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:2].T
    for k in range(2):  # up to sign
        assert np.allclose(coords[:, k], expected[:, k], atol=1e-8) or \
            np.allclose(coords[:, k], -expected[:, k], atol=1e-8)
    assert params == {"method": "pca", "seed": 0}


def test_small_sets_lower_the_perplexity_and_tiny_ones_are_refused():
    x, _ = blobs(n=10, d=5)
    coords, params = project(x, "tsne", perplexity=30, seed=0)
    assert params["perplexity"] == pytest.approx(3.0) and np.isfinite(coords).all()
    assert "pca_dims" not in params  # already under 50 dims
    with pytest.raises(OnnxvizError, match="at least 3"):
        project(x[:2])
    with pytest.raises(OnnxvizError, match="method"):
        project(x, "umap")
    with pytest.raises(OnnxvizError, match="NaN"):
        project(np.full((5, 3), np.nan))
    one_dim, _ = project(x[:, :1], "tsne")  # 1 feature: PCA, padded to 2-D
    assert one_dim.shape == (10, 2) and (one_dim[:, 1] == 0).all()


def test_projection_of_an_embedding_saves_csv_scatter_and_thumbnails(tmp_path):
    from PIL import Image

    x, labels = blobs(n=30, d=12)
    paths = []
    for i in range(30):
        p = tmp_path / f"{i:02d}.png"
        Image.new("RGB", (20, 12), (i * 8, 100, 200)).save(p)
        paths.append(p)
    labels = labels.copy()
    labels[0] = -1  # an image outside the class folders
    emb = Embedding(x.astype(np.float32), paths, labels, ("a", "b", "c"), "feat", "avg", Preprocess(size=8))
    proj = projection(emb, "tsne", perplexity=5, seed=1)
    rows = list(csv.DictReader(open(save_csv(proj, tmp_path / "map.csv"))))
    assert [r["path"] for r in rows] == [str(p) for p in paths] and rows[0]["label"] == "" and rows[1]["label"] == "b"
    np.testing.assert_allclose([[float(r["x"]), float(r["y"])] for r in rows], proj.coords, rtol=1e-5)
    fig = scatter_figure(proj)
    assert len(fig.axes) == 1 and "t-SNE of feat" in fig.axes[0].get_title()
    paths[3].unlink()  # gone before the thumbnails are drawn: left out, not fatal
    canvas, placed = thumbnail_map(proj, size=400)
    assert canvas.shape == (400, 400, 3) and canvas.dtype == np.uint8 and placed == 29
    assert (canvas != 255).any()
