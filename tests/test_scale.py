"""Dataset-scale runs without Ray: --shard i/n, content-keyed parts, the batch callables, the missing-extra message.

The Ray engine itself is tested in test_scale_ray.py (skipped when ray is not installed).
"""
import builtins
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxviz.cli import main
from onnxviz.session import open_session
from onnxviz.datasets import scan_folder
from onnxviz.distributed import BatchEmbedder, BatchExplainer, Shard, computed_keys, embed_dataset
from onnxviz.distributed.store import PARTS
from onnxviz.errors import OnnxvizError
from onnxviz.methods.cam import grad_cam
from onnxviz.methods.embed import features_of
from onnxviz.synthetic import make_shapes, save_folder

MODEL = str(Path(__file__).resolve().parents[1] / "models" / "shapes_cnn.onnx")


def shapes(path, n, seed=3):
    save_folder(make_shapes(n, 64, seed=seed), path)
    return path


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def session():
    return open_session(MODEL)


# ---------------------------------------------------------------------------- --shard i/n

def test_shards_partition_a_folder_deterministically_and_stably(tmp_path):
    names = [f"c{i % 3}/{i:05d}.png" for i in range(300)]
    shards = [Shard.parse(f"{i}/4") for i in range(4)]
    owners = [[s.index for s in shards if s.contains(n)] for n in names]
    assert all(len(o) == 1 for o in owners)  # every file in exactly one shard
    counts = np.bincount([o[0] for o in owners], minlength=4)
    assert counts.min() > 40  # roughly balanced (75 expected each)
    # A file's shard depends on its own name only: adding files never moves finished ones.
    assert [Shard(1, 4).contains(n) for n in names] == [Shard(1, 4).contains(n) for n in names + ["new.png"]][:300]
    for bad in ("2/2", "1", "a/b", "-1/3", "0/0"):
        with pytest.raises(OnnxvizError, match="--shard"):
            Shard.parse(bad)


def test_a_bad_shard_option_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["embed", MODEL, str(shapes(tmp_path / "d", 2)), "--shard", "3/2"])
    assert result.exit_code == 2 and "0 <= i < n" in result.output


def test_sharded_embed_runs_together_equal_the_whole(tmp_path):
    data = shapes(tmp_path / "data", 30)
    whole = tmp_path / "whole"
    assert cli("embed", MODEL, data, "--out", whole, "--batch-size", 8).exit_code == 0  # the local engine
    out = tmp_path / "sharded"
    for i in range(2):
        r = cli("embed", MODEL, data, "--out", out, "--shard", f"{i}/2", "--batch-size", 8)
        assert r.exit_code == 0, r.output
    reference = np.load(whole / "features.npy")
    files = [f["path"] for f in json.loads((whole / "manifest.json").read_text())["files"]]
    seen = {}
    for i in range(2):
        part = out / f"shard-{i}-of-2"
        manifest = json.loads((part / "manifest.json").read_text())
        assert manifest["complete"]
        for f, row in zip(manifest["files"], np.load(part / "features.npy")):
            assert f["path"] not in seen
            seen[f["path"]] = row
    assert sorted(seen) == files
    np.testing.assert_array_equal(np.stack([seen[f] for f in files]), reference)  # bit for bit
    # The run without --shard assembles the whole from the parts, computing nothing.
    r = cli("embed", MODEL, data, "--out", out, "--batch-size", 8)
    assert "(0 computed, 30 reused)" in r.output, r.output
    np.testing.assert_array_equal(np.load(out / "features.npy"), reference)
    keys = computed_keys(out)
    assert len(keys) == 30 and len(set(keys)) == 30  # each image computed exactly once


def test_sharded_cam_runs_together_equal_the_whole(tmp_path):
    data = shapes(tmp_path / "data", 8)
    whole, out = tmp_path / "whole", tmp_path / "sharded"
    assert cli("cam", MODEL, data, "--out", whole).exit_code == 0
    for i in range(2):
        r = cli("cam", MODEL, data, "--out", out, "--shard", f"{i}/2")
        assert r.exit_code == 0, r.output
    entries = [e for i in range(2) for e in json.loads((out / f"results.shard-{i}-of-2.json").read_text())["images"]]
    reference = json.loads((whole / "results.json").read_text())["images"]
    assert sorted(e["image"] for e in entries) == sorted(e["image"] for e in reference)
    r = cli("cam", MODEL, data, "--out", out)
    assert "0 computed, 8 already done" in r.output, r.output
    together = json.loads((out / "results.json").read_text())["images"]
    assert [e["image"] for e in together] == [e["image"] for e in reference]
    for a, b in zip(reference, together):
        assert Path(a["dir"]).name == Path(b["dir"]).name
        for ma, mb in zip(a["maps"], b["maps"]):
            assert (ma["target"], ma["label"]) == (mb["target"], mb["label"])
            for kind in ("map", "raw"):
                np.testing.assert_allclose(np.load(mb["files"][kind]), np.load(ma["files"][kind]), atol=1e-6)
            assert Path(mb["files"]["png"]).is_file()


def same_metrics(a, b, where="", skip=("files",)):
    """Two metrics.json (or results.json) trees equal, numbers to 1e-6 (keys in ``skip`` aside)."""
    if isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for key in a:
            if key not in skip:
                same_metrics(a[key], b[key], f"{where}/{key}", skip)
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            same_metrics(u, v, f"{where}/{i}", skip)
    elif isinstance(a, float):
        assert abs(a - b) <= 1e-6, (where, a, b)
    else:
        assert a == b, (where, a, b)


def evaluate_args(data, tmp_path):
    """Four images, two methods, every metric (pointing from a box per image), short curves."""
    images = sorted(str(p) for p in Path(data).rglob("*.png"))[:4]
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({Path(p).name: [[8 + 4 * i, 8, 40, 48]] for i, p in enumerate(images)}))
    return [MODEL, *images, "--method", "gradcam,vanilla", "--metrics", "deletion,insertion,road,pointing,sanity",
            "--boxes", boxes, "--steps", "8", "--batch-size", "2"]


def test_sharded_evaluate_runs_together_equal_the_whole(tmp_path):
    args = evaluate_args(shapes(tmp_path / "data", 4), tmp_path)
    whole, out = tmp_path / "whole", tmp_path / "sharded"
    local = cli("evaluate", *args, "--out", whole)
    assert local.exit_code == 0, local.output
    for i in range(2):
        r = cli("evaluate", *args, "--out", out, "--shard", f"{i}/2")
        assert r.exit_code == 0, r.output
    shards = [json.loads((out / f"metrics.shard-{i}-of-2.json").read_text())["images"] for i in range(2)]
    assert sorted(e["image"] for s in shards for e in s) == sorted(args[1:5])
    r = cli("evaluate", *args, "--out", out)
    assert "0 computed, 4 already done" in r.output, r.output
    keys = computed_keys(out)
    assert len(keys) == len(set(keys)) == 4  # each image scored once, by its shard
    reference = json.loads((whole / "metrics.json").read_text())
    same_metrics(reference, json.loads((out / "metrics.json").read_text()))
    assert reference["summary"]["gradcam"]["pointing"]["hit_rate"] >= 0  # pointing ran on both paths
    for name in ("deletion.png", "insertion.png", "sanity.png"):
        assert (out / name).is_file()
    # Same verdict lines as the local engine.
    lines = [line for line in r.output.splitlines() if line.startswith(("gradcam:", "vanilla:"))]
    assert len(lines) == 2 and all(line in local.output for line in lines)


def test_bad_images_are_reported_with_reasons_and_the_rest_is_done(tmp_path):
    data = shapes(tmp_path / "data", 6)
    (data / "junk.png").write_bytes(b"not a png")
    good = next(data.rglob("*.png"))
    (data / "cut.png").write_bytes(good.read_bytes()[:-300])
    emb = embed_dataset(MODEL, data, tmp_path / "out", batch_size=4, shard=Shard(0, 1))
    reasons = {s.path.name: s.reason for s in emb.failures}
    assert set(reasons) == {"junk.png", "cut.png"} and len(emb) == 6
    assert all(reasons.values()) and "Pillow" in reasons["junk.png"]
    manifest = json.loads((tmp_path / "out" / "shard-0-of-1" / "manifest.json").read_text())
    assert {f["path"]: f.get("error") for f in manifest["files"]}["junk.png"] == reasons["junk.png"]


def test_changed_images_and_options_are_recomputed_renamed_ones_are_not(tmp_path):
    data = shapes(tmp_path / "data", 6)
    out = tmp_path / "out"
    embed_dataset(MODEL, data, out, shard=Shard(0, 1))
    first = sorted(data.rglob("*.png"))
    first[0].rename(first[0].with_name("renamed.png"))  # same bytes: its part is found again
    shapes(tmp_path / "other", 1, seed=9)
    next((tmp_path / "other").rglob("*.png")).replace(first[1])  # new bytes under an old name
    again = embed_dataset(MODEL, data, out, shard=Shard(0, 1))
    assert again.stats.computed == 1
    assert embed_dataset(MODEL, data, out, pool="max", shard=Shard(0, 1)).stats.computed == 6


# ---------------------------------------------------------------------------- the batch callables

def test_batch_callables_pickle_and_equal_the_methods(tmp_path, session):
    data = shapes(tmp_path / "data", 5)
    paths = [str(p) for p in scan_folder(data).paths]
    x, _, _ = session.batch(paths)
    embedder = pickle.loads(pickle.dumps(BatchEmbedder(MODEL)))
    out = embedder({"path": np.array(paths + [str(tmp_path / "gone.png")]), "id": np.arange(10, 16)})
    assert out["ok"].tolist() == [True] * 5 + [False] and "not found" in out["error"][5]
    assert out["id"].tolist() == list(range(10, 16))
    np.testing.assert_array_equal(out["features"][:5], features_of(session.model, x, embedder.layer))
    explainer = pickle.loads(pickle.dumps(BatchExplainer(MODEL, "gradcam")))
    from PIL import Image

    decoded = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    got = explainer({"image": decoded})  # decoded images, as ray.data.read_images gives them
    heat = grad_cam(session.model, x)
    np.testing.assert_allclose(got["map"], heat.map, atol=1e-6)
    np.testing.assert_allclose(got["raw"], heat.raw, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got["target"], heat.target)
    assert set(got["layer"]) == {heat.layer}
    top = BatchExplainer(MODEL, "vanilla", top_k=2)({"path": np.array(paths[:2])})
    assert top["map"].shape == (2, 2, 64, 64) and top["target"].shape == (2, 2)
    assert (top["score"][:, 0] >= top["score"][:, 1]).all()
    bad = explainer({"path": np.array(["gone.png", "gone-too.png"])})  # never raises for bad images
    assert not bad["ok"].any() and bad["map"].shape == (2, 64, 64) and "not found" in bad["error"][1]


def test_without_ray_engine_ray_names_the_extra_to_install(tmp_path, monkeypatch):
    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    for mod in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, mod)
    data = shapes(tmp_path / "data", 2)
    for command in (["embed", MODEL, data], ["cam", MODEL, data], ["occlusion", MODEL, data],
                    ["saliency", MODEL, data]):
        result = CliRunner().invoke(main, [str(a) for a in command] + ["--engine", "ray", "--out", tmp_path / "o"])
        assert result.exit_code == 1, result.output
        assert 'pip install "onnxviz[ray]"' in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o" / PARTS).exists()


def test_ray_only_options_need_the_ray_engine(tmp_path):
    result = CliRunner().invoke(main, ["embed", MODEL, str(shapes(tmp_path / "d", 2)), "--actors", "2"])
    assert result.exit_code == 1 and "--engine ray" in result.output


@pytest.mark.parametrize("flag, value", [("--method", "gradcam,nope"), ("--metrics", "deletion,nope")])
def test_an_unknown_method_or_metric_fails_in_the_driver_as_on_the_local_engine(tmp_path, monkeypatch, flag, value):
    """The same one-line error as the local engine, before any Ray runtime starts (not from inside a worker)."""
    pytest.importorskip("ray")
    from onnxviz.distributed import jobs

    def no_ray(*_args, **_kwargs):
        raise AssertionError("a Ray runtime was started for a command that cannot run")

    monkeypatch.setattr(jobs, "init_ray", no_ray)
    image = str(Path(MODEL).parent / "images" / "star_0.png")
    args = ["evaluate", MODEL, image, flag, value]
    local = cli(*args, "--out", tmp_path / "local")
    remote = cli(*args, "--out", tmp_path / "ray", "--engine", "ray")
    error = [line for line in local.output.splitlines() if line.startswith("Error:")]
    assert local.exit_code == remote.exit_code == 1 and len(error) == 1 and "unknown" in error[0]
    assert [line for line in remote.output.splitlines() if line.startswith("Error:")] == error
    assert "Traceback" not in remote.output and not (tmp_path / "ray").exists()


def test_the_dataset_engines_write_results_json_as_the_local_engine_does(tmp_path, monkeypatch):
    """Same keys, same relative "dir" and file paths for a relative --out, same numbers (to 1e-6)."""
    data = shapes(tmp_path / "data", 4)
    for where in ("plain", "sharded"):
        (tmp_path / where).mkdir()
    monkeypatch.chdir(tmp_path / "plain")
    assert cli("cam", MODEL, data, "--out", "out").exit_code == 0
    plain = json.loads(Path("out/results.json").read_text())
    assert plain["images"][0]["dir"] == "out/" + Path(plain["images"][0]["image"]).stem
    monkeypatch.chdir(tmp_path / "sharded")
    assert cli("cam", MODEL, data, "--out", "out", "--shard", "0/1").exit_code == 0
    same_metrics(plain, json.loads(Path("out/results.shard-0-of-1.json").read_text()), skip=())
    r = cli("cam", MODEL, data, "--out", "out")  # the local engine over the parts assembles the same file
    assert "0 computed, 4 already done" in r.output, r.output
    same_metrics(plain, json.loads(Path("out/results.json").read_text()), skip=())
