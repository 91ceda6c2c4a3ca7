"""Degenerate inputs are flagged: an occlusion window that hides the whole image, an unknown label."""
from __future__ import annotations

import logging

import numpy as np
from click.testing import CliRunner

import onnxviz
from onnxviz.cli import main

MODEL, IMAGE = "models/shapes_cnn.onnx", "models/images/star_0.png"


def test_occlusion_window_not_smaller_than_the_input_warns(caplog):
    model = onnxviz.load(MODEL, device="cpu")
    x = np.random.default_rng(0).standard_normal(model.input.shape(1, 32, 32)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="onnxviz"):
        heat = onnxviz.occlusion(model, x, window=32, stride=8)
    assert np.ptp(heat.raw) == 0  # flat, as the warning says
    assert any("not smaller than the 32x32 input" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="onnxviz"):
        onnxviz.occlusion(model, x, window=8, stride=8)
    assert not any("not smaller" in r.getMessage() for r in caplog.records)


def test_unknown_label_lists_the_valid_ones(tmp_path):
    result = CliRunner().invoke(main, ["cam", MODEL, IMAGE, "--target", "dog", "--out", str(tmp_path / "cam")])
    assert result.exit_code != 0
    assert "'dog'" in result.output and "circle" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "cam").exists()  # a failed run leaves no empty folder


def test_flat_maps_are_flagged_and_a_failed_run_leaves_no_folder(tmp_path):
    out = tmp_path / "occ"
    result = CliRunner().invoke(main, ["occlusion", MODEL, IMAGE, "--window", "64", "--stride", "32",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "map is flat" in result.stderr
    missing = tmp_path / "nothing"
    bad = CliRunner().invoke(main, ["cam", MODEL, IMAGE, "--layer", "no_such_tensor", "--out", str(missing)])
    assert bad.exit_code != 0 and "no_such_tensor" in bad.output
    assert not missing.exists()
