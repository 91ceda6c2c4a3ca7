"""How the two ways of completing shapes compare on real CNNs made dynamic-size.

For each light ONNX model zoo net (onnx's test data), the input's height and width are made
dynamic and the model is loaded as a user's dynamic-size model would be. Then, at 224x224:
* ``run``: Model.shapes_at (one onnxruntime run exposing Shape(t) for each incomplete tensor);
* ``symbolic``: onnxruntime's SymbolicShapeInference on the normalized graph with the size fixed.
Prints the seconds each takes and how many float tensors each leaves with an unknown size.

    python scripts/bench_shapes.py [light_resnet50 ...]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import onnx

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)  # this checkout's onnxviz, not an installed one
sys.path.insert(0, os.path.join(ROOT, "tests"))
from builders import LIGHT_MODELS  # noqa: E402

import onnxviz  # noqa: E402
from onnxviz.graph.view import FLOAT_TYPES, tensor_types  # noqa: E402
from onnxviz.shapes import incomplete  # noqa: E402

SIZE = (224, 224)


def dynamic_copy(path: str, folder: str) -> str:
    m = onnx.load(path)
    inits = {t.name for t in m.graph.initializer}
    vi = next(v for v in m.graph.input if v.name not in inits)
    for d, name in zip(vi.type.tensor_type.shape.dim[2:], ("H", "W")):
        d.ClearField("dim_value")
        d.dim_param = name
    del m.graph.value_info[:]
    out = os.path.join(folder, os.path.basename(path))
    onnx.save(m, out)
    return out


def unknown(model, shapes: dict) -> int:
    types = tensor_types(model.proto.graph)
    names = [o for n in model.proto.graph.node for o in n.output if types.get(o, (None,))[0] in FLOAT_TYPES]
    return sum(incomplete(shapes.get(o, types[o][1]), "N") and incomplete(shapes.get(o, types[o][1]), None)
               for o in names)


def symbolic(model) -> tuple:
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    proto = model.specialized(*SIZE)
    t = time.perf_counter()
    try:
        out = SymbolicShapeInference.infer_shapes(proto, auto_merge=True)
    except Exception as exc:  # noqa: BLE001 - a failure is the measurement
        return time.perf_counter() - t, f"failed: {type(exc).__name__}"
    types = tensor_types(out.graph)
    return time.perf_counter() - t, unknown(model, {k: v[1] for k, v in types.items() if v[1] is not None})


def main(names) -> None:
    with tempfile.TemporaryDirectory() as folder:
        for path in LIGHT_MODELS:
            name = os.path.basename(path)[:-5]
            if names and name not in names:
                continue
            model = onnxviz.load(dynamic_copy(path, folder), verify=False)
            before = unknown(model, {})
            t = time.perf_counter()
            shapes = model.shapes_at(SIZE)
            run_s = time.perf_counter() - t
            sym_s, sym_left = symbolic(model)
            print(f"{name:24s} unknown statically {before:4d} | run {run_s:6.2f} s, left {unknown(model, shapes):3d}"
                  f" | symbolic {sym_s:6.2f} s, left {sym_left}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="light model names (default: all)")
    main(parser.parse_args().models)
