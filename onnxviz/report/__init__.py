"""The audit report: one self-contained HTML page on a model and some images.

>>> r = onnxviz.report("models/shapes_cnn.onnx", ["models/images/star_0.png"], out="report.html")
>>> [(s.title, s.status) for s in r.sections][:2]
[('Model card', 'ok'), ('Gradient check', 'ok')]
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional, Sequence, Union

from ..errors import OnnxvizError
from ..images import Preprocess, deprocess, load_labels, preprocess, read_image
from ..io import atomic_write
from .classvis import class_visualizations
from .dataset import dataset_views
from .explain import explanations
from .html import render
from .sections import Inputs, Progress, Section, classvis_available, first_filters, gradient_check, model_card, \
    run_section
from .trust import trust_section
from ..model import load

PathLike = Union[str, Path]


@dataclass
class Report:
    """The sections of a report, its HTML, and where it was written (None when not written)."""

    sections: list
    html: str
    path: Optional[Path] = None
    seconds: float = 0.0

    def section(self, key: str) -> Section:
        return next(s for s in self.sections if s.key == key)


SECTIONS = (
    ("model", "Model card", model_card),
    ("gradcheck", "Gradient check", gradient_check),
    ("filters", "Filters of the first convolution", first_filters),
    ("images", "Predictions and explanations", explanations),
    ("trust", "Can these maps be trusted?", trust_section),
    ("dataset", "Dataset", dataset_views),
)


def report(model, images: Sequence[PathLike], out: Optional[PathLike] = None, *, dataset: Optional[PathLike] = None,
           labels=None, pre: Optional[Preprocess] = None, layer: Optional[str] = None, top: int = 5,
           device: str = "auto", progress: Optional[Progress] = None, check_grad: bool = True,
           classvis_steps: Optional[int] = None) -> Report:
    """Build the audit report of ``model`` (a path or a loaded Model) on ``images``; write it to ``out``.

    ``dataset``: an image folder (sub-folders = classes) for the t-SNE map, neighbours and patches;
    ``labels``: class names (a list or a label file); ``pre``: preprocessing (default ImageNet's);
    ``layer``: the Grad-CAM/activations layer (default: chosen from the graph); ``top``: how many
    predictions to list; ``progress``: called with one line per section step; ``check_grad=False``
    skips the gradient check; ``classvis_steps``: ascent steps of the class visualizations.
    Every section is guarded: one that fails or does not apply says why on the page.

    >>> onnxviz.report("resnet50.onnx", ["cat.jpg"], "audit.html", labels="imagenet.txt")
    """

    start = time.perf_counter()
    if isinstance(model, (str, Path)):
        model = load(str(model), device=device)
    if isinstance(labels, (str, Path)):
        labels = load_labels(labels)
    inputs = read_inputs(model, images, pre or Preprocess(), labels, dataset, layer, top)
    inputs.check_grad, inputs.classvis_steps = check_grad, classvis_steps
    sections = build_sections(inputs, progress)
    seconds = time.perf_counter() - start
    page = render(sections, inputs, generated=datetime.now().astimezone(), seconds=seconds)
    path = None
    if out is not None:
        path = Path(out)
        with atomic_write(path, "w") as f:
            f.write(page)
    return Report(sections, page, path, seconds)


def read_inputs(model, images: Sequence[PathLike], pre: Preprocess, labels=None, dataset=None, layer=None,
                top: int = 5) -> Inputs:
    """Read and preprocess the images; unreadable ones are listed, not fatal."""
    readable, pictures, unreadable = [], [], []
    for path in images:
        try:
            pictures.append(read_image(path))
            readable.append(str(path))
        except (OnnxvizError, OSError) as exc:
            unreadable.append((str(path), str(exc)))
    x = shown = None
    if pictures:
        try:
            x = preprocess(pictures, model.input, pre)
            shown = deprocess(x, model.input, pre)
        except OnnxvizError as exc:
            unreadable += [(p, f"could not preprocess: {exc}") for p in readable]
            readable = []
    return Inputs(model, pre, labels, readable, x, shown, unreadable,
                  Path(dataset) if dataset is not None else None, layer, top)


def build_sections(inputs: Inputs, progress: Optional[Progress] = None) -> list:
    """Every section in page order, each timed and guarded; class visualizations when available."""
    plan = list(SECTIONS)
    inputs.progress = inputs.progress or progress
    if classvis_available():
        plan.append(("classvis", "Class visualizations", class_visualizations))
    return [run_section(key, title, fn, inputs, progress, step=f"[{i}/{len(plan)}] ")
            for i, (key, title, fn) in enumerate(plan, start=1)]


__all__ = ["Report", "build_sections", "read_inputs", "report"]
