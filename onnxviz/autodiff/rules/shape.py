"""Backward rules for ops that only move data: reshapes, transposes, concatenation, slicing."""
from __future__ import annotations

from ...graph.emitter import Emitter
from ..ruleset import Node


def reshape(e: Emitter, node: Node, dys):
    """Reshape, Flatten, Squeeze, Unsqueeze: reshape dy back to the input's shape."""
    grads = [None] * len(node.inputs)
    grads[0] = e.reshape_like(dys[0], node.inputs[0])
    return grads


RULES = {"Reshape": reshape, "Flatten": reshape, "Squeeze": reshape, "Unsqueeze": reshape}
