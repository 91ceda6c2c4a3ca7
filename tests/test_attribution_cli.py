"""cam, saliency and occlusion commands: files per image, results.json, batches, targets, errors."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import onnxviz
from builders import flatten_head_cnn, save, strided_cnn
from onnxviz.cli import main

LABELS = ["circle", "square", "star", "ring"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    images = []
    for i, name in enumerate(["a", "b", "c"]):
        path = root / "imgs" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return {"model": save(strided_cnn(), root / "m.onnx"), "images": images,
            "labels": str(root / "labels.txt"), "vgg": save(flatten_head_cnn(), root / "vgg.onnx")}


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("method", ["gradcam", "cam", "gradcam++", "scorecam", "layercam", "guided-gradcam"])
def test_cam_writes_maps_per_image(files, tmp_path, method):
    out = tmp_path / "out"
    r = run("cam", files["model"], *files["images"], "--method", method, "--out", out, "--batch-size", 2,
            "--labels", files["labels"])
    assert r.exit_code == 0, r.output
    assert "at layer 'feat'" in r.output
    summary = results(out)
    assert summary["method"] == method and len(summary["images"]) == 3
    for entry, name in zip(summary["images"], "abc"):
        assert Path(entry["dir"]) == out / name
        (m,) = entry["maps"]
        assert m["layer"] == "feat" and m["method"] == method and m["label"] == LABELS[m["target"]]
        saved = np.load(out / name / f"{method}.npy")
        raw = np.load(out / name / f"{method}.raw.npy")
        assert saved.shape == (16, 16) and 0 <= saved.min() and saved.max() <= 1
        assert raw.shape == ((3, 16, 16) if method == "guided-gradcam" else (8, 8))
        assert (out / name / f"{method}.png").stat().st_size > 1000
        assert m["files"]["png"] == str(out / name / f"{method}.png")


def test_cam_cli_equals_the_api(files, tmp_path):
    out = tmp_path / "out"
    assert run("cam", files["model"], files["images"][1], "--out", out, "--target", 2).exit_code == 0
    session_model = onnxviz.load(files["model"], device="cpu")
    x = onnxviz.preprocess([onnxviz.read_image(files["images"][1])], session_model.input,
                           onnxviz.Preprocess(size=(16, 16)))
    h = onnxviz.grad_cam(session_model, x, target=2)
    np.testing.assert_allclose(np.load(out / "b" / "gradcam.raw.npy"), h.raw[0], rtol=1e-6)
    np.testing.assert_allclose(np.load(out / "b" / "gradcam.npy"), h.map[0], atol=1e-7)
    (m,) = results(out)["images"][0]["maps"]
    assert m["target"] == 2 and m["label"] == "class 2" and m["score"] == pytest.approx(float(h.score[0]), rel=1e-6)


def test_top_k_suffixes_files_with_the_class(files, tmp_path):
    out = tmp_path / "out"
    r = run("cam", files["model"], *files["images"][:2], "--top-k", 2, "--out", out)
    assert r.exit_code == 0, r.output
    for entry in results(out)["images"]:
        targets = [m["target"] for m in entry["maps"]]
        assert len(targets) == 2 and len(set(targets)) == 2
        for k in targets:
            assert (Path(entry["dir"]) / f"gradcam_{k}.npy").exists()
            assert (Path(entry["dir"]) / f"gradcam_{k}.png").exists()


def test_targets_per_image_and_by_name(files, tmp_path):
    out = tmp_path / "out"
    r = run("saliency", files["model"], *files["images"], "--target", "star,0,ring", "--labels", files["labels"],
            "--out", out, "--method", "guided")
    assert r.exit_code == 0, r.output
    assert [e["maps"][0]["target"] for e in results(out)["images"]] == [2, 0, 3]
    assert np.load(out / "a" / "guided.raw.npy").shape == (3, 16, 16)
    r = run("saliency", files["model"], *files["images"], "--target", "1,2", "--out", out)
    assert r.exit_code != 0 and "2 classes for 3 images" in r.output
    r = run("saliency", files["model"], files["images"][0], "--target", "dog", "--out", out)
    assert r.exit_code != 0 and "neither a class index nor a label name" in r.output


@pytest.mark.parametrize("method", ["vanilla", "deconvnet", "smoothgrad", "integrated"])
def test_saliency_methods(files, tmp_path, method):
    out = tmp_path / "out"
    r = run("saliency", files["model"], files["images"][0], "--method", method, "--out", out, "--samples", 4,
            "--steps", 8)
    assert r.exit_code == 0, r.output
    assert np.load(out / "a" / f"{method}.npy").shape == (16, 16)


def test_occlusion_options(files, tmp_path):
    out = tmp_path / "out"
    r = run("occlusion", files["model"], *files["images"], "--window", 4, "--stride", 2, "--baseline", "blur",
            "--out", out)
    assert r.exit_code == 0, r.output
    assert np.load(out / "c" / "occlusion.raw.npy").shape == (16, 16)
    assert results(out)["images"][0]["maps"][0]["layer"] is None
    r = run("occlusion", files["model"], files["images"][0], "--window", 2, "--stride", 1, "--layer", "feat",
            "--out", out)
    assert r.exit_code == 0, r.output
    assert np.load(out / "a" / "occlusion.raw.npy").shape == (8, 8)
    r = run("occlusion", files["model"], files["images"][0], "--baseline", "grey", "--out", out)
    assert r.exit_code != 0 and "expected a number, 'blur' or 'mean'" in r.output


def test_same_stem_in_two_folders(files, tmp_path):
    other = tmp_path / "other" / "a.png"
    other.parent.mkdir()
    other.write_bytes(Path(files["images"][0]).read_bytes())
    out = tmp_path / "out"
    assert run("cam", files["model"], files["images"][0], other, "--out", out).exit_code == 0
    assert (out / "a" / "gradcam.npy").exists() and (out / "a-2" / "gradcam.npy").exists()


def test_clear_errors(files, tmp_path):
    r = run("cam", files["vgg"], files["images"][0], "--method", "cam", "--out", tmp_path)
    assert r.exit_code == 1 and "use Grad-CAM" in r.output and "Traceback" not in r.output
    r = run("cam", files["model"], files["images"][0], "--layer", "nope", "--out", tmp_path)
    assert r.exit_code == 1 and "no tensor named 'nope'" in r.output
    r = run("cam", files["model"], files["images"][0], "--layer", "flat", "--out", tmp_path)
    assert r.exit_code == 1 and "spatial extent" in r.output
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("command", ["cam", "saliency", "occlusion"])
def test_help_has_an_example(command):
    r = run(command, "--help")
    assert r.exit_code == 0 and "Example:" in r.output and f"onnxviz {command} " in r.output
    for option in ("--target", "--top-k", "--out"):
        assert option in r.output


def test_a_new_cam_variant_needs_one_row():
    """Name, function and title of a CAM method live in one table (methods/cam.VARIANTS): the CLI's
    choices and titles come from it, and a method without a title is named, not a bare KeyError."""
    from onnxviz.autodiff import RULESETS
    from onnxviz import outputs
    from onnxviz.methods import cam, saliency
    from onnxviz.runtime import DEVICES
    from onnxviz.targets import SCORES

    def choices(command, option):
        return list(next(p for p in main.commands[command].params if p.name == option).type.choices)

    assert choices("cam", "method") == list(cam.METHODS) and choices("saliency", "method") == list(saliency.METHODS)
    assert set(cam.TITLES) == set(cam.METHODS) and all(outputs.title(m) != m for m in cam.METHODS)
    assert outputs.title("meancam") == "meancam"
    assert choices("cam", "device") == list(DEVICES) and choices("cam", "score") == list(SCORES)
    assert choices("export-grad", "rules") == list(RULESETS)
