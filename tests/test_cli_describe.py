"""The describing commands as a user runs them: inspect, filters, activations, export-grad, check-grad."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from PIL import Image

from builders import LIGHT_MODELS, light_params, save, tiny_cnn
from onnxviz.cli import main


@pytest.fixture
def tiny(tmp_path):
    return save(tiny_cnn(), tmp_path / "tiny.onnx")


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "pic.png"
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)
    return str(path)


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def test_every_command_has_help_with_an_example():
    for name, command in main.commands.items():
        result = run(name, "--help")
        assert result.exit_code == 0, name
        assert "Example" in result.output and f"onnxviz {name}" in result.output, name


def test_inspect_table_and_json(tiny):
    result = run("inspect", tiny)
    assert result.exit_code == 0
    assert "NCHW, 3 channels, 16x16" in result.output
    assert "* relu2" in result.output
    data = json.loads(run("inspect", tiny, "--json").output)
    assert data["gradcam_candidates"][0] == "relu2"
    # conv1: 6*3*3*3 + 6 = 168 weights; conv2: 8*6*9 + 8 = 440; fc: 8*4 + 4 = 36
    assert data["totals"]["params"] == 168 + 440 + 36
    # conv1: 16*16*6 outputs * 27 MACs; conv2: 8*8*8 * 54; gemm 4 * 8
    assert data["totals"]["macs"] == 16 * 16 * 6 * 27 + 8 * 8 * 8 * 54 + 4 * 8


def test_inspect_creates_no_session(tiny, monkeypatch):
    """inspect reads the graph only: a 100 MB model must not pay for session creation."""
    def refuse(*a, **k):
        raise AssertionError("inspect created an onnxruntime session")

    monkeypatch.setattr(ort, "InferenceSession", refuse)
    assert run("inspect", tiny).exit_code == 0


def test_filters_writes_png_and_weights(tiny, tmp_path):
    out = tmp_path / "f"
    result = run("filters", tiny, "--out", out)
    assert result.exit_code == 0, result.output
    w = np.load(out / "conv1.npy")
    ref = next(onnx.numpy_helper.to_array(t) for t in tiny_cnn().graph.initializer if t.name == "w1")
    np.testing.assert_array_equal(w, ref)
    assert Image.open(out / "conv1.png").size[0] > 100


def test_activations_writes_maps_of_the_layer(tiny, image, tmp_path):
    out = tmp_path / "a"
    result = run("activations", tiny, image, "--layer", "relu2", "--top", "4", "--out", out)
    assert result.exit_code == 0, result.output
    acts = np.load(out / "pic" / "relu2.npy")
    assert acts.shape == (8, 8, 8) and (acts >= 0).all()
    meta = json.loads((out / "pic" / "relu2.json").read_text())
    means = acts.mean(axis=(1, 2))
    assert meta["channels"] == list(np.argsort(-means, kind="stable")[:4])


def test_unknown_layer_is_a_clean_error(tiny, image, tmp_path):
    result = run("activations", tiny, image, "--layer", "nope", "--out", tmp_path)
    assert result.exit_code == 1 and "no tensor named 'nope'" in result.output


def test_bad_image_is_a_clean_error(tiny, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    result = run("activations", tiny, bad, "--layer", "relu2", "--out", tmp_path)
    assert result.exit_code == 1 and "bad.png" in result.output


def test_export_grad_runs_in_plain_onnxruntime(tiny, tmp_path):
    out = tmp_path / "grad.onnx"
    result = run("export-grad", tiny, "--wrt", "input", "-o", out)
    assert result.exit_code == 0, result.output
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert names == ["image", "seed"]
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    seed = np.array([[0, 1, 0, 0]], np.float32)
    grad_name = [o.name for o in sess.get_outputs()][-1]
    g = sess.run([grad_name], {"image": x, "seed": seed})[0]
    # compare with the API, which seeds class 1 of the logits the same way
    import onnxviz

    api = onnxviz.load(tiny, device="cpu").gradients(x, target=1)["input"]
    np.testing.assert_allclose(g, api, rtol=1e-5, atol=1e-7)


def test_export_refuses_to_overwrite_its_input(tiny):
    result = run("export-grad", tiny, "-o", tiny)
    assert result.exit_code == 1
    assert onnx.load(tiny).graph.node  # the model is untouched


def test_check_grad_passes_on_a_correct_model(tiny, image):
    result = run("check-grad", tiny, image, "--directions", "1")
    assert result.exit_code == 0, result.output
    assert "all" in result.output and "within" in result.output


@pytest.mark.parametrize("path", light_params(LIGHT_MODELS[:3]))
def test_light_models_filters_and_activations(path, tmp_path):
    result = run("filters", path, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    w = np.load(next(tmp_path.glob("*.npy")))
    assert w.ndim == 4 and w.shape[1] == 3
