"""The loaded model: its normalized graph, input spec and runtime, and the graphs and sessions
derived from it. Reading, normalizing and verifying the file is :mod:`.loading`."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Hashable, Optional, Sequence, TypeVar

import numpy as np
import onnx
from onnx import helper

from .degenerate import warn_identical_filters
from .errors import OnnxvizError
from .gradients import gradients as _gradients
from .graph.surgery import default_opset, expose
from .graph.view import FLOAT_TYPES, producers, tensor_types
from .loading import FORWARD, describe_value, infer_shapes, prepare
from .runtime import Runtime
from .shapes import concrete_shapes
from .spec import InputSpec

T = TypeVar("T")
log = logging.getLogger("onnxviz")


@dataclass(frozen=True)
class Layer:
    """One tensor of the graph: its ONNX name, the op and node producing it, its shape."""

    name: str
    op: str
    node: str
    shape: Optional[tuple]


def load(
    path: str,
    device: str = "auto",
    layout: Optional[str] = None,
    channels: Optional[int] = None,
    height: Optional[int] = None,
    width: Optional[int] = None,
    input_name: Optional[str] = None,
    threads: Optional[int] = None,
    verify: bool = True,
    runtime: Optional[Runtime] = None,
    feeds: Optional[dict] = None,
) -> "Model":
    """Load an ONNX CNN, normalize it (opset >= 16, folded constants, inferred shapes) and find its input.

    ``layout``/``channels``/``height``/``width``/``input_name`` override what is detected.
    ``verify=False`` skips comparing the converted model with the original (faster, for inspection).
    ``feeds``: values of the model's other inputs (see :meth:`Model.set_feeds`).

    >>> model = onnxviz.load("resnet50.onnx")
    >>> model.input
    InputSpec(name='data', layout='NCHW', channels=3, height=224, width=224, ...)
    """
    runtime = runtime or Runtime(device, threads)
    original, proto, spec, notes = prepare(path, runtime, verify, input_name, layout, channels, height, width)
    model = Model(path, original, proto, spec, runtime, notes)
    warn_identical_filters(proto)
    if feeds:
        model.set_feeds(feeds)
    return model


class Model:
    """A loaded, normalized CNN with its input spec; runs on one onnxruntime device.

    >>> model = onnxviz.load("models/shapes_cnn.onnx")
    >>> probs = model.run(x)["prob"]
    >>> acts = model.activations(x, ["relu_3"])
    """

    def __init__(self, path, original, proto, spec: InputSpec, runtime: Runtime, notes=()):
        self.path = str(path)
        self.original = original
        self.proto = proto
        self.input = spec
        self.runtime = runtime
        self.notes = list(notes)
        self._types = tensor_types(proto.graph)
        self._producers = producers(proto.graph)
        self._derived: dict = {}
        # id(graph) -> (session key, whether its sessions are specialized to each run's shapes)
        self._session_keys: dict[int, tuple[str, bool]] = {id(proto): (FORWARD, False)}
        self._extra: dict = {}
        # (height, width) that analyses use when the input itself has none (a dynamic-size model):
        # the sidecar's size, set by open_session; --size is in the input spec already
        self.analysis_size: Optional[tuple] = None

    # ---- description ----------------------------------------------------
    @property
    def outputs(self) -> list:
        return [o.name for o in self.proto.graph.output]

    @property
    def opset(self) -> int:
        return default_opset(self.proto)

    @property
    def original_opset(self) -> int:
        return default_opset(self.original)

    @property
    def layers(self) -> list:
        """Every float tensor a node produces, in graph order, with its shape at the input's size
        (measured where static inference lost it: :meth:`shapes_at`)."""
        measured = self.shapes_at()
        out = []
        for node in self.proto.graph.node:
            for name in node.output:
                if name and self._types.get(name, (None,))[0] in FLOAT_TYPES:
                    out.append(Layer(name, node.op_type, node.name, measured.get(name, self._types[name][1])))
        return out

    def shapes_at(self, size: Optional[Sequence[int]] = None) -> dict:
        """``{tensor: shape}`` at input size ``size`` (height, width; default the input's, else
        :attr:`analysis_size`) for every
        tensor whose static shape misses a size, measured by one onnxruntime run
        (:func:`onnxviz.shapes.concrete_shapes`) and kept per size. The analyses take it as
        ``shapes=``. Empty when static shapes are complete, when no size is known (a dynamic-size
        model without --size), or when the model cannot run here (a warning says why).
        """
        size = tuple(size) if size else (self.input.size or self.analysis_size)
        if size is None:
            return {}
        return self.derived(("concrete_shapes", int(size[0]), int(size[1])), lambda: self._measure(*size))

    def _measure(self, height: int, width: int) -> dict:
        try:
            feeds = self.extra_feeds(1) if self.other_inputs else {}
            return concrete_shapes(self.proto, self.input, self.runtime, int(height), int(width), feeds)
        except OnnxvizError as exc:
            log.warning("could not run the model at %dx%d to measure the sizes static shape inference "
                        "left unknown (%s); they stay unknown", height, width, exc)
            return {}

    def producer(self, tensor: str) -> Optional[onnx.NodeProto]:
        return self._producers.get(tensor)

    def tensor_shape(self, tensor: str) -> Optional[tuple]:
        """Static shape; where it misses a size besides the batch, the one measured at the input's
        size (:meth:`shapes_at`; a run only then)."""
        static = self._types.get(tensor, (None, None))[1]
        if static is not None and all(isinstance(d, int) for d in static[1:]):
            return static
        return self.shapes_at().get(tensor, static)

    def has_tensor(self, tensor: str) -> bool:
        return tensor in self._types or tensor in self._producers

    def __repr__(self) -> str:
        return f"Model({os.path.basename(self.path)!r}, input={self.input}, outputs={self.outputs})"

    # ---- running ----------------------------------------------------------
    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Validate a preprocessed batch against the input spec; returns it in the model's dtype."""
        spec = self.input
        x = np.asarray(x)
        if x.ndim == 3:
            raise OnnxvizError(f"expected a batch of shape {self._expected()}; got {x.shape} — add a batch axis")
        if x.ndim != 4:
            raise OnnxvizError(f"expected a 4-D batch {self._expected()}; got shape {x.shape}")
        if x.shape[spec.channel_axis] != spec.channels:
            raise OnnxvizError(
                f"expected {spec.channels} channels on axis {spec.channel_axis} ({spec.layout}); got shape {x.shape}"
            )
        h, w = spec.hw(x)
        if (spec.height and h != spec.height) or (spec.width and w != spec.width):
            raise OnnxvizError(f"expected {spec.height}x{spec.width} images ({spec.layout}); got shape {x.shape}")
        if spec.batch and spec.batch != 1 and x.shape[0] % spec.batch:
            raise OnnxvizError(f"the model takes batches of exactly {spec.batch}; got {x.shape[0]}")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise OnnxvizError("the input contains NaN or infinite values")
        return x.astype(spec.dtype, copy=False)

    def _expected(self) -> str:
        s = self.input
        dims = ["N", s.channels, s.height or "H", s.width or "W"]
        if s.layout == "NHWC":
            dims = ["N", s.height or "H", s.width or "W", s.channels]
        return f"({', '.join(map(str, dims))}) {s.layout}"

    @property
    def other_inputs(self) -> list:
        """Graph inputs besides the image: what :meth:`set_feeds` must supply."""
        inits = {t.name for t in self.proto.graph.initializer}
        return [vi.name for vi in self.proto.graph.input if vi.name != self.input.name and vi.name not in inits]

    def set_feeds(self, feeds: dict) -> None:
        """Values for the non-image inputs, used by every run: one for all images (first axis 1,
        repeated to the batch) or one per image (first axis = the batch).

        >>> model.set_feeds({"scale": np.ones((1, 4), np.float32)})
        """
        types = {vi.name: vi.type.tensor_type.elem_type for vi in self.proto.graph.input}
        for name, value in feeds.items():
            if name not in self.other_inputs:
                what = "is the image input" if name == self.input.name else "is not an input of the model"
                raise OnnxvizError(f"cannot feed {name!r}: it {what}; other inputs: "
                                   f"{', '.join(self.other_inputs) or 'none'}")
            self._extra[name] = np.asarray(value, helper.tensor_dtype_to_np_dtype(types[name]))

    def extra_feeds(self, n: int, graph: Optional[onnx.ModelProto] = None) -> dict:
        """The fed non-image inputs for a batch of ``n`` rows (only those ``graph`` takes, when given)."""
        wanted = self.other_inputs if graph is None else [i.name for i in graph.graph.input if i.name in
                                                          self.other_inputs]
        missing = [name for name in wanted if name not in self._extra]
        if missing:
            described = ", ".join(f"{vi.name} {describe_value(vi)}" for vi in self.proto.graph.input
                                  if vi.name in missing)
            raise OnnxvizError(f"the model's input {described} is not fed: pass --feed NAME=FILE.npy "
                               f"(API: feeds={{name: array}})")
        out = {}
        for name in wanted:
            a = self._extra[name]
            out[name] = np.repeat(a, n, axis=0) if a.ndim and a.shape[0] == 1 and n > 1 and \
                self._free_first_dim(name) else a
        return out

    def _free_first_dim(self, name: str) -> bool:
        vi = next(vi for vi in self.proto.graph.input if vi.name == name)
        dims = vi.type.tensor_type.shape.dim
        return not dims or not dims[0].HasField("dim_value")

    def feeds(self, x: np.ndarray, checked: bool = False) -> dict:
        """The session feeds for batch ``x``: the image and the fed non-image inputs.

        ``checked``: ``x`` is what :meth:`check_input` returned (the gradient path checks once;
        every check is a pass over the whole batch).
        """
        x = x if checked else self.check_input(x)
        return {self.input.name: x, **(self.extra_feeds(len(x)) if self.other_inputs else {})}

    def run(self, x: np.ndarray, batch_size: Optional[int] = None, progress: bool = False) -> dict:
        """The model's outputs for a preprocessed batch in its own layout."""
        return self.run_graph(self.proto, self.feeds(x), batch_size=self._chunk(batch_size), progress=progress)

    def _chunk(self, batch_size: Optional[int]) -> Optional[int]:
        """A model with a fixed batch runs in chunks of exactly that batch."""
        return self.input.batch or batch_size

    def activations(self, x: np.ndarray, names: Sequence[str], batch_size: Optional[int] = None,
                    progress: bool = False) -> dict:
        """Values of intermediate tensors ``names`` (one cached session per set of names)."""
        names = list(names)
        for n in names:
            if not self.has_tensor(n):
                raise OnnxvizError(f"no tensor named {n!r} in the model; `onnxviz inspect` lists them")
        exposed = self.derived("expose:" + "\x00".join(names), lambda: expose(self.proto, names, keep_outputs=False))
        return self.run_graph(exposed, self.feeds(x), outputs=names, batch_size=self._chunk(batch_size),
                              progress=progress)

    def gradients(self, x: np.ndarray, target=None, wrt=("input",), rules="standard", output=None,
                  score: str = "logit", **options):
        """d score/d tensor for each tensor in ``wrt``; see :func:`onnxviz.gradients.gradients`."""
        return _gradients(self, x, target=target, wrt=wrt, rules=rules, output=output, score=score, **options)

    # ---- derived graphs and their sessions ----------------------------------
    def derived(self, key: Hashable, build: Callable[[], T], fixed_shapes: bool = False) -> T:
        """What ``build()`` makes from this model, built once per ``key`` and kept with the model.

        For exposed, specialized, head and gradient graphs and for whole-graph analyses. A derived
        graph (or a value whose ``.proto`` is one, or a tuple holding one) runs with :meth:`run_graph`
        on a session of its own, named after ``key``. Keys are tuples or strings; a value is never rebuilt or replaced.
        ``fixed_shapes``: its sessions are specialized to each run's input shapes (gradient
        graphs; see :meth:`Runtime.session`).

        >>> gm = model.derived(("grad", h, w, ...), lambda: gradient_graph(...))
        >>> model.run_graph(gm.proto, feeds)
        """
        try:
            return self._derived[key]
        except KeyError:
            pass
        value = self._derived[key] = build()
        for part in value if isinstance(value, tuple) else (value,):  # (graph, flag) pairs too
            graph = getattr(part, "proto", part)
            if isinstance(graph, onnx.ModelProto):
                name = key if isinstance(key, str) else "|".join(map(str, key))
                self._session_keys.setdefault(id(graph), (name, fixed_shapes))
        return value

    def forget(self) -> None:
        """Drop every derived graph and its session (rebuilt on next use), to free their memory."""
        for key, _ in set(self._session_keys.values()) - {(FORWARD, False)}:
            self.runtime.forget(key)
        self._derived.clear()
        self._session_keys = {id(self.proto): (FORWARD, False)}

    def run_graph(self, graph: onnx.ModelProto, feeds: dict, outputs: Optional[Sequence[str]] = None,
                  batch_size: Optional[int] = None, progress: bool = False, desc: str = "running") -> dict:
        """Run this model's graph or one derived from it (see :meth:`derived`) on its own session."""
        key, fixed = self._session_keys.get(id(graph), (None, False))
        if key is None:
            raise OnnxvizError("run_graph runs the model's graph or one made with Model.derived; "
                               "run other graphs with model.runtime.run")
        return self.runtime.run(graph, feeds, outputs=outputs, batch_size=batch_size, progress=progress, key=key,
                                desc=desc, fixed_shapes=fixed)

    def specialized(self, height: int, width: int) -> onnx.ModelProto:
        """The model with its spatial input dims fixed (batch kept dynamic), shapes re-inferred."""
        return self.derived(("size", height, width), lambda: self._fixed_size(height, width))

    def _fixed_size(self, height: int, width: int) -> onnx.ModelProto:
        def fix(proto):
            for vi in proto.graph.input:
                if vi.name == self.input.name:
                    dims = vi.type.tensor_type.shape.dim
                    h_axis, w_axis = self.input.spatial_axes
                    dims[h_axis].dim_value = height
                    dims[w_axis].dim_value = width
                    if not dims[0].HasField("dim_value"):
                        dims[0].dim_param = "N"
            del proto.graph.value_info[:]

        return infer_shapes(self.proto, edit=fix)
