"""--grad-model / BatchExplainer(grad_model=...): maps from a precomputed `export-grad` file, with no graph built.

The Ray engine with --grad-model is tested in test_scale_ray.py.
"""
import importlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxviz.cli import main
from onnxviz.distributed import BatchExplainer, batch
from onnxviz.errors import OnnxvizError

MODEL = str(Path(__file__).resolve().parents[1] / "models" / "shapes_cnn.onnx")
IMAGES = sorted(str(p) for p in (Path(MODEL).parent / "images").glob("*.png"))
GRADIENTS = importlib.import_module("onnxviz.gradients")  # the module (onnxviz.gradients is also a function)
LAYER = "/features/features.14/Relu_output_0"  # shapes_cnn's default Grad-CAM layer


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{"standard": file with d/d input and d/d LAYER, "guided": guided rules, d/d input}."""
    folder = tmp_path_factory.mktemp("grad")
    files = {"standard": folder / "standard.onnx", "guided": folder / "guided.onnx"}
    for args in (["--wrt", "input", "--wrt", LAYER, "-o", files["standard"]],
                 ["--wrt", "input", "--rules", "guided", "-o", files["guided"]]):
        r = cli("export-grad", MODEL, *args)
        assert r.exit_code == 0, r.output
    return files


@pytest.fixture
def builds(monkeypatch):
    """Counts gradient-graph builds in this process, on a fresh copy of every model (no cached graphs)."""
    monkeypatch.setattr(batch, "_SESSIONS", {})
    calls = []
    build = GRADIENTS.gradient_graph

    def counted(*args, **kwargs):
        calls.append(args[1])
        return build(*args, **kwargs)

    monkeypatch.setattr(GRADIENTS, "gradient_graph", counted)
    return calls


@pytest.mark.parametrize("method, files", [("gradcam", ["standard"]), ("vanilla", ["standard"]),
                                           ("guided", ["guided"]), ("guided-gradcam", ["standard", "guided"])])
@pytest.mark.parametrize("given", [False, True], ids=["predicted", "given-classes"])
def test_maps_from_exported_files_equal_the_built_graphs_and_build_nothing(exported, builds, method, files, given):
    rows = {"path": np.array(IMAGES)}
    if given:  # classes other than the predicted ones: the seed follows them
        rows["target"] = np.arange(len(IMAGES)) % 6
    loaded = BatchExplainer(MODEL, method, grad_model=[exported[f] for f in files])(rows)
    assert builds == []  # the exported files ran: no gradient graph built in this process
    built = BatchExplainer(MODEL, method)(rows)
    assert builds  # the counter sees the normal path build its graphs
    assert loaded["ok"].all()
    np.testing.assert_array_equal(loaded["target"], built["target"])
    if given:
        np.testing.assert_array_equal(loaded["target"], rows["target"])
    for key in ("map", "raw", "score"):
        np.testing.assert_allclose(loaded[key], built[key], rtol=0, atol=1e-6)


def test_cam_and_saliency_commands_run_exported_files(exported, builds, tmp_path):
    """Plain local runs and the dataset path (--shard) give the built graphs' maps, building none."""
    def maps(out, name="results.json"):
        entries = json.loads((out / name).read_text())["images"]
        return [(m["target"], np.load(m["files"]["raw"])) for e in entries for m in e["maps"]]

    for command, method, file in (("cam", "gradcam", "standard"), ("saliency", "guided", "guided")):
        base = [command, MODEL, *IMAGES[:2], "--method", method]
        runs = {"plain": [], "shard": ["--shard", "0/1"]}
        for name, extra in runs.items():
            r = cli(*base, "--out", tmp_path / method / name, "--grad-model", exported[file], *extra)
            assert r.exit_code == 0, r.output
        assert builds == []
        assert cli(*base, "--out", tmp_path / method / "built").exit_code == 0
        assert builds
        builds.clear()
        reference = maps(tmp_path / method / "built")
        for got in (maps(tmp_path / method / "plain"), maps(tmp_path / method / "shard", "results.shard-0-of-1.json")):
            assert [t for t, _ in got] == [t for t, _ in reference]
            for (_, a), (_, b) in zip(got, reference):
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def _other_model(tmp_path) -> Path:
    """shapes_cnn with one weight changed: same inputs and tensors, different SHA-256."""
    proto = onnx.load(MODEL)
    w = proto.graph.initializer[0]
    values = onnx.numpy_helper.to_array(w).copy()
    values.flat[0] += 1
    w.CopyFrom(onnx.numpy_helper.from_array(values, w.name))
    path = tmp_path / "other.onnx"
    onnx.save(proto, path)
    return path


def test_a_file_that_does_not_fit_is_refused_in_one_line_naming_the_mismatch(exported, tmp_path):
    other = tmp_path / "other.grad.onnx"
    assert cli("export-grad", _other_model(tmp_path), "--wrt", "input", "-o", other).exit_code == 0
    std, guided = exported["standard"], exported["guided"]
    cases = [
        (["saliency", "--method", "guided", "--grad-model", std], "exported with --rules standard; guided needs "
                                                                  "--rules guided"),
        (["saliency", "--method", "vanilla", "--grad-model", guided], "exported with --rules guided; vanilla needs "
                                                                      "--rules standard"),
        (["cam", "--method", "guided-gradcam", "--grad-model", std], "guided-gradcam needs --rules guided"),
        (["cam", "--layer", "/features/features.12/Conv_output_0", "--grad-model", std],
         "no gradient of '/features/features.12/Conv_output_0'"),
        (["cam", "--method", "scorecam", "--grad-model", std], "scorecam runs no gradient graph"),
        (["cam", "--score", "prob", "--grad-model", std], "differentiates '/fc/Gemm_output_0', but gradcam explains "
                                                          "'prob'"),
        (["saliency", "--grad-model", other], "exported from another model"),
        (["saliency", "--grad-model", MODEL], "not written by this onnxviz's `export-grad`"),
        (["saliency", "--grad", "fd", "--grad-model", std], "does not combine with --grad fd"),
    ]
    for i, (args, message) in enumerate(cases):
        for engine in ([], ["--shard", "0/1"]):
            command, *rest = args
            out = tmp_path / f"out{i}{len(engine)}"
            r = cli(command, MODEL, IMAGES[0], *rest, *engine, "--out", out)
            errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
            assert r.exit_code == 1 and len(errors) == 1 and message in errors[0], (args, engine, r.output)
            assert "Traceback" not in r.output and not out.exists()


def test_the_api_refuses_a_file_of_another_size(exported, tmp_path):
    sized = tmp_path / "sized.onnx"
    assert cli("export-grad", MODEL, "--size", "32x32", "-o", sized).exit_code == 0
    with pytest.raises(OnnxvizError, match="exported with --size 32x32; the images are 64x64"):
        BatchExplainer(MODEL, "vanilla", grad_model=sized)({"path": np.array(IMAGES[:1])})


def test_general_targets_seed_the_exported_graph_as_the_built_one(exported, builds):
    """Several classes, a negated class, a raw seed array: the numpy seed matches the in-graph one."""
    from onnxviz.distributed.exported import ExportedGradients, read_exported
    from onnxviz.methods.saliency import saliency
    from onnxviz.session import open_session
    from onnxviz.targets import Target

    session = open_session(MODEL)
    x, _, _ = session.batch(IMAGES[:3])
    loaded = ExportedGradients(session.model, [read_exported(exported["standard"])])
    seed = np.random.default_rng(0).normal(size=(1, 6))
    for target in (Target([1, 2]), Target(3, negate=True), seed):
        got = saliency(loaded, x, target=target)
        assert builds == []
        want = saliency(session.model, x, target=target)
        np.testing.assert_allclose(got.raw, want.raw, rtol=0, atol=1e-6)
        np.testing.assert_allclose(got.score, want.score, rtol=1e-6, atol=1e-6)
        builds.clear()
