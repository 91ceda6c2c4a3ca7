"""Helpers the attribution methods share: which layer, and where its axes are (targets: :mod:`onnxviz.targets`)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import OnnxvizError
from ..graph.analysis import best_gradcam_layer, gradcam_candidates, spatial_axes
from ..targets import fmt_shape


# Each analysis is a walk over the whole graph: done once per model (Model.derived), on the shapes
# at the input's size (measured where static inference lost them: Model.shapes_at).
def _axes_table(model) -> dict:
    return model.derived(("spatial_axes",), lambda: spatial_axes(model.proto, model.input.name, model.input.layout,
                                                                 shapes=model.shapes_at()))


def _candidates(model) -> list:
    return model.derived(("gradcam_candidates",),
                         lambda: gradcam_candidates(model.proto, model.input.name, model.input.layout,
                                                    shapes=model.shapes_at()))


def resolve_layer(model, layer: Optional[str] = None) -> str:
    """``layer`` checked against the graph, or the best Grad-CAM candidate when None."""
    if layer is None:
        if not _candidates(model):
            best_gradcam_layer(model.proto, model.input.name, model.input.layout,
                               shapes=model.shapes_at())  # raises its clear error
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
    return "unknown" if shape is None else fmt_shape(shape)
