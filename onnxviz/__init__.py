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

__version__ = "0.1.0"

__all__ = [
    "load", "Model", "Layer", "InputSpec", "Runtime",
    "Preprocess", "read_image", "preprocess", "deprocess", "load_labels",
    "gradients", "Gradients",
    "OnnxvizError", "ModelError", "ImageError", "UnsupportedOpError",
]
