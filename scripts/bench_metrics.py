"""Benchmark the trust metrics against the runs they are made of.

    python scripts/bench_metrics.py              # sample model, SqueezeNet, ShuffleNet (Conv+BN), CPU
    python scripts/bench_metrics.py --models shapes_cnn resnet50 --methods gradcam vanilla guided
    python scripts/bench_metrics.py --device cuda --json metrics_bench.json

1. Deletion + insertion, 50 steps, one image: 2 × 51 perturbed copies. Baseline: the same 102
   images through a plain batched forward (``model.run``, batches of 64). Target <= 1.1x.
2. The randomization test on a model with L weighted layers (``sanity_check`` with the original
   map given, as ``onnxviz evaluate`` does): warm (its re-weighted sessions kept from the last
   call) and cold (a first call: those sessions created, as a CLI run once per model does), and
   with --whole also computing the original map (L + 1 runs of the method). Baseline: L runs of
   the method on the model itself (warm session). Target <= 1.2x for the warm call.

Each time is the median over --repeat interleaved rounds after one warm-up round, in this
process; the sanity rows give wall and CPU (process) time, the CPU ratio for a shared machine.

``--quality N`` instead prints the README's "Trust" table: every metric for Grad-CAM, the
gradient, guided backprop and two random maps on N fresh images of the sample model's generator.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

import onnxviz  # noqa: E402
from bench import interleaved_medians, prepare_models  # noqa: E402
from onnxviz.methods.faithfulness import pixel_order, ranked_filler, reference, step_counts  # noqa: E402
from onnxviz.methods.sanity import method_function, weighted_layers  # noqa: E402

STEPS = 50
NATIVE = {"shapes_cnn": 64}  # dynamic-size models: the size they were trained at (else 224)


def batch_of(model, n: int, size: int, seed: int = 0) -> np.ndarray:
    spec = model.input
    shape = spec.shape(n, spec.height or size, spec.width or size)
    return np.random.default_rng(seed).standard_normal(shape).astype(spec.dtype)
CURVE_TARGET, SANITY_TARGET = 1.1, 1.2


def perturbed_copies(model, x, maps) -> np.ndarray:
    """The 2 × (STEPS + 1) images deletion and insertion score, built the way they build them."""
    spec = model.input
    counts = step_counts(maps.shape[1] * maps.shape[2], STEPS)
    order = pixel_order(maps)
    out = []
    for start, end in ((x, reference(x, spec, 0.0)), (reference(x, spec, "blur"), x)):
        batch = np.empty((len(counts), *x.shape[1:]), x.dtype)
        ranked_filler(start, end, order, counts, spec)(batch, np.zeros(len(counts), np.int64), np.arange(len(counts)))
        out.append(batch)
    return np.concatenate(out)


def bench_curves(model, size: int, repeat: int) -> dict:
    x = batch_of(model, 1, size)
    cam = onnxviz.grad_cam(model, x)
    t = cam.target
    copies = perturbed_copies(model, x, cam.map)

    def metrics():
        onnxviz.deletion(model, x, cam.map, target=t, steps=STEPS)
        onnxviz.insertion(model, x, cam.map, target=t, steps=STEPS)

    times = interleaved_medians({"ours": metrics, "plain": lambda: model.run(copies, batch_size=64)}, 1, repeat)
    ours, plain = times["ours"], times["plain"]
    return {"case": "deletion+insertion, 50 steps, 1 image", "seconds": ours, "baseline": plain,
            "baseline_what": f"{len(copies)} images, plain batched forward", "ratio": ours / plain,
            "target": CURVE_TARGET}


def drop_sanity_sessions(model) -> None:
    """Forget the randomization test's re-weighted graphs and sessions (whichever version of
    onnxviz made them: they are named "weights-as-inputs..." / "sanity-graphs"), keeping the
    method's own: the state of a first call right after the original map was computed."""
    for key in [k for k in model._derived if "weights-as-inputs" in str(k) or "sanity-graphs" in str(k)]:
        del model._derived[key]
    sessions = model.runtime._sessions
    for key in [k for k in sessions if str(k).startswith("weights-as-inputs")]:
        del sessions[key]


def bench_sanity(model, method: str, batch: int, size: int, repeat: int, resolution=None, whole=False) -> list:
    """Rounds of: L runs of the method (the baseline), the test with the original given (warm:
    its sessions kept from the last round), the same as a first call (its graphs and sessions
    dropped before, untimed), and with --whole the test computing the original too. Wall and
    CPU seconds (process time: all threads), medians over the rounds after one warm-up round."""
    x = batch_of(model, batch, size)
    _, fn = method_function(method)
    first = fn(model, x, None)
    L = len(weighted_layers(model.proto))
    t = first.target
    extra = {} if resolution is None else {"resolution": resolution}

    def l_runs():
        for _ in range(L):
            fn(model, x, t)

    cases = {"plain": (l_runs, None),
             "given": (lambda: onnxviz.sanity_check(model, x, method, original=first, **extra), None),
             "cold": (lambda: onnxviz.sanity_check(model, x, method, original=first, **extra),
                      lambda: drop_sanity_sessions(model))}
    if whole:
        cases["whole"] = (lambda: onnxviz.sanity_check(model, x, method, **extra), None)
    wall = {k: [] for k in cases}
    cpu = {k: [] for k in cases}
    for r in range(repeat + 1):
        for k, (run, setup) in cases.items():
            if setup:
                setup()
            w, c = time.perf_counter(), time.process_time()
            run()
            if r:  # the first round warms up
                wall[k].append(time.perf_counter() - w)
                cpu[k].append(time.process_time() - c)
    w = {k: statistics.median(v) for k, v in wall.items()}
    c = {k: statistics.median(v) for k, v in cpu.items()}
    base = {"baseline": w["plain"], "baseline_cpu": c["plain"], "layers": L, "resolution": resolution or "default",
            "baseline_what": f"{L} runs of {method} (batch {batch})"}
    what = {"given": "original given", "cold": "original given, first call", "whole": "original computed"}
    return [{"case": f"randomization test, {method}, {what[k]}", "seconds": w[k], "cpu": c[k],
             "ratio": w[k] / w["plain"], "cpu_ratio": c[k] / c["plain"],
             "target": SANITY_TARGET if k == "given" else None, **base}
            for k in cases if k != "plain"]


def quality(n: int, seed: int = 8101) -> None:
    """Every metric on ``n`` fresh shapes (true class), for the README's table."""
    from PIL import Image

    from onnxviz.methods.faithfulness import energy_pointing, pointing_game
    from onnxviz.methods.results import upsampled
    from onnxviz.synthetic import make_shapes

    model = onnxviz.load(str(ROOT / "models" / "shapes_cnn.onnx"), device="cpu")
    data = make_shapes(n, size=64, seed=seed)
    pre = onnxviz.Preprocess(norm="imagenet", resize="stretch", size=(64, 64))
    x = onnxviz.preprocess([Image.fromarray(im) for im in data.images], model.input, pre)
    t = data.labels
    cam = onnxviz.grad_cam(model, x, target=t)
    rng = np.random.default_rng(0)
    maps = {"Grad-CAM": (cam.map, "gradcam"),
            "gradient": (onnxviz.saliency(model, x, target=t).map, "vanilla"),
            "guided backprop": (onnxviz.saliency(model, x, target=t, method="guided").map, "guided"),
            "random 8x8 map": (upsampled(rng.random(cam.raw.shape).astype(np.float32), (64, 64)), None),
            "random pixels": (rng.random(cam.map.shape), None)}
    print(f"{n} fresh shapes (seed {seed}), true class, probabilities, 50 steps")
    print("| map | deletion AUC ↓ | insertion AUC ↑ | ROAD (LeRF−MoRF)/2 ↑ | pointing | energy | "
          "Spearman, all layers randomized | random class |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (m, method) in maps.items():
        d = onnxviz.deletion(model, x, m, target=t).auc.mean()
        i = onnxviz.insertion(model, x, m, target=t).auc.mean()
        r = onnxviz.road(model, x, m, target=t).combined.mean()
        p = pointing_game(m, data.boxes).mean()
        e = energy_pointing(m, data.boxes).mean()
        if method:
            s = onnxviz.sanity_check(model, x, method, target=t)
            sim, _, _ = onnxviz.random_logit_test(model, x, method)
            extra = f"{s.final:.2f} | {sim.spearman_abs.mean():.2f}"
        else:
            extra = "– | –"
        print(f"| {name} | {d:.3f} | {i:.3f} | {r:+.3f} | {p:.0%} | {e:.2f} | {extra} |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["shapes_cnn", "light_squeezenet", "light_shufflenet"])
    ap.add_argument("--methods", nargs="+", default=["gradcam", "vanilla", "guided"])
    ap.add_argument("--batch", type=int, default=4, help="images per randomization test")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--resolution", default=None, choices=["native", "input"],
                    help="the randomization test's comparison resolution (default: the library's)")
    ap.add_argument("--sessions", type=int, default=None, help="override onnxviz.methods.sanity.SESSIONS")
    ap.add_argument("--whole", action="store_true", help="also time the test computing the original map")
    ap.add_argument("--no-curves", action="store_true", help="skip the deletion/insertion bench")
    ap.add_argument("--quality", type=int, default=None, metavar="N",
                    help="print the README's metric table on N fresh sample-model images instead")
    args = ap.parse_args(argv)
    if args.quality:
        quality(args.quality)
        return 0
    if args.sessions:
        from onnxviz.methods import sanity
        sanity.SESSIONS = args.sessions
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in prepare_models(args.models, Path(tmp)).items():
            model = onnxviz.load(str(path), device=args.device)
            size = NATIVE.get(name, 224)
            found = [] if args.no_curves else [bench_curves(model, size, args.repeat)]
            for method in args.methods:
                found += bench_sanity(model, method, args.batch, size, args.repeat, args.resolution, args.whole)
            for row in found:
                row["model"] = name
                mark = "" if row["target"] is None else ("  ok" if row["ratio"] <= row["target"] else "  ABOVE TARGET")
                cpu = f", CPU {row['cpu_ratio']:.2f}x" if "cpu_ratio" in row else ""
                print(f"{name:12s} {row['case']:48s} {row['seconds']:8.3f} s vs {row['baseline']:8.3f} s "
                      f"({row['baseline_what']}): {row['ratio']:.2f}x{cpu}{mark}", flush=True)
            rows += found
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
