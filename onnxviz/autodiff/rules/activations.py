"""Backward rules for activations, with the guided-backprop and deconvnet variants of ReLU-like ops."""
from __future__ import annotations

from ...graph.emitter import Emitter
from ..ruleset import Node


def _positive(e: Emitter, t: str) -> str:
    return e.op("Greater", t, e.scalar(0, like=t))


def relu(e: Emitter, node: Node, dys):
    """dx = dy where y > 0 (the output's sign is the mask: no extra forward value needed)."""
    y, dy = node.outputs[0], dys[0]
    return [e.op("Where", _positive(e, y), dy, e.scalar(0, like=y))]


def relu_guided(e: Emitter, node: Node, dys):
    """Guided backprop (Springenberg et al.): pass only positive gradients where the input was positive."""
    y, dy = node.outputs[0], dys[0]
    return [e.op("Where", _positive(e, y), e.op("Relu", dy), e.scalar(0, like=y))]


def relu_deconvnet(e: Emitter, node: Node, dys):
    """Deconvnet (Zeiler & Fergus): ReLU applied to the gradient, ignoring the forward mask."""
    return [e.op("Relu", dys[0])]


RULES = {"Relu": relu}
GUIDED = {"Relu": relu_guided}
DECONVNET = {"Relu": relu_deconvnet}
