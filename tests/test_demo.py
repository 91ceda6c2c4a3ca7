"""`onnxviz demo --out onnxviz-demo` (its --help example) writes what the README says: a folder per
method with a PNG per image beside the report, and an inspect.txt equal to `onnxviz inspect`."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from onnxviz.cli import main

ROOT = Path(__file__).resolve().parents[1]
METHOD_DIRS = ["cam/gradcam", "cam/gradcam++", "cam/scorecam", "cam/layercam", "cam/cam", "cam/guided-gradcam",
               "saliency/vanilla", "saliency/guided", "saliency/deconvnet", "saliency/smoothgrad",
               "saliency/integrated", "occlusion"]


def test_demo_writes_a_folder_per_method_and_the_inspect_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["demo", "--out", "onnxviz-demo", "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = tmp_path / "onnxviz-demo"
    stems = sorted(p.stem for p in (ROOT / "models" / "images").glob("*.png"))
    for sub in METHOD_DIRS:
        assert sorted(p.stem for p in (out / sub).glob("*.png")) == stems, sub
    png = Image.open(out / "cam" / "gradcam" / f"{stems[0]}.png")
    assert png.mode == "RGB" and min(png.size) >= 32
    assert list((out / "classvis").glob("*.png")) and (out / "report.html").is_file()
    inspect = CliRunner().invoke(main, ["inspect", str(ROOT / "models" / "shapes_cnn.onnx")])
    assert (out / "inspect.txt").read_text() == inspect.output
