"""Reverse-mode autodiff over an ONNX graph, emitting the backward pass as standard ONNX ops.

The gradient graph takes the model's inputs plus a *seed* shaped like the differentiated
tensor ``y`` and returns d(seed . y)/dt for every requested tensor t. Only nodes on a path
from a requested tensor to ``y`` get backward nodes; weights never get gradients.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import onnx
from onnx import helper

from ..errors import OnnxvizError, UnsupportedOpError
from ..graph.emitter import Emitter
from ..graph.view import FLOAT_TYPES, ConstantValues, tensor_types
from ..graph.surgery import default_opset, prune, value_info_for
from .ruleset import Node, RuleSet


@dataclass
class GradientModel:
    """A gradient graph and the names of its seed input and gradient outputs."""

    proto: onnx.ModelProto
    output: str  # the differentiated tensor
    seed: str  # graph input shaped like ``output``
    grads: dict  # requested tensor -> name of its gradient output


def _active_nodes(graph: onnx.GraphProto, output: str, wrt: Sequence[str], types: dict) -> list:
    """Nodes that lie on a float path from a requested tensor to ``output``."""
    def is_float(name: str) -> bool:
        return name in types and types[name][0] in FLOAT_TYPES

    reached = {t for t in wrt}
    forward = []
    for node in graph.node:
        if any(i in reached for i in node.input if i):
            outs = [o for o in node.output if o and is_float(o)]
            reached.update(outs)
            if outs:
                forward.append(node)
    needed = {output}
    active = []
    for node in reversed(forward):
        if any(o in needed for o in node.output):
            active.append(node)
            needed.update(i for i in node.input if i in reached)
    return active, reached


def gradient_graph(
    model: onnx.ModelProto,
    output: str,
    wrt: Sequence[str],
    rules: RuleSet,
    extra_outputs: Sequence[str] = (),
    seed_name: str = "seed",
    seed_builder: Optional[Callable] = None,
) -> GradientModel:
    """Build the graph computing d(seed . output)/d(t) for each t in ``wrt``.

    ``model`` must be shape-inferred and topologically sorted. The result also outputs
    the original graph outputs, ``wrt`` themselves and ``extra_outputs``. By default the
    seed is a graph input shaped like ``output``; ``seed_builder(emitter, output)`` may
    instead emit it from forward tensors and return (seed, extra graph inputs, extra outputs).
    """
    model = copy.deepcopy(model)
    graph = model.graph
    opset = default_opset(model)
    types = tensor_types(graph)
    for t in [output, *wrt]:
        if t not in types:
            raise OnnxvizError(f"tensor {t!r} is not in the model (or has no inferred type)")
        if types[t][0] not in FLOAT_TYPES:
            raise OnnxvizError(f"tensor {t!r} is not a floating-point tensor: no gradient")
    active, reached = _active_nodes(graph, output, wrt, types)
    if output not in reached:
        raise OnnxvizError(f"output {output!r} does not depend on {', '.join(wrt)}: no gradient path")

    emitter = Emitter(types, ConstantValues(graph), opset)
    emitter.taken.update(o for n in graph.node for o in n.output)
    emitter.taken.update(i.name for i in graph.input)
    extra_inputs, built_outputs = [], []
    if seed_builder is None:
        seed = seed_name
        while seed in emitter.taken:
            seed = "_" + seed
        emitter.taken.add(seed)
    else:
        seed, extra_inputs, built_outputs = seed_builder(emitter, output)

    contributions: dict[str, list[str]] = {output: [seed]}
    # A requested tensor keeps its own gradient: rules never fuse across it (see Node.producers).
    producers = {o: n for n in graph.node for o in n.output if o and o not in wrt}

    def total(name: str) -> Optional[str]:
        parts = contributions.get(name)
        if not parts:
            return None
        if len(parts) > 1:
            contributions[name] = [emitter.op("Sum", *parts)]
        return contributions[name][0]

    for fwd in active:
        dys = [total(o) if o else None for o in fwd.output]
        if all(d is None for d in dys):
            continue
        if fwd.domain not in ("", "ai.onnx") or fwd.op_type not in rules:
            raise UnsupportedOpError(fwd.op_type, fwd.name or fwd.output[0], rules.keys(), fwd.domain)
        needs = tuple(bool(i) and i in reached for i in fwd.input)
        node = Node(fwd, opset, needs, producers=producers)
        dxs = rules[fwd.op_type](emitter, node, dys)
        if len(dxs) != len(fwd.input):
            raise RuntimeError(
                f"backward rule for {fwd.op_type} returned {len(dxs)} gradients for {len(fwd.input)} inputs"
            )
        for name, dx, need in zip(fwd.input, dxs, needs):
            if dx is not None and need:
                contributions.setdefault(name, []).append(dx)

    grads = {}
    for t in wrt:
        g = total(t) or emitter.zeros_like(t)
        out = emitter.fresh("d_" + t.replace("/", "_"))
        emitter.nodes.append(helper.make_node("Identity", [g], [out], name=emitter.fresh("grad_out")))
        grads[t] = out

    graph.node.extend(emitter.nodes)
    graph.initializer.extend(emitter.initializers)
    if seed_builder is None:
        # Symbolic dims: where onnx's shape inference and onnxruntime disagree on a size
        # (Resize's float rounding, ConvTranspose with SAME and output_padding), a fixed
        # declared shape would make onnxruntime reject a correctly shaped seed.
        elem_type, shape = types[output]
        dims = None if shape is None else [f"seed_d{i}" for i in range(len(shape))]
        graph.input.append(helper.make_tensor_value_info(seed, elem_type, dims))
    graph.input.extend(extra_inputs)
    wanted = [o.name for o in graph.output] + list(wrt) + list(extra_outputs)
    del graph.output[:]
    seen = set()
    for name in wanted:
        if name not in seen:
            seen.add(name)
            graph.output.append(value_info_for(name, types))
    for t in wrt:
        graph.output.append(value_info_for(grads[t], {grads[t]: types[t]}))
    graph.output.extend(built_outputs)
    prune(model)
    return GradientModel(model, output, seed, grads)
