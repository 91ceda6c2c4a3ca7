"""Constant folding: turn nodes whose inputs are all known into initializers.

Weights behind ConstantOfShape, Identity, Cast, DequantizeLinear or Constant nodes then
look like plain initializers to analysis, filters and the backward rules.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .view import RANDOM_OPS, constant_values

log = logging.getLogger("onnxviz")

# Ops whose output depends on more than their inputs, or that are too costly to fold.
_NEVER = RANDOM_OPS | {"If", "Loop", "Scan"}
_MAX_ELEMENTS = 2**28  # 1 GiB of float32: VGG-19 fc6 is 103M


def _output_elements(node: onnx.NodeProto, inputs: list) -> int:
    """An upper bound on the elements a node would produce, for the ops whose output can dwarf their inputs.

    Checked before evaluating: a 974-byte ConstantOfShape([30000, 30000]) would allocate 3.6 GB.
    """
    op = node.op_type
    try:
        if op == "ConstantOfShape":
            return int(np.prod([int(d) for d in inputs[0]], dtype=object))
        if op == "Expand":
            shape = np.broadcast_shapes(np.shape(inputs[0]), tuple(int(d) for d in inputs[1]))
            return int(np.prod(shape, dtype=object))
        if op == "Tile":
            return int(np.asarray(inputs[0]).size * np.prod([int(r) for r in inputs[1]], dtype=object))
        if op == "Range":
            start, limit, delta = (float(np.asarray(v).reshape(-1)[0]) for v in inputs[:3])
            return int(max(np.ceil((limit - start) / delta), 0)) if delta else 0
        if op in ("Resize", "Upsample", "Pad", "OneHot", "EyeLike"):
            return _MAX_ELEMENTS + 1  # their output size hides in attributes/scales: never folded
    except (TypeError, ValueError, OverflowError, IndexError):
        return _MAX_ELEMENTS + 1
    return max((np.asarray(v).size for v in inputs if v is not None), default=1)


def _evaluate(node: onnx.NodeProto, inputs: list, opset: int) -> list:
    """Outputs of one node on known inputs, with numpy for the common cases."""
    op = node.op_type
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if op == "Identity":
        return [inputs[0]]
    if op == "ConstantOfShape":
        value = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
        return [np.full(tuple(int(d) for d in inputs[0]), value.reshape(-1)[0], dtype=value.dtype)]
    if op == "Cast":
        return [inputs[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))]
    from onnx.reference import ReferenceEvaluator

    names = [f"i{k}" if name else "" for k, name in enumerate(node.input)]
    outs = [f"o{k}" for k in range(len(node.output))]
    clone = helper.make_node(op, names, outs, domain=node.domain, **attrs)
    graph = helper.make_graph(
        [clone], "fold",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in zip(names, inputs) if n],
        [helper.make_value_info(o, onnx.TypeProto()) for o in outs],
    )
    feeds = {n: v for n, v in zip(names, inputs) if n}
    try:
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        return list(ReferenceEvaluator(model).run(None, feeds))
    except RuntimeError as exc:
        # The reference evaluator implements only the versions where an op changed; the
        # newest one computes the same for inputs valid at the model's version.
        if "No implementation" not in str(exc):
            raise
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", onnx.defs.onnx_opset_version())])
        return list(ReferenceEvaluator(model).run(None, feeds))


def fold_constants(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Fold constant subgraphs into initializers (in place); returns the model.

    Only default-domain nodes are folded; a node that fails to evaluate is left as it is.
    """
    graph = model.graph
    known = constant_values(graph)
    graph_inputs = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    kept, new_inits = [], []
    for node in graph.node:
        ins = [i for i in node.input if i]
        foldable = (
            node.domain in ("", "ai.onnx")
            and node.op_type not in _NEVER
            and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
            and all(i in known and i not in graph_inputs for i in ins)
            and (ins or node.op_type == "Constant")
        )
        if foldable and node.op_type != "Constant" and \
                _output_elements(node, [known[i] if i else None for i in node.input]) > _MAX_ELEMENTS:
            foldable = False  # too large to fold (or unbounded): left for onnxruntime, never allocated here
        if foldable:
            try:
                values = _evaluate(node, [known[i] if i else None for i in node.input], opset) \
                    if node.op_type != "Constant" else [known[node.output[0]]]
            except Exception as exc:  # unusual attribute combinations: leave the node alone
                log.debug("not folding %s (%s): %s", node.name, node.op_type, exc)
                values = None
            if values is not None and all(np.asarray(v).size <= _MAX_ELEMENTS for v in values):
                for name, value in zip(node.output, values):
                    if name:
                        known[name] = np.asarray(value)
                        new_inits.append(numpy_helper.from_array(np.asarray(value), name))
                continue
        kept.append(node)
    if new_inits:
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(new_inits)
    return model
