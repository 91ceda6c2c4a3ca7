"""Where a gradient run spends its time: onnxruntime's profiler, totals per operator type.

    python scripts/profile_grad.py                               # four architectures, B=8, 2 threads
    python scripts/profile_grad.py --models mobilenet_v2 --cases forward saliency --top 15
    python scripts/profile_grad.py --device cuda --runs 1     # also lists nodes that fell back to the CPU

Each case's graph (the plain forward, or the gradient graph that saliency / guided backprop /
Grad-CAM build) runs in a session with ``enable_profiling``, with the same options onnxviz
uses; the profile's node events are summed per op type (after onnxruntime's fusions, so a
"FusedConv" is a Conv with its activation) and split into forward and backward nodes
(backward nodes are the ones the gradient emitter named, prefix "grad").
SmoothGrad runs the saliency graph once per sample, so its profile is saliency's.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import onnxviz  # noqa: E402
from onnxviz.autodiff import ruleset  # noqa: E402
from onnxviz.gradients import TARGET_INPUT, gradient_model, objective  # noqa: E402
from onnxviz.runtime import symbolic_sizes  # noqa: E402

import bench_nets  # noqa: E402

CASES = ("forward", "saliency", "guided", "gradcam")


def case_graph(model, case: str, h: int, w: int):
    """(proto, feeds builder) of one case."""
    if case == "forward":
        return model.specialized(h, w), False
    from bench import last_conv

    wrt = [last_conv(model)] if case == "gradcam" else [model.input.name]
    rules = ruleset("guided" if case == "guided" else "standard")
    gm = gradient_model(model, h, w, objective(model, None, "logit", None), wrt, rules)
    return gm.proto, True


def profile(proto, feeds: dict, threads: int, runs: int, folder: str, providers=("CPUExecutionProvider",)) -> dict:
    """op type -> [total ms per run, forward-part ms, backward-part ms, node count], the slowest nodes,
    and the nodes that ran on another provider than the first (CPU fallbacks of a GPU session)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(folder, "prof")
    # as onnxviz runs gradient graphs: specialized to the fed shapes (see Runtime.session)
    for name, size in symbolic_sizes(proto, feeds):
        opts.add_free_dimension_override_by_name(name, size)
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=list(providers))
    sess.run(None, feeds)  # warm-up, excluded below
    for _ in range(runs):
        sess.run(None, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs_seen = [e for e in events if e.get("name") == "model_run"]
    first = runs_seen[0]["ts"] + runs_seen[0]["dur"]  # events of the warm-up run end here
    totals = collections.defaultdict(lambda: [0.0, 0.0, 0.0, set()])
    nodes = collections.defaultdict(float)
    elsewhere = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < first:
            continue
        op = e["args"].get("op_name", "?")
        node = e["name"][: -len("_kernel_time")]
        t = totals[op]
        ms = e["dur"] / 1e3 / runs
        t[0] += ms
        t[2 if node.startswith("grad") or "/grad" in node else 1] += ms
        t[3].add(node)
        nodes[(op, node, str(e["args"].get("output_type_shape", "")))] += ms
        provider = e["args"].get("provider", providers[0])
        if provider != providers[0]:
            elsewhere[node] = [op, provider]
    wall = sum(e["dur"] for e in runs_seen[1:]) / 1e3 / runs
    slowest = sorted(nodes.items(), key=lambda kv: -kv[1])[:40]
    return {"wall_ms": wall, "ops": {k: [v[0], v[1], v[2], len(v[3])] for k, v in totals.items()},
            "nodes": [[op, node, shape, ms] for (op, node, shape), ms in slowest],
            "fallbacks": [[node, op, provider] for node, (op, provider) in sorted(elsewhere.items())]}


def table(name: str, case: str, prof: dict, top: int, nodes: int = 0) -> str:
    ops = sorted(prof["ops"].items(), key=lambda kv: -kv[1][0])
    node_ms = sum(v[0] for v in prof["ops"].values())
    lines = [f"{name} {case}: {prof['wall_ms']:.0f} ms per run, {node_ms:.0f} ms in kernels",
             f"  {'op':<22} {'ms':>8} {'%':>5} {'fwd ms':>8} {'bwd ms':>8} {'nodes':>6}"]
    for op, (ms, f, b, n) in ops[:top]:
        lines.append(f"  {op:<22} {ms:>8.1f} {100 * ms / node_ms:>5.1f} {f:>8.1f} {b:>8.1f} {n:>6}")
    if prof["fallbacks"]:
        lines.append(f"  {len(prof['fallbacks'])} nodes not on the first provider:")
        lines += [f"    {op:<20} {node} ({provider})" for node, op, provider in prof["fallbacks"]]
    for op, node, shape, ms in prof["nodes"][:nodes]:
        lines.append(f"    {ms:>7.1f} ms  {op:<16} {node[:48]:<48} {shape[:80]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(bench_nets.ARCHS))
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cuda: also list every node onnxruntime placed on the CPU (fails with 1 if any)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=0, help="also list this many of the slowest nodes")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    out, fallbacks = {}, 0
    with tempfile.TemporaryDirectory(prefix="onnxviz-prof-") as folder:
        for name in args.models:
            model = onnxviz.load(str(bench_nets.build(name)), device=args.device, threads=args.threads)
            x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
            for case in args.cases:
                proto, grad = case_graph(model, case, 224, 224)
                feeds = {model.input.name: x}
                if grad:
                    feeds[TARGET_INPUT] = np.full(args.batch, -1, np.int64)
                providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if args.device == "cuda" \
                    else ["CPUExecutionProvider"]
                prof = profile(proto, feeds, args.threads, args.runs, folder, providers)
                fallbacks += len(prof["fallbacks"])
                out[f"{name}/{case}"] = prof
                print(table(name, case, prof, args.top, args.nodes), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    if fallbacks:
        print(f"{fallbacks} nodes ran on the CPU in {args.device} sessions")
    return 1 if fallbacks and args.device != "cpu" else 0


if __name__ == "__main__":
    sys.exit(main())
