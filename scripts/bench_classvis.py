"""Benchmark class visualization: steps per second, and the cost of a step against plain runs.

    python scripts/bench_classvis.py                         # sample model, batch 1 and 6, pixel and fourier
    python scripts/bench_classvis.py --model m.onnx --size 224 --batch 1 4 --steps 30

A step of the ascent is one onnxruntime run of the gradient graph plus numpy (warp, its adjoint,
regularizers, Adam). Its time is measured as (T(steps) − T(0)) / steps, where T(n) is a whole
``class_visualization`` call with n steps (T(0) holds the set-up, the start and final forward
runs and the rendering), and compared with one plain forward run (``Model.run``) plus one
input-gradient run (``Model.gradients``) on a batch of the same shape, each timed as the mean
over as many back-to-back runs as the ascent has steps (so that stalls of a loaded machine hit
both sides alike). The ratio should stay at or below 1.2: the step adds little to the gradient
run it is built on. Rounds are interleaved and their medians reported. ``--threads 1`` gives
steadier numbers on a shared machine.
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

import onnxviz  # noqa: E402
from onnxviz.session import open_session  # noqa: E402

SAMPLE = ROOT / "models" / "shapes_cnn.onnx"


def small_cnn(path: Path, size: int) -> str:
    """A stand-in when the sample model is absent: 3 conv blocks, GAP, Gemm, Softmax."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    widths, nodes, inits, x, c = (16, 32, 64), [], [], "image", 3
    for i, w in enumerate(widths):
        inits.append(numpy_helper.from_array((rng.standard_normal((w, c, 3, 3)) * (2 / (9 * c)) ** 0.5)
                                             .astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x, c = f"r{i}", w
        if i < len(widths) - 1:
            nodes.append(helper.make_node("MaxPool", [x], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            x = f"p{i}"
    inits.append(numpy_helper.from_array(rng.standard_normal((c, 6)).astype(np.float32), "fc"))
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("MatMul", ["flat", "fc"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["prob"], axis=1)]
    graph = helper.make_graph(nodes, "bench", [helper.make_tensor_value_info("image", 1, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("prob", 1, ["N", 6])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return str(path)


def no_spinning() -> None:
    """onnxruntime's intra-op threads sleep between runs instead of spinning (this process only):
    on a machine with few cores, spinning threads take the CPU the step's numpy work needs."""
    from onnxviz.runtime import Runtime

    options = Runtime._options

    def quiet(self):
        opts = options(self)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts

    Runtime._options = quiet


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench(model, pre, size, batch: int, param: str, steps: int, rounds: int) -> dict:
    classes = 6
    targets = [i % classes for i in range(batch)]
    x = np.random.default_rng(0).standard_normal(model.input.shape(batch, *size)).astype(np.float32)
    common = dict(target=targets, pre=pre, size=size, param=param, snapshots=0)

    def run_steps(n):
        return lambda: onnxviz.class_visualization(model, steps=n, **common)

    for fn in (lambda: model.run(x), lambda: model.gradients(x, target=targets), run_steps(2)):
        fn()  # sessions and the gradient graphs are built here, outside the timings
    fwd, grad, step = [], [], []
    for _ in range(rounds):  # interleaved; each a mean over as many runs as the ascent has steps
        fwd.append(timed(lambda: [model.run(x) for _ in range(steps)]) / steps)
        grad.append(timed(lambda: [model.gradients(x, target=targets) for _ in range(steps)]) / steps)
        t0 = min(timed(run_steps(0)) for _ in range(3))
        step.append((timed(run_steps(steps)) - t0) / steps)
    f, g, s = statistics.median(fwd), statistics.median(grad), statistics.median(step)
    return {"batch": batch, "size": list(size), "param": param, "forward_ms": f * 1e3, "gradient_ms": g * 1e3,
            "step_ms": s * 1e3, "steps_per_s": 1 / s, "images_steps_per_s": batch / s, "ratio": s / (f + g)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="ONNX model (default: the sample model)")
    parser.add_argument("--size", type=int, default=None, help="input side (default: the model's / sidecar's)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 6], help="images per step")
    parser.add_argument("--param", nargs="+", default=["pixel", "fourier"], choices=["pixel", "fourier"])
    parser.add_argument("--steps", type=int, default=40, help="steps per timed ascent")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians are reported)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--no-spin", action="store_true", help="onnxruntime threads sleep between runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.no_spin:
        no_spinning()

    path = args.model or (SAMPLE if SAMPLE.exists() else None)
    if path is None:
        path = small_cnn(Path(tempfile.mkdtemp()) / "bench.onnx", args.size or 64)
        print("the sample model is absent: using a random 3-block CNN")
    session = open_session(str(path), device="cpu", threads=args.threads)
    model, pre = session.model, session.pre
    size = (args.size, args.size) if args.size else (model.input.size or (pre.size or (64, 64)))
    print(f"{path} at {size[0]}x{size[1]}, {model.runtime.describe()}, threads {args.threads or 'default'}"
          f"{', no spinning' if args.no_spin else ''}")
    rows = []
    for batch in args.batch:
        for param in args.param:
            r = bench(model, pre, tuple(size), batch, param, args.steps, args.rounds)
            rows.append(r)
            print(f"batch {batch:3d} {param:8s} forward {r['forward_ms']:7.2f} ms  gradient {r['gradient_ms']:7.2f} ms  "
                  f"step {r['step_ms']:7.2f} ms  -> {r['steps_per_s']:6.1f} steps/s "
                  f"({r['images_steps_per_s']:6.1f} image-steps/s), step / (forward + gradient) = {r['ratio']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"model": str(path), "rows": rows}, indent=2) + "\n")
    worst = max(r["ratio"] for r in rows)
    print(f"worst ratio {worst:.2f} ({'within' if worst <= 1.2 else 'ABOVE'} the 1.2 budget)")
    return 0 if worst <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
