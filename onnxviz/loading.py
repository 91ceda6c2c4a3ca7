"""Loading an ONNX CNN: reading and checking the file, normalizing the graph (opset, folded
constants, inferred shapes, a free batch axis), verifying each change against the original
outputs, and working out the image input."""
from __future__ import annotations

import copy
import logging
import os
from typing import Callable, Optional

import numpy as np
import onnx
from onnx import helper

from .errors import ModelError, OnnxvizError
from .io import check_memory, protect, regular_file
from .graph.fold import fold_constants
from .graph.surgery import default_opset
from .graph.view import FLOAT_TYPES, tensor_types
from .runtime import Runtime
from .spec import LAYOUTS, InputSpec

log = logging.getLogger("onnxviz")

CONVERSION_FAILED = "opset conversion failed"
TARGET_OPSET = 17  # ScatterElements(reduction="add") for MaxPool/Slice/Gather backward needs >= 16
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}
FORWARD = "forward"  # the session key of the model's own (normalized) graph; Model.run reuses it
_LAYOUT_PERMS = {(0, 3, 1, 2): "NHWC", (0, 2, 3, 1): "NCHW"}


def prepare(path: str, runtime: Runtime, verify: bool = True, input_name: Optional[str] = None,
            layout: Optional[str] = None, channels: Optional[int] = None, height: Optional[int] = None,
            width: Optional[int] = None) -> tuple:
    """(original, normalized proto, input spec, notes) for a model file; see :func:`onnxviz.load`."""
    original = read_model(path)
    check_domains(original)
    check_acyclic(original)
    notes: list[str] = []
    proto = normalize(original, notes, runtime if verify else None, input_name)
    spec = input_spec(proto, input_name, layout, channels, height, width)
    if spec.height and spec.width:  # one image of the declared size, before anything allocates it
        check_memory(spec.height * spec.width * spec.channels * spec.dtype.itemsize,
                     f"one {spec.height}x{spec.width}x{spec.channels} image for input {spec.name!r}")
    if spec.batch == 1 and verify:
        proto, spec = free_batch(proto, spec, notes, runtime)
    return original, proto, spec, notes


def read_model(path: str) -> onnx.ModelProto:
    """Read a model file with its external data; ModelError for anything that is not a usable ONNX file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ModelError(f"{path}: is a folder, not an ONNX model file")
    try:
        regular_file(path, "ONNX model file")
    except OnnxvizError as exc:
        raise ModelError(str(exc)) from None
    protect(path)
    if os.path.getsize(path) == 0:
        raise ModelError(f"{path}: the file is empty")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{path}: not an ONNX model, or the file is truncated or corrupt ({_short(exc)})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ModelError(f"{path}: not an ONNX model (no graph nodes found); is the file truncated?")
    folder = os.path.dirname(os.path.abspath(path))
    for location in _external_locations(model):
        protect(os.path.join(folder, location))  # a weight file is an input too: never written over
    try:
        onnx.load_external_data_for_model(model, folder)
    except Exception as exc:
        raise ModelError(f"{path}: cannot read the model's external weight file(s): {_short(exc)}") from None
    return model


def _external_locations(model: onnx.ModelProto) -> set:
    def tensors(graph):
        yield from graph.initializer
        for node in graph.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    yield a.t
                for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    yield from tensors(g)

    out = set()
    for t in tensors(model.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            out.update(e.value for e in t.external_data if e.key == "location")
    return {loc for loc in out if loc and not os.path.isabs(loc) and ".." not in loc.replace("\\", "/").split("/")}


def check_acyclic(model: onnx.ModelProto):
    """Refuse a graph whose nodes feed each other in a circle, naming a node on the cycle."""
    nodes = model.graph.node
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    users: dict = {}
    pending = []
    for i, n in enumerate(nodes):
        deps = {producer[t] for t in n.input if t in producer}
        pending.append(len(deps))
        for j in deps:
            users.setdefault(j, []).append(i)
    ready = [i for i, k in enumerate(pending) if k == 0]
    done = 0
    while ready:
        i = ready.pop()
        done += 1
        for u in users.get(i, ()):
            pending[u] -= 1
            if pending[u] == 0:
                ready.append(u)
    if done < len(nodes):
        stuck = next(i for i, k in enumerate(pending) if k > 0)
        node = nodes[stuck]
        raise ModelError(f"the graph has a cycle: node {node.name or f'#{stuck}'!r} ({node.op_type}) lies on a cycle "
                         "(it depends on its own output); a valid ONNX graph is acyclic")


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
        notes.append(f"{CONVERSION_FAILED} from opset {before} to {TARGET_OPSET} ({_short(exc)}); "
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
        new = runtime.run(converted, feeds, key=FORWARD)  # the session Model.run reuses
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
    runtime.forget(FORWARD)
    return infer_shapes(fold_constants(copy.deepcopy(original), default_opset(original)))


def free_batch(proto: onnx.ModelProto, spec: InputSpec, notes: list, runtime: Runtime):
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
    runtime.forget(FORWARD)  # the session of the batch-1 graph, if the conversion check made one
    try:
        x = np.random.default_rng(0).standard_normal(spec.shape(2, spec.height or 224, spec.width or 224))
        x = x.astype(spec.dtype)
        both = runtime.run(free, {spec.name: x}, key=FORWARD)
        one = [runtime.run(proto, {spec.name: x[i:i + 1]}, key="verify:batch1") for i in range(2)]
        runtime.forget("verify:batch1")
        for name, value in both.items():
            ref = np.concatenate([o[name] for o in one])
            if value.shape != ref.shape or not np.allclose(value, ref, rtol=1e-4, atol=1e-5 * max(np.abs(ref).max(), 1)):
                raise OnnxvizError(f"output {name!r} differs")
    except OnnxvizError as exc:
        runtime.forget(FORWARD)
        notes.append(f"batch size fixed at 1 by the model ({exc}); images run one at a time")
        return proto, spec
    notes.append("made the batch dimension dynamic (the model was exported with batch 1)")
    return free, spec.replace(batch=None)


WEIGHT_ELEMENTS = 1024  # float initializers this large only need their type for inference
_FLOAT_WEIGHTS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                  onnx.TensorProto.BFLOAT16}


def infer_shapes(model: onnx.ModelProto, edit: Optional[Callable] = None) -> onnx.ModelProto:
    """Shape inference with dynamic dims kept dynamic; a model it cannot handle is returned untouched.

    ``edit(copy)``: changes made to the weight-free copy before inference (new input dims, say),
    so that the caller need not copy the whole model first; the model itself is not modified.

    Inference runs on a copy without the large float weights (graph inputs of the same type
    stand in for them): onnx serializes its argument and parses the result, which for a
    ResNet-50 meant four extra copies of its 100 MB and half a second per call. Only those
    weights' types matter to inference; the int64 shape tensors it propagates stay in.
    """
    light, big = _without_weights(model)
    if edit is not None:
        if light is model:
            light = copy.deepcopy(model)
        edit(light)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception as exc:
        log.warning("shape inference failed: %s", _short(exc))
        inferred = light  # untouched but for ``edit``: the weights go back in below
    if big:
        inputs = [i for i in inferred.graph.input if i.name not in big]
        del inferred.graph.input[:]
        inferred.graph.input.extend(inputs)
        del inferred.graph.initializer[:]
        inferred.graph.initializer.extend(model.graph.initializer)  # the original order, data included
    return inferred


def _without_weights(model: onnx.ModelProto) -> tuple:
    """(a copy of ``model`` whose large inline float initializers are graph inputs instead, their names)."""
    listed = {i.name for i in model.graph.input}
    big = {t.name for t in model.graph.initializer
           if t.data_type in _FLOAT_WEIGHTS and t.data_location != onnx.TensorProto.EXTERNAL
           and int(np.prod(t.dims, dtype=np.int64)) >= WEIGHT_ELEMENTS and t.name not in listed}
    if not big:
        return model, big
    light = _copy_except(model, "graph")
    light.graph.CopyFrom(_copy_except(model.graph, "initializer"))
    for t in model.graph.initializer:
        if t.name in big:
            light.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            light.graph.initializer.append(t)
    return light, big


def _copy_except(message, skipped: str):
    """A copy of a protobuf message without one of its fields (nothing of it is copied)."""
    out = type(message)()
    for field, value in message.ListFields():
        if field.name == skipped:
            continue
        target = getattr(out, field.name)
        if isinstance(value, (str, bytes, int, float, bool)):
            setattr(out, field.name, value)
        elif hasattr(target, "extend"):
            target.extend(value)
        else:
            target.CopyFrom(value)
    return out


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
        described = ", ".join(f"{vi.name} {describe_value(vi)}" for vi in model.graph.input) or "none"
        raise ModelError(
            "the model has no image-like input (a 4-D float or uint8 tensor, NCHW or NHWC); "
            f"its inputs: {described}. onnxviz analyzes CNNs that take images."
        )
    else:
        vi = candidates[0]
        if len(candidates) > 1:
            log.warning("several image-like inputs; using %r (choose another with input_name/--input)", vi.name)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    if 0 in dims or any(v is not None and v <= 0 for v in (height, width, channels)):
        raise ModelError(f"input {vi.name!r} {describe_value(vi)} has a zero-size dimension: there is no image to feed it")
    layout = layout or detect_layout(model, vi.name, dims)
    if layout not in LAYOUTS:
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


def describe_value(vi: onnx.ValueInfoProto) -> str:
    tt = vi.type.tensor_type
    dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
    return f"{onnx.TensorProto.DataType.Name(tt.elem_type).lower()}[{', '.join(dims)}]"


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
