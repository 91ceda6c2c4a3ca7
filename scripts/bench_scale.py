"""Benchmark the dataset-scale engines: images/second of `embed` (or a CAM method) locally and on Ray Data.

    python scripts/bench_scale.py                          # 512 images of 64x64, batch 32, embed
    python scripts/bench_scale.py --task gradcam --images 256
    python scripts/bench_scale.py --input-size 224 --images 512   # more compute per image
    python scripts/bench_scale.py --model m.onnx --image-size 224 --images 2000

Runs, each into a fresh output folder, on the same generated folder:
  local-1t / local-2t   the plain local engine (onnxviz.embed, model loaded beforehand) with 1 / 2
                        onnxruntime threads;
  parts-1t              the dataset path in this process (hash every image, commit content-keyed parts);
  ray-1 / ray-2         Ray Data with 1 / 2 actors of 1 CPU (1 thread) each, on a local Ray runtime
                        started once beforehand (ray.init is reported, not counted).
"steady" is images / (last batch's end - first batch's start, as the workers saw them): actor
start and model load excluded; "startup" is the time until the first batch started. Overhead
per image per actor: the time one worker spends per image (actors / steady) against the
single-threaded reference's, for two references: local-1t (the plain local engine) and
parts-1t (the very same task in this process, so the difference is Ray's own cost). On a
machine with fewer free cores than actors it includes their contention. "idle" is the share of
each worker's steady time spent between its batches: Ray's per-batch cost proper; "driver CPU"
the driver process's CPU time over the run's wall time (for Ray, cores taken from the workers).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxviz.session import open_session  # noqa: E402
from onnxviz.distributed import Engine, embed_dataset, explain_dataset, jobs  # noqa: E402
from onnxviz.methods.embed import embed  # noqa: E402
from onnxviz.synthetic import make_shapes, save_folder  # noqa: E402

SAMPLE = ROOT / "models" / "shapes_cnn.onnx"


class TimedEmbed(jobs.EmbedTask):
    """EmbedTask that says when each batch started and ended in its worker (same clock on one machine)."""

    def __call__(self, batch):
        t0 = time.time()
        out = super().__call__(batch)
        return {**out, "t0": np.full(len(out["index"]), t0), "t1": np.full(len(out["index"]), time.time())}


class TimedExplain(jobs.ExplainTask):
    def __call__(self, batch):
        t0 = time.time()
        out = super().__call__(batch)
        return {**out, "t0": np.full(len(out["index"]), t0), "t1": np.full(len(out["index"]), time.time())}


class TimedEngine(Engine):
    def map(self, rows, task, batch_size):
        self.spans = []
        for out in super().map(rows, task, batch_size):
            self.spans.append((out["t0"][0], out["t1"][0], len(out["index"]), str(out["worker"][0])))
            yield out


def idle_share(spans: list) -> float:
    """Share of each worker's steady time spent between batches (waiting on the engine), averaged over
    workers: what Ray's per-batch scheduling and transfers cost, apart from the batches themselves."""
    shares = []
    for worker in {w for *_, w in spans}:
        mine = sorted((t0, t1) for t0, t1, _, w in spans if w == worker)
        busy = sum(t1 - t0 for t0, t1 in mine)
        total = mine[-1][1] - mine[0][0]
        shares.append(1 - busy / total if total > 0 else 0.0)
    return float(np.mean(shares))


def run_dataset(args, folder: Path, out: Path, engine: TimedEngine) -> dict:
    jobs.EmbedTask, jobs.ExplainTask = TimedEmbed, TimedExplain
    load = {"threads": 1, "size": args.size}
    start, cpu = time.time(), time.process_time()
    if args.task == "embed":
        embed_dataset(args.model, folder, out, load_options=load, batch_size=args.batch, engine=engine)
    else:
        paths = sorted(str(p) for p in folder.rglob("*.png"))
        dirs = [out / f"img{i:06d}" for i in range(len(paths))]
        explain_dataset(args.model, paths, dirs, out, args.task, {}, load_options=load, batch_size=args.batch,
                        engine=engine)
    wall, cpu = time.time() - start, time.process_time() - cpu
    first = min(t0 for t0, *_ in engine.spans)
    last = max(t1 for _, t1, *_ in engine.spans)
    total = sum(n for _, _, n, _ in engine.spans)
    return {"wall_s": wall, "startup_s": first - start, "steady_img_s": total / (last - first), "images": total,
            "idle": idle_share(engine.spans), "driver_cpu": cpu / wall}


def run_local(args, folder: Path, out: Path, threads: int) -> dict:
    session = open_session(args.model, threads=threads, size=args.size)
    if args.task == "embed":
        embed(session.model, folder, pre=session.pre, batch_size=args.batch, cache=out / "warm", workers=2)
        t = time.perf_counter()
        emb = embed(session.model, folder, pre=session.pre, batch_size=args.batch, cache=out / "run", workers=2)
        wall = time.perf_counter() - t
        n = len(emb)
    else:
        from onnxviz.outputs import image_dirs, write_image
        from onnxviz.distributed.batch import explainers
        from onnxviz.images import deprocess

        paths = sorted(str(p) for p in folder.rglob("*.png"))
        dirs = image_dirs(paths, out)
        fn = explainers()[args.task]
        x, _, _ = session.batch(paths[:args.batch])
        fn(session.model, x)  # warm: build the graph and session
        t = time.perf_counter()
        for start in range(0, len(paths), args.batch):
            chunk = paths[start:start + args.batch]
            x, _, _ = session.batch(chunk)
            result = fn(session.model, x)
            shown = deprocess(x, session.model.input, session.pre)
            for i, p in enumerate(chunk):
                write_image(session, result, [i], shown[i], p, dirs[start + i], args.task, False, False)
        wall = time.perf_counter() - t
        n = len(paths)
    return {"wall_s": wall, "startup_s": 0.0, "steady_img_s": n / wall, "images": n, "idle": 0.0, "driver_cpu": 1.0}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SAMPLE))
    parser.add_argument("--task", default="embed", help="embed, or a map method (gradcam, vanilla, occlusion...)")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=None,
                        help="Run the model at this input size (the sample model takes any): more compute per image.")
    parser.add_argument("--repeat", type=int, default=3, help="Runs per configuration; the best is reported "
                        "(the least disturbed by other load on the machine).")
    parser.add_argument("--json", default=None, help="Also write the figures here.")
    args = parser.parse_args()
    args.size = (args.input_size, args.input_size) if args.input_size else None

    import ray

    work = Path(tempfile.mkdtemp(prefix="onnxviz-bench-scale-"))
    try:
        folder = work / "images"
        save_folder(make_shapes(args.images, args.image_size, seed=0), folder)
        runs = {name: [] for name in ("local-1t", "local-2t", "parts-1t", "ray-1", "ray-2")}
        t = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_init = time.perf_counter() - t
        try:
            for k in range(args.repeat):  # interleaved, so a burst of outside load hits every configuration
                runs["local-1t"].append(run_local(args, folder, work / f"l1-{k}", 1))
                runs["local-2t"].append(run_local(args, folder, work / f"l2-{k}", 2))
                runs["parts-1t"].append(run_dataset(args, folder, work / f"p1-{k}", TimedEngine("local")))
                for actors in (1, 2):
                    runs[f"ray-{actors}"].append(run_dataset(args, folder, work / f"r{actors}-{k}",
                                                             TimedEngine("ray", actors=actors)))
        finally:
            ray.shutdown()
        rows = {name: max(rs, key=lambda r: r["steady_img_s"]) for name, rs in runs.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    per_image_local = 1.0 / rows["local-1t"]["steady_img_s"]
    per_image_parts = 1.0 / rows["parts-1t"]["steady_img_s"]
    print(f"{args.task}: {args.images} images of {args.image_size}x{args.image_size} (model input "
          f"{args.input_size or 'default'}), batch {args.batch}; "
          f"ray.init {ray_init:.1f} s (not counted)")
    print(f"{'run':10s} {'img/s':>8s} {'steady':>8s} {'startup':>8s}   overhead/img/actor vs local-1t, parts-1t"
          "   idle between batches, driver CPU")
    for name, r in rows.items():
        actors = int(name.split("-")[1]) if name.startswith("ray") else 1
        overhead = (actors / r["steady_img_s"]) / per_image_local - 1
        ray_own = (actors / r["steady_img_s"]) / per_image_parts - 1
        r["overhead_vs_local"], r["overhead_vs_parts"] = overhead, ray_own
        print(f"{name:10s} {r['images'] / r['wall_s']:8.1f} {r['steady_img_s']:8.1f} {r['startup_s']:7.1f}s "
              f"{overhead:12.1%} {ray_own:10.1%} {r['idle']:12.1%} {r['driver_cpu']:8.0%}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "ray_init_s": ray_init, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
