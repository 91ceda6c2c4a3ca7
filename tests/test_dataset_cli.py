"""embed, neighbors, tsne and patches from the command line: files written, reruns resume, errors clean."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from builders import save, tiny_cnn
from onnxviz.cli import main
from onnxviz.cli.dataset import COMMANDS
from onnxviz.methods import embed as embed_mod
from onnxviz.synthetic import make_shapes, save_folder


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset_cli")
    save_folder(make_shapes(18, 32, seed=2), root / "imgs")
    (root / "imgs" / "notes.txt").write_text("not an image")
    (root / "imgs" / "broken.png").write_bytes(b"broken")
    return {"model": save(tiny_cnn(size=32), root / "tiny.onnx"), "imgs": root / "imgs", "root": root}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXVIZ_CACHE", str(tmp_path / "user-cache"))


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_embed_writes_features_and_manifest_and_resumes(files, tmp_path):
    out = tmp_path / "emb"
    r = run("embed", files["model"], files["imgs"], "--out", out, "--batch-size", 4)
    assert r.exit_code == 0, r.output
    assert "18 images x 8 features (18 computed, 0 reused)" in r.output
    assert "broken.png" in r.output and "notes.txt" in r.output  # reported, not fatal
    manifest = json.loads((out / "manifest.json").read_text())
    feats = np.load(out / "features.npy")
    assert feats.shape == (19, 8) and manifest["layer"] == "flat" and manifest["counts"]["failed"] == 1
    again = run("embed", files["model"], files["imgs"], "--out", out)
    assert "(0 computed, 18 reused)" in again.output
    other = run("embed", files["model"], files["imgs"], "--out", tmp_path / "emb2", "--layer", "relu2",
                "--pool", "max")
    assert other.exit_code == 0 and "relu2: 18 images x 8 features" in other.output


def test_neighbors_writes_a_picture_and_a_json_list(files, tmp_path):
    query = sorted((files["imgs"] / "star").iterdir())[0]
    out = tmp_path / "nn"
    r = run("neighbors", files["model"], files["imgs"], "--query", query, "-k", 4, "--metric", "euclidean",
            "--out", out)
    assert r.exit_code == 0, r.output
    found = json.loads((out / "neighbors.json").read_text())
    assert isinstance(found, list) and len(found) == 4
    assert found[0]["path"] == str(query) and found[0]["rank"] == 1 and found[0]["distance"] < 1e-4
    assert [f["distance"] for f in found] == sorted(f["distance"] for f in found)
    assert (out / "neighbors.png").stat().st_size > 1000
    assert json.loads((out / "failures.json").read_text())[0]["path"].endswith("broken.png")
    # the default cache is reused by the next command on the same folder
    r = run("tsne", files["model"], files["imgs"], "--method", "pca", "--out", tmp_path / "map")
    assert r.exit_code == 0, r.output


def test_tsne_is_reproducible_from_the_command_line(files, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        r = run("tsne", files["model"], files["imgs"], "--perplexity", 5, "--seed", 1, "--out", out,
                "--thumbnails", 10, "--no-cache")
        assert r.exit_code == 0, r.output
        assert "perplexity=5" in r.output
    assert (a / "tsne.csv").read_text() == (b / "tsne.csv").read_text()
    assert (a / "tsne.csv").read_text().count("\n") == 19  # header + 18 images
    assert (a / "tsne.png").stat().st_size > 1000 and (a / "tsne_thumbnails.png").stat().st_size > 1000


def test_patches_writes_grids_and_json(files, tmp_path):
    out = tmp_path / "p"
    r = run("patches", files["model"], files["imgs"], "--layer", "relu2", "--channels", 2, "--top", 5, "--out", out)
    assert r.exit_code == 0, r.output
    info = json.loads((out / "patches.json").read_text())
    assert len(info["channels"]) == 2 and len(info["channels"][0]["patches"]) == 5
    assert info["receptive_field"]["size"] == [8, 8] and "receptive field 8x8 px" in r.output
    for ch in info["channels"]:
        assert (out / f"channel_{ch['channel']}.png").exists()
    r = run("patches", files["model"], files["imgs"], "--layer", "relu2", "--channel", 3, "--channel", 1,
            "--out", out)
    assert [c["channel"] for c in json.loads((out / "patches.json").read_text())["channels"]] == [3, 1]
    r = run("patches", files["model"], files["imgs"], "--layer", "relu2", "--channel", 3, "--channels", 2)
    assert r.exit_code == 2 and "not both" in r.output
    r = run("patches", files["model"], files["imgs"], "--layer", "flat", "--out", out)
    assert r.exit_code == 1 and "not a feature map" in r.output


def test_bad_folders_are_clean_errors(files, tmp_path):
    (tmp_path / "empty").mkdir()
    for cmd in ("embed", "tsne", "patches"):
        extra = ["--layer", "relu2"] if cmd == "patches" else []
        r = run(cmd, files["model"], tmp_path / "empty", *extra, "--out", tmp_path / "o")
        assert r.exit_code == 1 and "no image files" in r.output, r.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"x")
    r = run("embed", files["model"], tmp_path / "bad", "--out", tmp_path / "o2")
    assert r.exit_code == 1 and "none of the 1 image files" in r.output


def test_ctrl_c_keeps_the_cache_and_says_how_to_resume(files, tmp_path, monkeypatch):
    calls = []
    original = embed_mod.Pooler.__call__

    def interrupt_second(self, values):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, values)

    monkeypatch.setattr(embed_mod.Pooler, "__call__", interrupt_second)
    out = tmp_path / "emb"
    r = run("embed", files["model"], files["imgs"], "--out", out, "--batch-size", 4, "--workers", 1)
    assert r.exit_code == 130 and "run the same command again to resume" in r.output
    monkeypatch.setattr(embed_mod.Pooler, "__call__", original)
    r = run("embed", files["model"], files["imgs"], "--out", out, "--batch-size", 4)
    assert "(15 computed, 3 reused)" in r.output  # the first batch: broken.png and 3 images


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_command_has_help_with_an_example(command):
    r = run(command.name, "--help")
    assert r.exit_code == 0 and "Example:" in r.output and "onnxviz " + command.name in r.output


def _slow_cnn(path):
    """About 0.25 GMAC per 128x128 image: slow enough to interrupt a run of a couple hundred images."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name)
             for name, shape in (("w1", (32, 3, 7, 7)), ("w2", (32, 32, 3, 3)), ("fc", (32, 4)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[3, 3, 3, 3]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("MatMul", ["flat", "fc"], ["logits"])]
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("x", 1, ["N", 3, 128, 128])],
                              [helper.make_tensor_value_info("logits", 1, ["N", 4])], inits)
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def test_a_real_sigint_leaves_a_cache_the_next_run_resumes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import onnxviz
    from onnxviz.methods.embed import image_features

    n = 240
    folder, out, model = tmp_path / "many", tmp_path / "emb", _slow_cnn(tmp_path / "slow.onnx")
    save_folder(make_shapes(n, 32, seed=5), folder)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "onnxviz", "embed", model, str(folder), "--out", str(out), "--batch-size", "4",
           "--workers", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if (np.load(out / "status.npy") == 1).sum() >= 4:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be interrupted")
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    manifest = json.loads((out / "manifest.json").read_text())
    done = int((np.load(out / "status.npy") == 1).sum())
    if done == n or manifest["complete"]:
        pytest.skip("every image was done before the interrupt reached the run (a loaded machine)")
    assert proc.returncode == 130 and "resume" in output, output
    assert 4 <= done < n and not manifest["complete"], done
    r = run("embed", model, folder, "--out", out, "--batch-size", 16)
    assert f"({n - done} computed, {done} reused)" in r.output, r.output
    m = onnxviz.load(model)
    rows = [0, done - 1, done, n - 1]  # on both sides of the interruption
    paths = [folder / f["path"] for f in json.loads((out / "manifest.json").read_text())["files"]]
    expected = image_features(m, [paths[i] for i in rows], "flat")
    np.testing.assert_allclose(np.load(out / "features.npy")[rows], expected, rtol=1e-5, atol=1e-6)
