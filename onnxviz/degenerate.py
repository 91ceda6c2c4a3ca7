"""Inputs whose results look like results but carry no information: identical filters, tied predictions.

A model whose Conv filters are all equal (constant-weight test models such as the "light" ONNX
zoo copies) gives uniform filter grids, flat maps and classes that tie; the picture alone does
not say why. These checks are cheap and only warn: the user may know, and the run goes on.
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger("onnxviz")


def identical_filters(model: onnx.ModelProto) -> list:
    """Names of the Conv nodes (with a constant weight of more than one filter) whose filters are all equal."""
    weights = {t.name: t for t in model.graph.initializer}
    found = []
    for i, node in enumerate(model.graph.node):
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
            continue
        w = _array(weights[node.input[1]])
        if w is None or w.ndim < 2 or w.shape[0] < 2:
            continue
        w = w.reshape(w.shape[0], -1)
        # filter 1 against filter 0 first: real models differ there, so the full compare rarely runs
        if np.array_equal(w[1], w[0]) and (w == w[0]).all():
            found.append(repr(node.name) if node.name else f"#{i} (output {node.output[0]!r})")
    return found


def _array(t: onnx.TensorProto) -> Optional[np.ndarray]:
    """The tensor's values, without a copy when it is stored as raw bytes (big weights usually are)."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return numpy_helper.to_array(t) if t.raw_data else None
    if t.raw_data and t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
        return np.frombuffer(t.raw_data, helper.tensor_dtype_to_np_dtype(t.data_type)).reshape(tuple(t.dims))
    return numpy_helper.to_array(t)


def warn_identical_filters(model: onnx.ModelProto) -> list:
    """Log one warning when any Conv layer's filters are all identical; the layers found."""
    found = identical_filters(model)
    if found:
        more = f" and {len(found) - 1} more" if len(found) > 1 else ""
        log.warning("every filter of Conv %s%s is identical (constant weights?): filter grids are uniform, "
                    "maps flat and predictions tied; the results carry no information about the input",
                    found[0], more)
    return found


def tied_rows(scores: np.ndarray) -> np.ndarray:
    """Rows of (N, classes) scores whose two best classes have exactly equal scores."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] < 2:
        return np.zeros(0, np.int64)
    top2 = -np.partition(-scores, 1, axis=1)[:, :2]
    return np.flatnonzero(top2[:, 0] == top2[:, 1])


def warn_ties(scores: np.ndarray, predicted: Optional[np.ndarray] = None) -> np.ndarray:
    """Warn when a predicted class is a tie (argmax then picks the lowest index: arbitrary).

    ``predicted``: a boolean per row, True where the class is the prediction rather than one the
    user chose (a chosen class is explained whatever the ranking). Returns the tied rows warned about.
    """
    tied = tied_rows(scores)
    if predicted is not None and len(tied):
        tied = tied[np.asarray(predicted, bool)[tied]]
    if len(tied):
        row = int(tied[0])
        best = np.sort(np.flatnonzero(scores[row] == scores[row].max()))
        classes = ", ".join(map(str, best[:5])) + (", ..." if len(best) > 5 else "")
        log.warning("tied prediction (%d of %d images): classes %s share the top score %.6g, so the predicted class is "
                    "arbitrary (constant weights, or an input the model cannot tell apart); give a class "
                    "with --target", len(tied), len(scores), classes, float(scores[row].max()))
    return tied
