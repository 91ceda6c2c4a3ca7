"""Graph surgery: expose intermediate tensors as outputs, prune dead nodes, cut at a tensor."""
from __future__ import annotations

import copy
from typing import Iterable, Sequence

import onnx
from onnx import helper

from ..errors import OnnxvizError
from .view import tensor_types


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise OnnxvizError("the model imports no default-domain (ai.onnx) opset")


def value_info_for(name: str, types: dict) -> onnx.ValueInfoProto:
    """A graph output declaration for ``name``, typed when the type is known."""
    elem_type, shape = types.get(name, (onnx.TensorProto.UNDEFINED, None))
    if elem_type == onnx.TensorProto.UNDEFINED:
        vi = onnx.ValueInfoProto()
        vi.name = name
        return vi
    return helper.make_tensor_value_info(name, elem_type, None if shape is None else list(shape))


def producers(graph: onnx.GraphProto) -> dict:
    return {o: n for n in graph.node for o in n.output if o}


def prune(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes, initializers and inputs that no graph output depends on (in place).

    Inputs of the original model that the outputs no longer need are kept: callers feed them.
    """
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:  # subgraphs may read outer-scope tensors
                for g in [attr.g, *attr.graphs]:
                    needed.update(_outer_names(g))
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    # deleted in place: rebuilding the list would copy every kept weight
    for i in reversed([i for i, t in enumerate(graph.initializer) if t.name not in needed]):
        del graph.initializer[i]
    return model


def _outer_names(g: onnx.GraphProto) -> Iterable[str]:
    for node in g.node:
        yield from (i for i in node.input if i)
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs]:
                yield from _outer_names(sub)


def expose(model: onnx.ModelProto, names: Sequence[str], keep_outputs: bool = True) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are ``names`` (after the original outputs when kept)."""
    known = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    known |= {o for n in model.graph.node for o in n.output}
    missing = [n for n in names if n not in known]
    if missing:
        raise OnnxvizError(f"no tensor named {', '.join(map(repr, missing))} in the model")
    out = copy.deepcopy(model)
    types = tensor_types(out.graph)
    current = [o.name for o in out.graph.output] if keep_outputs else []
    del out.graph.output[:]
    for name in dict.fromkeys([*current, *names]):
        out.graph.output.append(value_info_for(name, types))
    return prune(out)


def cut(model: onnx.ModelProto, at: str, outputs: Sequence[str] = ()) -> onnx.ModelProto:
    """The head of ``model`` from tensor ``at`` on: ``at`` becomes the only graph input.

    Fails when the head still needs another graph input (the cut does not separate it).
    """
    head = expose(model, outputs or [o.name for o in model.graph.output], keep_outputs=False)
    graph = head.graph
    types = tensor_types(model.graph)
    feeds = {i.name for i in graph.input}
    keep, needed = [], {o.name for o in graph.output}
    for node in reversed(graph.node):
        if at in node.output:
            continue
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i and i != at)
    keep.reverse()
    other = needed & (feeds - {t.name for t in graph.initializer})
    if other:
        raise OnnxvizError(
            f"cutting at {at!r} does not separate the head: it still reads input(s) {sorted(other)}"
        )
    del graph.node[:]
    graph.node.extend(keep)
    del graph.input[:]
    graph.input.append(value_info_for(at, types))
    return prune(head)


def override(model: onnx.ModelProto, at: str, outputs: Sequence[str] = ()) -> onnx.ModelProto:
    """A copy where tensor ``at`` is a graph input instead of being computed.

    Unlike :func:`cut`, the other inputs stay, so this works when other paths (residual
    connections) bypass ``at``.
    """
    out = copy.deepcopy(model)
    types = tensor_types(out.graph)
    for node in out.graph.node:
        for k, name in enumerate(node.output):
            if name == at:
                node.output[k] = f"{at}__overridden"
    out.graph.input.append(value_info_for(at, types))
    if outputs:
        del out.graph.output[:]
        out.graph.output.extend(value_info_for(o, types) for o in outputs)
    return prune(out)


def head(model: onnx.ModelProto, at: str, outputs: Sequence[str]) -> tuple:
    """The part of ``model`` after tensor ``at``: (graph, whether it still reads the other inputs)."""
    try:
        return cut(model, at, outputs), False
    except OnnxvizError:
        return override(model, at, outputs), True
