"""onnxviz: see how any ONNX CNN sees — filters, activations, gradients and maps, computed by onnxruntime.

>>> import onnxviz
>>> model = onnxviz.load("models/shapes_cnn.onnx")
>>> x = onnxviz.preprocess([onnxviz.read_image("models/images/star_0.png")], model.input)
>>> g = model.gradients(x, wrt=["input"])
"""
from .runtime import Runtime  # first: a missing onnxruntime gives its one-line message here
from .errors import ImageError, ModelError, OnnxvizError, UnsupportedOpError
from .spec import InputSpec
from .model import Layer, Model, load
from .images import Preprocess, deprocess, load_labels, preprocess, read_image
from .gradients import Gradients, gradients
from .targets import Target
from .methods.results import Attribution, Heatmap
from .methods.cam import cam, grad_cam, grad_cam_pp, guided_grad_cam, layer_cam, score_cam
from .methods.saliency import saliency
from .methods.occlusion import occlusion
from .methods.faithfulness import Curve, Road, deletion, energy_pointing, insertion, pointing_game, road
from .methods.sanity import SanityResult, Similarity, random_logit_test, sanity_check
from .methods.embed import Embedding, embed
from .methods.neighbors import Neighbors, nearest_neighbors
from .methods.projection import Projection, projection
from .methods.patches import Patches, top_patches
from .methods.classvis import Visualization, channel_visualization, class_visualization
from .report import report
from .distributed import BatchEmbedder, BatchEvaluator, BatchExplainer, embed_dataset, evaluate_dataset, explain_dataset

from ._version import __version__

__all__ = [
    "load", "Model", "Layer", "InputSpec", "Runtime",
    "Preprocess", "read_image", "preprocess", "deprocess", "load_labels",
    "gradients", "Gradients", "Target",
    "grad_cam", "cam", "grad_cam_pp", "score_cam", "layer_cam", "guided_grad_cam", "saliency", "occlusion",
    "Heatmap", "Attribution",
    "deletion", "insertion", "Curve", "road", "Road", "pointing_game", "energy_pointing",
    "sanity_check", "SanityResult", "random_logit_test", "Similarity",
    "class_visualization", "channel_visualization", "Visualization",
    "report",
    "embed", "Embedding", "BatchEmbedder", "BatchExplainer", "BatchEvaluator", "embed_dataset", "explain_dataset",
    "evaluate_dataset",
    "nearest_neighbors", "Neighbors", "projection", "Projection", "top_patches", "Patches",
    "OnnxvizError", "ModelError", "ImageError", "UnsupportedOpError",
]
