"""inspect prints full tensor names, and --size and the sidecar size give the same complete table."""
from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner
from PIL import Image

from builders import save, tiny_cnn
from onnxviz.cli import main

MODEL = "models/shapes_cnn.onnx"  # dynamic size; its sidecar says 64x64


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_size_flag_and_sidecar_size_give_the_same_complete_analysis():
    sidecar, flag = run("inspect", MODEL), run("inspect", MODEL, "--size", "64x64")
    assert sidecar == flag
    info = json.loads(run("inspect", MODEL, "--size", "64x64", "--json"))
    assert info["analyzed_size"] == [64, 64] and info["totals"]["macs_unknown"] == 0
    assert all(None not in r["shape"][1:] for r in info["layers"] if r["shape"])
    assert "?x16x64x64" in flag and "unknown size" not in flag


def test_another_size_is_analysed_at_that_size():
    info = json.loads(run("inspect", MODEL, "--size", "32x48", "--json"))
    assert info["analyzed_size"] == [32, 48]
    first = info["layers"][0]
    assert first["shape"][2:] == [32, 48] and first["macs"] == 16 * 3 * 9 * 32 * 48


def test_long_names_are_printed_in_full_and_can_be_pasted_back(tmp_path):
    m = tiny_cnn()
    long = "backbone/stage_four/block_three/conv_two/Relu_output_0:0"
    for node in m.graph.node:
        node.output[:] = [long if o == "relu2" else o for o in node.output]
        node.input[:] = [long if i == "relu2" else i for i in node.input]
    onnx.checker.check_model(m)
    path = save(m, tmp_path / "long.onnx")
    text = run("inspect", path)
    names = [line.split()[1] for line in text.splitlines() if line.startswith("*")]  # candidates
    assert long in names
    name = names[names.index(long)]
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(png)
    run("activations", path, png, "--layer", name, "--out", tmp_path / "acts")
