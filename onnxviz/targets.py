"""What scalar to explain: the output, its class axis, and pre-softmax logits.

A target picks, per image, one class along the class axis of an output; the explained
score is that class's value summed over the output's remaining non-batch axes (spatial
outputs such as segmentation or detection heads). With ``score="logit"`` a trailing
Softmax/LogSoftmax is looked through: the pre-softmax value is explained, as
pytorch-grad-cam and captum do; ``score="prob"`` explains the output itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import onnx
from onnx import helper

from .errors import OnnxvizError

SCORES = ("logit", "prob")
_TRANSPARENT = {"Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Dropout", "Cast"}


@dataclass(frozen=True)
class Objective:
    """The differentiated tensor and how a class index selects from it."""

    output: str  # the model output the user named
    tensor: str  # the tensor whose target entry is explained (pre-softmax logits by default)
    class_axis: int  # non-negative axis of ``tensor``
    rank: int
    through_softmax: bool


def objective(model, output: Optional[str] = None, score: str = "logit",
              class_axis: Optional[int] = None) -> Objective:
    """Resolve the output name, the logit tensor behind a trailing softmax, and the class axis."""
    if score not in SCORES:
        raise OnnxvizError(f"score must be one of {', '.join(SCORES)}, not {score!r}")
    output = output or model.outputs[0]
    if output not in model.outputs and not model.has_tensor(output):
        raise OnnxvizError(f"no output named {output!r}; the model's outputs: {', '.join(model.outputs)}")
    tensor, softmax = output, None
    if score == "logit":
        tensor, softmax = _before_softmax(model, output)
    shape = model.tensor_shape(tensor)
    if shape is None:
        raise OnnxvizError(f"the rank of {tensor!r} is unknown; cannot pick a class axis")
    rank = len(shape)
    if rank < 2:
        raise OnnxvizError(f"output {output!r} has rank {rank}: expected a batch of class scores")
    if class_axis is None:
        class_axis = _softmax_class_axis(model, softmax, rank) if softmax is not None else _default_axis(model, rank)
    class_axis = class_axis % rank
    if class_axis == 0:
        raise OnnxvizError("the class axis cannot be the batch axis 0")
    return Objective(output, tensor, class_axis, rank, softmax is not None)


def _before_softmax(model, output: str):
    """Walk back through shape-only ops to a Softmax/LogSoftmax; return its input and the node."""
    name = output
    for _ in range(8):
        node = model.producer(name)
        if node is None:
            break
        if node.op_type in ("Softmax", "LogSoftmax"):
            return node.input[0], node
        if node.op_type not in _TRANSPARENT:
            break
        name = node.input[0]
    return output, None


def _softmax_class_axis(model, node: onnx.NodeProto, rank: int) -> int:
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), None)
    if model.opset >= 13:
        return -1 if axis is None else axis
    return 1 if axis is None else axis  # older Softmax flattens from `axis`: index along that axis


def _default_axis(model, rank: int) -> int:
    """(N, C) -> 1; (N, C, H, W) -> 1, or 3 for channels-last models; (N, boxes, C) -> 2."""
    if rank == 2:
        return 1
    if rank == 4:
        return 3 if model.input.layout == "NHWC" else 1
    return rank - 1
