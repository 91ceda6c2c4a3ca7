"""Gradients from precomputed ``onnxviz export-grad`` files: workers run them and build no graph.

``export-grad`` records in the file what it differentiates: the tensor, the rule set, the
tensors it has gradients for and the model's SHA-256. :func:`check_exported` refuses, in one
line naming the mismatch, a file that does not fit the model or the method (its layer, its
rule set). :class:`ExportedGradients` stands in for the model where the methods ask for
gradients: it picks the file with the requested rule set and tensors, builds the seed from the
targets in numpy (:func:`onnxviz.targets.seed_array`, the twin of the in-graph seed the
methods' own graphs build) and runs the file. The exported graph takes the seed as an input, so
the predicted class must be known before it runs: one forward run more per batch is the price
of building no gradient graph.

>>> explainer = BatchExplainer("model.onnx", "gradcam", grad_model="model.grad.onnx")
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import helper

from ..errors import OnnxvizError

META_KEY = "onnxviz.export_grad"

# The gradient graphs each method runs: (rule set, tensor), the tensor being the image input or
# the method's layer (the CAM layer). Methods not listed run none (cam, scorecam, occlusion).
GRADIENTS = {
    "gradcam": (("standard", "layer"),),
    "gradcam++": (("standard", "layer"),),
    "layercam": (("standard", "layer"),),
    "guided-gradcam": (("standard", "layer"), ("guided", "input")),
    "vanilla": (("standard", "input"),),
    "smoothgrad": (("standard", "input"),),
    "integrated": (("standard", "input"),),
    "guided": (("guided", "input"),),
    "deconvnet": (("deconvnet", "input"),),
}


@dataclass
class ExportedGrad:
    """What an export-grad file computes (from its metadata)."""

    path: str
    tensor: str  # the differentiated tensor: the seed has its shape
    rules: str
    seed: str  # the seed input's name
    grads: dict  # tensor -> name of its gradient output
    inputs: list  # the model's inputs (the file takes these and the seed)
    model_sha256: str
    size: Optional[list]  # [H, W] when exported with --size (then only that size runs)


def read_exported(path) -> ExportedGrad:
    """The metadata of an export-grad file (its weights are not read), or a one-line error."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, OSError: any unreadable file
        raise OnnxvizError(f"--grad-model {path}: not a readable ONNX file ({exc})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if META_KEY not in meta:
        raise OnnxvizError(f"--grad-model {path}: not written by this onnxviz's `export-grad` (no {META_KEY} "
                           "metadata); export it again: onnxviz export-grad MODEL --wrt ... -o FILE")
    info = json.loads(meta[META_KEY])
    return ExportedGrad(os.path.abspath(path), info["tensor"], info["rules"], info["seed"], info["grads"],
                        info["inputs"], info["model_sha256"], info.get("size"))


def needed(model, method: str, layer: Optional[str]) -> list:
    """(rule set, tensor name) of every gradient graph ``method`` runs; an error for methods with none."""
    from ..methods.layers import resolve_layer

    if method not in GRADIENTS:
        raise OnnxvizError(f"--grad-model: {method} runs no gradient graph; the methods that do: "
                           f"{', '.join(GRADIENTS)}")
    return [(rules, model.input.name if where == "input" else resolve_layer(model, layer))
            for rules, where in GRADIENTS[method]]


def pick(files: Sequence[ExportedGrad], rules: str, names: Sequence[str], who: str) -> ExportedGrad:
    """The file with gradients of all ``names`` under ``rules``, or an error naming what is missing."""
    for f in files:
        if f.rules == rules and all(n in f.grads for n in names):
            return f
    wrt = " ".join(f"--wrt {n}" for n in names)
    other = next((f for f in files if all(n in f.grads for n in names)), None)
    if other is not None:
        raise OnnxvizError(f"--grad-model {other.path} was exported with --rules {other.rules}; {who} needs "
                           f"--rules {rules} (export-grad MODEL {wrt} --rules {rules})")
    have = "; ".join(f"{os.path.basename(f.path)}: {', '.join(f.grads)} ({f.rules})" for f in files)
    raise OnnxvizError(f"--grad-model has no gradient of {', '.join(map(repr, names))} with --rules {rules}, "
                       f"which {who} needs (the files have {have}); export it: "
                       f"onnxviz export-grad MODEL {wrt} --rules {rules} -o FILE")


def check_exported(files: Sequence[ExportedGrad], model, method: str, options: dict,
                   size: Optional[tuple] = None) -> None:
    """Refuse files that do not fit ``model`` or ``method`` (with ``options``), one line naming the mismatch."""
    from ..methods.embed import model_digest
    from ..targets import objective

    if options.get("grad") == "fd":
        raise OnnxvizError("--grad-model runs exported gradient graphs; it does not combine with --grad fd")
    digest, inputs = model_digest(model), [model.input.name, *model.other_inputs]
    obj = objective(model, options.get("output"), options.get("score") or "logit")
    for f in files:
        if f.model_sha256 != digest:
            raise OnnxvizError(f"--grad-model {f.path} was exported from another model (its SHA-256 differs "
                               f"from {model.path or 'the model'}'s); export it from this one")
        if sorted(f.inputs) != sorted(inputs):
            raise OnnxvizError(f"--grad-model {f.path} takes the inputs {', '.join(f.inputs)}; the model takes "
                               f"{', '.join(inputs)}")
        if f.tensor != obj.tensor:
            raise OnnxvizError(f"--grad-model {f.path} differentiates {f.tensor!r}, but {method} explains "
                               f"{obj.tensor!r}; export it with the same --output and --score")
        check_size(f, size)
    for rules, name in needed(model, method, options.get("layer")):
        pick(files, rules, [name], method)


def check_size(f: ExportedGrad, size: Optional[tuple]) -> None:
    if f.size and size is not None and tuple(f.size) != tuple(size):
        raise OnnxvizError(f"--grad-model {f.path} was exported with --size {f.size[0]}x{f.size[1]}; the images "
                           f"are {size[0]}x{size[1]}")


class ExportedGradients:
    """``model`` whose :meth:`gradients` runs exported files; every other attribute is the model's own."""

    def __init__(self, model, files: Sequence[ExportedGrad]):
        self._model, self._files = model, list(files)

    def __getattr__(self, name):
        return getattr(self._model, name)

    def gradients(self, x, target=None, wrt=("input",), rules="standard", output=None, score: str = "logit",
                  class_axis: Optional[int] = None, batch_size: Optional[int] = None, progress: bool = False,
                  grad: str = "graph", checked: bool = False):
        """As :func:`onnxviz.gradients.gradients`, from the file with these tensors and this rule set."""
        from ..autodiff import ruleset
        from ..gradients import Gradients, resolve_wrt
        from ..targets import describe, normalize, objective, seed_array

        model = self._model
        if grad not in ("graph", "exact"):
            raise OnnxvizError("--grad-model runs exported gradient graphs; it does not combine with --grad fd")
        wrt = [wrt] if isinstance(wrt, str) else list(wrt)
        obj = objective(model, output, score, class_axis)
        names = resolve_wrt(model, wrt)
        f = pick(self._files, ruleset(rules).name, names, f"a {ruleset(rules).name} gradient")
        if f.tensor != obj.tensor:
            raise OnnxvizError(f"--grad-model {f.path} differentiates {f.tensor!r}, not {obj.tensor!r}")
        x = x if checked else model.check_input(x)
        hw = model.input.hw(x)
        check_size(f, hw)
        t = normalize(model, obj, target, len(x))
        # The seed needs the targets, and a predicted target the output: one forward run first.
        y = model.activations(x, [obj.tensor], batch_size=batch_size)[obj.tensor]
        seed, chosen = seed_array(obj, y, t, hw)
        fetch = list(dict.fromkeys([*model.outputs, *names, *(f.grads[n] for n in names)]))
        graph = model.derived(("exported-grad", f.path, tuple(fetch)), lambda: _pruned(f.path, fetch))
        feeds = model.feeds(x, checked=True)
        feeds[f.seed] = np.ascontiguousarray(seed, _input_dtype(graph, f.seed))
        values = model.run_graph(graph, feeds, outputs=fetch, batch_size=model._chunk(batch_size),
                                 progress=progress, desc="gradients")
        explained = np.sum(seed * y, axis=tuple(range(1, y.ndim))).astype(y.dtype)
        return Gradients({w: values[f.grads[n]] for w, n in zip(wrt, names)},
                         outputs={o: values[o] for o in model.outputs}, activations={n: values[n] for n in names},
                         target=chosen, score=explained, objective=obj, explained=describe(t))


def _pruned(path: str, outputs: Sequence[str]) -> onnx.ModelProto:
    """The file's graph cut down to ``outputs``: onnxruntime runs every node of a graph, so the
    gradients a file holds for other tensors (an input gradient beside a layer's) would cost as
    much as the ones asked for. Dropping nodes is one pass over the graph, not a gradient build."""
    from ..graph.surgery import prune

    proto = onnx.load(path)
    keep = [o for o in proto.graph.output if o.name in outputs]
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    return _without_unread_outputs(prune(proto))


def _without_unread_outputs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop trailing optional node outputs that nothing reads any more (in place).

    Backward rules give forward nodes outputs for their own use (MaxPool's Indices); once the
    nodes reading them are pruned, onnxruntime would still compute them, and a MaxPool asked
    for indices runs a kernel three times slower than one that is not.
    """
    graph = proto.graph
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    opsets = {o.domain or "": o.version for o in proto.opset_import}
    for node in graph.node:
        if len(node.output) < 2:
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opsets.get(node.domain or "", 1), node.domain or "")
        except onnx.defs.SchemaError:
            continue
        while len(node.output) > 1 and node.output[-1] not in read and _optional(schema, len(node.output) - 1):
            node.output.pop()
    return proto


def _optional(schema, index: int) -> bool:
    return index < len(schema.outputs) and \
        schema.outputs[index].option == onnx.defs.OpSchema.FormalParameterOption.Optional


def _input_dtype(graph: onnx.ModelProto, name: str):
    elem = next(i.type.tensor_type.elem_type for i in graph.graph.input if i.name == name)
    return helper.tensor_dtype_to_np_dtype(elem)
