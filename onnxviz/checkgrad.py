"""check-grad: compare the gradient graph with float64 finite differences in random directions.

The referee runs the model in float64 with onnx's reference evaluator, where central
differences with a small step agree to ~1e-8 (float32 differences through onnxruntime
wander by tens of percent on real networks). The analytic side is the float32 gradient
graph that every method uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .errors import OnnxvizError
from .graph.double import Reference
from .graph.surgery import expose, override
from .targets import general, normalize, objective, seed_array

# Steps relative to the RMS of the perturbed tensor: 1e-8 stays clear of ReLU and max-pool kinks
# on ImageNet-size nets (1e-6 crosses about ten per direction); a larger one is taken only when
# the score is so large against its derivative that float64 rounding would swamp the difference.
STEP = 1e-8
MAX_STEP = 1e-2
SECOND = 4.0  # the second step, as a multiple of the first: differences that disagree met a kink
# Relative rounding error of one float64 evaluation of the score by the reference evaluator
# (eps ~2e-16, accumulated over a network's sums; measured ~1e-15 on the light models).
NOISE = 1e-13
QUANTIZED = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
             "ConvInteger", "MatMulInteger"}
RETRIES = 4  # fresh directions tried when the differences straddle a kink


@dataclass(frozen=True)
class CheckRow:
    """One directional-derivative comparison."""

    tensor: str
    direction: int
    analytic: float
    numeric: float  # at the first step
    spread: float  # relative disagreement of the numeric value across steps
    error: float  # relative error of analytic vs numeric
    status: str  # "ok", "FAIL", "kink" (every direction tried straddled a non-differentiable
    #              point) or "inconclusive" (float64 differences cannot resolve the derivative)
    reason: str = ""  # why a row is inconclusive, or a note on an "ok" row

    @property
    def ok(self) -> bool:
        return self.status not in ("FAIL", "NaN")

    @property
    def conclusive(self) -> bool:
        return self.status in ("ok", "FAIL")


def _score(values: np.ndarray, seed: np.ndarray) -> float:
    return float(np.sum(values * seed))


def check_gradients(model, x: Optional[np.ndarray] = None, layers: Sequence[str] = (), target=None,
                    directions: int = 2, tolerance: float = 1e-3, seed: int = 0, output=None,
                    score: str = "logit", jitter: float = 1e-3, progress=None, rules="standard") -> list:
    """Rows comparing <dS/dt, v> with (S(t + hv) - S(t - hv)) / 2h for the input and each layer.

    Images have exact ties (flat regions feeding a max-pool, ReLUs at exactly 0) where the
    derivative does not exist and differences measure the average of one-sided slopes; so
    the check runs at a generic point next to ``x`` (noise of ``jitter`` × std(x)), and a
    direction whose differences disagree across step sizes (a kink) is replaced by a fresh one.

    Never a false alarm: the step grows with the score's magnitude (constant-weight models give
    logits ~1e10, where a fixed step measures rounding, exactly 0); a difference that float64
    cannot resolve is "inconclusive", with the reason. A float32 gradient that misses only
    because a ReLU or pool window lies within float32 rounding of a tie is re-judged by the
    same graph run in float64 (``graph_gradients_float64``): "ok", with a note, when that agrees.
    ``progress``: a callable taking one line of text per step, for long checks.
    """
    for node in model.proto.graph.node:
        if node.op_type in QUANTIZED:
            raise OnnxvizError(
                f"check-grad cannot referee a quantized (QDQ/int8) model: node {node.name or node.output[0]!r} is "
                f"{node.op_type}; rounding to integers has zero derivative almost everywhere, so finite "
                "differences and the gradient graph measure different things")
    say = progress or (lambda text: None)
    rng = np.random.default_rng(seed)
    if x is None:
        x = rng.standard_normal(model.input.shape(1, model.input.height or 64, model.input.width or 64))
        x = x.astype(model.input.dtype)
    x = model.check_input(x)
    if jitter and np.issubdtype(x.dtype, np.floating):
        x = (x + rng.standard_normal(x.shape) * jitter * float(x.std() or 1)).astype(x.dtype)
    obj = objective(model, output, score)
    names = ["input", *layers]
    say("gradient graph (onnxruntime, float32)")
    g = model.gradients(x, target=target, wrt=names, output=output, score=score, rules=rules)
    h, w = model.input.hw(x)
    proto = model.specialized(h, w)
    say("forward model (float64 reference)")
    forward = Reference(expose(proto, [obj.tensor, *layers], keep_outputs=False))
    extra = model.extra_feeds(len(x)) if model.other_inputs else {}
    base = forward({model.input.name: x, **extra})
    t = normalize(model, obj, target, len(x))
    if not general(t):
        classes = base[obj.tensor].shape[obj.class_axis]
        for k in np.atleast_1d(target if target is not None else []):
            if not 0 <= int(k) < classes:
                raise OnnxvizError(f"target {int(k)} is out of range: output {obj.output!r} has {classes} classes "
                                   f"(0 to {classes - 1})")
    onehot, _ = seed_array(obj, base[obj.tensor], t if general(t) else g.target, (h, w))
    s0 = _score(base[obj.tensor], onehot)
    rows = []
    for name in names:
        tensor = model.input.name if name == "input" else name
        if name == "input":
            def evaluate(t, ref=forward):
                return ref({model.input.name: t, **extra})[obj.tensor]
            point = x.astype(np.float64)
        else:
            head = Reference(override(proto, tensor, [obj.tensor]))

            def evaluate(t, ref=head, tensor=tensor):
                return ref({model.input.name: x, tensor: t, **extra})[obj.tensor]
            point = base[tensor]
        grad = np.asarray(g[name], np.float64)
        for k in range(directions):
            say(f"finite differences: {name}, direction {k + 1} of {directions}")
            rows.append(_compare(name, k, grad, point, evaluate, onehot, tolerance, rng, s0))
    if any(r.status == "FAIL" for r, _ in rows):
        say("re-judging with the gradient graph in float64")
        return _rejudge(model, x, layers, g.target, output, score, rows, tolerance, rules)
    return [r for r, _ in rows]


def _compare(name, k, grad, point, evaluate, onehot, tolerance, rng, s0) -> tuple:
    """(row, direction) of one comparison, redrawing the direction while it straddles a kink."""
    rms = float(np.sqrt(np.mean(point ** 2))) or 1.0
    for _ in range(RETRIES):
        v = rng.standard_normal(point.shape)
        analytic = float(np.sum(grad * v))
        # the smallest step whose rounding noise (NOISE·|S|/h) stays below a tenth of the tolerance
        resolving = 10 * NOISE * abs(s0) / max(tolerance * abs(analytic), 1e-300)
        step = min(max(STEP * rms, resolving), MAX_STEP * rms)

        def diff(h):
            plus, minus = _score(evaluate(point + h * v), onehot), _score(evaluate(point - h * v), onehot)
            return (plus - minus) / (2 * h), NOISE * max(abs(plus), abs(minus), abs(s0)) / h

        (fd, noise), (fd2, noise2) = diff(step), diff(SECOND * step)
        if not np.isfinite([analytic, fd, fd2]).all():  # never "ok", never "exact"
            return CheckRow(name, k, analytic, fd, float("nan"), float("nan"), "NaN",
                            "the gradient or the score is not finite"), v
        scale = max(abs(fd), abs(analytic), 1e-300)
        error = abs(analytic - fd) / scale
        spread = abs(fd - fd2) / max(abs(fd), abs(fd2), 1e-300)
        if abs(fd - fd2) > tolerance / 2 * max(abs(fd), abs(fd2)) + 2 * (noise + noise2):
            continue  # the two steps disagree beyond rounding: a kink between them
        if error <= tolerance:
            return CheckRow(name, k, analytic, fd, spread, error, "ok"), v
        if abs(analytic - fd) <= 2 * noise or noise > tolerance * abs(analytic):
            return CheckRow(name, k, analytic, fd, spread, error, "inconclusive",
                            f"the score ({abs(s0):.2g}) is too large against its derivative along this "
                            f"direction ({abs(analytic):.2g}) for float64 differences to resolve it "
                            f"(rounding ±{noise:.2g})"), v
        return CheckRow(name, k, analytic, fd, spread, error, "FAIL"), v
    return CheckRow(name, k, analytic, fd, spread, error, "kink",
                    f"all {RETRIES} directions tried straddled a kink (a max-pool tie or a ReLU at 0)"), v


def _rejudge(model, x, layers, target, output, score, rows, tolerance, rules) -> list:
    """FAIL rows re-judged along the same direction by the gradient graph run in float64.

    A float32 gradient of a deep ReLU net differs from the float64 one by up to a few percent
    where a pre-activation or a pool window lies within float32 rounding of a tie; the rules
    are not at fault there, and the float64 graph, which takes the same branches as the
    float64 differences, agrees with them. A wrong rule fails in float64 too.
    """
    try:
        g64, _ = graph_gradients_float64(model, x, ["input", *layers], target, output, score, rules)
    except (NotImplementedError, RuntimeError, ValueError, KeyError) as exc:
        # an op the reference evaluator lacks or gets wrong: keep the float32 verdict, say so
        note = f"not re-judged in float64 ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
        return [CheckRow(r.tensor, r.direction, r.analytic, r.numeric, r.spread, r.error, r.status, note)
                if r.status == "FAIL" else r for r, _ in rows]
    out = []
    for r, v in rows:
        if r.status == "FAIL":
            a64 = float(np.sum(np.asarray(g64[r.tensor], np.float64) * v))
            e64 = abs(a64 - r.numeric) / max(abs(r.numeric), abs(a64), 1e-300)
            if e64 <= tolerance:
                r = CheckRow(r.tensor, r.direction, r.analytic, r.numeric, r.spread, r.error, "ok",
                             f"float32 rounding: the same gradient graph run in float64 agrees (error "
                             f"{e64:.1e}); the float32 run differs where a ReLU or max-pool window lies "
                             "within float32 rounding of a tie")
        out.append(r)
    return out


def format_rows(rows: Sequence[CheckRow]) -> str:
    """A plain-text table of the comparison."""
    header = f"{'tensor':<40} {'dir':>3} {'analytic':>14} {'numeric':>14} {'rel. error':>11} {'fd spread':>10}  status"
    lines = [header, "-" * len(header)]
    width = max([40, *(len(r.tensor) for r in rows)])
    if width > 40:  # full names: they are pasted back as --layer
        header = header.replace(f"{'tensor':<40}", f"{'tensor':<{width}}")
        lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.tensor:<{width}} {r.direction:>3} {r.analytic:>14.6g} {r.numeric:>14.6g} "
                     f"{r.error:>11.2e} {r.spread:>10.1e}  {r.status}")
    notes = list(dict.fromkeys(r.reason for r in rows if r.reason))
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def verdict(rows: Sequence[CheckRow], tolerance: float) -> tuple:
    """("exact" | "not exact" | "inconclusive", one line saying why)."""
    bad = [r for r in rows if r.status == "FAIL"]
    good = [r for r in rows if r.status == "ok"]
    unsure = [r for r in rows if not r.conclusive]
    if bad:
        tensors = ", ".join(dict.fromkeys(r.tensor for r in bad))
        return "not exact", (f"{len(bad)} of {len(rows)} checks exceed the tolerance {tolerance:g} "
                             f"(worst relative error {max(r.error for r in bad):.1e}) at {tensors}")
    if not good:
        return "inconclusive", ("finite differences could not resolve any of the "
                                f"{len(rows)} checks: {unsure[0].reason}")
    tensors = {r.tensor for r in good}
    missing = list(dict.fromkeys(r.tensor for r in unsure if r.tensor not in tensors))
    if missing:
        return "inconclusive", (f"{len(good)} checks within {tolerance:g}, but nothing resolved at "
                                f"{', '.join(missing)}: {next(r.reason for r in unsure if r.tensor in missing)}")
    extra = f" ({len(unsure)} inconclusive: {unsure[0].reason})" if unsure else ""
    return "exact", f"all {len(good)} conclusive checks within {tolerance:g}{extra}"


# ---------------------------------------------------------------------------- the graph in float64


def graph_gradients_float64(model, x: np.ndarray, wrt: Sequence[str] = ("input",), target=None,
                            output=None, score: str = "logit", rules="standard"):
    """The gradient graph itself, converted to float64 and run by onnx's reference evaluator.

    Returns ({name: float64 gradient}, target per image). Free of float32 luck: a ReLU input
    or a max-pool window within float32 rounding of a tie takes the same branch here as in the
    float64 forward model that finite differences perturb, so the two must agree to ~1e-7
    however deep the network (float32 gradients of deep nets differ from float64 by 1e-2 at
    such points, with every rule right). Slow (pure numpy): a few forward passes' worth.
    """
    from .autodiff import ruleset
    from .gradients import TARGET_INPUT, TARGET_OUTPUT, gradient_model, resolve_wrt
    from .targets import target_array

    if isinstance(wrt, str):
        wrt = [wrt]
    obj = objective(model, output, score)
    names = resolve_wrt(model, wrt)
    x = model.check_input(x)
    h, w = model.input.hw(x)
    gm = gradient_model(model, h, w, obj, names, ruleset(rules))
    fetch = [gm.grads[n] for n in names]
    values = Reference(gm.proto)({model.input.name: x, TARGET_INPUT: target_array(target, x.shape[0])},
                                 list(dict.fromkeys([*fetch, TARGET_OUTPUT])))
    return {w_: values[gm.grads[n]] for w_, n in zip(wrt, names)}, values[TARGET_OUTPUT]


def directional_errors_float64(model, x: np.ndarray, layers: Sequence[str] = (), target=None,
                               directions: int = 3, step: float = 1e-8, seed: int = 0, output=None,
                               score: str = "logit", rules="standard", graph: str = "float64") -> dict:
    """{tensor: [relative error per direction]} of the float64 gradient graph against float64
    central differences of the forward model, each side run by onnx's reference evaluator.

    ``step`` is relative to the RMS of the perturbed tensor: 1e-8 stays clear of ReLU and
    max-pool kinks on ImageNet-size nets (1e-6 crosses about ten of them per direction) and
    still resolves the score's derivative to ~1e-7 in float64. The error of direction v is
    |<g, v> - fd| / max(|fd|, |<g, v>|, 1e-300). ``graph="float32"`` judges onnxruntime's run
    of the graph instead (for graphs with ops the reference evaluator gets wrong, e.g. MaxUnpool).
    """
    wrt = ["input", *layers]
    if graph == "float64":
        grads, chosen = graph_gradients_float64(model, x, wrt, target, output, score, rules)
    else:
        g = model.gradients(x, target=target, wrt=wrt, output=output, score=score, rules=rules)
        grads, chosen = dict(g), g.target
    obj = objective(model, output, score)
    x = model.check_input(x)
    proto = model.specialized(*model.input.hw(x))
    forward = Reference(expose(proto, [obj.tensor, *layers], keep_outputs=False))
    base = forward({model.input.name: x})
    onehot, _ = seed_array(obj, base[obj.tensor], chosen)
    rng = np.random.default_rng(seed)
    out = {}
    for name in wrt:
        if name == "input":
            ref, point, feed = forward, x.astype(np.float64), model.input.name
            fixed = {}
        else:
            ref, point, feed = Reference(override(proto, name, [obj.tensor])), base[name], name
            fixed = {model.input.name: x}
        h = step * float(np.sqrt(np.mean(point ** 2)) or 1.0)

        def central(v, width):
            plus = _score(ref({**fixed, feed: point + width * v}, [obj.tensor])[obj.tensor], onehot)
            minus = _score(ref({**fixed, feed: point - width * v}, [obj.tensor])[obj.tensor], onehot)
            return (plus - minus) / (2 * width)

        errors, redraws = [], directions  # at most as many redraws as directions
        while len(errors) < directions:
            v = rng.standard_normal(point.shape)
            fd = central(v, h)
            analytic = float(np.sum(np.asarray(grads[name], np.float64) * v))
            error = abs(analytic - fd) / max(abs(fd), abs(analytic), 1e-300)
            if error > KINK_CHECK and redraws > 0:
                # Smooth along v, a central difference at h/8 agrees with the one at h to O(h^2);
                # if they disagree by much of the error, the segment crosses a ReLU or max-pool
                # kink (a pre-activation within h of 0): the difference, not the graph, is off.
                narrow = central(v, h / 8)
                if abs(narrow - fd) > 0.5 * abs(analytic - fd):
                    redraws -= 1
                    continue
            errors.append(error)
        out[name] = errors
    return out


KINK_CHECK = 1e-5  # errors above this are re-checked for a kink on the difference's segment
