"""Benchmark gradient runs against plain forward runs: time ratio and peak memory.

    python scripts/bench.py                                   # four architectures, batch 8, 2 threads
    python scripts/bench.py --device cuda --repeat 20 --json bench.json
    python scripts/bench.py --models mobilenet_v2 tiny_cnn --batches 1 8 --no-memory --no-peers

Models: ResNet-50, MobileNetV2, EfficientNet-B0 and DenseNet-121 (scripts/bench_nets.py,
random weights, exported once to a cache folder; torch needed only to build them), and on
request the sample model (shapes_cnn), the test suite's tiny CNN and the light ResNet-50 /
SqueezeNet from onnx's backend test data (light_resnet50, light_squeezenet).

Time: rounds of every case back to back (forward, saliency, guided backprop, Grad-CAM at the
last spatial layer, SmoothGrad with 8 samples), --repeat rounds after --warmup; each case's
median divided by the plain forward's median, all in this process with the same sessions'
settings. Other processes on the machine slow every case alike; the ratios are what to read.
Targets: saliency and guided <= 2.5x the forward, Grad-CAM <= 1.3x (SmoothGrad runs 8x the
images; its ratio is reported, its target is 8 x 2.5).

Peers (comparison only, never a dependency): when torch and captum are importable, captum's
Saliency, GuidedBackprop, LayerGradCam and NoiseTunnel(SmoothGrad, 8 samples) on the same
architecture and weights, in the same process with the same thread count, and
pytorch-grad-cam's GradCAM when installed; "x onnxviz" is the peer's time over onnxviz's.

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
sys.path.insert(0, str(ROOT / "scripts"))  # bench_nets.py: the four architectures

import onnxviz  # noqa: E402
from onnxviz.graph.analysis import gradcam_candidates  # noqa: E402

SAMPLE = ROOT / "models" / "shapes_cnn.onnx"


# ---------------------------------------------------------------------------- cases

@functools.lru_cache(maxsize=None)
def last_conv(model) -> str:
    """The Grad-CAM layer: the first candidate (the last spatial tensor before the head)."""
    return gradcam_candidates(model.proto, model.input.name, model.input.layout)[0]


SMOOTHGRAD_SAMPLES = 8

CASES: Dict[str, Callable] = {
    "forward": lambda model, x: model.run(x),
    "saliency": lambda model, x: onnxviz.saliency(model, x),
    "guided": lambda model, x: onnxviz.saliency(model, x, method="guided"),
    "gradcam": lambda model, x: onnxviz.grad_cam(model, x, layer=last_conv(model)),
    # in chunks of the batch: the samples x batch images at once would hold 8x the activations
    "smoothgrad8": lambda model, x: onnxviz.saliency(model, x, method="smoothgrad", samples=SMOOTHGRAD_SAMPLES,
                                                     batch_size=len(x)),
}
BASELINE = "forward"
TARGETS = {"saliency": 2.5, "guided": 2.5, "gradcam": 1.3, "smoothgrad8": 2.5 * SMOOTHGRAD_SAMPLES}
MEMORY_TARGET = 2.0  # resident growth ratio to the forward's (single-batch cases)
MEMORY_CASES = ("forward", "saliency", "guided", "gradcam")


# ---------------------------------------------------------------------------- models

def prepare_models(names, folder: Path) -> Dict[str, Path]:
    """Write (or find in the cache) the benchmark models; name -> path. Names not available are skipped."""
    import bench_nets

    paths = {}
    for name in names:
        if name in bench_nets.ARCHS:
            try:
                paths[name] = bench_nets.build(name)
            except ImportError:
                print(f"skipping {name}: not in {bench_nets.CACHE} and torch is not installed to export it")
        elif name == "shapes_cnn":
            if SAMPLE.exists():
                paths[name] = SAMPLE
            else:
                print(f"skipping shapes_cnn: {SAMPLE} not built (python scripts/build_sample_model.py)")
        else:
            import onnx

            from builders import LIGHT_MODELS, randomized, save, tiny_cnn

            light = {"light_" + Path(p).stem[len("light_"):]: p for p in LIGHT_MODELS}
            if name == "tiny_cnn":
                paths[name] = Path(save(tiny_cnn(size=64), folder / "tiny_cnn.onnx"))
            elif name in light:
                paths[name] = Path(save(randomized(onnx.load(light[name])), folder / f"{name}.onnx"))
            else:
                print(f"skipping {name}: unknown (choose from {', '.join(bench_nets.ARCHS)}, shapes_cnn, tiny_cnn, "
                      f"{', '.join(sorted(light))})")
    return paths


def batch_of(model, n: int, seed: int = 0) -> np.ndarray:
    spec = model.input
    return np.random.default_rng(seed).standard_normal(spec.shape(n, spec.height or 224, spec.width or 224)) \
        .astype(spec.dtype)


# ---------------------------------------------------------------------------- time

def interleaved_medians(fns: Dict[str, Callable], warmup: int, repeat: int) -> Dict[str, float]:
    """Median seconds of each callable over ``repeat`` rounds in which every callable runs once.

    Rounds rather than one case after another: load from other processes then lands on
    every case alike, so the ratios stay meaningful on a shared machine.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def time_cases(path: Path, batches, device: str, threads, warmup: int, repeat: int, peers: bool, name: str,
               peer_smoothgrad: bool = True) -> list:
    model = onnxviz.load(str(path), device=device, threads=threads)
    rows = []
    for n in batches:
        x = batch_of(model, n)
        fns = {case: functools.partial(fn, model, x) for case, fn in CASES.items()}
        peer_fns = peer_cases(name, x, threads, peer_smoothgrad) if peers else {}
        medians = interleaved_medians({**fns, **{k: fn for k, (_, fn) in peer_fns.items()}}, warmup, repeat)
        base = medians[BASELINE]
        for case in CASES:
            rows.append({"case": case, "batch": n, "seconds": medians[case], "ratio": medians[case] / base})
        for peer, (ours, _) in peer_fns.items():
            # the peer's time as a ratio to the plain onnxruntime forward, and to onnxviz's same method
            rows.append({"case": peer, "batch": n, "seconds": medians[peer], "ratio": medians[peer] / base,
                         "vs_onnxviz": medians[peer] / medians[ours]})
    fixed = model.input.batch
    for r in rows:
        r["model_batch"] = fixed  # 1: the model runs one image at a time (batch chunks)
    return rows


# ---------------------------------------------------------------------------- peers

def peer_cases(name: str, x: np.ndarray, threads, smoothgrad: bool = True) -> Dict[str, tuple]:
    """peer case -> (the onnxviz case it compares with, callable), on the same network and weights.

    {} when torch or captum is not importable.
    """
    try:
        import bench_nets
        import torch
        from captum import attr
    except ImportError:
        return {}
    if name not in bench_nets.ARCHS:
        return {}
    if threads:
        torch.set_num_threads(threads)
    net = bench_nets.torch_net(name)
    tx = torch.from_numpy(x)
    with torch.no_grad():
        target = net(tx).argmax(1)
    layer = _last_spatial_module(net)

    def forward():
        with torch.no_grad():
            net(tx)

    # captum's GuidedBackprop hooks nn.ReLU modules only (on ReLU6/SiLU nets it is a plain backward)
    sal, gbp, lgc = attr.Saliency(net), attr.GuidedBackprop(net), attr.LayerGradCam(net, layer)
    smooth = attr.NoiseTunnel(attr.Saliency(net))
    cases = {
        "torch forward": ("forward", forward),
        "captum saliency": ("saliency", lambda: sal.attribute(tx.clone().requires_grad_(), target=target,
                                                                  abs=False)),
        "captum guided": ("guided", lambda: gbp.attribute(tx.clone().requires_grad_(), target=target)),
        "captum gradcam": ("gradcam", lambda: lgc.attribute(tx, target=target)),
        "captum smoothgrad8": ("smoothgrad8", lambda: smooth.attribute(
            tx.clone().requires_grad_(), nt_type="smoothgrad", nt_samples=SMOOTHGRAD_SAMPLES,
            nt_samples_batch_size=len(x), stdevs=0.15, target=target, abs=False)),
    }
    if not smoothgrad:
        del cases["captum smoothgrad8"]
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam = GradCAM(model=net, target_layers=[layer])
        targets = [ClassifierOutputTarget(int(t)) for t in target]
        cases["pytorch-grad-cam"] = ("gradcam", lambda: cam(input_tensor=tx, targets=targets))
    except ImportError:
        pass
    return cases


def _last_spatial_module(net):
    """The module whose output is the last 4-D activation (what Grad-CAM's layer is in onnxviz)."""
    import torch

    last = []
    hooks = [m.register_forward_hook(lambda m, i, o: last.append(m) if torch.is_tensor(o) and o.dim() == 4 else None)
             for m in net.modules() if not list(m.children())]
    with torch.no_grad():
        net(torch.zeros(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    return last[-1]


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
    header = (f"{'model':<16} {'batch':>5} {'case':<19} {'median ms':>10} {'x forward':>9} {'target':>7} "
              f"{'x onnxviz':>9} {'RSS growth MB':>13} {'x forward':>9} {'peak RSS MB':>11}  ok")
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
        vs = r.get("vs_onnxviz")
        lines.append(
            f"{r['model']:<16} {r['batch']:>5} {r['case']:<19} {r['seconds'] * 1e3:>10.1f} {r['ratio']:>9.2f} "
            f"{'' if target is None else f'<= {target:g}':>7} {'' if vs is None else f'{vs:.2f}':>9} "
            f"{'' if mem is None else f'{mem:.1f}':>13} "
            f"{'' if mem_ratio is None else f'{mem_ratio:.2f}':>9} {'' if peak is None else f'{peak:.0f}':>11}"
            f"  {flag}{note}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2", "efficientnet_b0", "densenet121"])
    parser.add_argument("--batches", nargs="+", type=int, default=[8])
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime (and torch) intra-op threads; 0: all")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-case subprocess memory runs")
    parser.add_argument("--no-peers", action="store_true", help="skip captum / pytorch-grad-cam even if installed")
    parser.add_argument("--no-peer-smoothgrad", action="store_true", help="skip captum's SmoothGrad (the slowest peer)")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), help="only these cases (the forward always runs)")
    parser.add_argument("--child-timeout", type=float, default=300)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--child", nargs=3, metavar=("PATH", "CASE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.threads = args.threads or None
    if args.cases:
        for case in [c for c in CASES if c != BASELINE and c not in args.cases]:
            del CASES[case]

    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.device, args.threads, args.warmup, args.repeat)
        return 0

    print(f"onnxruntime {onnxviz.Runtime(args.device).describe()}, {os.cpu_count()} CPUs")
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxviz-bench-") as tmp:
        for name, path in prepare_models(args.models, Path(tmp)).items():
            t = time.perf_counter()
            model_rows = time_cases(path, args.batches, args.device, args.threads, args.warmup, args.repeat,
                                    not args.no_peers and args.device == "cpu", name, not args.no_peer_smoothgrad)
            for r in model_rows:
                r["model"] = name
                if not args.no_memory and r["case"] in MEMORY_CASES:
                    r.update(measure_memory(path, r["case"], r["batch"], args))
            if not args.no_memory:
                for r in model_rows:
                    if "growth_mb" in r:
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
