"""What scalar to explain: the output, its class axis, pre-softmax logits, and the seed.

Every explained score is ``Σ seed · y`` for a seed shaped like the objective tensor ``y``:

* a class index ``k`` (one for all images, or an int array with one per image; -1 or None:
  the predicted class) selects channel ``k`` summed over the remaining non-batch axes;
* :class:`Target` generalizes it: several classes (multi-label: the sum), a ``box`` or ``mask``
  region of a dense output, a ``step`` of a sequence output (N, T, C), ``negate``;
* ``"predicted"``: at every position, the score of that position's argmax class (the predicted
  map or decoded sequence); the default for dense and sequence outputs;
* a float array shaped like the output (or one image's output) is the seed itself.

With ``score="logit"`` a trailing Softmax/LogSoftmax is looked through: the pre-softmax value
is explained, as pytorch-grad-cam and captum do; ``score="prob"`` explains the output itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import onnx
from onnx import helper

from .degenerate import warn_ties
from .errors import OnnxvizError
from .graph.view import walk_back

SCORES = ("logit", "prob")
PREDICTED = "predicted"
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
    if isinstance(target, Target) or isinstance(target, str):
        if isinstance(target, Target) and target.plain:
            return np.full(n, target.single, np.int64)
        raise OnnxvizError(f"this method takes class indices; the target {describe(target)!r} is not supported "
                           "here (gradients, CAMs, saliency and occlusion take general targets)")
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
    moved = np.moveaxis(summed, obj.class_axis, -1)
    return moved.reshape(len(y), moved.shape[-1])  # not -1: an empty batch has no size to infer it from


def chosen_targets(obj: Objective, y: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class per row, its score): negative targets become the predicted class."""
    scores = class_scores(obj, y)
    n_classes = scores.shape[1]
    bad = target >= n_classes
    if bad.any():
        raise OnnxvizError(f"target {int(target[bad][0])} is out of range: {obj.tensor!r} has {n_classes} classes")
    chosen = np.where(target < 0, scores.argmax(axis=1), target).astype(np.int64)
    warn_ties(scores, target < 0)
    return chosen, scores[np.arange(len(y)), chosen]


def seed_array(obj: Objective, y: np.ndarray, target, size: Optional[tuple] = None) -> tuple[np.ndarray, np.ndarray]:
    """(seed, class per row): the float64 seed shaped like ``y`` whose Σ seed·y is the explained score.

    ``target`` is a class index (or one per row; negative: the predicted class), a :class:`Target`
    or a float seed array (see :func:`normalize`); ``size`` the input (H, W) a box or mask is in.
    The numpy twin of the in-graph seeds that :mod:`onnxviz.gradients` builds.
    """
    if general(target):
        w, predicted = seed_weights(obj, target, y.shape, size)
        seed = w * predicted_onehot(obj, y) if predicted else w
        return np.broadcast_to(seed, y.shape), reported(target, len(y))
    chosen, _ = chosen_targets(obj, y, target_array(target, len(y)))
    seed = _onehot(chosen.reshape([-1] + [1] * (y.ndim - 1)), y.shape[obj.class_axis], obj.class_axis)
    return np.broadcast_to(seed, y.shape), chosen


def general(target) -> bool:
    """A normalized target that is not a class index per row."""
    return isinstance(target, Target) or (isinstance(target, np.ndarray) and target.dtype.kind == "f")


def target_scores(obj: Objective, y: np.ndarray, target, size: Optional[tuple] = None):
    """(class per row, explained score per row) for any normalized target."""
    if not general(target):
        return chosen_targets(obj, y, target)
    seed, chosen = seed_array(obj, y, target, size)
    return chosen, np.sum(seed * y, axis=tuple(range(1, y.ndim)))


def check_targets(model, obj: Objective, target: np.ndarray) -> np.ndarray:
    """Refuse class indices beyond the objective's class axis (when its size is known)."""
    shape = model.tensor_shape(obj.tensor)
    n_classes = shape[obj.class_axis] if shape is not None else None
    if isinstance(n_classes, int) and n_classes > 0 and (target >= n_classes).any():
        raise OnnxvizError(f"target {int(target.max())} is out of range: {obj.tensor!r} has {n_classes} classes")
    return target


def rows(model, x: np.ndarray, obj: Objective, target: "TargetLike" = None, top_k: Optional[int] = None):
    """(x per row, target per row, image index per row); ``top_k`` repeats each image for its K best classes.

    Targets are class indices (one for all images, or one per image; -1 means "predicted"),
    returned as an int64 array, or a general target (a :class:`Target` or a float seed array,
    the same for every row), returned normalized.
    """
    x = model.check_input(x)
    n = len(x)
    if top_k is None:
        t = normalize(model, obj, target, n)
        return x, t if general(t) else check_targets(model, obj, t), np.arange(n)
    if target is not None:
        raise OnnxvizError("give either a target (--target) or top_k (--top-k), not both")
    if top_k < 1:
        raise OnnxvizError(f"top_k (--top-k) must be at least 1, not {top_k}")
    scores = class_scores(obj, model.activations(x, [obj.tensor])[obj.tensor])
    warn_ties(scores)  # the first of the K is the prediction
    k = min(top_k, scores.shape[1])
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    image = np.repeat(np.arange(n), k)
    return x[image], best.reshape(-1).astype(np.int64), image


# ---------------------------------------------------------------------------- general targets


@dataclass(frozen=True, eq=False)
class Target:
    """What to explain, beyond one class: ``Σ seed · y`` with the seed built from these fields.

    ``classes``: a class/channel index, a list (multi-label: their sum) or None (at each position
    its predicted class); ``box=(x0, y0, x1, y1)`` in model-input pixels, or ``mask`` (H, W) or
    (N, H, W) (non-zero = inside; weights are used as given): a region of an output with two
    spatial axes, mapped to the output grid by the size ratio (a box keeps every cell it
    overlaps, a mask is sampled nearest at cell centres, pytorch-grad-cam's
    SemanticSegmentationTarget when the output has the input's size); ``step``: an int or
    slice of the T axis of a sequence output (N, T, C); ``negate``: explain minus the score
    (what lowers it).

    >>> onnxviz.grad_cam(model, x, target=onnxviz.Target(3, box=(0, 0, 32, 32)))
    >>> onnxviz.saliency(model, x, target=onnxviz.Target([1, 4], negate=True))
    """

    classes: Union[None, int, Sequence[int]] = None
    box: Optional[tuple] = None
    mask: Optional[np.ndarray] = None
    step: Union[None, int, slice] = None
    negate: bool = False

    def __post_init__(self):
        if self.classes is not None:
            classes = np.atleast_1d(np.asarray(self.classes))
            if classes.ndim != 1 or classes.size == 0 or classes.dtype.kind not in "iu" or (classes < 0).any():
                raise OnnxvizError(f"Target classes must be non-negative class indices, not {self.classes!r}")
        if self.box is not None:
            if len(self.box) != 4 or not (self.box[0] < self.box[2] and self.box[1] < self.box[3]):
                raise OnnxvizError(f"box must be (x0, y0, x1, y1) with x0 < x1 and y0 < y1, not {self.box!r}")
            if self.mask is not None:
                raise OnnxvizError("give a box or a mask, not both")
        if self.mask is not None and np.asarray(self.mask).ndim not in (2, 3):
            raise OnnxvizError(f"mask must be (H, W) or (N, H, W), not shape {np.asarray(self.mask).shape}")
        if self.step is not None and not isinstance(self.step, (int, np.integer, slice)):
            raise OnnxvizError(f"step must be an int or a slice, not {self.step!r}")

    @property
    def single(self) -> Optional[int]:
        """The one class explained, or None (predicted per position, or several)."""
        c = None if self.classes is None else np.atleast_1d(self.classes)
        return int(c[0]) if c is not None and c.size == 1 else None

    @property
    def plain(self) -> bool:
        """One class over the whole output: the classic class-index target."""
        return self.single is not None and self.box is None and self.mask is None and self.step is None \
            and not self.negate

    def describe(self) -> str:
        """A short description for results and reports."""
        if self.classes is None:
            what = "predicted class at each position"
        else:
            c = [int(k) for k in np.atleast_1d(self.classes)]
            what = f"class {c[0]}" if len(c) == 1 else "sum of classes " + ", ".join(map(str, c))
        if self.box is not None:
            what += " in box (" + ", ".join(f"{v:g}" for v in self.box) + ")"
        if self.mask is not None:
            what += " in mask"
        if self.step is not None:
            s = self.step
            what += f" at step {s}" if not isinstance(s, slice) else f" at steps {s.start}:{s.stop}"
        return ("minus " if self.negate else "") + what


TargetLike = Union[None, int, Sequence[int], np.ndarray, str, Target]


def is_dense(model, obj: Objective) -> bool:
    """The objective has positions besides the class axis (a dense or sequence head)."""
    if obj.rank < 3:
        return False
    shape = model.tensor_shape(obj.tensor)
    other = [shape[a] for a in range(1, obj.rank) if a != obj.class_axis] if shape is not None else [None]
    return not all(d == 1 for d in other)


def normalize(model, obj: Objective, target: TargetLike, n: int):
    """Class index per row (np.int64 array: the classic path), or a :class:`Target`, or a float seed.

    Integer arrays are class indices per image; float (or bool) arrays of two or more axes, or
    of one axis for a (N, C) output, are seeds.
    """
    if isinstance(target, str):
        if target != PREDICTED:
            raise OnnxvizError(f"target {target!r}: expected a class index, {PREDICTED!r}, a Target or a seed array")
        return Target() if obj.rank >= 3 else np.full(n, -1, np.int64)
    if isinstance(target, Target):
        if target.plain:
            return np.full(n, target.single, np.int64)
        return target
    if target is None:
        return Target() if is_dense(model, obj) else np.full(n, -1, np.int64)
    arr = np.asarray(target)
    if arr.dtype.kind in "fb" and (arr.ndim >= 2 or (arr.ndim == 1 and obj.rank == 2)):
        return arr.astype(np.float64)
    return target_array(target, n)


def fmt_shape(shape) -> str:
    return "(" + ", ".join("?" if d is None or d == 0 else str(d) for d in shape) + ")"


def seed_weights(obj: Objective, target, shape: tuple, size: tuple) -> tuple[np.ndarray, bool]:
    """(weights broadcastable to ``shape``, predicted): the seed of a Target or raw seed array.

    With ``predicted`` the seed is the weights times the one-hot of each position's argmax class.
    ``size`` is the model-input (H, W) that a box or mask is given in.
    """
    rank, axis = len(shape), obj.class_axis
    where = f"output {obj.output!r} (explained tensor {obj.tensor!r}) has shape {fmt_shape(shape)}"
    if isinstance(target, np.ndarray):
        seed = target if target.ndim == rank else target[None]
        if any(s not in (1, d) for s, d in zip(seed.shape[1:], shape[1:])) or seed.shape[0] not in (1, shape[0]):
            raise OnnxvizError(f"a seed of shape {target.shape} does not fit: {where}")
        return seed, False
    w = np.ones([1] * rank)
    if target.classes is not None:
        classes = np.atleast_1d(target.classes).astype(np.int64)
        if classes.max() >= shape[axis]:
            raise OnnxvizError(f"target {int(classes.max())} is out of range: {where} "
                               f"({shape[axis]} classes on axis {axis})")
        cw = np.bincount(classes, minlength=shape[axis]).astype(np.float64)
        w = w * cw.reshape([-1 if a == axis else 1 for a in range(rank)])
    other = [a for a in range(1, rank) if a != axis]
    if target.box is not None or target.mask is not None:
        if len(other) != 2:
            raise OnnxvizError(f"a {'box' if target.box is not None else 'mask'} needs an output with two "
                               f"spatial axes besides the classes: {where}")
        region = _box(target.box, shape, other, size) if target.box is not None else _mask(target.mask, shape,
                                                                                         other, size)
        w = w * region
    if target.step is not None:
        if rank != 3:
            raise OnnxvizError(f"a step needs a sequence output (N, T, C): {where}")
        t_axis = other[0]
        steps = np.zeros(shape[t_axis])
        try:
            steps[target.step] = 1
        except IndexError:
            raise OnnxvizError(f"step {target.step} is out of range: {where} ({shape[t_axis]} steps)") from None
        w = w * steps.reshape([-1 if a == t_axis else 1 for a in range(rank)])
    if target.negate:
        w = -w
    return w, target.classes is None


def _cells(lo: float, hi: float, n_in: int, n_out: int) -> slice:
    """Output cells along one axis whose input span [i·n_in/n_out, (i+1)·n_in/n_out) meets [lo, hi)."""
    scale = n_out / n_in
    a, b = int(np.floor(max(lo, 0) * scale)), int(np.ceil(min(hi, n_in) * scale))
    return slice(max(a, 0), min(max(b, a + 1), n_out))


def _box(box, shape, other, size) -> np.ndarray:
    x0, y0, x1, y1 = box
    (h, w), (ho, wo) = size, (shape[other[0]], shape[other[1]])
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        raise OnnxvizError(f"box {tuple(box)} lies outside the {w}x{h} input")
    region = np.zeros([ho if a == other[0] else wo if a == other[1] else 1 for a in range(len(shape))])
    at = [0] * len(shape)
    at[other[0]], at[other[1]] = _cells(y0, y1, h, ho), _cells(x0, x1, w, wo)
    region[tuple(at)] = 1
    return region


def _mask(mask, shape, other, size) -> np.ndarray:
    m = np.asarray(mask, np.float64)
    m = m[None] if m.ndim == 2 else m
    (h, w), (ho, wo) = size, (shape[other[0]], shape[other[1]])
    if m.shape[1:] != (h, w) and m.shape[1:] != (ho, wo):
        raise OnnxvizError(f"mask of shape {np.asarray(mask).shape} fits neither the {h}x{w} input nor the "
                           f"{ho}x{wo} output grid")
    if m.shape[1:] != (ho, wo):  # nearest sample at each output cell's centre
        rows = np.minimum(((np.arange(ho) + 0.5) * h / ho).astype(int), h - 1)
        cols = np.minimum(((np.arange(wo) + 0.5) * w / wo).astype(int), w - 1)
        m = m[:, rows][:, :, cols]
    if m.shape[0] not in (1, shape[0]):
        raise OnnxvizError(f"mask has {m.shape[0]} images for {shape[0]} rows")
    dims = [m.shape[0]] + [1] * (len(shape) - 1)
    dims[other[0]], dims[other[1]] = ho, wo
    return m.reshape(dims)


def predicted_onehot(obj: Objective, y: np.ndarray) -> np.ndarray:
    """One-hot of each position's argmax along the class axis."""
    best = np.expand_dims(np.argmax(y, axis=obj.class_axis), obj.class_axis)
    return _onehot(best, y.shape[obj.class_axis], obj.class_axis)


def _onehot(index: np.ndarray, n_classes: int, axis: int) -> np.ndarray:
    """float64 one-hot along ``axis`` of ``index`` (size 1 on that axis, the class there)."""
    shape = [1] * index.ndim
    shape[axis] = -1
    return (np.arange(n_classes).reshape(shape) == index).astype(np.float64)


def reported(target, n: int) -> np.ndarray:
    """The class index recorded per row for a general target: its one class, else -1."""
    k = target.single if isinstance(target, Target) else None
    return np.full(n, -1 if k is None else k, np.int64)


def describe(target) -> str:
    """What a normalized target explains, in words."""
    if isinstance(target, str):
        return target
    if isinstance(target, Target):
        return target.describe()
    if isinstance(target, np.ndarray) and target.dtype.kind == "f":
        return f"seed array of shape {target.shape}"
    t = np.asarray(target).reshape(-1)
    if t.size and (t < 0).all():
        return "predicted class"
    return "class " + ", ".join(str(int(k)) if k >= 0 else "predicted" for k in dict.fromkeys(t.tolist()))
