"""`onnxviz demo --out onnxviz-demo` (its --help example) writes what the README says: a folder per
method with a PNG per image beside the report, and an inspect.txt equal to `onnxviz inspect`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
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
    # the dataset views, each in its folder: the t-SNE map, a neighbour strip per image, the top patches
    assert {p.name for p in (out / "tsne").iterdir()} == {"tsne.png", "tsne_thumbnails.png", "tsne.csv"}
    assert sorted(p.stem for p in (out / "neighbors").glob("*.png")) == stems
    channels = list((out / "patches").glob("channel_*.png"))
    assert (out / "patches" / "patches.png").is_file() and channels
    for png in [out / "tsne" / "tsne.png", out / "neighbors" / f"{stems[0]}.png", out / "patches" / "patches.png",
                *channels]:
        with Image.open(png) as im:
            assert min(im.size) >= 32 and len(np.unique(np.asarray(im.convert("L")))) > 2, png  # a picture, not blank
    rows = (out / "tsne" / "tsne.csv").read_text().splitlines()
    assert len(rows) - 1 == len(list((out / "dataset").rglob("*.png")))  # one point per dataset image
    inspect = CliRunner().invoke(main, ["inspect", str(ROOT / "models" / "shapes_cnn.onnx")])
    assert (out / "inspect.txt").read_text() == inspect.output
