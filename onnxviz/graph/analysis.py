"""Static analysis of a CNN graph: layer table, receptive fields, Grad-CAM layers, CAM heads.

Everything reads the ModelProto only (run ``onnx.shape_inference.infer_shapes`` first for
shapes): no sessions, so inspecting a large model takes seconds. The work lives in three
modules, gathered here:

* :mod:`.receptive_fields`: receptive fields and spatial axes (over the shared :mod:`.view`);
* :mod:`.layers`: the layer table, parameters and MACs;
* :mod:`.heads`: Grad-CAM target layers, GAP → fully-connected CAM heads, the penultimate layer.
"""
from __future__ import annotations

from .heads import CamHead, best_gradcam_layer, cam_head, gradcam_candidates, penultimate_layer
from .layers import LayerInfo, layer_table, summarize
from .receptive_fields import ReceptiveField, receptive_field, spatial_axes

__all__ = [
    "CamHead",
    "LayerInfo",
    "ReceptiveField",
    "best_gradcam_layer",
    "cam_head",
    "gradcam_candidates",
    "layer_table",
    "penultimate_layer",
    "receptive_field",
    "spatial_axes",
    "summarize",
]
