"""Hostile and broken inputs: never read outside, never overwrite, never crash, never lie.

Each case builds its bad input in a fresh folder, runs one command (in-process through click's
CliRunner; a few as real subprocesses where the OS or onnxruntime's C++ logger is involved) and
asserts the exact exit status, the message, and that no file that existed before changed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

import hostile_models as H
from builders import tiny_cnn
from onnxviz.cli import main

LABELS = ["circle", "square", "star", "ring"]
ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class Kit:
    """A model with its inputs in ``in/`` and an output folder ``out/``, all under one tmp folder."""

    root: Path

    @property
    def inp(self) -> Path:
        return self.root / "in"

    @property
    def model(self) -> Path:
        return self.inp / "model.onnx"

    @property
    def sidecar(self) -> Path:
        return self.inp / "model.json"

    @property
    def labels(self) -> Path:
        return self.inp / "labels.txt"

    @property
    def images(self) -> list:
        return [self.inp / "img" / "a.png", self.inp / "img" / "b.png"]

    @property
    def data(self) -> Path:
        return self.inp / "data"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def put_model(self, proto: onnx.ModelProto, name: str = "model.onnx") -> Path:
        onnx.save(proto, str(self.inp / name))
        return self.inp / name

    def side(self, data) -> Path:
        self.sidecar.write_text(data if isinstance(data, str) else json.dumps(data))
        return self.sidecar


def _png(path: Path, size=16, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, format="PNG")


@pytest.fixture
def kit(tmp_path) -> Kit:
    k = Kit(tmp_path)
    k.inp.mkdir()
    k.put_model(tiny_cnn(size=16, classes=4))
    k.labels.write_text("\n".join(LABELS) + "\n")
    for i, p in enumerate(k.images):
        _png(p, seed=i)
    for i, rel in enumerate(["cat/1.png", "cat/2.png", "dog/3.png", "dog/4.png"]):
        _png(k.data / rel, seed=10 + i)
    return k


def snapshot(root: Path) -> dict:
    """Every file and link under ``root``: its content hash (links: their target)."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            p = os.path.join(folder, name)
            if os.path.islink(p):
                out[p] = "->" + os.readlink(p)
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    out[p] = hashlib.sha256(f.read()).hexdigest()
            else:
                out[p] = "special"
    return out


def run(*args) -> "object":
    return CliRunner().invoke(main, [str(a) for a in args])


# ---------------------------------------------------------------------------- the case table

@dataclass
class Case:
    id: str
    setup: Callable[[Kit], list]  # builds the bad input, returns the command line
    code: int
    message: str  # must appear in the output (stdout + stderr)
    log: Optional[str] = None  # a warning that must be logged instead of/as well as the message


CASES: list = []


def case(id, code, message, log=None):
    def register(fn):
        CASES.append(Case(id, fn, code, message, log))
        return fn
    return register


def cam(k, *extra, images=None):
    return ["cam", k.model, *(images or k.images[:1]), "--out", k.out, *extra]


# 1. Nothing outside the model's folder is read because a sidecar says so ---------------------

for _id, _data, _msg in [
    ("sidecar-labels-absolute", {"labels": "/etc/passwd"}, "is an absolute path"),
    ("sidecar-labels-dotdot", {"labels": "../secret.txt"}, "points outside the model's folder"),
    ("sidecar-labels-deep-dotdot", {"labels": "img/../../secret.txt"}, "points outside the model's folder"),
    ("sidecar-list", [1, 2], "must be a JSON object, not a list"),
    ("sidecar-string", '"labels.txt"', "must be a JSON object, not a string"),
    ("sidecar-null", "null", "must be a JSON object, not null"),
    ("sidecar-bad-json", "{labels: 1", "is not valid JSON"),
    ("sidecar-labels-number", {"labels": 5}, "field 'labels' must be a string, not a number"),
    ("sidecar-labels-list", {"labels": ["a"]}, "field 'labels' must be a string, not a list"),
    ("sidecar-preprocess-list", {"preprocess": []}, "field 'preprocess' must be an object, not a list"),
    ("sidecar-norm-number", {"preprocess": {"norm": 3}}, "field 'preprocess.norm' must be a string, not a number"),
    ("sidecar-crop-string", {"preprocess": {"crop": "x"}}, "field 'preprocess.crop' must be a number"),
    ("sidecar-bgr-string", {"preprocess": {"bgr": "yes"}}, "field 'preprocess.bgr' must be true/false"),
    ("sidecar-size-zero", {"preprocess": {"size": [0, 0]}}, "'preprocess.size' must be [height, width]"),
    ("sidecar-size-bool", {"preprocess": {"size": True}}, "field 'preprocess.size' must be a number or a list"),
    ("sidecar-labels-missing", {"labels": "nope.txt"}, "label file not found"),
]:
    def _make(data):
        return lambda k: (k.side(data), cam(k))[1]
    case(_id, 1, _msg)(_make(_data))


@case("sidecar-labels-symlink-escape", 1, "leads outside the model's folder (through a symbolic link)")
def _(k):
    (k.root / "secret").mkdir()
    (k.root / "secret" / "labels.txt").write_text("stolen\n")
    os.symlink(k.root / "secret", k.inp / "link")
    k.side({"labels": "link/labels.txt"})
    return cam(k)


@case("sidecar-labels-fifo", 1, "is not a regular file")
def _(k):
    os.mkfifo(k.inp / "fifo.txt")
    k.side({"labels": "fifo.txt"})
    return cam(k)


@case("sidecar-is-fifo", 1, "is not a regular file")
def _(k):
    os.mkfifo(k.sidecar)
    return cam(k)


@case("sidecar-labels-inside-ok", 0, "star")
def _(k):
    k.side({"labels": "labels.txt"})
    return cam(k, "--target", "2")


def _external(k, location: str):
    m = tiny_cnn(size=16, classes=4)
    for t in m.graph.initializer:
        if t.name == "w1":
            t.ClearField("raw_data")
            t.ClearField("float_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            t.external_data.add(key="location", value=location)
    k.put_model(m)
    return cam(k)


case("external-data-dotdot", 1, "cannot read the model's external weight file(s)")(
    lambda k: (Path(k.root / "w.bin").write_bytes(b"\0" * 4096), _external(k, "../w.bin"))[1])
case("external-data-absolute", 1, "cannot read the model's external weight file(s)")(
    lambda k: (Path(k.root / "w.bin").write_bytes(b"\0" * 4096), _external(k, str(k.root / "w.bin")))[1])


# 2. No output is ever written over an input ----------------------------------------------------

def _hardlink(src: Path, dst: Path):
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.link(src, dst)


def _symlink(src: Path, dst: Path):
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)


REFUSED = "refusing to write"


@case("cam-output-is-an-image-argument", 1, "it is the input file")
def _(k):
    img = k.out / "gradcam" / "gradcam.png"  # OUT/<stem>/gradcam.png is the image itself
    _png(img)
    return ["cam", k.model, img, "--out", k.out]


for _id, _cmd, _name, _src in [
    ("cam-npy-hardlink-to-model", "cam", "a/gradcam.npy", "model"),
    ("cam-raw-symlink-to-model", "cam", "a/gradcam.raw.npy", "model-sym"),
    ("cam-results-symlink-to-labels", "cam", "results.json", "labels-sym"),
    ("cam-png-hardlink-to-labels", "cam", "a/gradcam.png", "labels"),
    ("saliency-png-hardlink-to-sidecar", "saliency", "a/vanilla.png", "sidecar"),
    ("saliency-results-hardlink-to-image", "saliency", "results.json", "image-b"),
    ("occlusion-npy-hardlink-to-image", "occlusion", "a/occlusion.npy", "image-b"),
    ("occlusion-results-symlink-to-image", "occlusion", "results.json", "image-sym"),
]:
    def _make(cmd, name, src):
        def setup(k):
            k.side({"labels": "labels.txt"})
            source = {"model": k.model, "model-sym": k.model, "labels": k.labels, "labels-sym": k.labels,
                      "sidecar": k.sidecar, "image-b": k.images[1], "image-sym": k.images[0]}[src]
            (_symlink if src.endswith("-sym") else _hardlink)(source, k.out / name)
            return [cmd, k.model, *k.images, "--out", k.out, "--labels", k.labels, "--batch-size", 1]
        return setup
    case(_id, 1, REFUSED)(_make(_cmd, _name, _src))


for _id, _target, _extra in [
    ("report-o-model", "model", []),
    ("report-o-sidecar", "sidecar", []),
    ("report-o-labels", "labels", ["--labels"]),
    ("report-o-image", "image", []),
    ("report-o-dataset-image", "data-image", ["--dataset"]),
    ("report-o-new-file-in-dataset", "data-new", ["--dataset"]),
    ("report-o-symlink-to-image", "image-sym", []),
    ("report-o-hardlink-to-model", "model-hard", []),
]:
    def _make(target, extra):
        def setup(k):
            k.side({"preprocess": {"norm": "imagenet"}})
            dest = {"model": k.model, "sidecar": k.sidecar, "labels": k.labels, "image": k.images[0],
                    "data-image": k.data / "cat" / "1.png", "data-new": k.data / "report.html",
                    "image-sym": k.root / "r.html", "model-hard": k.root / "r.html"}[target]
            if target == "image-sym":
                os.symlink(k.images[0], dest)
            if target == "model-hard":
                os.link(k.model, dest)
            opts = []
            for e in extra:
                opts += [e, k.labels if e == "--labels" else k.data]
            return ["report", k.model, *k.images, "-o", dest, *opts]
        return setup
    case(_id, 1, REFUSED)(_make(_target, _extra))


case("export-grad-o-model", 1, REFUSED)(lambda k: ["export-grad", k.model, "-o", k.model])
case("export-grad-o-sidecar", 1, REFUSED)(
    lambda k: (k.side({}), ["export-grad", k.model, "-o", k.sidecar])[1])
case("export-grad-o-hardlink-to-model", 1, REFUSED)(
    lambda k: (os.link(k.model, k.root / "g.onnx"), ["export-grad", k.model, "-o", k.root / "g.onnx"])[1])
case("filters-png-hardlink-to-model", 1, REFUSED)(
    lambda k: (_hardlink(k.model, k.out / "conv1.png"), ["filters", k.model, "--out", k.out])[1])
case("activations-png-hardlink-to-image", 1, REFUSED)(
    lambda k: (_hardlink(k.images[0], k.out / "a" / "relu1.png"),
               ["activations", k.model, k.images[0], "--layer", "relu1", "--out", k.out])[1])
case("classvis-png-hardlink-to-model", 1, REFUSED)(
    lambda k: (_hardlink(k.model, k.out / "class1.png"),
               ["classvis", k.model, "--target", "1", "--steps", "2", "--out", k.out])[1])
case("neighbors-out-is-dataset", 1, "it is the input folder")(
    lambda k: ["neighbors", k.model, k.data, "--query", k.images[0], "-k", 2, "--out", k.data, "--no-cache"])
case("tsne-out-inside-dataset", 1, "it is inside the input folder")(
    lambda k: ["tsne", k.model, k.data, "--method", "pca", "--out", k.data / "cat", "--no-cache"])
case("patches-out-is-dataset", 1, "it is the input folder")(
    lambda k: ["patches", k.model, k.data, "--layer", "relu2", "--out", k.data])
case("embed-out-inside-dataset", 1, "it is inside the input folder")(
    lambda k: ["embed", k.model, k.data, "--out", k.data / "features"])
case("embed-status-hardlink-to-image", 1, REFUSED)(
    lambda k: (_hardlink(k.data / "cat" / "1.png", k.out / "status.npy"), ["embed", k.model, k.data, "--out", k.out])[1])


def _dotted(k, name):
    img = k.inp / "img" / name
    _png(img)
    return cam(k, images=[img])


case("image-named-dots-png", 0, "out/image")(lambda k: _dotted(k, "...png"))
case("image-named-two-dots-png", 0, "out/image")(lambda k: _dotted(k, "..png"))


# 3. Every bad path gets a one-line error --------------------------------------------------------

def _file(k, name="taken"):
    k.root.joinpath(name).write_text("x")
    return k.root / name


case("cam-out-is-a-file", 2, "is a file")(lambda k: ["cam", k.model, k.images[0], "--out", _file(k)])
case("filters-out-is-a-file", 2, "is a file")(lambda k: ["filters", k.model, "--out", _file(k)])
case("cam-out-parent-is-a-file", 1, "a parent of it is a file")(
    lambda k: ["cam", k.model, k.images[0], "--out", _file(k) / "sub"])
case("report-o-parent-is-a-file", 1, "exists and is not a folder")(
    lambda k: ["report", k.model, k.images[0], "-o", _file(k) / "r.html"])
case("export-grad-o-parent-is-a-file", 1, "exists and is not a folder")(
    lambda k: ["export-grad", k.model, "-o", _file(k) / "g.onnx"])
case("image-is-fifo", 1, "is not a regular file")(
    lambda k: (os.mkfifo(k.inp / "pipe.png"), cam(k, images=[k.inp / "pipe.png"]))[1])
case("image-is-dev-null", 1, "is not a regular file")(lambda k: cam(k, images=["/dev/null"]))
case("model-is-fifo", 1, "is not a regular file")(
    lambda k: (os.mkfifo(k.inp / "pipe.onnx"), ["inspect", k.inp / "pipe.onnx"])[1])
case("labels-is-fifo", 1, "is not a regular file")(
    lambda k: (os.mkfifo(k.inp / "pipe.txt"), cam(k, "--labels", k.inp / "pipe.txt"))[1])
case("model-empty", 1, "the file is empty")(
    lambda k: (k.model.write_bytes(b""), ["inspect", k.model])[1])
case("model-truncated", 1, "not an ONNX model")(
    lambda k: (k.model.write_bytes(k.model.read_bytes()[:100]), ["inspect", k.model])[1])
case("model-zero-size-dim", 1, "has a zero-size dimension")(
    lambda k: (k.put_model(H.conv_head(shape=("N", 3, 0, 8))), ["inspect", k.model])[1])
case("model-declared-input-too-large", 1, "of memory, more than this machine can hold")(
    lambda k: (k.put_model(H.conv_head(shape=(1, 3, 200000, 200000))), cam(k))[1])
case("size-too-large", 1, "of memory, more than this machine can hold")(
    lambda k: (k.put_model(tiny_cnn(dynamic=True)), cam(k, "--size", "300000"))[1])
case("check-grad-qdq", 1, "check-grad cannot referee a quantized (QDQ/int8) model: node 'quant'")(
    lambda k: (k.put_model(H.qdq_model()), ["check-grad", k.model])[1])
case("saliency-if", 1, "control-flow operator 'If' (node 'choose')")(
    lambda k: (k.put_model(H.if_model()), ["saliency", k.model, k.images[0], "--out", k.out, "--size", 8])[1])
case("cam-loop", 1, "control-flow operator 'Loop' (node 'repeat')")(
    lambda k: (k.put_model(H.loop_model()), ["cam", k.model, k.images[0], "--out", k.out, "--size", 8])[1])
case("classvis-if", 1, "control-flow operator 'If' (node 'choose')")(
    lambda k: (k.put_model(H.if_model()), ["classvis", k.model, "--target", 0, "--steps", 2, "--out", k.out])[1])
case("export-grad-loop", 1, "control-flow operator 'Loop' (node 'repeat')")(
    lambda k: (k.put_model(H.loop_model()), ["export-grad", k.model, "-o", k.root / "g.onnx"])[1])
case("inspect-cyclic", 1, "node 'add_cycle' (Add) lies on a cycle")(
    lambda k: (k.put_model(H.cyclic_model()), ["inspect", k.model])[1])
case("saliency-cyclic", 1, "lies on a cycle")(
    lambda k: (k.put_model(H.cyclic_model()), ["saliency", k.model, k.images[0], "--out", k.out])[1])
case("model-is-folder", 2, "is a directory")(lambda k: ["inspect", k.inp])


# 5. No wrong result reported as fine ------------------------------------------------------------

case("cam-nan-weight", 1, "the model's weight 'w' has 1 NaN; first at index (1, 0, 0, 0)")(
    lambda k: (k.put_model(H.with_weight(float("nan"))), cam(k, "--size", 8))[1])
case("saliency-inf-weight", 1, "the model's weight 'w' has 1 inf; first at index (1, 0, 0, 0)")(
    lambda k: (k.put_model(H.with_weight(float("inf"))), ["saliency", k.model, k.images[0], "--out", k.out])[1])
case("check-grad-nan-weight", 1, "has 1 NaN")(
    lambda k: (k.put_model(H.with_weight(float("nan"))), ["check-grad", k.model])[1])
case("inspect-nan-weight-warns", 0, "Grad-CAM candidates", log="the model's weight 'w' has 1 NaN")(
    lambda k: (k.put_model(H.with_weight(float("nan"))), ["inspect", k.model])[1])
case("cam-overflowing-output", 1, "is not finite")(
    lambda k: (k.put_model(H.conv_head(weight=np.full((4, 3, 3, 3), 3e38))), cam(k, "--size", 8))[1])
case("check-grad-target-out-of-range", 1, "target 99 is out of range")(
    lambda k: ["check-grad", k.model, k.images[0], "--target", 99])
case("labels-too-few-warns", 0, "wrote", log="has 3 names but output 'prob' has 4 classes")(
    lambda k: (k.labels.write_text("a\nb\nc\n"), cam(k, "--labels", k.labels))[1])
case("labels-too-many-warns", 0, "wrote", log="has 6 names but output 'prob' has 4 classes")(
    lambda k: (k.labels.write_text("a\nb\nc\nd\ne\nf\n"), cam(k, "--labels", k.labels))[1])


# 6. What the docs promise exists ----------------------------------------------------------------

case("unsupported-op-suggests-grad-fd", 1, "--grad fd")(
    lambda k: (k.put_model(H.conv_head(extra=[onnx.helper.make_node("Atan", ["relu"], ["atan"], name="arc")])),
               ["saliency", k.model, k.images[0], "--out", k.out, "--size", 8])[1])
case("unsupported-op-with-grad-fd", 0, "wrote")(
    lambda k: (k.put_model(H.conv_head(extra=[onnx.helper.make_node("Atan", ["relu"], ["atan"], name="arc")])),
               ["saliency", k.model, k.images[0], "--out", k.out, "--size", 8, "--grad", "fd"])[1])
case("cam-grad-fd", 0, "wrote")(lambda k: cam(k, "--grad", "fd"))
case("guided-grad-fd-refused", 1, "no finite-difference equivalent")(
    lambda k: ["saliency", k.model, k.images[0], "--out", k.out, "--method", "guided", "--grad", "fd"])


# 7. float16 models -------------------------------------------------------------------------------

case("fp16-guided-saliency", 0, "wrote")(
    lambda k: (k.put_model(H.fp16_model()), ["saliency", k.model, k.images[0], "--method", "guided", "--out", k.out])[1])
case("fp16-check-grad", 0, "checks within")(
    lambda k: (k.put_model(H.fp16_model()), ["check-grad", k.model, k.images[0]])[1])


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_hostile_case(kit, c: Case, caplog):
    args = c.setup(kit)
    before = snapshot(kit.root)
    with caplog.at_level(logging.WARNING, logger="onnxviz"):
        result = run(*args)
    output = result.output
    assert result.exit_code == c.code, output
    assert c.message in output, output
    if c.log:
        assert c.log in caplog.text
    if c.code == 1:
        lines = [line for line in output.strip().splitlines() if line.startswith("Error:")]
        assert len(lines) == 1 and "Traceback" not in output, output
    after = snapshot(kit.root)
    changed = [p for p in before if before[p] != after.get(p)]
    assert not changed, f"inputs changed: {changed}"
    if c.code == 0:  # outputs stay under --out
        assert not [p for p in after if p not in before and not p.startswith(str(kit.out))]


def test_case_count():
    assert len(CASES) >= 60


# ---------------------------------------------------------------------------- beyond the table

def _subprocess(args, limit_bytes: Optional[int] = None, timeout=120):
    def limit():
        if limit_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "onnxviz", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit, env=env)


def test_onnxruntime_error_log_not_printed(kit):
    """A graph that fails inside onnxruntime: one line from us, no "[E:onnxruntime" lines beside it."""
    bad_reshape = onnx.helper.make_node("Reshape", ["relu", "bad_shape"], ["reshaped"], name="bad_reshape")
    model = H.conv_head(extra=[bad_reshape])
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1, 7, 7, 7], np.int64), "bad_shape"))
    kit.put_model(model)
    before = snapshot(kit.root)
    r = _subprocess(["cam", kit.model, kit.images[0], "--out", kit.out, "--size", 8])
    assert r.returncode == 1, r.stderr
    assert "onnxruntime" in r.stderr and "[E:onnxruntime" not in r.stderr and "Traceback" not in r.stderr
    assert len([line for line in r.stderr.splitlines() if line.startswith("Error:")]) == 1
    assert snapshot(kit.root) == {**before, **{p: h for p, h in snapshot(kit.root).items() if p not in before}}


def test_constant_folding_bomb_stays_small(kit):
    """ConstantOfShape([30000, 30000]) would allocate 3.6 GB while folding; inspect runs under a 2 GB cap."""
    kit.put_model(H.constant_of_shape_bomb(30000))
    assert kit.model.stat().st_size < 2000
    r = _subprocess(["inspect", kit.model], limit_bytes=2 * 2**30)
    assert r.returncode == 0, r.stderr
    assert "Grad-CAM candidates" in r.stdout


@pytest.mark.parametrize("method,extra", [("integrated", dict(steps=7)), ("smoothgrad", dict(samples=5))])
def test_path_methods_run_at_most_batch_size_rows(kit, method, extra, monkeypatch):
    """IG and SmoothGrad chunk (image, step) rows by batch_size, and the result does not depend on it."""
    import onnxviz
    from onnxviz.model import Model

    model = onnxviz.load(str(kit.model), device="cpu")
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    whole = onnxviz.saliency(model, x, method=method, **extra)
    sizes = []
    real = Model.gradients

    def spy(self, xs, *a, **k):
        sizes.append(len(xs))
        return real(self, xs, *a, **k)

    monkeypatch.setattr(Model, "gradients", spy)
    chunked = onnxviz.saliency(model, x, method=method, batch_size=2, **extra)
    assert max(sizes) <= 2 and sum(sizes) == 3 * next(iter(extra.values()))
    np.testing.assert_allclose(chunked.raw, whole.raw, rtol=1e-5, atol=1e-6 * np.abs(whole.raw).max())


def _interrupt_at(monkeypatch, call: int, how: str):
    """Ctrl-C during the ``call``-th map file: a real SIGINT, or KeyboardInterrupt raised in the write."""
    import onnxviz.outputs as outputs  # where the per-image files are written

    real, count = outputs.save_npy, [0]

    def save_npy(a, path):
        count[0] += 1
        if count[0] == call:
            if how == "signal":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise KeyboardInterrupt
        return real(a, path)

    monkeypatch.setattr(outputs, "save_npy", save_npy)


@pytest.mark.parametrize("how", ["signal", "raise"])
def test_ctrl_c_leaves_complete_listed_folders(kit, monkeypatch, how):
    """Every image folder left behind is complete and listed in results.json; nothing partial remains."""
    images = kit.images + [kit.inp / "img" / "c.png"]
    _png(images[-1], seed=5)
    _interrupt_at(monkeypatch, 3, how)  # during image b's files (two .npy per image)
    before = snapshot(kit.root)
    r = run("saliency", kit.model, *images, "--out", kit.out, "--batch-size", 1)
    assert r.exit_code == 130, r.output
    listed = {Path(e["dir"]).name: e for e in json.loads((kit.out / "results.json").read_text())["images"]}
    folders = {p.name for p in kit.out.iterdir() if p.is_dir()}
    assert folders == set(listed)
    for name in folders:
        assert sorted(p.name for p in (kit.out / name).iterdir()) == ["vanilla.npy", "vanilla.png", "vanilla.raw.npy"]
    assert folders == ({"a", "b"} if how == "signal" else {"a"})  # a signal lands after the image's files
    assert all(before[p] == snapshot(kit.root).get(p) for p in before)


def test_opset_conversion_failure_is_said(kit, monkeypatch, caplog):
    from onnx import version_converter

    kit.put_model(tiny_cnn(size=16, opset=11))

    def fail(*a, **k):
        raise RuntimeError("converter exploded")

    monkeypatch.setattr(version_converter, "convert_version", fail)
    with caplog.at_level(logging.WARNING, logger="onnxviz"):
        r = run("saliency", kit.model, kit.images[0], "--out", kit.out)
    assert r.exit_code == 0, r.output
    assert "opset conversion failed from opset 11 to 17 (converter exploded)" in caplog.text


def test_report_marks_nonfinite_sections_and_fails(kit):
    kit.put_model(H.with_weight(float("nan")))
    page = kit.root / "r.html"
    r = run("report", kit.model, kit.images[0], "-o", page, "--size", 8)
    assert r.exit_code == 1 and "the report marks what it could not compute" in r.output, r.output
    html = page.read_text()
    assert "is not finite" in html


def test_check_grad_row_with_nan_is_a_failure():
    """A NaN on either side is never "ok": check-grad cannot call it exact."""
    from onnxviz.checkgrad import _compare

    rng = np.random.default_rng(0)
    point = np.ones((1, 3))
    row, _ = _compare("input", 0, np.full((1, 3), np.nan), point, lambda t: t, np.ones((1, 3)), 1e-3, rng, 3.0)
    assert row.status == "NaN" and not row.ok
    row, _ = _compare("input", 0, np.ones((1, 3)), point, lambda t: t * np.nan, np.ones((1, 3)), 1e-3, rng, 3.0)
    assert row.status == "NaN" and not row.ok
