"""Errors that onnxviz raises for bad input; the CLI turns them into clean messages."""


class OnnxvizError(Exception):
    """Base class: something the user can fix (bad file, bad option, unsupported model)."""


class ModelError(OnnxvizError):
    """The model file cannot be loaded or is not a CNN onnxviz can analyze."""


class OptionError(OnnxvizError):
    """A method, metric or option that does not exist, or an input a chosen method needs that was
    not given: a mistake in the request rather than in one model or image, so a run over many
    methods or images stops at it instead of recording it as one method's failure."""


class ImageError(OnnxvizError):
    """An image file cannot be read or does not fit the model."""


class UnsupportedOpError(OnnxvizError):
    """No backward rule exists for an operator on the gradient path."""

    def __init__(self, op_type: str, node_name: str, supported, domain: str = ""):
        self.op_type = op_type
        self.node_name = node_name
        self.supported = sorted(supported)
        qual = f"{domain}::{op_type}" if domain else op_type
        super().__init__(
            f"no gradient rule for operator {qual!r} (node {node_name!r}), which lies on the "
            f"gradient path. Supported operators: {', '.join(self.supported)}. "
            "Use finite differences instead (--grad fd on cam and saliency, or grad='fd' in the API), or pick a "
            "layer/output whose path avoids this node."
        )


class NonFiniteError(OnnxvizError):
    """NaN or infinite values where a result must be finite: weights, outputs, gradients, maps."""
