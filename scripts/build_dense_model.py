"""Build the bundled dense (segmentation-style) model from the sample classifier; no training.

    python scripts/build_dense_model.py            # writes models/shapes_seg.onnx and its sidecar

The sample model ends in ReLU features → global average pool → linear → softmax. Applying the
linear layer at every position instead (a 1×1 convolution with the same weights, the class
activation maps of Zhou et al. as scores), upsampling bilinearly by the features' stride and
taking the softmax over classes gives a fully convolutional net whose output ``seg``
(N, 6, H, W) scores every shape class at every pixel: a small dense model for the demo, the
README and the tests of dense targets (box, mask, "predicted").
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxviz  # noqa: E402
from onnxviz.graph.analysis import cam_head, receptive_field  # noqa: E402


def dense_model(proto: onnx.ModelProto, input_name: str = "image") -> onnx.ModelProto:
    """The classifier's features with its GAP → linear head turned into a per-pixel head."""
    head = cam_head(proto, input_name, "NCHW")
    if head is None:
        raise SystemExit("the model has no global-average-pool → linear head to turn into a dense head")
    stride = receptive_field(proto, input_name, "NCHW")[head.feature].jump
    graph = proto.graph
    needed, keep = {head.feature}, []
    for node in reversed(graph.node):  # the nodes the features need, in order
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    classes, channels = head.weight.shape
    inits = [t for t in graph.initializer if t.name in needed] + [
        numpy_helper.from_array(np.asarray(head.weight, np.float32).reshape(classes, channels, 1, 1), "head_w"),
        numpy_helper.from_array(np.asarray(head.bias, np.float32), "head_b"),
        numpy_helper.from_array(np.array([1, 1, *stride], np.float32), "up_scales"),
    ]
    nodes = keep + [
        helper.make_node("Conv", [head.feature, "head_w", "head_b"], ["class_map"], name="head"),
        helper.make_node("Resize", ["class_map", "", "up_scales"], ["logits"], name="upsample", mode="linear",
                         coordinate_transformation_mode="half_pixel"),
        helper.make_node("Softmax", ["logits"], ["seg"], name="softmax", axis=1),
    ]
    image = next(vi for vi in graph.input if vi.name == input_name)
    out = helper.make_tensor_value_info("seg", onnx.TensorProto.FLOAT, ["batch", classes, "height", "width"])
    g = helper.make_graph(nodes, "shapes_seg", [image], [out], inits)
    model = helper.make_model(g, opset_imports=list(proto.opset_import), producer_name="onnxviz",
                              doc_string="shapes_cnn's features with its linear head applied per pixel")
    model.ir_version = proto.ir_version
    onnx.checker.check_model(model)
    return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(ROOT / "models" / "shapes_cnn.onnx"))
    parser.add_argument("--out", default=str(ROOT / "models" / "shapes_seg.onnx"))
    args = parser.parse_args(argv)
    source, out = Path(args.source), Path(args.out)
    model = dense_model(onnxviz.load(str(source), device="cpu").proto)  # normalized: constants folded
    onnx.save(model, str(out))
    side = json.loads(source.with_suffix(".json").read_text())
    side = {"preprocess": side["preprocess"], "labels": side["labels"], "source": "scripts/build_dense_model.py"}
    out.with_suffix(".json").write_text(json.dumps(side, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes) and {out.with_suffix('.json').name}")


if __name__ == "__main__":
    main()
