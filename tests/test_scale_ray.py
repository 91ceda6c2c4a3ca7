"""--engine ray on a local Ray runtime (2 CPUs): identical outputs to the local engine, resume after a killed driver,
worker crashes retried. Skipped when ray is not installed (pip install ".[ray]")."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from onnxviz.cli import main  # noqa: E402
from onnxviz.distributed import Engine, computed_keys, embed_dataset  # noqa: E402
from onnxviz.distributed import jobs  # noqa: E402
from onnxviz.synthetic import make_shapes, save_folder  # noqa: E402
from test_scale import evaluate_args, same_metrics  # noqa: E402

MODEL = str(Path(__file__).resolve().parents[1] / "models" / "shapes_cnn.onnx")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray runtime for the module; commands run in this process reuse it."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    save_folder(make_shapes(200, 64, seed=11), folder)
    return folder


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_embed_on_ray_equals_the_local_engine_bit_for_bit(tmp_path, images, local_ray):
    local, remote = tmp_path / "local", tmp_path / "ray"
    cli("embed", MODEL, images, "--out", local)
    output = cli("embed", MODEL, images, "--out", remote, "--engine", "ray", "--actors", "2")
    assert "200 images x 96 features (200 computed, 0 reused)" in output
    np.testing.assert_array_equal(np.load(remote / "features.npy"), np.load(local / "features.npy"))
    np.testing.assert_array_equal(np.load(remote / "status.npy"), np.load(local / "status.npy"))
    a, b = (json.loads((f / "manifest.json").read_text()) for f in (local, remote))
    for key in ("model", "layer", "pool", "preprocess", "files", "classes", "complete"):
        assert a[key] == b[key], key
    # A rerun on either engine finds everything done.
    assert "(0 computed, 200 reused)" in cli("embed", MODEL, images, "--out", remote, "--engine", "ray")


def _same_maps(local: Path, remote: Path, n: int):
    a, b = (json.loads((f / "results.json").read_text())["images"] for f in (local, remote))
    assert len(a) == len(b) == n
    for x, y in zip(a, b):
        assert x["image"] == y["image"] and Path(x["dir"]).name == Path(y["dir"]).name
        for p, q in zip(x["maps"], y["maps"]):
            assert (p["target"], p["label"], p["layer"]) == (q["target"], q["label"], q["layer"])
            assert abs(p["score"] - q["score"]) <= 1e-6 * max(1.0, abs(p["score"]))
            for kind in ("map", "raw"):  # relative file paths are relative to the folder above --out
                np.testing.assert_allclose(np.load(remote.parent / q["files"][kind]),
                                           np.load(local.parent / p["files"][kind]), rtol=0, atol=1e-6)
            assert (remote.parent / q["files"]["png"]).stat().st_size > 0


def test_cam_on_ray_equals_the_local_engine(tmp_path, local_ray, monkeypatch):
    data = tmp_path / "data"
    save_folder(make_shapes(24, 64, seed=12), data)
    for where in ("local", "ray"):  # the same relative --out from two folders
        (tmp_path / where).mkdir()
    monkeypatch.chdir(tmp_path / "local")
    cli("cam", MODEL, data, "--out", "out", "--batch-size", 8)
    monkeypatch.chdir(tmp_path / "ray")
    out = cli("cam", MODEL, data, "--out", "out", "--engine", "ray", "--actors", "2", "--batch-size", "8")
    assert "24 computed, 0 already done, 0 failed" in out
    local, remote = tmp_path / "local" / "out", tmp_path / "ray" / "out"
    # results.json alike: same keys, same relative "dir" and file paths, scores to 1e-6
    same_metrics(*(json.loads((f / "results.json").read_text()) for f in (local, remote)), skip=())
    _same_maps(local, remote, 24)


def test_ray_workers_running_exported_gradient_files_equal_the_local_engine(tmp_path, local_ray):
    """--grad-model: the actors run export-grad files instead of building graphs (gradcam; guided saliency)."""
    data = tmp_path / "data"
    save_folder(make_shapes(4, 64, seed=16), data)
    layer = "/features/features.14/Relu_output_0"
    runs = (("cam", "gradcam", "standard", layer), ("saliency", "guided", "guided", "input"))
    for command, method, rules, wrt in runs:
        grad = tmp_path / f"{rules}.onnx"
        cli("export-grad", MODEL, "--wrt", wrt, "--rules", rules, "-o", grad)
        local, remote = tmp_path / f"{method}-local", tmp_path / f"{method}-ray"
        cli(command, MODEL, data, "--method", method, "--out", local, "--batch-size", 4)
        out = cli(command, MODEL, data, "--method", method, "--out", remote, "--engine", "ray", "--actors", "1",
                  "--batch-size", 4, "--grad-model", grad)
        assert "4 computed, 0 already done, 0 failed" in out
        _same_maps(local, remote, 4)


@pytest.mark.slow
def test_cam_on_ray_equals_the_local_engine_on_200_images(tmp_path, images, local_ray):
    cli("cam", MODEL, images, "--out", tmp_path / "local")
    cli("cam", MODEL, images, "--out", tmp_path / "ray", "--engine", "ray", "--actors", "2")
    _same_maps(tmp_path / "local", tmp_path / "ray", 200)


def test_evaluate_on_ray_equals_the_local_engine(tmp_path, local_ray):
    data = tmp_path / "data"
    save_folder(make_shapes(4, 64, seed=5), data)
    args = evaluate_args(data, tmp_path)
    local = cli("evaluate", *args, "--out", tmp_path / "local")
    remote = cli("evaluate", *args, "--out", tmp_path / "ray", "--engine", "ray", "--actors", "2")
    assert "4 computed, 0 already done, 0 failed" in remote
    same_metrics(*(json.loads((tmp_path / f / "metrics.json").read_text()) for f in ("local", "ray")))
    keys = computed_keys(tmp_path / "ray")
    assert len(keys) == len(set(keys)) == 4
    verdicts = [line for line in remote.splitlines() if line.startswith(("gradcam:", "vanilla:"))]
    assert len(verdicts) == 2 and all(line in local for line in verdicts)


def test_a_killed_driver_resumes_without_computing_any_image_twice(tmp_path, local_ray):
    data, out = tmp_path / "data", tmp_path / "out"
    save_folder(make_shapes(60, 64, seed=13), data)
    command = [sys.executable, "-m", "onnxviz", "-v", "embed", MODEL, str(data), "--out", str(out),
               "--engine", "ray", "--actors", "2", "--batch-size", "4"]
    # Its own session and process group: killing the group takes the driver's Ray runtime with it.
    driver = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                              start_new_session=True, cwd=Path(MODEL).parents[1])
    batches = 0
    try:
        for line in driver.stderr:
            batches += "batch of 4 done" in line
            if batches == 3:
                break
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        driver.stderr.close()
    assert batches == 3, "the driver ended before it could be killed"
    before = computed_keys(out)
    assert 12 <= len(before) < 60  # killed mid-run, with images committed as parts
    emb = embed_dataset(MODEL, data, out, batch_size=4, engine=Engine("ray", actors=2))
    keys = computed_keys(out)
    assert len(keys) == 60 and len(set(keys)) == 60  # every image computed once, none twice
    # Workers of the killed run may commit a batch or two while they die; the rerun computes the rest only.
    assert emb.stats.computed <= 60 - len(before) and len(emb) == 60
    assert emb.reused >= len(before)  # from status.npy, or from the parts for rows not checkpointed yet
    embed_dataset(MODEL, data, tmp_path / "clean", batch_size=4)  # one uninterrupted run
    np.testing.assert_array_equal(np.load(out / "features.npy"), np.load(tmp_path / "clean" / "features.npy"))


class CrashOnce(jobs.EmbedTask):
    """Kills its worker process on its first batch anywhere (a flag file says it happened)."""

    def __call__(self, batch):
        flag = Path(self.store.folder).parent / "crashed"
        if not flag.exists():
            flag.touch()
            os._exit(1)
        return super().__call__(batch)


def test_a_crashed_worker_is_restarted_by_ray_and_reported(tmp_path, local_ray, monkeypatch):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    monkeypatch.setattr(jobs, "EmbedTask", CrashOnce)
    data = tmp_path / "data"
    save_folder(make_shapes(16, 64, seed=14), data)
    emb = embed_dataset(MODEL, data, tmp_path / "out", batch_size=4, engine=Engine("ray", actors=2))
    assert (tmp_path / "out" / "crashed").exists() and len(emb) == 16
    assert emb.stats.restarts >= 1 and emb.stats.computed == 16
    keys = computed_keys(tmp_path / "out")
    assert len(keys) == len(set(keys)) == 16


@pytest.mark.slow
def test_address_runs_on_an_existing_cluster(tmp_path):
    """`ray start --head` in its own session, then `embed --engine ray --address` from another process."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a throwaway cluster: no token to share
    head = subprocess.Popen(["ray", "start", "--head", "--block", "--num-cpus", "2", "--port", str(port),
                             "--include-dashboard=false", "--disable-usage-stats"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        for line in head.stdout:
            if "Ray runtime started" in line:
                break
        data = tmp_path / "data"
        save_folder(make_shapes(24, 64, seed=15), data)
        cli("embed", MODEL, data, "--out", tmp_path / "local")
        run = subprocess.run([sys.executable, "-m", "onnxviz", "embed", MODEL, str(data), "--out", str(tmp_path / "c"),
                              "--engine", "ray", "--address", f"127.0.0.1:{port}", "--actors", "2"],
                             env=env, capture_output=True, text=True, cwd=Path(MODEL).parents[1], timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        assert "(24 computed, 0 reused)" in run.stdout
        np.testing.assert_array_equal(np.load(tmp_path / "c" / "features.npy"),
                                      np.load(tmp_path / "local" / "features.npy"))
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops its cluster on SIGTERM
        head.wait(timeout=120)
        head.stdout.close()
        current = Path("/tmp/ray/ray_current_cluster")  # left behind; would name our dead cluster
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()
