"""A node emitter: appends ONNX nodes with fresh names and knows forward tensor types and shapes.

Backward rules talk to the graph only through an :class:`Emitter`, which hides the
opset-dependent spellings (axes as attribute or input) behind small helpers.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import OnnxvizError
from .view import Shape

class Emitter:
    """Collects new nodes and initializers for a graph being rewritten.

    ``types`` maps forward tensors to (elem_type, static shape); ``values`` maps the
    tensors whose value is known at build time (initializers, Constant outputs).
    """

    def __init__(self, types: dict, values: dict, opset: int, prefix: str = "grad"):
        self.types = types
        self.values = values
        self.opset = opset
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._const_cache: dict = {}
        self._shape_cache: dict[str, str] = {}
        self.taken: set[str] = set(types)

    # ---- names and nodes -------------------------------------------------
    def fresh(self, hint: str = "t") -> str:
        while True:
            self._count += 1
            name = f"{self.prefix}/{hint}_{self._count}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def op(self, op_type: str, *inputs: Optional[str], outputs: int = 1, **attrs):
        """Append one node; return its output name (or a list when ``outputs`` > 1)."""
        outs = [self.fresh(op_type) for _ in range(outputs)]
        ins = ["" if i is None else i for i in inputs]
        while ins and not ins[-1]:  # the checker counts trailing omitted inputs against the schema
            ins.pop()
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, ins, outs, name=self.fresh(op_type + "_node"), **attrs))
        return outs[0] if outputs == 1 else outs

    def add_output(self, node: onnx.NodeProto, index: int) -> str:
        """Make a forward node produce its optional output ``index`` (e.g. MaxPool's Indices)."""
        while len(node.output) <= index:
            node.output.append("")
        if not node.output[index]:
            node.output[index] = self.fresh(f"{node.op_type}_out{index}")
        return node.output[index]

    # ---- what is known about forward tensors -----------------------------
    def elem_type(self, name: str) -> int:
        if name not in self.types:
            raise KeyError(f"the type of {name!r} is not known to the emitter: only forward tensors' "
                           "types are; pass a forward tensor as `like`")
        return self.types[name][0]

    def dtype(self, name: str) -> np.dtype:
        return helper.tensor_dtype_to_np_dtype(self.elem_type(name))

    def shape(self, name: str) -> Shape:
        return self.types.get(name, (None, None))[1]

    def rank(self, name: str) -> Optional[int]:
        s = self.shape(name)
        return None if s is None else len(s)

    def static_shape(self, name: str) -> Optional[tuple]:
        """The full shape when every dim is known, else None."""
        s = self.shape(name)
        return s if s is not None and all(isinstance(d, int) for d in s) else None

    def value(self, name: Optional[str]) -> Optional[np.ndarray]:
        return None if not name else self.values.get(name)

    # ---- constants -------------------------------------------------------
    def const(self, value, dtype=None) -> str:
        """A constant initializer, shared between identical values."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._const_cache:
            name = self.fresh("c")
            self.initializers.append(numpy_helper.from_array(arr, name))
            self._const_cache[key] = name
        return self._const_cache[key]

    def scalar(self, v: float, like: str) -> str:
        """A 0-d constant with the element type of tensor ``like``."""
        return self.const(np.array(v, dtype=self.dtype(like)))

    def ints(self, values: Iterable[int]) -> str:
        return self.const(np.array(list(values), dtype=np.int64))

    # ---- shape helpers ---------------------------------------------------
    def shape_of(self, x: str) -> str:
        if x not in self._shape_cache:
            self._shape_cache[x] = self.op("Shape", x)
        return self._shape_cache[x]

    def reshape_like(self, g: str, x: str) -> str:
        """Reshape ``g`` (as many elements as ``x``) to x's shape.

        A constant target shape where at most one dim is unknown (it becomes -1): onnxruntime
        then knows the result's shape statically, which its blocked-layout rewrites need.
        """
        s = self.shape(x)
        if s is not None and sum(not isinstance(d, int) for d in s) <= 1 and 0 not in s:
            return self.op("Reshape", g, self.ints([d if isinstance(d, int) else -1 for d in s]))
        return self.op("Reshape", g, self.shape_of(x))

    def zeros_like(self, x: str) -> str:
        s = self.static_shape(x)
        zero = helper.make_tensor("z", self.elem_type(x), [1], [0])
        return self.op("ConstantOfShape", self.ints(s) if s is not None else self.shape_of(x), value=zero)

    def cast_like(self, g: str, x: str) -> str:
        return self.op("Cast", g, to=self.elem_type(x))

    # ---- opset-dependent spellings --------------------------------------
    def _axes_op(self, op_type: str, x: str, axes: Sequence[int], since: int, **attrs) -> str:
        if self.opset >= since:
            return self.op(op_type, x, self.ints(axes), **attrs)
        return self.op(op_type, x, axes=list(axes), **attrs)

    def reduce_sum(self, x: str, axes: Sequence[int], keepdims: bool = True) -> str:
        if not axes:
            return x
        return self._axes_op("ReduceSum", x, axes, 13, keepdims=int(keepdims))

    def reduce_op(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool = True) -> str:
        """ReduceMean/ReduceMax/... with axes; their axes become an input at opset 18.

        Like ``reduce_sum``, an empty ``axes`` returns ``x`` (not a reduction over everything).
        """
        if not axes:
            return x
        since = 13 if op_type == "ReduceSum" else 18
        return self._axes_op(op_type, x, axes, since, keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self._axes_op("Unsqueeze", x, axes, 13)

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        return self._axes_op("Squeeze", x, axes, 13)

    def unbroadcast(self, g: str, x: str, out: str) -> str:
        """Sum ``g`` (shaped like ``out``) over the axes that broadcasting added or expanded for ``x``."""
        xs, os_ = self.shape(x), self.shape(out)
        if xs is not None and os_ is not None and len(os_) >= len(xs):
            lead = len(os_) - len(xs)
            axes = list(range(lead))
            decidable = True
            for i, d in enumerate(xs):
                o = os_[i + lead]
                if d == o or (isinstance(d, int) and d != 1):
                    continue  # equal (or x's fixed non-1 dim forces equality): not broadcast
                if d == 1 and isinstance(o, int):
                    axes.append(i + lead)
                else:
                    decidable = False
            if decidable:
                if not axes:
                    return g
                return self.reshape_like(self.reduce_sum(g, axes, keepdims=True), x)
        return self.unbroadcast_dynamic(g, x)

    def unbroadcast_dynamic(self, g: str, x: str) -> str:
        """Runtime version: reduce the axes where x (left-padded with 1s) is 1 and g is not."""
        if self.opset < 13:
            raise OnnxvizError(
                f"broadcasting between tensors of unknown shapes needs opset >= 13 (ReduceSum with "
                f"run-time axes); this graph is at opset {self.opset}. Load it with onnxviz.load, which "
                "converts models to opset 17.")
        gs = self.shape_of(g)
        rank_g = self.op("Shape", gs)
        xs = self.shape_of(x)
        rank_x = self.op("Shape", xs)
        pad = self.op("Sub", rank_g, rank_x)
        ones = self.op("ConstantOfShape", pad, value=helper.make_tensor("one", onnx.TensorProto.INT64, [1], [1]))
        x_padded = self.op("Concat", ones, xs, axis=0)
        one = self.ints([1])
        is_bcast = self.op("And", self.op("Equal", x_padded, one), self.op("Not", self.op("Equal", gs, one)))
        axes = self.op("Reshape", self.op("NonZero", is_bcast), self.ints([-1]))
        summed = self.op("ReduceSum", g, axes, keepdims=1, noop_with_empty_axes=1)
        return self.op("Reshape", summed, xs)
