"""The report's sections: each a function of the report's inputs returning a small typed result.

A section that cannot apply raises :class:`NotApplicable`; ``run_section`` turns that, an
onnxviz error or a bug into a :class:`Section` that says so, so one section never stops the
others. Parts of a section (one method, one dataset view) are guarded the same way.
"""
from __future__ import annotations

import importlib
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .. import checkgrad
from .._version import __version__
from ..errors import OnnxvizError
from ..images import Preprocess
from ..inspection import describe, sha256
from ..methods.features import convolutions, filters
from ..methods.layers import resolve_layer
from ..io import label
from ..render.tiles import filter_grid
from .pictures import Picture, picture

log = logging.getLogger("onnxviz")

Progress = Callable[[str], None]


class NotApplicable(Exception):
    """A section (or part) that does not apply to this model or these inputs; the message says why."""


@dataclass
class Inputs:
    """What every section reads: the model, preprocessing, labels and the images as the model sees them."""

    model: Any
    pre: Preprocess
    labels: Optional[list]
    paths: list  # the readable images, in the order given
    x: Optional[np.ndarray]  # their preprocessed batch, None when no image could be read
    shown: Optional[np.ndarray]  # the batch back as uint8 RGB (N, H, W, 3)
    unreadable: list = field(default_factory=list)  # (path, reason)
    dataset: Optional[Path] = None
    layer: Optional[str] = None  # as the user gave it; None = chosen automatically
    top: int = 5
    check_grad: bool = True  # False: the gradient check section says it was skipped (--no-check-grad)
    classvis_steps: Optional[int] = None  # ascent steps for class visualizations (None: the default)
    progress: Optional[Callable] = None  # one line of text per step of a long section

    def label(self, k: int) -> str:
        return label(self.labels, k)


@dataclass
class Section:
    """One section of the page: its result, or why there is none, and how long it took."""

    key: str
    title: str
    status: str  # "ok", "skipped" or "error"
    seconds: float
    result: Any = None
    message: str = ""


@dataclass
class Part:
    """The outcome of one guarded step inside a section (a method, a dataset view)."""

    name: str
    status: str
    seconds: float
    value: Any = None
    message: str = ""


def guarded(name: str, fn: Callable, *args, **kwargs) -> Part:
    """Run ``fn``; a NotApplicable, an onnxviz error or a bug becomes the Part's message.

    Bugs (any other exception) are logged with their traceback; Ctrl-C still stops everything.
    """
    start = time.perf_counter()
    try:
        value = fn(*args, **kwargs)
    except NotApplicable as exc:
        return Part(name, "skipped", time.perf_counter() - start, message=str(exc))
    except OnnxvizError as exc:
        return Part(name, "error", time.perf_counter() - start, message=str(exc))
    except Exception as exc:  # a bug: show it in its place, keep the rest of the report
        log.error("report: %s failed with an internal error", name, exc_info=True)
        return Part(name, "error", time.perf_counter() - start,
                    message=f"internal error, please report it: {type(exc).__name__}: {exc}")
    return Part(name, "ok", time.perf_counter() - start, value)


def run_section(key: str, title: str, fn: Callable, inputs: Inputs, progress: Optional[Progress] = None,
                step: str = "") -> Section:
    """One section, timed and guarded, with a progress line before and after."""
    say = progress or (lambda _: None)
    say(f"{step}{title} ...")
    part = guarded(title, fn, inputs)
    outcome = {"ok": "done", "skipped": "skipped", "error": "FAILED"}[part.status]
    detail = f": {_first_line(part.message)}" if part.message else ""
    say(f"{step}{title}: {outcome} in {part.seconds:.2f} s{detail}")
    return Section(key, title, part.status, part.seconds, part.value, part.message)


def _first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[:limit - 1] + "…"


# ---------------------------------------------------------------------------- model card


@dataclass
class ModelCard:
    """What the model is, how it was run, and its layer table (``describe``'s rows)."""

    info: dict  # onnxviz.inspection.describe(model)
    name: str
    sha256: str
    preprocessing: list  # (what, how) pairs
    runtime: str
    environment: str
    images: list  # names of the images explained
    unreadable: list  # (name, reason)


def model_card(inp: Inputs) -> ModelCard:
    model = inp.model
    size = model.input.hw(inp.x) if inp.x is not None else inp.pre.size
    info = describe(model, size=size)  # a dynamic-size model is described at the size it ran at
    return ModelCard(
        info=info,
        name=Path(model.path).name,
        sha256=sha256(model.path),
        preprocessing=preprocessing_rows(inp.pre, model.input, inp.x),
        runtime=model.runtime.describe(),
        environment=f"onnxviz {__version__}, Python {platform.python_version()}, "
                    f"{platform.system()} {platform.machine()}, {cpu()}",
        images=[Path(p).name for p in inp.paths],
        unreadable=[(Path(p).name, reason) for p, reason in inp.unreadable],
    )


def cpu() -> str:
    """The processor's model name (Linux) and core count, for the record."""
    name = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    cores = f"{os.cpu_count()} cores" if os.cpu_count() else ""
    return ", ".join(t for t in (name, cores) if t) or "unknown CPU"


_NORM_TEXT = {
    "imagenet": "ImageNet mean and std on 0–1 pixels (torchvision)",
    "unit": "pixels scaled to 0–1",
    "symmetric": "pixels scaled to −1…1",
    "raw": "raw 0–255 pixels",
    "caffe": "0–255 pixels minus the ImageNet mean (Caffe)",
}


def preprocessing_rows(pre: Preprocess, spec, x: Optional[np.ndarray]) -> list:
    """The preprocessing in words: size, resize, normalization, channel order."""
    size = spec.hw(x) if x is not None else (pre.size or spec.size)
    size_text = f"{size[0]}×{size[1]}" if size else "the image's own size"
    if pre.resize == "shorter":
        how = f"shorter side resized, then centre-cropped to {size_text}"
    else:
        how = f"stretched to {size_text}"
    if pre.crop < 1:
        how += f" (crop fraction {pre.crop:g})"
    if pre.norm == "custom":
        norm = (f"custom: mean {', '.join(f'{m:g}' for m in pre.mean)}, "
                f"std {', '.join(f'{s:g}' for s in pre.std)} (0–1 units)")
    else:
        norm = _NORM_TEXT.get(pre.norm, pre.norm)
    order = "grey" if spec.channels == 1 else ("BGR" if pre.bgr else "RGB")
    return [("resize", how), ("normalization", norm), ("channels", f"{order}, {spec.layout}, {spec.dtype}")]


# ---------------------------------------------------------------------------- gradient check


@dataclass
class GradientCheck:
    """check-grad on the first image: the gradient graph against float64 central differences.

    ``onnxviz.checkgrad`` checks at a generic point beside the image (flat regions put max-pools
    on ties and ReLUs at exactly 0, where no derivative exists) and marks a direction "kink"
    when every direction it drew still straddled one.
    """

    image: str
    rows: list  # onnxviz.checkgrad.CheckRow
    tolerance: float

    @property
    def verdict(self) -> tuple:
        """("exact" | "not exact" | "inconclusive", why): see ``onnxviz.checkgrad.verdict``."""
        from ..checkgrad import verdict

        return verdict(self.rows, self.tolerance)

    @property
    def exact(self) -> bool:
        return self.verdict[0] == "exact"

    @property
    def kinks(self) -> list:
        """Rows the differences could not judge: a kink in every direction, or a score too
        large for float64 to resolve its derivative."""
        return [r for r in self.rows if getattr(r, "status", "") in ("kink", "inconclusive")]

    @property
    def failing(self) -> list:
        """Tensors whose gradient disagrees with the differences."""
        return list(dict.fromkeys(r.tensor for r in self.rows if not r.ok))

    @property
    def worst(self) -> float:
        """The largest relative error among the conclusive rows."""
        return max((r.error for r in self.rows if getattr(r, "status", "") not in ("kink", "inconclusive")),
                   default=0.0)


def gradient_check(inp: Inputs, tolerance: float = 1e-3) -> GradientCheck:
    if not inp.check_grad:
        raise NotApplicable("skipped as asked (--no-check-grad); `onnxviz check-grad` runs it alone")
    if inp.x is None:
        raise NotApplicable("no image could be read to check the gradients on")
    layer = guarded("layer", resolve_layer, inp.model, inp.layer)
    layers = [layer.value] if layer.status == "ok" else []
    say = inp.progress or (lambda text: None)
    rows = checkgrad.check_gradients(inp.model, inp.x[:1], layers=layers, tolerance=tolerance,
                                     progress=lambda text: say(f"    gradient check: {text}"))
    return GradientCheck(Path(inp.paths[0]).name, rows, tolerance)


# ---------------------------------------------------------------------------- filters

MAX_FILTERS = 64


@dataclass
class FilterView:
    layer: str
    node: str
    shape: tuple  # (out, in, kh, kw)
    shown: int
    picture: Picture


def first_filters(inp: Inputs) -> FilterView:
    if not convolutions(inp.model):
        raise NotApplicable("the model has no convolution with constant weights")
    f = filters(inp.model)
    w = f.weights[:MAX_FILTERS]
    kh, kw = w.shape[2:]
    tiles = filter_grid(w, bgr=bool(inp.pre.bgr), zoom=max(1, 24 // max(kh, kw)), pad=2)
    side = max(tiles.shape[:2])
    shown = f"the first {len(w)} of {len(f.weights)}" if len(w) < len(f.weights) else f"all {len(w)}"
    colour = "colour: the three input channels" if w.shape[1] == 3 else "one row per filter, one column per input channel"
    caption = (f"{shown} filters of {f.layer!r}, {kh}×{kw}; grey = 0, each filter scaled to its own "
               f"largest weight ({colour})")
    pic = picture(tiles, caption, f"filters of {f.layer}", side=max(side, min(3 * side, 360)), smooth=False)
    return FilterView(f.layer, f.node, tuple(f.weights.shape), len(w), pic)


# ---------------------------------------------------------------------------- class visualizations


def classvis_available() -> bool:
    """Whether this onnxviz has class visualization (``onnxviz.methods.classvis``)."""
    try:
        importlib.import_module(f"{__package__.rsplit('.', 1)[0]}.methods.classvis")
    except ImportError:
        return False
    return True

