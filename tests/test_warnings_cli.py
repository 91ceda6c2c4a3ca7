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


def _constant_model(tmp_path) -> str:
    """tiny_cnn with every weight 0.1: all filters of each Conv equal, every class the same score."""
    import onnx
    from onnx import numpy_helper

    from builders import save, tiny_cnn

    m = tiny_cnn(size=16, seed=0)
    for t in m.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(t), 0.1), t.name))
    onnx.checker.check_model(m)
    return save(m, tmp_path / "constant.onnx")


def _image(tmp_path) -> str:
    from PIL import Image

    path = tmp_path / "noise.png"
    Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def test_identical_filters_warn_at_load_in_every_command(tmp_path, caplog):
    import subprocess
    import sys

    model = _constant_model(tmp_path)
    run = subprocess.run([sys.executable, "-m", "onnxviz", "filters", model, "--out", str(tmp_path / "f")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "every filter of Conv" in run.stderr and "identical" in run.stderr  # a line on stderr
    with caplog.at_level(logging.WARNING, logger="onnxviz"):
        assert CliRunner().invoke(main, ["inspect", model]).exit_code == 0
    assert any("every filter of Conv" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="onnxviz"):
        assert CliRunner().invoke(main, ["filters", MODEL, "--out", str(tmp_path / "g")]).exit_code == 0
    assert not any("identical" in r.getMessage() for r in caplog.records)


def test_identical_filters_are_found_in_the_light_zoo_models(caplog):
    import os

    import onnx
    import pytest

    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "light_squeezenet.onnx")
    if not os.path.exists(path):
        pytest.skip("onnx ships no light models here")
    with caplog.at_level(logging.WARNING, logger="onnxviz"):
        onnxviz.load(path, device="cpu", verify=False)
    assert any("every filter of Conv" in r.getMessage() for r in caplog.records)


def test_tied_predictions_warn_unless_a_target_is_given(tmp_path, caplog):
    model, image = _constant_model(tmp_path), _image(tmp_path)

    def ties(args) -> bool:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="onnxviz"):
            result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        return any("tied prediction" in r.getMessage() and "classes 0, 1, 2, 3" in r.getMessage()
                   for r in caplog.records)

    for command in (["cam"], ["saliency", "--method", "smoothgrad", "--samples", "2"],
                    ["occlusion", "--window", "4", "--stride", "4"]):
        assert ties([*command, model, image, "--out", str(tmp_path / command[0])]), command
        assert not ties([*command, model, image, "--target", "2", "--out", str(tmp_path / f"{command[0]}-2")]), command
    assert not ties(["cam", MODEL, IMAGE, "--out", str(tmp_path / "clear")])


def test_tied_rows_finds_exact_ties_of_the_two_best_only():
    from onnxviz.degenerate import tied_rows

    scores = np.array([[1.0, 3.0, 3.0], [3.0, 1.0, 1.0], [2.0, 2.0, 2.0], [0.0, 1.0, 1.0 + 1e-7]])
    assert tied_rows(scores).tolist() == [0, 2]


def test_errors_name_the_cli_flags(tmp_path):
    both = CliRunner().invoke(main, ["cam", MODEL, IMAGE, "--target", "1", "--top-k", "2",
                                     "--out", str(tmp_path / "cam")])
    assert both.exit_code != 0 and "Traceback" not in both.output
    assert "--target" in both.output and "--top-k" in both.output
    patches = CliRunner().invoke(main, ["patches", MODEL, "models/images", "--layer",
                                        "/features/features.10/Relu_output_0", "--channel", "0", "--channels", "2",
                                        "--out", str(tmp_path / "p")])
    assert patches.exit_code != 0 and "Traceback" not in patches.output
    assert "--channel " in patches.output and "--channels" in patches.output


def test_occlusion_shows_progress_over_its_windows(tmp_path):
    # 8x8 windows every 4 pixels over 32x32: 49 occluded copies, in 13 batches of 4
    result = CliRunner().invoke(main, ["occlusion", MODEL, IMAGE, "--window", "8", "--stride", "4",
                                       "--batch-size", "4", "--size", "32", "--out", str(tmp_path / "occ")])
    assert result.exit_code == 0, result.output
    assert "occlusion:" in result.stderr and "/13" in result.stderr  # a bar over the batches, on stderr
    assert "/13" not in result.stdout


def test_the_guard_removes_only_the_empty_folders_a_failed_run_made(tmp_path):
    """One mechanism for every command: folders made by ensure_out_dir under a failing guard go, if empty."""
    import pytest

    from onnxviz.io import ensure_out_dir, guard, save_json

    kept = tmp_path / "existing"
    kept.mkdir()
    with pytest.raises(RuntimeError):
        with guard():
            ensure_out_dir(tmp_path / "made" / "deeper")
            ensure_out_dir(kept / "inner")
            ensure_out_dir(tmp_path / "written")
            save_json({"a": 1}, tmp_path / "written" / "x.json")
            raise RuntimeError("the run fails after creating its folders")
    assert not (tmp_path / "made").exists() and not (kept / "inner").exists()
    assert kept.is_dir() and (tmp_path / "written" / "x.json").is_file()
    with guard():  # a run that succeeds keeps its (empty) folders
        ensure_out_dir(tmp_path / "fine")
    assert (tmp_path / "fine").is_dir()
