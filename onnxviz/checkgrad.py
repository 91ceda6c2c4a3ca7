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

from .graph.double import Reference
from .graph.surgery import expose, override
from .targets import objective, seed_array

STEPS = (1e-6, 1e-7)
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
    status: str  # "ok", "FAIL", or "kink": no direction tried avoided a non-differentiable point

    @property
    def ok(self) -> bool:
        return self.status != "FAIL"


def _score(values: np.ndarray, seed: np.ndarray) -> float:
    return float(np.sum(values * seed))


def check_gradients(model, x: Optional[np.ndarray] = None, layers: Sequence[str] = (), target=None,
                    directions: int = 2, tolerance: float = 1e-3, seed: int = 0, output=None,
                    score: str = "logit", jitter: float = 1e-3) -> list:
    """Rows comparing <dS/dt, v> with (S(t + hv) - S(t - hv)) / 2h for the input and each layer.

    Images have exact ties (flat regions feeding a max-pool, ReLUs at exactly 0) where the
    derivative does not exist and differences measure the average of one-sided slopes; so
    the check runs at a generic point next to ``x`` (noise of ``jitter`` × std(x)), and a
    direction whose differences disagree across step sizes (a kink) is replaced by a fresh one.
    """
    rng = np.random.default_rng(seed)
    if x is None:
        x = rng.standard_normal(model.input.shape(1, model.input.height or 64, model.input.width or 64))
        x = x.astype(model.input.dtype)
    x = model.check_input(x)
    if jitter and np.issubdtype(x.dtype, np.floating):
        x = (x + rng.standard_normal(x.shape) * jitter * float(x.std() or 1)).astype(x.dtype)
    obj = objective(model, output, score)
    names = ["input", *layers]
    g = model.gradients(x, target=target, wrt=names, output=output, score=score)
    h, w = model.input.hw(x)
    proto = model.specialized(h, w)
    forward = Reference(expose(proto, [obj.tensor, *layers], keep_outputs=False))
    base = forward({model.input.name: x})
    onehot, _ = seed_array(obj, base[obj.tensor], g.target)
    rows = []
    for name in names:
        tensor = model.input.name if name == "input" else name
        if name == "input":
            def evaluate(t, ref=forward):
                return ref({model.input.name: t})[obj.tensor]
            point = x.astype(np.float64)
        else:
            head = Reference(override(proto, tensor, [obj.tensor]))

            def evaluate(t, ref=head, tensor=tensor):
                return ref({model.input.name: x, tensor: t})[obj.tensor]
            point = base[tensor]
        grad = np.asarray(g[name], np.float64)
        for k in range(directions):
            rows.append(_compare(name, k, grad, point, evaluate, onehot, tolerance, rng))
    return rows


def _compare(name, k, grad, point, evaluate, onehot, tolerance, rng) -> CheckRow:
    """One direction's comparison, redrawing the direction while it straddles a kink."""
    for _ in range(RETRIES):
        v = rng.standard_normal(point.shape)
        analytic = float(np.sum(grad * v))
        numerics = [(_score(evaluate(point + s * v), onehot) - _score(evaluate(point - s * v), onehot)) / (2 * s)
                    for s in STEPS]
        scale = max(abs(numerics[0]), abs(analytic), 1e-12)
        error = abs(analytic - numerics[0]) / scale
        spread = abs(numerics[0] - numerics[-1]) / scale
        if spread <= tolerance / 10:
            return CheckRow(name, k, analytic, numerics[0], spread, error, "ok" if error <= tolerance else "FAIL")
    return CheckRow(name, k, analytic, numerics[0], spread, error, "kink")


def format_rows(rows: Sequence[CheckRow]) -> str:
    """A plain-text table of the comparison."""
    header = f"{'tensor':<40} {'dir':>3} {'analytic':>14} {'numeric':>14} {'rel. error':>11} {'fd spread':>10}  status"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.tensor[:40]:<40} {r.direction:>3} {r.analytic:>14.6g} {r.numeric:>14.6g} "
                     f"{r.error:>11.2e} {r.spread:>10.1e}  {r.status}")
    return "\n".join(lines)
