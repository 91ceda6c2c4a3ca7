"""The one read-only view of an ONNX graph that the analyses, the emitter and the model share.

Tensor types and static shapes, constant values (initializers, Constant nodes, constant
subgraphs), node attributes, and the two op tables every pass needs: which element types are
floats, and which ops are random (never constant, never folded).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16})
RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                        "Bernoulli"})

# Static dims are ints, symbolic dims their dim_param string, unknown dims None;
# a Shape is None when even the rank is unknown.
Shape = Optional[tuple]


def value_shape(vi: onnx.ValueInfoProto) -> Shape:
    """Static shape of a value info: ints, dim_param strings or None per dim; None without a shape."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)


def tensor_types(graph: onnx.GraphProto) -> dict[str, tuple[int, Shape]]:
    """Element type and static shape of every typed tensor in a (shape-inferred) graph."""
    info: dict[str, tuple[int, Shape]] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        if vi.type.HasField("tensor_type"):
            info[vi.name] = (vi.type.tensor_type.elem_type, value_shape(vi))
    for init in graph.initializer:
        info[init.name] = (init.data_type, tuple(init.dims))
    return info


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """The node producing each tensor."""
    return {o: n for n in graph.node for o in n.output if o}


class ConstantValues(Mapping):
    """:func:`constant_values`, each read when first asked for.

    Rules look at a few values (a BatchNormalization scale, a gate, a shape); reading every
    initializer up front copied all the weights of the model. The graph must not change
    while this is in use.
    """

    def __init__(self, graph: onnx.GraphProto):
        self._sources = {init.name: init for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and (
                    node.attribute[0].name == "value" or node.attribute[0].name in SCALAR_CONSTANT_ATTRS):
                self._sources[node.output[0]] = node.attribute[0]
        self._read: dict = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._read:
            source = self._sources[name]
            if isinstance(source, onnx.TensorProto):
                self._read[name] = numpy_helper.to_array(source)
            elif source.name == "value":
                self._read[name] = numpy_helper.to_array(source.t)
            else:
                self._read[name] = scalar_constant(source.name, helper.get_attribute_value(source))
        return self._read[name]

    def __contains__(self, name) -> bool:
        return name in self._sources

    def __iter__(self):
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)


def constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Values of initializers and Constant nodes (those with a plain ``value`` attribute), all read now."""
    return dict(ConstantValues(graph))


# Constant's number attributes: float32 and int64 tensors by the operator's definition
SCALAR_CONSTANT_ATTRS = ("value_float", "value_floats", "value_int", "value_ints")


def scalar_constant(attr_name: str, value) -> np.ndarray:
    return np.asarray(value, np.float32 if "float" in attr_name else np.int64)


def walk_back(name: str, producer: Callable, ops, data_input: Optional[Callable] = None) -> tuple:
    """Follow ``name`` back through the nodes whose op is in ``ops`` (softmax, reshapes, copies...).

    ``producer(tensor)`` gives a tensor's node or None; ``data_input(node)`` the input to follow
    (default the first; None stops). Returns ``(tensor, its producer or None)`` where the walk stopped.
    """
    node = producer(name)
    while node is not None and node.op_type in ops:
        x = data_input(node) if data_input is not None else node.input[0]
        if not x:
            break
        name, node = x, producer(x)
    return name, node


def attrs(node: onnx.NodeProto) -> dict:
    """A node's attributes as Python values (strings decoded)."""
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


class GraphView:
    """Lookups over one model: producers, shapes, dtypes and constant tensors.

    ``shapes`` (tensor name -> shape) overrides the graph's static shapes: the concrete shapes
    measured at one input size (:func:`onnxviz.shapes.concrete_shapes`) where inference lost them.
    """

    def __init__(self, model: onnx.ModelProto, shapes: Optional[dict] = None):
        g = model.graph
        self.model = model
        self.nodes = list(g.node)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.init = {t.name: t for t in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in self.init]
        self.outputs = [o.name for o in g.output]
        self.producer = {o: k for k, n in enumerate(self.nodes) for o in n.output if o}
        types = tensor_types(g)
        self.shapes = {name: shape for name, (_, shape) in types.items() if shape is not None}
        self.shapes.update(shapes or {})
        self.dtypes = {name: dtype for name, (dtype, _) in types.items()}
        self.const = set(self.init) | {""}
        for n in self.nodes:
            if n.op_type not in RANDOM_OPS and all(i in self.const for i in n.input):
                self.const.update(n.output)

    def node_of(self, name: str):
        k = self.producer.get(name)
        return None if k is None else self.nodes[k]

    def shape(self, name: str) -> Optional[tuple]:
        """Shape with ints for known dims, dim_param strings or None for unknown ones."""
        return self.shapes.get(name)

    def rank(self, name: str) -> Optional[int]:
        s = self.shapes.get(name)
        return None if s is None else len(s)

    def dim(self, name: str, axis: int) -> Optional[int]:
        s = self.shapes.get(name)
        if s is None or not -len(s) <= axis < len(s):
            return None
        d = s[axis]
        return d if isinstance(d, int) else None

    def is_float(self, name: str) -> bool:
        return self.dtypes.get(name, TensorProto.FLOAT) in FLOAT_TYPES


def const_value(g: GraphView, name: str) -> Optional[np.ndarray]:
    """Value of a constant tensor (initializer, Constant, or a subgraph of constants), else None."""
    if not name or name not in g.const:
        return None
    if name in g.init:
        return numpy_helper.to_array(g.init[name])
    node = g.node_of(name)
    if node.op_type == "Constant":
        a = attrs(node)
        if "value" in a:
            return numpy_helper.to_array(a["value"])
        for key in SCALAR_CONSTANT_ATTRS:
            if key in a:
                return scalar_constant(key, a[key])
        return None
    return _evaluate_constant(g, name)


def _evaluate_constant(g: GraphView, name: str) -> Optional[np.ndarray]:
    """Run the constant subgraph behind `name` with onnx's numpy reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    needed, stack = set(), [name]
    while stack:
        k = g.producer.get(stack.pop())
        if k is not None and k not in needed:
            needed.add(k)
            stack.extend(i for i in g.nodes[k].input if i)
    nodes = [g.nodes[k] for k in sorted(needed)]
    inits = [g.init[i] for n in nodes for i in n.input if i in g.init]
    graph = helper.make_graph(nodes, "const", [], [onnx.ValueInfoProto(name=name)],
                              initializer=list({t.name: t for t in inits}.values()))
    model = helper.make_model(graph, opset_imports=list(g.model.opset_import))
    model.ir_version = g.model.ir_version
    try:
        return np.asarray(ReferenceEvaluator(model).run(None, {})[0])
    except Exception:  # an exotic constant subgraph: report "unknown" rather than fail the analysis
        return None


def ints(g: GraphView, node, attr: str, index: int) -> Optional[list]:
    """An int-list setting given as attribute (old opsets) or constant input (new ones)."""
    a = attrs(node)
    if attr in a:
        v = a[attr]
        return [v] if isinstance(v, int) else list(v)
    if len(node.input) > index and node.input[index]:
        v = const_value(g, node.input[index])
        return None if v is None else [int(x) for x in np.ravel(v)]
    return None


def floats(g: GraphView, node, attr: str, index: int) -> Optional[list]:
    """A float-list setting given as attribute or constant input; None when unknown or empty."""
    a = attrs(node)
    if attr in a:
        return list(a[attr])
    if len(node.input) > index and node.input[index]:
        v = const_value(g, node.input[index])
        return None if v is None or v.size == 0 else [float(x) for x in np.ravel(v)]
    return None
