"""Helpers the attribution methods share: which layer, where its axes are, which class per row."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from ..errors import OnnxvizError
from ..gradients import target_array
from ..graph.analysis import best_gradcam_layer, gradcam_candidates, spatial_axes
from ..targets import Objective

Target = Union[None, int, Sequence[int], np.ndarray]

# Each analysis is a walk over the whole graph: done once per model (Model.derived).
def _axes_table(model) -> dict:
    return model.derived(("spatial_axes",), lambda: spatial_axes(model.proto, model.input.name, model.input.layout))


def _candidates(model) -> list:
    return model.derived(("gradcam_candidates",),
                         lambda: gradcam_candidates(model.proto, model.input.name, model.input.layout))


def resolve_layer(model, layer: Optional[str] = None) -> str:
    """``layer`` checked against the graph, or the best Grad-CAM candidate when None."""
    if layer is None:
        if not _candidates(model):
            best_gradcam_layer(model.proto, model.input.name, model.input.layout)  # raises its clear error
        return _candidates(model)[0]
    if not model.has_tensor(layer) or layer == model.input.name:
        hint = ", ".join(_candidates(model)[:5])
        what = "the image input" if layer == model.input.name else "no tensor"
        raise OnnxvizError(f"{what} named {layer!r} cannot be used as a CAM layer; "
                           f"candidates: {hint or 'none found'} (`onnxviz inspect` lists every tensor)")
    return layer


def layer_axes(model, layer: str, strict: bool = True) -> tuple[int, int, int]:
    """(channel, height, width) axes of a 4-D layer tensor, channels-last layers included.

    The height and width axes are traced through the graph from the input. ``strict`` (CAMs,
    occlusion, channel visualization) refuses a tensor without spatial extent; otherwise
    (pooling features, showing activations) an untraced tensor takes the input's layout.
    """
    axes = _axes_table(model).get(layer)
    if not strict:
        h, w = axes if axes is not None else ((1, 2) if model.input.layout == "NHWC" else (2, 3))
        return next(a for a in (1, 2, 3) if a not in (h, w)), h, w
    shape = model.tensor_shape(layer)
    if axes is None or (shape is not None and len(shape) != 4):
        raise OnnxvizError(
            f"layer {layer!r} (shape {_fmt(shape)}) has no spatial extent: CAMs need a 4-D tensor that "
            f"still has the image's height and width; candidates: {', '.join(_candidates(model)[:5]) or 'none'}")
    h, w = axes
    c = next(a for a in (1, 2, 3) if a not in (h, w))
    if shape is not None and shape[h] == 1 and shape[w] == 1:
        raise OnnxvizError(f"layer {layer!r} has shape {_fmt(shape)}: its height and width are 1, so a map "
                           "would be a single pixel; pick a layer before the global pooling")
    return c, h, w


def to_nchw(a: np.ndarray, axes: tuple[int, int, int]) -> np.ndarray:
    """A layer value as (N, C, h, w) in image orientation."""
    return np.transpose(a, (0, *axes))


def from_nchw(a: np.ndarray, axes: tuple[int, int, int]) -> np.ndarray:
    """The inverse of :func:`to_nchw`: back to the layer's own layout."""
    return np.transpose(a, np.argsort((0, *axes)))


def _fmt(shape) -> str:
    return "unknown" if shape is None else "(" + ", ".join(str(d) if d else "?" for d in shape) + ")"


# ---------------------------------------------------------------------------- targets


def class_scores(obj: Objective, y: np.ndarray) -> np.ndarray:
    """(N, classes): the objective tensor summed over its axes other than batch and class."""
    other = tuple(i for i in range(1, y.ndim) if i != obj.class_axis)
    summed = y.sum(axis=other, keepdims=True) if other else y
    return np.moveaxis(summed, obj.class_axis, -1).reshape(len(y), -1)


def chosen_targets(obj: Objective, y: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class per row, its score): negative targets become the predicted class."""
    scores = class_scores(obj, y)
    n_classes = scores.shape[1]
    bad = target >= n_classes
    if bad.any():
        raise OnnxvizError(f"target {int(target[bad][0])} is out of range: {obj.tensor!r} has {n_classes} classes")
    chosen = np.where(target < 0, scores.argmax(axis=1), target).astype(np.int64)
    return chosen, scores[np.arange(len(y)), chosen]


def check_targets(model, obj: Objective, target: np.ndarray) -> np.ndarray:
    """Refuse class indices beyond the objective's class axis (when its size is known)."""
    shape = model.tensor_shape(obj.tensor)
    n_classes = shape[obj.class_axis] if shape is not None else None
    if isinstance(n_classes, int) and n_classes > 0 and (target >= n_classes).any():
        raise OnnxvizError(f"target {int(target.max())} is out of range: {obj.tensor!r} has {n_classes} classes")
    return target


def rows(model, x: np.ndarray, obj: Objective, target: Target = None, top_k: Optional[int] = None):
    """(x per row, target per row, image index per row); ``top_k`` repeats each image for its K best classes.

    Targets are class indices (one for all images, or one per image); -1 means "predicted".
    """
    x = model.check_input(x)
    n = len(x)
    if top_k is None:
        return x, check_targets(model, obj, target_array(target, n)), np.arange(n)
    if target is not None:
        raise OnnxvizError("give either target or top_k, not both")
    if top_k < 1:
        raise OnnxvizError(f"top_k must be at least 1, not {top_k}")
    scores = class_scores(obj, model.activations(x, [obj.tensor])[obj.tensor])
    k = min(top_k, scores.shape[1])
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    image = np.repeat(np.arange(n), k)
    return x[image], best.reshape(-1).astype(np.int64), image
