"""Loading and normalizing an ONNX CNN, working out its input, and running it."""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import helper

from .errors import ModelError, OnnxvizError
from .graph.emitter import FLOAT_TYPES, tensor_types
from .graph.fold import fold_constants
from .graph.surgery import default_opset, expose
from .runtime import Runtime
from .spec import InputSpec

log = logging.getLogger("onnxviz")

TARGET_OPSET = 17  # ScatterElements(reduction="add") for MaxPool/Slice/Gather backward needs >= 16
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}
_LAYOUT_PERMS = {(0, 3, 1, 2): "NHWC", (0, 2, 3, 1): "NCHW"}


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
    original = read_model(path)
    check_domains(original)
    notes: list[str] = []
    runtime = runtime or Runtime(device, threads)
    proto = normalize(original, notes, runtime if verify else None, input_name)
    spec = input_spec(proto, input_name, layout, channels, height, width)
    if spec.batch == 1 and verify:
        proto, spec = _free_batch(proto, spec, notes, runtime)
    model = Model(path, original, proto, spec, runtime, notes)
    if feeds:
        model.set_feeds(feeds)
    return model


def read_model(path: str) -> onnx.ModelProto:
    """Read a model file with its external data; ModelError for anything that is not a usable ONNX file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ModelError(f"{path}: is a folder, not an ONNX model file")
    if os.path.getsize(path) == 0:
        raise ModelError(f"{path}: the file is empty")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{path}: not an ONNX model, or the file is truncated or corrupt ({_short(exc)})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ModelError(f"{path}: not an ONNX model (no graph nodes found); is the file truncated?")
    try:
        onnx.load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
    except Exception as exc:
        raise ModelError(f"{path}: cannot read the model's external weight file(s): {_short(exc)}") from None
    return model


def check_domains(model: onnx.ModelProto):
    """Refuse operators from custom domains that onnxruntime cannot run."""
    local = {f.domain for f in model.functions}
    for node in model.graph.node:
        if node.domain not in KNOWN_DOMAINS and node.domain not in local:
            raise ModelError(
                f"operator {node.op_type!r} (node {node.name!r}) is from the custom domain {node.domain!r}, "
                "which onnxruntime cannot run without its custom-op library. Export the model with "
                "standard ONNX operators (e.g. torch.onnx.export without custom symbolics, tf2onnx without "
                "--custom-ops)."
            )


def normalize(model: onnx.ModelProto, notes: list, runtime: Optional[Runtime], input_name=None) -> onnx.ModelProto:
    """Initializers out of graph.input, one default opset >= TARGET_OPSET (kept only when outputs
    match), folded constants, inferred shapes."""
    model = copy.deepcopy(model)
    _initializers_out_of_inputs(model)
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    opset = default_opset(model)
    converted = model
    if opset < TARGET_OPSET:
        converted = _convert(model, notes)
    converted = fold_constants(converted, default_opset(converted))
    converted = infer_shapes(converted)
    if converted is not model and runtime is not None and default_opset(converted) != opset:
        converted = _keep_if_equal(model, converted, notes, runtime, input_name)
    return converted


def _initializers_out_of_inputs(model: onnx.ModelProto):
    """IR-3 models list initializers in graph.input; onnxruntime then treats weights as feedable inputs."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(inputs)
    # Below IR 4 every initializer must also be a graph input (the converter and onnxruntime
    # refuse the model otherwise); from IR 4 on they need not be, which is what we want.
    model.ir_version = max(model.ir_version, 4)


def _convert(model: onnx.ModelProto, notes: list) -> onnx.ModelProto:
    from onnx import version_converter

    before = default_opset(model)
    had_upsample = any(n.op_type == "Upsample" for n in model.graph.node)
    try:
        converted = version_converter.convert_version(model, TARGET_OPSET)
    except Exception as exc:
        notes.append(f"kept opset {before}: conversion to {TARGET_OPSET} failed ({_short(exc)}); "
                     "gradients through MaxPool, Slice and Gather need opset >= 16")
        return model
    if had_upsample:
        _patch_upsample(converted)
    notes.append(f"converted opset {before} -> {TARGET_OPSET}")
    return converted


def _patch_upsample(model: onnx.ModelProto):
    """Upsample is 'asymmetric' (and floor for nearest); the converter leaves Resize's half_pixel default."""
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        attrs = {a.name for a in node.attribute}
        if "coordinate_transformation_mode" not in attrs:
            node.attribute.append(helper.make_attribute("coordinate_transformation_mode", "asymmetric"))
        mode = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"), b"nearest")
        if mode in (b"nearest", "nearest") and "nearest_mode" not in attrs:
            node.attribute.append(helper.make_attribute("nearest_mode", "floor"))


def _keep_if_equal(original, converted, notes, runtime: Runtime, input_name) -> onnx.ModelProto:
    """Compare outputs on a random input; keep the original when they differ."""
    try:
        original_inferred = infer_shapes(copy.deepcopy(original))
        spec = input_spec(original_inferred, input_name)
        x = np.random.default_rng(0).standard_normal(spec.shape(1, spec.height or 224, spec.width or 224))
        feeds = {spec.name: x.astype(spec.dtype)}
        ref = runtime.run(original, feeds, key="verify:original")
        new = runtime.run(converted, feeds, key="forward")  # the session Model.run reuses
        runtime.forget("verify:original")
    except OnnxvizError as exc:
        notes.append(f"could not compare converted and original outputs: {exc}")
        return converted
    for name, a in ref.items():
        b = new.get(name)
        if b is None or a.shape != b.shape:
            notes.append(f"kept the original opset: output {name!r} changed shape after conversion")
            return _reject(original, runtime)
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(np.abs(a64).max(initial=0), 1e-6)
        if not np.allclose(a64, b64, rtol=1e-4, atol=1e-4 * scale, equal_nan=True):
            notes.append(f"kept the original opset: output {name!r} changed after conversion "
                         f"(max diff {np.abs(a64 - b64).max():.3g})")
            return _reject(original, runtime)
    notes.append("converted model gives the same outputs as the original")
    return converted


def _reject(original, runtime: Runtime) -> onnx.ModelProto:
    runtime.forget("forward")
    return infer_shapes(fold_constants(copy.deepcopy(original), default_opset(original)))


def _free_batch(proto: onnx.ModelProto, spec: InputSpec, notes: list, runtime: Runtime):
    """Models exported with batch 1 often run any batch once Reshape targets copy dim 0.

    Returns the freed model when a batch of 2 gives the same outputs as two batches of 1,
    else the original (which then runs one image at a time).
    """
    free = copy.deepcopy(proto)
    for vi in [*free.graph.input, *free.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if vi.type.HasField("tensor_type") and dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].dim_param = "N"
    consts = {t.name: t for t in free.graph.initializer}
    for node in free.graph.node:
        if node.op_type == "Reshape" and node.input[1] in consts:
            target = onnx.numpy_helper.to_array(consts[node.input[1]])
            if target.size and target[0] == 1:
                target = target.copy()
                target[0] = 0  # 0 copies the input's dim 0, the batch
                name = f"{node.input[1]}__batch"
                free.graph.initializer.append(onnx.numpy_helper.from_array(target, name))
                node.input[1] = name
    del free.graph.value_info[:]
    free = infer_shapes(free)
    runtime.forget("forward")  # the session of the batch-1 graph, if the conversion check made one
    try:
        x = np.random.default_rng(0).standard_normal(spec.shape(2, spec.height or 224, spec.width or 224))
        x = x.astype(spec.dtype)
        both = runtime.run(free, {spec.name: x}, key="forward")
        one = [runtime.run(proto, {spec.name: x[i:i + 1]}, key="verify:batch1") for i in range(2)]
        runtime.forget("verify:batch1")
        for name, value in both.items():
            ref = np.concatenate([o[name] for o in one])
            if value.shape != ref.shape or not np.allclose(value, ref, rtol=1e-4, atol=1e-5 * max(np.abs(ref).max(), 1)):
                raise OnnxvizError(f"output {name!r} differs")
    except OnnxvizError as exc:
        runtime.forget("forward")
        notes.append(f"batch size fixed at 1 by the model ({exc}); images run one at a time")
        return proto, spec
    notes.append("made the batch dimension dynamic (the model was exported with batch 1)")
    return free, spec.replace(batch=None)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference with dynamic dims kept dynamic; a model it cannot handle is returned untouched."""
    try:
        if model.ByteSize() > 2**31 - 2**26:
            return model
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        log.warning("shape inference failed: %s", _short(exc))
        return model


def image_inputs(model: onnx.ModelProto) -> list:
    """Graph inputs (not initializers) that are 4-D float or uint8 tensors."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        tt = vi.type.tensor_type
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        if tt.elem_type in FLOAT_TYPES | {onnx.TensorProto.UINT8} and len(tt.shape.dim) == 4:
            out.append(vi)
    return out


def input_spec(model, input_name=None, layout=None, channels=None, height=None, width=None) -> InputSpec:
    """Work out the image input: which graph input, its layout, channels, size and dtype."""
    candidates = image_inputs(model)
    if input_name is not None:
        chosen = [vi for vi in candidates if vi.name == input_name]
        if not chosen:
            names = [vi.name for vi in model.graph.input]
            raise ModelError(f"no 4-D image input named {input_name!r}; the model's inputs: {names}")
        vi = chosen[0]
    elif not candidates:
        described = ", ".join(f"{vi.name} {_describe(vi)}" for vi in model.graph.input) or "none"
        raise ModelError(
            "the model has no image-like input (a 4-D float or uint8 tensor, NCHW or NHWC); "
            f"its inputs: {described}. onnxviz analyzes CNNs that take images."
        )
    else:
        vi = candidates[0]
        if len(candidates) > 1:
            log.warning("several image-like inputs; using %r (choose another with input_name/--input)", vi.name)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    layout = layout or detect_layout(model, vi.name, dims)
    if layout not in ("NCHW", "NHWC"):
        raise OnnxvizError(f"layout must be NCHW or NHWC, not {layout!r}")
    c_axis, (h_axis, w_axis) = (1, (2, 3)) if layout == "NCHW" else (3, (1, 2))
    channels = channels or dims[c_axis] or _channels_from_first_conv(model, vi.name) or 3
    return InputSpec(
        name=vi.name,
        layout=layout,
        channels=int(channels),
        height=height or dims[h_axis],
        width=width or dims[w_axis],
        dtype=np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)),
        batch=dims[0],
    )


_PASS_THROUGH = {"Cast", "Sub", "Add", "Mul", "Div", "Identity", "Clip", "Pad", "Relu", "BatchNormalization"}


def detect_layout(model: onnx.ModelProto, name: str, dims: list) -> str:
    """NCHW or NHWC: follow the input to the first Conv/Transpose; fall back on which dim looks like channels."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    frontier, seen = [name], set()
    while frontier:
        t = frontier.pop(0)
        for node in consumers.get(t, []):
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type == "Transpose":
                perm = next((tuple(helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), None)
                if perm in _LAYOUT_PERMS:
                    return _LAYOUT_PERMS[perm]
            elif node.op_type in ("Conv", "MaxPool", "AveragePool", "BatchNormalization") and node.input[0] == t:
                return "NCHW"
            if node.op_type in _PASS_THROUGH:
                frontier.extend(o for o in node.output if o)
    small = {1, 3, 4}
    if dims[3] in small and dims[1] not in small:
        return "NHWC"
    return "NCHW"


def _channels_from_first_conv(model: onnx.ModelProto, name: str) -> Optional[int]:
    types = tensor_types(model.graph)
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1:
            w = types.get(node.input[1], (None, None))[1]
            group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
            if w and isinstance(w[1], int):
                return w[1] * group
    return None


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
        self._producers = {o: n for n in proto.graph.node for o in n.output if o}
        self._specialized: dict = {}
        self._extra: dict = {}

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
        """Every float tensor a node produces, in graph order."""
        out = []
        for node in self.proto.graph.node:
            for name in node.output:
                if name and self._types.get(name, (None,))[0] in FLOAT_TYPES:
                    out.append(Layer(name, node.op_type, node.name, self._types[name][1]))
        return out

    def producer(self, tensor: str) -> Optional[onnx.NodeProto]:
        return self._producers.get(tensor)

    def tensor_shape(self, tensor: str) -> Optional[tuple]:
        return self._types.get(tensor, (None, None))[1]

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
            described = ", ".join(f"{vi.name} {_describe(vi)}" for vi in self.proto.graph.input
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

    def feeds(self, x: np.ndarray) -> dict:
        x = self.check_input(x)
        return {self.input.name: x, **(self.extra_feeds(len(x)) if self.other_inputs else {})}

    def run(self, x: np.ndarray, batch_size: Optional[int] = None, progress: bool = False) -> dict:
        """The model's outputs for a preprocessed batch in its own layout."""
        return self.runtime.run(self.proto, self.feeds(x), batch_size=self._chunk(batch_size), progress=progress,
                                key="forward")

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
        key = "expose:" + "\x00".join(names)
        exposed = self._exposed(names, key)
        return self.runtime.run(exposed, self.feeds(x), outputs=names, batch_size=self._chunk(batch_size),
                                progress=progress, key=key)

    def gradients(self, x: np.ndarray, target=None, wrt=("input",), rules="standard", output=None,
                  score: str = "logit", **options):
        """d score/d tensor for each tensor in ``wrt``; see :func:`onnxviz.gradients.gradients`."""
        from .gradients import gradients

        return gradients(self, x, target=target, wrt=wrt, rules=rules, output=output, score=score, **options)

    def _exposed(self, names, key):
        if key not in self._specialized:
            self._specialized[key] = expose(self.proto, names, keep_outputs=False)
        return self._specialized[key]

    def specialized(self, height: int, width: int) -> onnx.ModelProto:
        """The model with its spatial input dims fixed (batch kept dynamic), shapes re-inferred."""
        key = ("size", height, width)
        if key not in self._specialized:
            proto = copy.deepcopy(self.proto)
            for vi in proto.graph.input:
                if vi.name == self.input.name:
                    dims = vi.type.tensor_type.shape.dim
                    h_axis, w_axis = self.input.spatial_axes
                    dims[h_axis].dim_value = height
                    dims[w_axis].dim_value = width
                    if not dims[0].HasField("dim_value"):
                        dims[0].dim_param = "N"
            del proto.graph.value_info[:]
            self._specialized[key] = infer_shapes(proto)
        return self._specialized[key]


def _describe(vi: onnx.ValueInfoProto) -> str:
    tt = vi.type.tensor_type
    dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
    return f"{onnx.TensorProto.DataType.Name(tt.elem_type).lower()}[{', '.join(dims)}]"


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
