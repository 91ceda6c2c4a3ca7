"""What `onnxviz inspect` shows: the model card and the layer table, as data and as text."""
from __future__ import annotations

import hashlib
import math
import os

import onnx

from .graph.analysis import gradcam_candidates, layer_table, summarize


def _io(vi: onnx.ValueInfoProto) -> dict:
    tt = vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
    return {"name": vi.name, "dtype": onnx.TensorProto.DataType.Name(tt.elem_type).lower(), "shape": dims}


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe(model, size=None) -> dict:
    """The model card and layer table of a loaded model.

    ``size`` (height, width) is the input size to analyse a dynamic-size model at; without it
    the size given at load time (``--size``) is used. Shapes that static inference leaves
    unknown at that size (dynamic inputs, channels-last exports with shape arithmetic) are
    measured by one onnxruntime run (:meth:`Model.shapes_at`), so shapes, MACs, receptive
    fields and Grad-CAM candidates are complete. ``analyzed_size`` is the size used, None when
    the input is dynamic and no size was given: a size given as ``--size`` and the same size
    from the sidecar give the same, complete table.
    """
    proto, spec = model.proto, model.input
    size = tuple(size) if size else spec.size
    shapes = model.shapes_at(size) if size else {}
    analyzed = [int(size[0]), int(size[1])] if size else None
    rows = layer_table(proto, spec.name, spec.layout, shapes=shapes)
    candidates = gradcam_candidates(proto, spec.name, spec.layout, shapes=shapes)
    original = model.original
    inits = {t.name for t in original.graph.initializer}
    return {
        "file": os.path.abspath(model.path),
        "bytes": os.path.getsize(model.path),
        "producer": f"{original.producer_name} {original.producer_version}".strip(),
        "ir_version": original.ir_version,
        "opset": model.original_opset,
        "opset_converted": model.opset,
        "notes": model.notes,
        "inputs": [_io(vi) for vi in original.graph.input if vi.name not in inits],
        "outputs": [_io(vi) for vi in original.graph.output],
        "input_spec": {"name": spec.name, "layout": spec.layout, "channels": spec.channels,
                       "height": spec.height, "width": spec.width, "dtype": str(spec.dtype)},
        "analyzed_size": analyzed,
        "totals": summarize(rows),
        "gradcam_candidates": candidates,
        "layers": [
            {"name": r.name, "op": r.op, "node": r.node, "shape": list(r.shape) if r.shape else None,
             "params": r.params, "macs": r.macs,
             "rf": None if r.rf is None else {"size": list(r.rf.size), "jump": list(r.rf.jump),
                                              "start": list(r.rf.start)},
             "gradcam": r.name in candidates}
            for r in rows
        ],
    }


def _accepted(info: dict) -> str:
    """The input size the graph itself accepts ("any size" when dynamic), whatever --size said."""
    spec = info["input_spec"]
    io = next((i for i in info["inputs"] if i["name"] == spec["name"]), None)
    axes = (2, 3) if spec["layout"] == "NCHW" else (1, 2)
    dims = [io["shape"][a] if io and len(io["shape"]) > a else None for a in axes]
    if all(isinstance(d, int) and d > 0 for d in dims):
        return f"{dims[0]}x{dims[1]}"
    return "any size"


def _human(n) -> str:
    if n is None:
        return "?"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _dims(shape) -> str:
    return "?" if shape is None else "x".join("?" if d is None else str(d) for d in shape)


def _rf(rf) -> str:
    if rf is None:
        return ""
    size = "x".join("all" if s == math.inf else f"{s:g}" for s in rf["size"])
    jump = "x".join(f"{j:g}" for j in rf["jump"])
    return f"{size} /{jump}"


_SHOWN = {"Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool",
          "GlobalMaxPool", "Concat", "Add", "Sum", "Softmax", "Flatten", "Resize", "Upsample"}


def format_table(info: dict, show_all: bool = False) -> str:
    """Human-readable model card and layer table."""
    spec = info["input_spec"]
    t = info["totals"]
    lines = [
        f"model     {info['file']} ({_human(info['bytes'])}B)",
        f"producer  {info['producer'] or '?'}   IR {info['ir_version']}   opset {info['opset']}"
        + (f" -> {info['opset_converted']}" if info["opset_converted"] != info["opset"] else ""),
    ]
    for io in info["inputs"]:
        lines.append(f"input     {io['name']}: {io['dtype']}[{', '.join(map(str, io['shape']))}]")
    for io in info["outputs"]:
        lines.append(f"output    {io['name']}: {io['dtype']}[{', '.join(map(str, io['shape']))}]")
    lines.append(f"layout    {spec['layout']}, {spec['channels']} channels, {_accepted(info)}")
    at = f" at {info['analyzed_size'][0]}x{info['analyzed_size'][1]}" if info.get("analyzed_size") else ""
    lines.append(f"totals    {_human(t['params'])} params, {_human(t['macs'])} MACs per image{at}"
                 + (f" ({t['macs_unknown']} layers of unknown size)" if t["macs_unknown"] else ""))
    for note in info["notes"]:
        lines.append(f"note      {note}")
    lines.append("")
    shown = [row for row in info["layers"] if show_all or row["op"] in _SHOWN or row["gradcam"] or row["params"]]
    # names in full, however long: they are pasted back as --layer (a cut name is "not in the model")
    width = max([36, *(len(row["name"]) for row in shown)])
    header = f"  {'tensor':<{width}} {'op':<18} {'shape':<18} {'params':>9} {'MACs':>9}  receptive field"
    lines += [header, "  " + "-" * (len(header) - 2)]
    for row in shown:
        mark = "*" if row["gradcam"] else " "
        lines.append(f"{mark} {row['name']:<{width}} {row['op'][:18]:<18} {_dims(row['shape']):<18} "
                     f"{_human(row['params']):>9} {_human(row['macs']):>9}  {_rf(row['rf'])}")
    lines.append("")
    lines.append("* Grad-CAM candidates, best first: " + (", ".join(info["gradcam_candidates"]) or "none found"))
    return "\n".join(lines)
