"""Benchmark feature extraction (onnxviz.methods.embed): throughput against a plain batched forward,
and peak memory as the folder grows.

    python scripts/bench_embed.py                        # sample model, 1k and 10k images of 64x64
    python scripts/bench_embed.py --model m.onnx --image-size 224 --sizes 500 5000

Throughput: the same images are (a) decoded and preprocessed up front, then run through the
exposed layer in batches, timing onnxruntime only ("plain forward"); (b) read, decoded,
preprocessed, run and written to a fresh cache by ``embed``; (c) the same, decoding serially
in the main thread (what embed would cost without its background readers). Memory: ``embed``
runs in a fresh process per folder size, reporting peak RSS and the peak of Python/numpy
allocations (tracemalloc); flat means the 10k run peaks about where the 1k run does.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxviz  # noqa: E402
from onnxviz.images import Preprocess, preprocess, read_image  # noqa: E402
from onnxviz.graph.heads import penultimate_layer  # noqa: E402
from onnxviz.methods.embed import Pooler, embed, fixed_size  # noqa: E402

SAMPLE = ROOT / "models" / "shapes_cnn.onnx"


def small_cnn(path: Path, size: int) -> str:
    """A stand-in when the sample model is absent: 3 conv blocks, GAP, Gemm."""
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
              helper.make_node("MatMul", ["flat", "fc"], ["logits"])]
    graph = helper.make_graph(nodes, "bench", [helper.make_tensor_value_info("image", 1, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("logits", 1, ["N", 6])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return str(path)


def make_folder(folder: Path, n: int, size: int) -> Path:
    """n shapes images in class sub-folders, drawn 500 at a time (memory stays small)."""
    from PIL import Image

    from onnxviz.synthetic import make_shapes

    if folder.exists() and sum(1 for _ in folder.rglob("*.png")) == n:
        return folder
    for start in range(0, n, 500):
        data = make_shapes(min(500, n - start), size, seed=start)
        for i, (image, label) in enumerate(zip(data.images, data.labels)):
            sub = folder / data.classes[label]
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(sub / f"{start + i:06d}.png")
    return folder


def rss_anon_kb() -> int:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def no_spinning() -> None:
    """Make onnxruntime's intra-op threads sleep between runs instead of spinning (this process only).

    On a machine with few cores, spinning threads take the CPU the image readers need.
    """
    from onnxviz.runtime import Runtime

    options = Runtime._options

    def quiet(self):
        opts = options(self)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts

    Runtime._options = quiet


def model_input(model, image_size: int) -> Preprocess:
    """The preprocessing at the model's own size, or ``image_size`` when its size is dynamic."""
    return fixed_size(model.input, Preprocess(size=None if model.input.size else image_size))


def child(model_path: str, folder: str, cache: str, batch_size: int, workers: int, spin: bool = True,
          image_size: int = 64) -> None:
    """One embed run in this process; prints a JSON line of timings and peaks."""
    import threading
    import tracemalloc

    if not spin:
        no_spinning()
    model = onnxviz.load(model_path)
    peak_anon = [rss_anon_kb()]
    stop = threading.Event()

    def watch():
        while not stop.wait(0.05):
            peak_anon[0] = max(peak_anon[0], rss_anon_kb())

    watcher = threading.Thread(target=watch, daemon=True)
    start_anon = rss_anon_kb()
    tracemalloc.start()
    watcher.start()
    t = time.perf_counter()
    emb = embed(model, folder, pre=model_input(model, image_size), cache=cache, batch_size=batch_size,
                workers=workers)
    seconds = time.perf_counter() - t
    stop.set()
    watcher.join()
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({"images": len(emb), "seconds": seconds, "traced_peak_mb": traced / 2**20,
                      "rss_anon_growth_mb": (peak_anon[0] - start_anon) / 1024,
                      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def plain_forward(model, paths, layer, pre, batch_size) -> float:
    """Seconds for onnxruntime alone over pre-decoded, pre-processed images."""
    x = preprocess([read_image(p) for p in paths], model.input, pre)
    pool = Pooler(model, layer)
    model.activations(x[:batch_size], [layer])  # warm the session
    t = time.perf_counter()
    for i in range(0, len(x), batch_size):
        pool(model.activations(x[i:i + batch_size], [layer])[layer])
    return time.perf_counter() - t


def serial_embed(model, paths, layer, pre, batch_size) -> float:
    """Seconds for decode + preprocess + forward, one after the other in one thread."""
    pool = Pooler(model, layer)
    t = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        x = preprocess([read_image(p) for p in paths[i:i + batch_size]], model.input, pre)
        pool(model.activations(x, [layer])[layer])
    return time.perf_counter() - t


def bench_embed(model_path: str, sizes=(1000, 10000), image_size: int = 64, batch_size: int = 64, workers: int = 2,
                repeats: int = 3, work: Path = None, spin: bool = True, memory: bool = True) -> dict:
    """Run the benchmark; prints a report and returns the numbers.

    ``spin=False`` stops onnxruntime's threads spinning between runs (see ``no_spinning``).
    """
    if not spin:
        no_spinning()
    work = Path(work or tempfile.mkdtemp(prefix="onnxviz-bench-"))
    folders = {n: make_folder(work / f"images_{n}", n, image_size) for n in sizes}
    model = onnxviz.load(model_path)
    layer = penultimate_layer(model)
    pre = model_input(model, image_size)
    small = folders[min(sizes)]
    paths = sorted(small.rglob("*.png"))
    n = len(paths)
    embed(model, small, pre=pre, batch_size=batch_size, workers=workers)  # warm sessions and the page cache
    plain, full, serial = [], [], []
    for r in range(repeats):  # interleaved, so machine load hits all three alike
        plain.append(plain_forward(model, paths, layer, pre, batch_size))
        shutil.rmtree(work / f"cache_tp_{r}", ignore_errors=True)  # a cold run, not a resume
        t = time.perf_counter()
        embed(model, small, pre=pre, cache=work / f"cache_tp_{r}", batch_size=batch_size, workers=workers)
        full.append(time.perf_counter() - t)
        serial.append(serial_embed(model, paths, layer, pre, batch_size))
    t = time.perf_counter()
    resumed = embed(model, small, pre=pre, cache=work / "cache_tp_0", batch_size=batch_size, workers=workers)
    resume_s = time.perf_counter() - t
    report = {"model": os.path.basename(model_path), "layer": layer, "images": n, "image_size": image_size,
              "batch_size": batch_size, "workers": workers, "cpus": os.cpu_count(), "spinning": spin,
              "plain_img_s": n / min(plain), "embed_img_s": n / min(full), "serial_img_s": n / min(serial),
              "resume_s": resume_s, "resume_computed": resumed.computed, "memory": {}}
    report["embed_vs_plain"] = report["embed_img_s"] / report["plain_img_s"]
    for size, folder in folders.items() if memory else ():
        shutil.rmtree(work / f"cache_mem_{size}", ignore_errors=True)
        out = subprocess.run([sys.executable, __file__, "--child", model_path, str(folder),
                              str(work / f"cache_mem_{size}"), str(batch_size), str(workers), str(int(spin)),
                              str(image_size)],
                             capture_output=True, text=True, check=True)
        report["memory"][size] = json.loads(out.stdout.strip().splitlines()[-1])
    _print(report)
    return report


def _print(r: dict) -> None:
    print(f"model {r['model']} (layer {r['layer']}), {r['images']} images of {r['image_size']}px, "
          f"batch {r['batch_size']}, {r['workers']} reader threads, {r['cpus']} CPUs, "
          f"onnxruntime spinning {'on' if r['spinning'] else 'off'}")
    print(f"  plain batched forward (onnxruntime only): {r['plain_img_s']:8.1f} img/s")
    print(f"  embed (read+decode+run+cache):            {r['embed_img_s']:8.1f} img/s "
          f"= {100 * r['embed_vs_plain']:.0f}% of plain")
    print(f"  serial decode then run (no readers):      {r['serial_img_s']:8.1f} img/s")
    print(f"  resume of a complete cache: {r['resume_s']:.2f} s, {r['resume_computed']} images computed")
    for size, m in r["memory"].items():
        print(f"  {size:6d} images: {m['seconds']:6.1f} s, peak RSS {m['max_rss_mb']:.0f} MB, anonymous RSS growth "
              f"{m['rss_anon_growth_mb']:.1f} MB, traced peak {m['traced_peak_mb']:.1f} MB")


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), bool(int(sys.argv[7])),
              int(sys.argv[8]))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="ONNX model (default: models/shapes_cnn.onnx, else a small CNN)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", type=Path, default=None, help="folder for images and caches (default: a temp dir)")
    p.add_argument("--no-spin", action="store_true", help="stop onnxruntime's threads spinning between runs")
    p.add_argument("--no-memory", action="store_true", help="skip the memory runs")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="onnxviz-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or (str(SAMPLE) if SAMPLE.exists() else small_cnn(work / "small_cnn.onnx", args.image_size))
    report = bench_embed(model, args.sizes, args.image_size, args.batch_size, args.workers, args.repeats, work,
                         spin=not args.no_spin, memory=not args.no_memory)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
