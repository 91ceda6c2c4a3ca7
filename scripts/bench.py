"""Benchmark gradient runs against plain forward runs: time ratio and peak memory.

    python scripts/bench.py                                   # all models, batch 1 and 8, CPU
    python scripts/bench.py --device cuda --repeat 20 --json bench.json
    python scripts/bench.py --models tiny_cnn resnet50 --batches 1 --no-memory

Models: the sample model (models/shapes_cnn.onnx, when built), the light ResNet-50 and
SqueezeNet from onnx's backend test data with random weights, and the test suite's tiny CNN.

Time: each case's median over --repeat runs after --warmup runs, divided by the plain
forward's median, all in this process with the same sessions' settings. Targets: gradient
to the last conv <= 1.3x the forward, to the input <= 2.5x.

Memory: each case also runs in a fresh process (its session created there, as the forward's
is), which reports the growth of its resident set over the loaded model (sampled every ms
while the session is built and run; onnxruntime's arena is invisible to tracemalloc) and the
process peak (ru_maxrss). Target: a gradient case's growth <= 2x the forward's.

Cases are a registry: add ``CASES["name"] = callable(model, x)`` (and a target in TARGETS).
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests/builders.py: tiny_cnn, randomized, the light models

import onnxviz  # noqa: E402
from onnxviz.graph.analysis import gradcam_candidates  # noqa: E402

SAMPLE = ROOT / "models" / "shapes_cnn.onnx"


# ---------------------------------------------------------------------------- cases

@functools.lru_cache(maxsize=None)
def last_conv(model) -> str:
    """The Grad-CAM layer: the first candidate (the last spatial tensor before the head)."""
    return gradcam_candidates(model.proto, model.input.name, model.input.layout)[0]


CASES: Dict[str, Callable] = {
    "forward": lambda model, x: model.run(x),
    "grad_last_conv": lambda model, x: model.gradients(x, wrt=[last_conv(model)]),
    "grad_input": lambda model, x: model.gradients(x, wrt=["input"]),
}
BASELINE = "forward"
TARGETS = {"grad_last_conv": 1.3, "grad_input": 2.5}  # time ratio to the forward
MEMORY_TARGET = 2.0  # resident growth ratio to the forward's


# ---------------------------------------------------------------------------- models

def prepare_models(names, folder: Path) -> Dict[str, Path]:
    """Write the benchmark models to ``folder``; name -> path. Names not available are skipped."""
    import onnx

    from builders import LIGHT_MODELS, randomized, save, tiny_cnn

    paths = {}
    light = {Path(p).stem[len("light_"):]: p for p in LIGHT_MODELS}
    for name in names:
        if name == "shapes_cnn":
            if SAMPLE.exists():
                paths[name] = SAMPLE
            else:
                print(f"skipping shapes_cnn: {SAMPLE} not built (python scripts/build_sample_model.py)")
        elif name == "tiny_cnn":
            paths[name] = Path(save(tiny_cnn(size=64), folder / "tiny_cnn.onnx"))
        elif name in light:
            paths[name] = Path(save(randomized(onnx.load(light[name])), folder / f"{name}.onnx"))
        else:
            print(f"skipping {name}: unknown (choose from shapes_cnn, tiny_cnn, {', '.join(sorted(light))})")
    return paths


def batch_of(model, n: int, seed: int = 0) -> np.ndarray:
    spec = model.input
    return np.random.default_rng(seed).standard_normal(spec.shape(n, spec.height or 224, spec.width or 224)) \
        .astype(spec.dtype)


# ---------------------------------------------------------------------------- time

def median_seconds(fn, warmup: int, repeat: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_cases(path: Path, batches, device: str, threads, warmup: int, repeat: int) -> list:
    model = onnxviz.load(str(path), device=device, threads=threads)
    rows = []
    for n in batches:
        x = batch_of(model, n)
        for name, case in CASES.items():
            rows.append({"case": name, "batch": n,
                         "seconds": median_seconds(lambda: case(model, x), warmup, repeat)})
        base = next(r["seconds"] for r in rows if r["batch"] == n and r["case"] == BASELINE)
        for r in rows:
            if r["batch"] == n:
                r["ratio"] = r["seconds"] / base
    fixed = model.input.batch
    for r in rows:
        r["model_batch"] = fixed  # 1: the model runs one image at a time (batch chunks)
    return rows


# ---------------------------------------------------------------------------- memory

def rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def child(path: str, case: str, batch: int, device: str, threads, warmup: int, repeat: int) -> None:
    """Run one case in this fresh process; print a JSON line with its resident growth and peak."""
    model = onnxviz.load(path, device=device, threads=threads)
    x = batch_of(model, batch)
    if case != BASELINE:
        last_conv(model)
    model.runtime.forget("forward")  # every case builds its own session inside the measured span
    gc.collect()
    start = rss_kb()
    peak = [start]
    stop = threading.Event()

    def watch():
        while not stop.wait(0.001):
            peak[0] = max(peak[0], rss_kb())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for _ in range(warmup + repeat):
        CASES[case](model, x)
    stop.set()
    watcher.join()
    peak[0] = max(peak[0], rss_kb())
    print(json.dumps({"growth_mb": (peak[0] - start) / 1024,
                      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure_memory(path: Path, case: str, batch: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", str(path), case, str(batch), "--device", args.device,
           "--warmup", "1", "--repeat", "2"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{case} batch {batch} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- report

def table(rows: list) -> str:
    header = (f"{'model':<12} {'batch':>5} {'case':<15} {'median ms':>10} {'x forward':>9} {'target':>7} "
              f"{'RSS growth MB':>13} {'x forward':>9} {'peak RSS MB':>11}  ok")
    lines = [header, "-" * len(header)]
    for r in rows:
        target = TARGETS.get(r["case"])
        mem = r.get("growth_mb")
        mem_ratio = r.get("memory_ratio")
        ok = []
        if target is not None:
            ok.append(r["ratio"] <= target)
        if mem_ratio is not None and r["case"] != BASELINE:
            ok.append(mem_ratio <= MEMORY_TARGET)
        flag = "" if not ok else ("yes" if all(ok) else "NO")
        note = " (model runs 1 image at a time)" if r.get("model_batch") == 1 and r["batch"] > 1 else ""
        peak = r.get("max_rss_mb")
        lines.append(
            f"{r['model']:<12} {r['batch']:>5} {r['case']:<15} {r['seconds'] * 1e3:>10.2f} {r['ratio']:>9.2f} "
            f"{'' if target is None else f'<= {target}':>7} {'' if mem is None else f'{mem:.1f}':>13} "
            f"{'' if mem_ratio is None else f'{mem_ratio:.2f}':>9} {'' if peak is None else f'{peak:.0f}':>11}"
            f"  {flag}{note}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--models", nargs="+", default=["shapes_cnn", "resnet50", "squeezenet", "tiny_cnn"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per case (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-case subprocess memory runs")
    parser.add_argument("--child-timeout", type=float, default=300)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--child", nargs=3, metavar=("PATH", "CASE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.device, args.threads, args.warmup, args.repeat)
        return 0

    print(f"onnxruntime {onnxviz.Runtime(args.device).describe()}, {os.cpu_count()} CPUs")
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxviz-bench-") as tmp:
        for name, path in prepare_models(args.models, Path(tmp)).items():
            t = time.perf_counter()
            model_rows = time_cases(path, args.batches, args.device, args.threads, args.warmup, args.repeat)
            for r in model_rows:
                r["model"] = name
                if not args.no_memory:
                    r.update(measure_memory(path, r["case"], r["batch"], args))
            if not args.no_memory:
                for r in model_rows:
                    base = next(b for b in model_rows if b["batch"] == r["batch"] and b["case"] == BASELINE)
                    r["memory_ratio"] = r["growth_mb"] / max(base["growth_mb"], 1e-3)
            rows += model_rows
            print(table(model_rows), flush=True)  # as each model finishes: a time limit keeps what is done
            print(f"{name}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
