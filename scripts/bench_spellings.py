"""Time alternative ONNX spellings of the same backward computation in onnxruntime (CPU).

    python scripts/bench_spellings.py                  # every group, 2 threads
    python scripts/bench_spellings.py --groups conv --repeat 20

Each group is one backward computation at shapes taken from the benchmark architectures
(batch 8, 224x224 input); each spelling is a tiny graph run in its own session with
onnxviz's CPU session options. The rules choose their spelling from these measurements.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def session(nodes, inputs, inits, threads: int) -> ort.InferenceSession:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, F, None) for n in inputs],
                              [helper.make_tensor_value_info("out", F, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def timed(sess, feeds, repeat: int) -> float:
    sess.run(None, feeds)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def n(op, inputs, out="out", **attrs):
    return helper.make_node(op, inputs, [out], **attrs)


# ---- masks of ReLU-like ops -------------------------------------------------------------
def masks(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32) * 4
    y = np.clip(x, 0, 6)
    dy = rng.standard_normal(shape).astype(np.float32)
    z = {"zero": np.zeros([], np.float32), "six": np.full([], 6, np.float32)}
    relu = {"x": np.maximum(x, 0), "dy": dy}
    clip = {"x": x, "y": y, "dy": dy}
    yield "relu: Where(y>0, dy, 0)", [n("Greater", ["x", "zero"], "m"), n("Where", ["m", "dy", "zero"])], relu, z
    yield "relu: dy * Cast(y>0)", [n("Greater", ["x", "zero"], "m"), n("Cast", ["m"], "f", to=F),
                                   n("Mul", ["dy", "f"])], relu, z
    yield "relu: dy * Sign(y)", [n("Sign", ["x"], "s"), n("Mul", ["dy", "s"])], relu, z
    yield "clip: Where(!(x<0) & !(x>6), dy, 0)", [
        n("Less", ["x", "zero"], "a"), n("Not", ["a"], "na"), n("Greater", ["x", "six"], "b"), n("Not", ["b"], "nb"),
        n("And", ["na", "nb"], "m"), n("Where", ["m", "dy", "zero"])], clip, z
    yield "clip: Where(x == y, dy, 0)", [n("Equal", ["x", "y"], "m"), n("Where", ["m", "dy", "zero"])], clip, z
    yield "clip: dy * Cast(x == y)", [n("Equal", ["x", "y"], "m"), n("Cast", ["m"], "f", to=F),
                                      n("Mul", ["dy", "f"])], clip, z
    # from the output alone (the pre-clip tensor need not stay alive; Conv+Clip fuses): strict ends
    yield "clip: dy * Cast(0 < y & y < 6)", [
        n("Greater", ["y", "zero"], "a"), n("Less", ["y", "six"], "b"), n("And", ["a", "b"], "m"),
        n("Cast", ["m"], "f", to=F), n("Mul", ["dy", "f"])], clip, z
    yield "clip: Where(0 < y & y < 6, dy, 0)", [
        n("Greater", ["y", "zero"], "a"), n("Less", ["y", "six"], "b"), n("And", ["a", "b"], "m"),
        n("Where", ["m", "dy", "zero"])], clip, z
    yield "clip: dy * Sign(y * (6 - y))", [n("Sub", ["six", "y"], "r"), n("Mul", ["y", "r"], "p"),
                                          n("Sign", ["p"], "s"), n("Mul", ["dy", "s"])], clip, z
    yield "clip: dy * Sign(y) * Sign(6 - y)", [n("Sub", ["six", "y"], "r"), n("Sign", ["r"], "sr"),
                                              n("Sign", ["y"], "s"), n("Mul", ["s", "sr"], "m"),
                                              n("Mul", ["dy", "m"])], clip, z


# ---- convolution input gradients ----------------------------------------------------------
CONVS = [  # name, C_in, C_out, H_in, kernel, stride, group
    ("depthwise 3x3 s1 96@112", 96, 96, 112, 3, 1, 96),
    ("depthwise 3x3 s2 96@112", 96, 96, 112, 3, 2, 96),
    ("depthwise 5x5 s2 144@56", 144, 144, 56, 5, 2, 144),
    ("dense 3x3 s1 64@56", 64, 64, 56, 3, 1, 1),
    ("dense 3x3 s2 128@56", 128, 128, 56, 3, 2, 1),
    ("pointwise s1 64->256@56", 64, 256, 56, 1, 1, 1),
    ("pointwise s1 16->96@112", 16, 96, 112, 1, 1, 1),
    ("pointwise s1 160->960@7", 160, 960, 7, 1, 1, 1),
    ("pointwise s2 256->512@56", 256, 512, 56, 1, 2, 1),
    ("stem 7x7 s2 3->64@224", 3, 64, 224, 7, 2, 1),
]


def convs(selected=None):
    rng = np.random.default_rng(0)
    for name, cin, cout, h, k, s, g in CONVS:
        if selected and not any(w in name for w in selected):
            continue
        p = (k - 1) // 2
        ho = (h + 2 * p - k) // s + 1
        w = rng.standard_normal((cout, cin // g, k, k)).astype(np.float32)
        dy = {"dy": rng.standard_normal((8, cout, ho, ho)).astype(np.float32)}
        op = (h + 2 * p - k) % s
        attrs = dict(kernel_shape=[k, k], strides=[s, s], group=g, pads=[p] * 4)
        if op:
            attrs["output_padding"] = [op, op]
        yield f"{name}: ConvTranspose", [n("ConvTranspose", ["dy", "w"], **attrs)], dy, {"w": w}
        wf = flipped(w, g)
        if s == 1:
            yield f"{name}: Conv(flipped)", [n("Conv", ["dy", "wf"], kernel_shape=[k, k], group=g,
                                               pads=[k - 1 - p] * 4)], dy, {"wf": wf}
            if k == 1 and g == 1:
                yield f"{name}: MatMul(W^T)", [
                    n("Reshape", ["dy", "s3"], "d3"), n("MatMul", ["wt", "d3"], "m"), n("Reshape", ["m", "s4"])], dy, {
                    "wt": np.ascontiguousarray(w[:, :, 0, 0].T), "s3": np.array([8, cout, -1], np.int64),
                    "s4": np.array([8, cin, h, h], np.int64)}
            continue
        # zero insertion: [N,C,h,1,w,1] padded to [N,C,h,s,w,s], reshaped to [N,C,h*s,w*s]
        up = (8, cout, ho * s, ho * s)
        nodes = [n("Reshape", ["dy", "s6"], "d6"), n("Pad", ["d6", "p6"], "z6"), n("Reshape", ["z6", "s4"], "z")]
        # z has ho*s rows; the full-correlation output has ho*s + k - 1 - ... rows: pad so the result is h
        lo = k - 1 - p
        hi = h - (ho * s + 2 * lo - k + 1) + lo
        nodes.append(n("Conv", ["z", "wf"], kernel_shape=[k, k], group=g, pads=[lo, lo, hi, hi]))
        yield f"{name}: zero-insert + Conv", nodes, dy, {
            "wf": wf, "s6": np.array([8, cout, ho, 1, ho, 1], np.int64),
            "p6": np.array([0] * 6 + [0, 0, 0, s - 1, 0, s - 1], np.int64), "s4": np.array(up, np.int64)}
        if k == 1:
            nodes = [n("Conv", ["dy", "wf"], "c", kernel_shape=[1, 1]), n("Reshape", ["c", "s6"], "d6"),
                     n("Pad", ["d6", "p6"], "z6"), n("Reshape", ["z6", "s4"], "z"),
                     n("Slice", ["z", "st", "en", "ax"])]
            yield f"{name}: Conv 1x1 + zero-insert", nodes, dy, {
                "wf": wf, "s6": np.array([8, cin, ho, 1, ho, 1], np.int64),
                "p6": np.array([0] * 6 + [0, 0, 0, s - 1, 0, s - 1], np.int64),
                "s4": np.array((8, cin, ho * s, ho * s), np.int64), "st": np.array([0, 0], np.int64),
                "en": np.array([h, h], np.int64), "ax": np.array([2, 3], np.int64)}


def flipped(w: np.ndarray, group: int) -> np.ndarray:
    """[C_out, C_in/g, k...] -> [C_in, C_out/g, k...] with every kernel rotated 180 degrees."""
    cout, cin_g = w.shape[:2]
    cout_g = cout // group
    v = w.reshape(group, cout_g, cin_g, *w.shape[2:]).swapaxes(1, 2)
    v = v.reshape(group * cin_g, cout_g, *w.shape[2:])
    return np.ascontiguousarray(np.flip(v, axis=tuple(range(2, w.ndim))))


def check_same(results):
    ref = results[0]
    return all(r.shape == ref.shape and np.allclose(r, ref, rtol=1e-4, atol=1e-3) for r in results[1:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", nargs="+", default=["masks", "conv"])
    parser.add_argument("--only", nargs="*", help="conv shapes whose name contains one of these words")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args(argv)
    cases = []
    if "masks" in args.groups:
        cases += list(masks((8, 96, 112, 112)))
    if "conv" in args.groups:
        cases += list(convs(args.only))
    outputs = {}
    for label, nodes, feeds, inits in cases:
        names = [i for i in feeds]
        sess = session(nodes, names, inits, args.threads)
        ms = timed(sess, feeds, args.repeat)
        group = label.split(":")[0]
        outputs.setdefault(group, []).append(sess.run(None, feeds)[0])
        print(f"{label:<52} {ms:>9.2f} ms", flush=True)
    bad = [g for g, r in outputs.items() if not check_same(r)]
    if bad:
        print("spellings disagree:", ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
