"""Checking backward rules: one-node models, central differences, adjoint identities.

A ``Case`` describes one node with its inputs; ``check_case`` builds its gradient graph
and compares it with central finite differences (every element for small inputs, random
directions otherwise) or, for linear ops, with the exact adjoint identity
<seed, A v> = <A^T seed, v>. Rules that are not gradients (guided backprop, deconvnet)
are checked against a numpy ``reference`` of their defined formula (``check="reference"``).
``runtime="reference"`` runs the models in ``onnx.reference`` instead of onnxruntime (float64
where onnxruntime has no kernel); a callable ``runtime(model)`` returns any object with
onnxruntime's ``run(names, feeds)``, e.g. a ReferenceEvaluator with corrected ``new_ops``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnxviz.autodiff import STANDARD, gradient_graph

OPSET = 17


@dataclass
class Case:
    """One node: ``inputs`` are differentiated, ``consts`` become initializers.

    ``order`` lists the node's input names (use "" for an omitted optional input);
    by default the inputs, then the consts, in insertion order.
    """

    op: str
    inputs: dict
    consts: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    order: Optional[list] = None
    outputs: int = 1
    opset: int = OPSET
    check: str = "fd"  # "fd", "adjoint" or "reference"
    eps: Optional[float] = None
    rtol: float = 2e-3
    rules: object = None
    id: str = ""
    domain: str = ""
    dynamic: tuple = ()  # input axes declared symbolic (e.g. (0, 2, 3)), to test the runtime-shape paths
    # check="reference": reference(seed, **inputs, **consts) -> {input name: expected dx}
    reference: Optional[Callable] = None
    runtime: object = "ort"  # "reference" (onnx.reference) or a callable model -> session

    def __str__(self):
        return self.id or self.op


def node_model(case: Case) -> onnx.ModelProto:
    order = case.order if case.order is not None else [*case.inputs, *case.consts]
    outs = [f"y{i}" for i in range(case.outputs)]
    node = helper.make_node(case.op, order, outs, domain=case.domain, **case.attrs)
    ins = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype),
                                         [f"{k}_d{i}" if i in case.dynamic else d for i, d in enumerate(v.shape)])
           for k, v in case.inputs.items()]
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in case.consts.items()]
    graph = helper.make_graph([node], "case", ins, [helper.make_value_info(o, onnx.TypeProto()) for o in outs],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = min(model.ir_version, 10)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def session(model: onnx.ModelProto, runtime="ort"):
    if callable(runtime):
        return runtime(model)
    if runtime == "reference":
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(model)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def gradients(model, feeds: dict, output: str, wrt, seed: np.ndarray, rules=STANDARD, runtime="ort") -> dict:
    """Analytic d(seed . output)/d(wrt) from the gradient graph, run in onnxruntime (or onnx.reference)."""
    gm = gradient_graph(model, output, list(wrt), rules)
    sess = session(gm.proto, runtime)
    wanted = [gm.grads[w] for w in wrt]
    values = sess.run(wanted, {**feeds, gm.seed: seed})
    return dict(zip(wrt, values))


def forward(model, output: str, runtime="ort"):
    sess = session(model, runtime)
    return lambda feeds: sess.run([output], feeds)[0]


def _tolerance_eps(dtype) -> float:
    return 1e-6 if dtype == np.float64 else 1e-2


def numeric_vjp(f, feeds: dict, name: str, seed: np.ndarray, eps: float, max_elems: int = 400, rng=None):
    """Central differences of seed . f: per element for small inputs, else along random directions.

    Returns (directions, numeric directional derivatives); each direction has the input's shape.
    """
    x = feeds[name]
    rng = rng or np.random.default_rng(0)
    if x.size <= max_elems:
        dirs = [np.eye(1, x.size, k, dtype=x.dtype).reshape(x.shape) for k in range(x.size)]
    else:
        dirs = [rng.standard_normal(x.shape).astype(x.dtype) for _ in range(8)]
    nums = []
    for v in dirs:
        plus = f({**feeds, name: np.asarray(x + eps * v, dtype=x.dtype)})  # asarray: 0-d inputs
        minus = f({**feeds, name: np.asarray(x - eps * v, dtype=x.dtype)})
        nums.append(float(np.sum(seed.astype(np.float64) * (plus.astype(np.float64) - minus)) / (2 * eps)))
    return dirs, np.array(nums)


def check_case(case: Case, output_index: int = 0) -> float:
    """Max error of the analytic gradients of ``case`` relative to the largest reference value."""
    model = node_model(case)
    output = f"y{output_index}"
    rules = case.rules or STANDARD
    f = forward(model, output, case.runtime)
    feeds = dict(case.inputs)
    y = f(feeds)
    rng = np.random.default_rng(1)
    seed = rng.standard_normal(y.shape).astype(y.dtype)
    grads = gradients(model, feeds, output, list(case.inputs), seed, rules, case.runtime)
    expected = case.reference(seed, **case.inputs, **case.consts) if case.check == "reference" else {}
    worst = 0.0
    for name, x in case.inputs.items():
        g = grads[name].astype(np.float64)
        assert g.shape == x.shape, f"{case}: gradient of {name} has shape {g.shape}, input {x.shape}"
        if case.check == "adjoint":
            zero = {**feeds, name: np.zeros_like(x)}
            terms = seed.astype(np.float64) * (f(feeds).astype(np.float64) - f(zero))
            lhs, rhs = float(np.sum(terms)), float(np.sum(g * x))
            # relative to the sum of magnitudes: a chance cancellation in lhs is no false alarm
            worst = max(worst, abs(lhs - rhs) / max(float(np.abs(terms).sum()), 1e-12))
            continue
        if case.check == "reference":
            ref = np.asarray(expected[name], np.float64)
            assert ref.shape == x.shape, f"{case}: reference for {name} has shape {ref.shape}, input {x.shape}"
            worst = max(worst, float(np.abs(g - ref).max() / max(np.abs(ref).max(), 1e-12)))
            continue
        eps = case.eps or _tolerance_eps(x.dtype)
        dirs, nums = numeric_vjp(f, feeds, name, seed, eps)
        ana = np.array([float(np.sum(g * d)) for d in dirs])
        scale = max(np.abs(nums).max(), np.abs(ana).max(), 1e-12)
        worst = max(worst, float(np.abs(nums - ana).max() / scale))
    return worst


def assert_case(case: Case):
    err = check_case(case)
    assert err < case.rtol, f"{case}: gradient error {err:.3g} exceeds {case.rtol}"


def away_from_zero(rng, shape, margin=0.1, dtype=np.float32):
    """Random values with |v| >= margin, to keep finite differences off kinks at 0."""
    v = rng.standard_normal(shape)
    v = np.where(np.abs(v) < margin, np.sign(v + 1e-12) * margin + v, v)
    return v.astype(dtype)


class Draw:
    """Random rule-test inputs from one seeded generator per test module.

    >>> draw = Draw(dtype=np.float64); r, pos = draw.r, draw.pos
    >>> x, var = r(2, 3), pos(3)
    """

    def __init__(self, seed: int = 0, dtype=np.float32):
        self.rng = np.random.default_rng(seed)
        self.dtype = dtype

    def r(self, *shape, dtype=None, scale: float = 1.0) -> np.ndarray:
        """Standard normal values (times ``scale``)."""
        return (scale * self.rng.standard_normal(shape)).astype(dtype or self.dtype)

    def pos(self, *shape, lo: float = 0.5, hi: float = 2.0, dtype=None) -> np.ndarray:
        """Uniform positive values in [lo, hi), away from zero (variances, divisors, log arguments)."""
        return self.rng.uniform(lo, hi, shape).astype(dtype or self.dtype)
