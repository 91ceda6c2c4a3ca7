"""The class-visualization section, present only when ``onnxviz.methods.classvis`` is importable.

For each class the images were predicted as, the input the model scores highest for that
class (gradient ascent on its pre-softmax logit, :func:`onnxviz.methods.classvis.class_visualization`
with its default settings), with the probability the model gives it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .explain import predictions
from .pictures import PANEL, picture
from .sections import Inputs, NotApplicable

MAX_CLASSES = 6


@dataclass
class ClassVisView:
    steps: int
    pictures: list = field(default_factory=list)
    left_out: int = 0  # predicted classes beyond MAX_CLASSES


def predicted_classes(inp: Inputs) -> list:
    """Top-1 classes of the images, each once, in the order the images give them."""
    rows, _ = predictions(inp.model, inp.x, 1, inp.label)
    return list(dict.fromkeys(r[0].index for r in rows))


def class_visualizations(inp: Inputs) -> ClassVisView:
    # Lazy: the section is optional (classvis_available), so the report imports without it.
    from ..methods.classvis import class_visualization

    if inp.x is None:
        raise NotApplicable("no image could be read, so there are no predicted classes to visualize")
    classes = predicted_classes(inp)
    shown = classes[:MAX_CLASSES]
    steps = {} if inp.classvis_steps is None else {"steps": int(inp.classvis_steps)}
    vis = class_visualization(inp.model, target=shown, pre=inp.pre, size=inp.model.input.hw(inp.x), **steps)
    view = ClassVisView(int(vis.settings.get("steps", 0) or 0), left_out=len(classes) - len(shown))
    for k, image, prob in zip(vis.target, vis.image, vis.probability):
        name = inp.label(int(k))
        view.pictures.append(picture(image, f"{name} · p = {float(prob):.3f}",
                                     f"the input the model scores highest for {name}", side=PANEL))
    return view
