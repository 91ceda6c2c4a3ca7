"""First-layer filters and layer activations."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from onnx import numpy_helper

from ..errors import OnnxvizError
from .layers import layer_axes, to_nchw


@dataclass(frozen=True)
class Filters:
    """Weights of one convolution, (out_channels, in_channels/group, kh, kw)."""

    layer: str  # the conv's output tensor
    node: str
    weights: np.ndarray
    group: int


@dataclass(frozen=True)
class Activations:
    """Feature maps of one layer, (N, C, h, w) in NCHW order whatever the model's layout."""

    layer: str
    values: np.ndarray


def convolutions(model) -> list:
    """Conv nodes whose weights are known constants, in graph order."""
    consts = {t.name for t in model.proto.graph.initializer}
    return [n for n in model.proto.graph.node if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in consts]


def filters(model, layer: Optional[str] = None) -> Filters:
    """The weights of ``layer`` (a Conv's output tensor, node name or weight name); default the first Conv.

    Weights behind Identity/Cast/DequantizeLinear are folded at load time, so they are found too.
    """
    convs = convolutions(model)
    if not convs:
        raise OnnxvizError("the model has no convolution with constant weights")
    if layer is None:
        node = convs[0]
    else:
        node = next((n for n in convs if layer in (n.output[0], n.name, n.input[1])), None)
        if node is None:
            names = ", ".join(n.output[0] for n in convs[:10])
            raise OnnxvizError(f"{layer!r} is not a convolution with constant weights; convolutions: {names}...")
    init = next(t for t in model.proto.graph.initializer if t.name == node.input[1])
    weights = numpy_helper.to_array(init)
    if weights.ndim != 4:
        raise OnnxvizError(f"convolution {node.output[0]!r} is not 2-D (weights of shape {weights.shape})")
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return Filters(node.output[0], node.name, weights.astype(np.float32), group)


def activations(model, x: np.ndarray, layer: str) -> Activations:
    """Values of a layer for a preprocessed batch, returned channels-first (N, C, h, w).

    Which axes are height and width is traced through the graph from the input, so the
    channels-last tensors of Keras exports come out in the same orientation as the image.
    """
    values = model.activations(x, [layer])[layer]
    if values.ndim == 2:
        return Activations(layer, values[:, :, None, None])
    if values.ndim != 4:
        raise OnnxvizError(f"layer {layer!r} has shape {values.shape}; expected a 4-D feature map")
    return Activations(layer, to_nchw(values, layer_axes(model, layer, strict=False)))
