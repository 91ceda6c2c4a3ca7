"""Static analysis of a CNN graph: layer table, receptive fields, Grad-CAM layers, CAM heads.

Everything reads the ModelProto only (run ``onnx.shape_inference.infer_shapes`` first for
shapes): no sessions, so inspecting a large model takes seconds. The work lives in three
modules, gathered here:

* :mod:`.tracking`: receptive fields and spatial axes (and the graph view the others share);
* :mod:`.layers`: the layer table, parameters and MACs;
* :mod:`.heads`: Grad-CAM target layers and GAP → fully-connected CAM heads.
"""
from __future__ import annotations

from .heads import CamHead, best_gradcam_layer, cam_head, gradcam_candidates
from .layers import LayerInfo, layer_table, summarize
from .tracking import ReceptiveField, receptive_field, spatial_axes

__all__ = [
    "CamHead",
    "LayerInfo",
    "ReceptiveField",
    "best_gradcam_layer",
    "cam_head",
    "gradcam_candidates",
    "layer_table",
    "receptive_field",
    "spatial_axes",
    "summarize",
]
