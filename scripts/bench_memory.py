"""Peak memory of Integrated Gradients against vanilla saliency at the same --batch-size.

    python scripts/bench_memory.py                       # light ResNet-50, 8 images, --batch-size 2
    python scripts/bench_memory.py --images 4 --steps 32 --batch-size 4 --json mem.json

Each command runs as `python -m onnxviz saliency ...` in a fresh child process, and the
child's peak resident set (ru_maxrss) is read when it exits. Integrated Gradients with
--steps 50 evaluates 50 points per image; chunking (image, step) rows by --batch-size keeps
its peak near one gradient run of --batch-size images. Goal: IG peak <= 1.5x vanilla's.

The model is onnx's light ResNet-50 (onnx/backend/test/data/light/light_resnet50.onnx: real
architecture, constant weights), given random weights so the maps are not degenerate.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_resnet50.onnx"


def child_peak(args: list) -> tuple:
    """(peak RSS in MB, seconds) of one CLI run in a fresh process."""
    code = ("import resource, sys, runpy; sys.argv = ['onnxviz'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('onnxviz', run_name='__main__')\nexcept SystemExit as e:\n"
            "    code = e.code\nelse:\n    code = 0\n"
            "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
            "sys.exit(code)")
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, args))}\n{r.stderr[-2000:]}")
    kb = int(next(line.split()[1] for line in r.stderr.splitlines() if line.startswith("PEAK_KB")))
    return kb / 1024, seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--json", default=None, help="Also write the numbers here.")
    a = ap.parse_args()
    if not LIGHT.is_file():
        raise SystemExit(f"{LIGHT} not found (it ships with the onnx package's backend test data)")
    sys.path.insert(0, str(ROOT / "tests"))
    from builders import randomized  # the light models' weights are constant

    with tempfile.TemporaryDirectory(prefix="onnxviz-mem-") as tmp:
        tmp = Path(tmp)
        model = tmp / "resnet50.onnx"
        onnx.save(randomized(onnx.load(str(LIGHT))), str(model))
        rng = np.random.default_rng(0)
        images = []
        for i in range(a.images):
            images.append(tmp / f"img{i}.png")
            Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(images[-1])
        common = ["--device", "cpu", "--batch-size", a.batch_size]
        runs = {
            "vanilla": ["saliency", model, *images, "--method", "vanilla", "--out", tmp / "v", *common],
            f"integrated (steps {a.steps})": ["saliency", model, *images, "--method", "integrated", "--steps",
                                              a.steps, "--out", tmp / "ig", *common],
        }
        results = {}
        for name, args in runs.items():
            peak, seconds = child_peak(args)
            results[name] = {"peak_mb": round(peak, 1), "seconds": round(seconds, 1)}
            print(f"{name:<24} peak RSS {peak:8.1f} MB   {seconds:6.1f} s", flush=True)
    names = list(results)
    ratio = results[names[1]]["peak_mb"] / results[names[0]]["peak_mb"]
    verdict = "ok" if ratio <= 1.5 else "ABOVE GOAL"
    print(f"IG / vanilla peak: {ratio:.2f}x (goal <= 1.5x: {verdict}); {a.images} images, "
          f"--batch-size {a.batch_size}")
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": results, "ratio": ratio, "images": a.images,
                                            "steps": a.steps, "batch_size": a.batch_size}, indent=2) + "\n")


if __name__ == "__main__":
    main()
