"""Gradients of a target score with respect to the input and intermediate tensors, in one run.

The gradient graph receives one int64 ``target`` per image (-1: the predicted class) and
builds the one-hot seed itself, so the prediction, the activations and the gradients come
out of a single onnxruntime run. General targets (:class:`onnxviz.targets.Target`, seed
arrays) feed their weights, shaped to broadcast against the output, as one more input; a
per-position "predicted" seed multiplies them by the one-hot of each position's argmax in-graph.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import onnx
from onnx import helper

from .autodiff import RuleSet, gradient_graph, ruleset
from .degenerate import warn_ties
from .errors import NonFiniteError, OnnxvizError
from .fd import gradient_fd
from .graph.double import has_float16, to_float32
from .graph.emitter import Emitter
from .graph.view import tensor_types
from .targets import (Objective, TargetLike, class_scores, describe, general, normalize, objective, reported,
                      seed_array, seed_weights)

TARGET_INPUT = "onnxviz_target"
WEIGHTS_INPUT = "onnxviz_seed_weights"
TARGET_OUTPUT = "onnxviz_target_used"
SCORE_OUTPUT = "onnxviz_score"


class Gradients(dict):
    """Gradients keyed by the requested tensor names (``"input"`` included as given).

    Also carries ``outputs`` (the model's outputs), ``activations`` (values of the requested
    tensors), ``target`` (class per image; -1 for a general target without a single class),
    ``score`` (the explained scalar per image), ``objective`` and ``explained`` (the target in words).
    """

    def __init__(self, grads, outputs, activations, target, score, objective: Objective, explained: str = ""):
        super().__init__(grads)
        self.explained = explained
        self.outputs = outputs
        self.activations = activations
        self.target = target
        self.score = score
        self.objective = objective


def seed_from_target(obj: Objective):
    """A seed builder: one-hot of the target class along the class axis, summed over other axes."""

    def build(e: Emitter, tensor: str):
        rank, axis = obj.rank, obj.class_axis
        other = [i for i in range(1, rank) if i != axis]
        summed = e.reduce_sum(tensor, other, keepdims=True) if other else tensor
        predicted = e.op("ArgMax", summed, axis=axis, keepdims=1)
        target = e.op("Reshape", TARGET_INPUT, e.ints([-1] + [1] * (rank - 1)))
        chosen = e.op("Where", e.op("Less", target, e.ints([0])), predicted, target)
        seed = e.op("Expand", _onehot(e, tensor, chosen, axis, rank), e.shape_of(tensor))
        chosen_flat = e.op("Reshape", chosen, e.ints([-1]))
        score = e.reduce_sum(e.op("Mul", tensor, seed), list(range(1, rank)), keepdims=False)
        e.nodes.append(helper.make_node("Identity", [chosen_flat], [TARGET_OUTPUT], name=e.fresh("target")))
        e.nodes.append(helper.make_node("Identity", [score], [SCORE_OUTPUT], name=e.fresh("score")))
        inputs = [helper.make_tensor_value_info(TARGET_INPUT, onnx.TensorProto.INT64, ["N"])]
        outputs = [helper.make_tensor_value_info(TARGET_OUTPUT, onnx.TensorProto.INT64, ["N"]),
                   helper.make_tensor_value_info(SCORE_OUTPUT, e.elem_type(tensor), ["N"])]
        return seed, inputs, outputs

    return build


def _onehot(e: Emitter, tensor: str, index: str, axis: int, rank: int) -> str:
    """1 where the position along ``axis`` of ``tensor`` equals ``index`` (broadcast over the rest)."""
    count = e.op("Gather", e.shape_of(tensor), e.ints([axis]))
    iota_shape = [1] * rank
    iota_shape[axis] = -1
    iota = e.op("Reshape", e.op("Range", e.const(np.int64(0)), e.op("Squeeze", count), e.const(np.int64(1))),
                e.ints(iota_shape))
    return e.op("Cast", e.op("Equal", iota, index), to=e.elem_type(tensor))


def seed_from_weights(obj: Objective, predicted: bool):
    """A seed builder for general targets: fed weights, times the per-position argmax one-hot when ``predicted``."""

    def build(e: Emitter, tensor: str):
        rank, axis = obj.rank, obj.class_axis
        weights = e.op("Cast", WEIGHTS_INPUT, to=e.elem_type(tensor))
        if predicted:
            best = e.op("ArgMax", tensor, axis=axis, keepdims=1)
            weights = e.op("Mul", weights, _onehot(e, tensor, best, axis, rank))
        seed = e.op("Expand", weights, e.shape_of(tensor))
        score = e.reduce_sum(e.op("Mul", tensor, seed), list(range(1, rank)), keepdims=False)
        e.nodes.append(helper.make_node("Identity", [score], [SCORE_OUTPUT], name=e.fresh("score")))
        inputs = [helper.make_tensor_value_info(WEIGHTS_INPUT, onnx.TensorProto.FLOAT,
                                                [f"w{i}" for i in range(rank)])]
        outputs = [helper.make_tensor_value_info(SCORE_OUTPUT, e.elem_type(tensor), ["N"])]
        return seed, inputs, outputs

    return build


def output_shape(model, obj: Objective, x: np.ndarray) -> tuple:
    """The objective tensor's concrete shape for batch ``x``: static when inference knows it, else one run."""
    h, w = model.input.hw(x)
    static = model.derived(("shape", h, w, obj.tensor),
                           lambda: tensor_types(model.specialized(h, w).graph).get(obj.tensor, (None, None))[1])
    if static is None or any(not isinstance(d, int) or d <= 0 for d in static[1:]):
        return (len(x), *model.activations(x[:1], [obj.tensor])[obj.tensor].shape[1:])
    return (len(x), *static[1:])


def resolve_wrt(model, wrt: Sequence[str]) -> list:
    names = []
    for w in wrt:
        name = model.input.name if w == "input" else w
        if not model.has_tensor(name):
            raise OnnxvizError(f"no tensor named {w!r} in the model; `onnxviz inspect` lists them")
        names.append(name)
    return names


def gradient_model(model, height: int, width: int, obj: Objective, wrt: Sequence[str], rules: RuleSet,
                   predicted: Optional[bool] = None):
    """The (cached) gradient graph for one input size, objective, tensor set and rule set.

    ``predicted`` None: the class-index seed; True/False: the fed-weights seed (with or
    without the per-position argmax).
    """
    key = ("grad", height, width, obj, tuple(wrt), rules.name, id(rules), predicted)
    seed = seed_from_target(obj) if predicted is None else seed_from_weights(obj, predicted)

    def build():
        proto = model.specialized(height, width)
        check_differentiable(proto)
        if has_float16(proto):
            proto = to_float32(proto)  # backward in float32; x is cast at the boundary (see gradients)
        return gradient_graph(proto, obj.tensor, list(wrt), rules, seed_builder=seed)

    return model.derived(key, build, fixed_shapes=True)


CONTROL_FLOW = ("If", "Loop", "Scan")


def check_differentiable(proto: onnx.ModelProto) -> None:
    """Refuse graphs the backward walk cannot see into: control flow hides its tensors in subgraphs."""
    for node in proto.graph.node:
        if node.op_type in CONTROL_FLOW:
            raise OnnxvizError(
                f"control-flow operator {node.op_type!r} (node {node.name or node.output[0]!r}): onnxviz has no "
                "gradient through If/Loop/Scan subgraphs; use finite differences (--grad fd on cam and "
                "saliency, grad='fd' in the API)")


def gradients(
    model,
    x: np.ndarray,
    target: TargetLike = None,
    wrt: Sequence[str] = ("input",),
    rules: Union[str, RuleSet] = "standard",
    output: Optional[str] = None,
    score: str = "logit",
    class_axis: Optional[int] = None,
    batch_size: Optional[int] = None,
    progress: bool = False,
    grad: str = "graph",
    checked: bool = False,
) -> Gradients:
    """d score / d tensor for each tensor in ``wrt`` ("input" is the model's image input).

    ``target``: class index (one for all, or one per image; default the predicted class, or
    for dense and sequence outputs each position's predicted class), a :class:`Target`,
    ``"predicted"`` or a float seed array shaped like the output (or one image's output).
    ``rules``: "standard", "guided" (guided backprop) or "deconvnet", or a RuleSet.
    ``grad``: "graph" (the gradient graph, one run) or "fd" (central finite differences,
    2 runs per element of each tensor: the fallback for ops without a backward rule).
    ``checked``: ``x`` is what ``model.check_input`` returned (the methods check their rows once;
    each check is a pass over the whole batch).

    >>> g = model.gradients(x, target=3, wrt=["input", "relu_4"])
    >>> g["input"].shape == x.shape
    True
    """
    if isinstance(wrt, str):
        wrt = [wrt]
    rules = ruleset(rules)
    obj = objective(model, output, score, class_axis)
    names = resolve_wrt(model, wrt)
    x = x if checked else model.check_input(x)
    grad = {"exact": "graph"}.get(grad, grad)
    if grad == "fd":
        return _gradients_fd(model, x, normalize(model, obj, target, len(x)), wrt, names, rules, obj, batch_size,
                             progress)
    if grad != "graph":
        raise OnnxvizError(f"grad must be 'exact' (the gradient graph) or 'fd', not {grad!r}")
    h, w = model.input.hw(x)
    try:
        return _gradients_graph(model, x, target, wrt, names, rules, obj, h, w, batch_size, progress)
    except OnnxvizError as exc:
        failed = next((n for n in getattr(model, "notes", ()) if n.startswith("opset conversion failed")), None)
        if failed is None or isinstance(exc, NonFiniteError):
            raise
        raise OnnxvizError(f"{failed}; the gradient graph of the unconverted model failed: {exc}") from exc


def _gradients_graph(model, x, target, wrt, names, rules, obj, h, w, batch_size, progress) -> Gradients:
    t = normalize(model, obj, target, x.shape[0])
    feeds = model.feeds(x, checked=True)  # checked by gradients()
    if x.dtype == np.float16:
        feeds[model.input.name] = x.astype(np.float32)  # float16 models: gradients run in float32
    if general(t):
        weights, predicted = seed_weights(obj, t, output_shape(model, obj, x), (h, w))
        gm = gradient_model(model, h, w, obj, names, rules, predicted)
        feeds[WEIGHTS_INPUT] = np.ascontiguousarray(weights, np.float32)
        extra = [SCORE_OUTPUT]
    else:
        gm = gradient_model(model, h, w, obj, names, rules)
        feeds[TARGET_INPUT] = t
        extra = [TARGET_OUTPUT, SCORE_OUTPUT]
    grad_outs = [gm.grads[n] for n in names]
    model_outs = list(model.outputs)
    fetch = list(dict.fromkeys([*model_outs, *names, *extra, *grad_outs]))
    values = model.run_graph(gm.proto, feeds, outputs=fetch, batch_size=model._chunk(batch_size),
                             progress=progress, desc="gradients")
    grads = {w_: values[gm.grads[n]] for w_, n in zip(wrt, names)}
    y = values.get(obj.tensor, values.get(obj.output))  # a softmax keeps the logits' ties
    if not general(t) and y is not None and (t < 0).any():
        warn_ties(class_scores(obj, y), t < 0)
    return Gradients(
        grads,
        outputs={o: values[o] for o in model_outs},
        activations={n: values[n] for n in names},
        target=values[TARGET_OUTPUT] if not general(t) else reported(t, len(x)),
        score=values[SCORE_OUTPUT],
        objective=obj,
        explained=describe(t),
    )


def _gradients_fd(model, x, target, wrt, names, rules, obj: Objective, batch_size, progress) -> Gradients:
    """The same result by finite differences (standard rules only: guided/deconvnet are not gradients)."""
    if not rules.exact:
        raise OnnxvizError(f"the {rules.name!r} rule set modifies backpropagation; it has no "
                           "finite-difference equivalent (use grad='graph')")
    grads, chosen = {}, None
    for w_, n in zip(wrt, names):
        grads[w_], chosen = gradient_fd(model, x, target, wrt=n, output=obj.output,
                                        score="logit" if obj.through_softmax else "prob",
                                        batch_size=batch_size or 64, progress=progress)
    values = model.activations(x, list(dict.fromkeys([*model.outputs, *names, obj.tensor])))
    y = values[obj.tensor].astype(np.float64)
    seed, _ = seed_array(obj, y, target if general(target) else chosen, model.input.hw(x))
    score = np.sum(y * seed, axis=tuple(range(1, y.ndim)))
    return Gradients(grads, outputs={o: values[o] for o in model.outputs}, activations={n: values[n] for n in names},
                     target=chosen, score=score, objective=obj, explained=describe(target))
