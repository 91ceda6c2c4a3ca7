"""Nearest neighbours in feature space: k-NN quality on the sample model, exactness, self-retrieval."""
from pathlib import Path

import numpy as np
import pytest

import onnxviz
from builders import save, tiny_cnn
from onnxviz.errors import OnnxvizError
from onnxviz.images import Preprocess
from onnxviz.methods.embed import Embedding, embed
from onnxviz.methods.neighbors import knn_accuracy, knn_predict, nearest_neighbors, neighbors_of
from onnxviz.render.dataset import neighbors_figure
from onnxviz.synthetic import make_shapes, save_folder

SAMPLE = Path(__file__).resolve().parents[1] / "models" / "shapes_cnn.onnx"


def _embedding(features, labels, classes=("a", "b", "c")):
    n = len(features)
    return Embedding(np.asarray(features, np.float32), [Path(f"{i}.png") for i in range(n)],
                     np.asarray(labels), tuple(classes), "feat", "avg", Preprocess(size=8))


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    if not SAMPLE.exists():
        pytest.skip("sample model not built yet")
    folder = tmp_path_factory.mktemp("shapes")
    save_folder(make_shapes(300, 64, seed=4242), folder)  # unseen by training
    model = onnxviz.load(str(SAMPLE))
    pre = Preprocess(size=64, resize="stretch")  # as its sidecar JSON says
    return model, embed(model, folder, pre=pre, cache=folder.parent / "cache")


def test_knn_classification_in_the_sample_models_embedding(sample):
    _, emb = sample
    assert len(emb) == 300 and len(emb.classes) == 6
    accuracy = knn_accuracy(emb, k=5)
    assert accuracy >= 0.90, accuracy


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_an_image_in_the_set_is_its_own_nearest_neighbour(sample, metric):
    model, emb = sample
    for i in (0, 77, 299):
        result = nearest_neighbors(model, emb, emb.paths[i], k=5, metric=metric)
        first = result.neighbors[0]
        assert first.path == emb.paths[i] and first.index == i and first.distance < 1e-4
        assert [n.rank for n in result.neighbors] == [1, 2, 3, 4, 5]
        assert all(a.distance <= b.distance for a, b in zip(result.neighbors, result.neighbors[1:]))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_neighbours_are_the_brute_force_nearest(metric):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((50, 6))
    q = rng.standard_normal(6)
    emb = _embedding(feats, rng.integers(0, 3, 50))
    if metric == "cosine":
        d = 1 - feats @ q / (np.linalg.norm(feats, axis=1) * np.linalg.norm(q))
    else:
        d = np.linalg.norm(feats - q, axis=1)
    result = neighbors_of(emb, q, k=7, metric=metric)
    assert [n.index for n in result.neighbors] == list(np.argsort(d)[:7])
    np.testing.assert_allclose([n.distance for n in result.neighbors], np.sort(d)[:7], rtol=1e-4, atol=1e-6)
    assert result.to_json()[0]["rank"] == 1 and result.to_json()[0]["label"] in ("a", "b", "c")


def test_knn_leaves_the_image_out_and_breaks_ties_by_the_nearer_neighbour():
    # on a line: 0 and 1 are "a", 2.5 is "b", 10 and 11 "c"; 2.5's two neighbours are 1 (a) and 0 (a)
    x = np.array([[0.0], [1.0], [2.5], [10.0], [11.0]])
    emb = _embedding(x, [0, 0, 1, 2, 2])
    assert knn_predict(emb, k=2, metric="euclidean").tolist() == [0, 0, 0, 2, 2]
    # k=2 with a tie (one vote each): the nearer neighbour's label wins
    emb = _embedding(np.array([[0.0], [1.0], [3.0]]), [0, 1, 2])
    assert knn_predict(emb, k=2, metric="euclidean").tolist() == [1, 0, 1]
    assert knn_accuracy(_embedding(x, [0, 0, 1, 2, 2]), k=2, metric="euclidean") == pytest.approx(0.8)


def test_unlabelled_images_do_not_vote():
    emb = _embedding(np.array([[0.0], [0.1], [5.0], [5.1], [0.05]]), [0, 0, 1, 1, -1])
    assert knn_predict(emb, k=1, metric="euclidean").tolist() == [0, 0, 1, 1]


def test_bad_queries(tmp_path):
    emb = _embedding(np.eye(8)[:3], [0, 1, 2])
    emb.pre = Preprocess(size=32)
    with pytest.raises(OnnxvizError, match="metric"):
        neighbors_of(emb, np.ones(8), metric="manhattan")
    with pytest.raises(OnnxvizError, match="features"):
        neighbors_of(emb, np.ones(4))
    assert len(neighbors_of(emb, np.ones(8), k=10).neighbors) == 3  # k larger than the set
    with pytest.raises(OnnxvizError, match="labelled"):
        knn_predict(_embedding(np.eye(3), [-1, -1, 0]))
    model = onnxviz.load(save(tiny_cnn(size=32), tmp_path / "tiny.onnx"))
    (tmp_path / "q.png").write_bytes(b"not an image")
    with pytest.raises(OnnxvizError, match="q.png"):
        nearest_neighbors(model, emb, tmp_path / "q.png")


def test_the_figure_shows_the_query_and_every_neighbour(tmp_path):
    model = onnxviz.load(save(tiny_cnn(size=32), tmp_path / "tiny.onnx"))
    folder = tmp_path / "d"
    save_folder(make_shapes(12, 32, seed=3), folder)
    emb = embed(model, folder)
    result = nearest_neighbors(model, emb, emb.paths[2], k=4)
    images = [np.zeros((32, 32, 3), np.uint8)] * 4
    fig = neighbors_figure(result, images, np.zeros((32, 32, 3), np.uint8))
    assert len(fig.axes) == 5 and "4 nearest" in fig._suptitle.get_text()
