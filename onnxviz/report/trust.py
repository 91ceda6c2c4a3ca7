"""The section "Can these maps be trusted?": deletion/insertion per method, and the randomization test.

Each method is evaluated on its own guard (``onnxviz.methods.trust.evaluate``), so a method
that cannot run on this model says why while the others are still scored.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .pictures import Picture, figure_picture
from .sections import Inputs, NotApplicable, guarded

METHODS = (("gradcam", "Grad-CAM"), ("vanilla", "Gradient"), ("guided", "Guided backprop"))
MAX_IMAGES = 8
STEPS = 25  # half the CLI's default: the report scores every method on every image


@dataclass(frozen=True)
class TrustRow:
    method: str
    title: str
    deletion: float  # mean AUC, lower is better
    insertion: float  # mean AUC, higher is better
    randomized: float  # mean Spearman of |map| with every layer randomized
    random_class: float  # mean Spearman of |map| for a random other class
    layers: int
    passes: bool
    verdict: str


@dataclass
class TrustView:
    images: int  # how many images were scored
    steps: int
    rows: list = field(default_factory=list)
    curves: Optional[Picture] = None
    sanity: Optional[Picture] = None
    parts: list = field(default_factory=list)

    @property
    def unavailable(self) -> list:
        return [p for p in self.parts if p.status != "ok"]


def trust_section(inp: Inputs) -> TrustView:
    from ..methods.trust import evaluate

    if inp.x is None:
        raise NotApplicable("no image could be read to score the maps on")
    x = inp.x[:MAX_IMAGES]
    view = TrustView(len(x), STEPS)
    done = {}
    for method, title in METHODS:
        part = guarded(title, evaluate, inp.model, x, method, ("deletion", "insertion", "sanity"), steps=STEPS)
        view.parts.append(part)
        if part.status == "ok":
            done[title] = part.value
    if not done:
        reasons = "; ".join(f"{p.name}: {p.message}" for p in view.parts)
        raise NotApplicable(f"no method could be scored on this model ({reasons})")
    for title, ev in done.items():
        s = ev.sanity
        view.rows.append(TrustRow(ev.method, title, float(ev.deletion.auc.mean()), float(ev.insertion.auc.mean()),
                                  s.final, float(ev.random_logit.spearman_abs.mean()), len(s.layers), s.passes(),
                                  s.verdict()))
    view.curves, view.sanity = _figures(done, len(x))
    return view


def _figures(done: dict, n: int):
    from ..render.figures import new_figure
    from ..render.trust import curves_figure, sanity_figure

    fig = new_figure((8.6, 3.2))
    left, right = fig.subplots(1, 2)
    curves_figure({t: ev.deletion for t, ev in done.items()}, ax=left)
    curves_figure({t: ev.insertion for t, ev in done.items()}, ax=right)
    images = f"{n} image{'s' if n != 1 else ''}"
    curves = figure_picture(fig, f"Mean score of the explained class over {images} as pixels are deleted "
                                 "(replaced by 0 in model-input units) or inserted into a blurred copy, "
                                 "most relevant first", "deletion and insertion curves")
    sanity = figure_picture(sanity_figure({t: ev.sanity for t, ev in done.items()}),
                            "Similarity of each map to the original as the weighted layers are randomized, "
                            "from the output back (dashed: the 0.5 verdict line)", "randomization test")
    return curves, sanity
