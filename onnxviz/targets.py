"""What scalar to explain: the output, its class axis, and pre-softmax logits.

A target picks, per image, one class along the class axis of an output; the explained
score is that class's value summed over the output's remaining non-batch axes (spatial
outputs such as segmentation or detection heads). With ``score="logit"`` a trailing
Softmax/LogSoftmax is looked through: the pre-softmax value is explained, as
pytorch-grad-cam and captum do; ``score="prob"`` explains the output itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import onnx
from onnx import helper

from .errors import OnnxvizError
from .graph.view import walk_back

SCORES = ("logit", "prob")
Target = Union[None, int, Sequence[int], np.ndarray]
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
    _, node = walk_back(output, model.producer, _TRANSPARENT)
    if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
        return node.input[0], node
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


# ---------------------------------------------------------------------------- class indices per row


def target_array(target, n: int) -> np.ndarray:
    """One class index per image; None or negative entries mean "the predicted class"."""
    if target is None:
        return np.full(n, -1, np.int64)
    t = np.asarray(target)
    if t.ndim == 0:
        return np.full(n, int(t), np.int64)
    t = t.astype(np.int64).reshape(-1)
    if t.size != n:
        raise OnnxvizError(f"got {t.size} targets for {n} images")
    return t


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


def seed_array(obj: Objective, y: np.ndarray, target) -> tuple[np.ndarray, np.ndarray]:
    """(seed, class per row): the float64 one-hot of each row's class along the class axis,
    broadcast over the other axes, so that Σ seed·y is the explained score (the numpy twin of
    the in-graph seed that :mod:`onnxviz.gradients` builds)."""
    chosen, _ = chosen_targets(obj, y, target_array(target, len(y)))
    shape = [1] * y.ndim
    shape[obj.class_axis] = -1
    iota = np.arange(y.shape[obj.class_axis]).reshape(shape)
    seed = (iota == chosen.reshape([-1] + [1] * (y.ndim - 1))).astype(np.float64)
    return np.broadcast_to(seed, y.shape), chosen


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
