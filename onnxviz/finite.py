"""Finding NaN and infinite values, and saying where the first one is.

A map computed from a NaN weight is all NaN, and min-max scaling turns it into a flat
picture that looks like a result; these checks make such results fail loudly instead.
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import NonFiniteError
from .graph.view import FLOAT_TYPES


def describe_nonfinite(a) -> Optional[str]:
    """None when every value is finite, else "2 NaN, 1 inf; first at index (0, 3)"."""
    a = np.asarray(a)
    if a.dtype.kind not in "fc":
        return None
    bad = ~np.isfinite(a)
    if not bad.any():
        return None
    nan = int(np.isnan(a).sum())
    parts = [f"{nan} NaN"] if nan else []
    if int(bad.sum()) > nan:
        parts.append(f"{int(bad.sum()) - nan} inf")
    first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), a.shape)) if a.ndim else ()
    return f"{', '.join(parts)}; first at index {first}"


def check_finite(a, what: str) -> None:
    """Raise NonFiniteError naming ``what`` when ``a`` holds NaN or inf."""
    found = describe_nonfinite(a)
    if found:
        raise NonFiniteError(f"{what} is not finite ({found})")


def nonfinite_weights(model: onnx.ModelProto) -> Optional[str]:
    """The first float initializer or Constant holding NaN/inf, described; None when all are finite."""
    for t in _tensors(model.graph):
        if t.data_type in FLOAT_TYPES:
            found = describe_nonfinite(numpy_helper.to_array(t))
            if found:
                return f"weight {t.name!r} has {found}"
    return None


def _tensors(graph) -> Iterable:
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
