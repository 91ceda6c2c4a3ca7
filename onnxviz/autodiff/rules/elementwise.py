"""Backward rules for element-wise arithmetic with numpy broadcasting."""
from __future__ import annotations

from ...graph.emitter import Emitter
from ..ruleset import Node


def add(e: Emitter, node: Node, dys):
    dy, out = dys[0], node.outputs[0]
    return [e.unbroadcast(dy, x, out) if need else None for x, need in zip(node.inputs, node.needs)]


def sub(e: Emitter, node: Node, dys):
    dy, out = dys[0], node.outputs[0]
    a, b = node.inputs
    return [
        e.unbroadcast(dy, a, out) if node.needs[0] else None,
        e.unbroadcast(e.op("Neg", dy), b, out) if node.needs[1] else None,
    ]


def mul(e: Emitter, node: Node, dys):
    dy, out = dys[0], node.outputs[0]
    a, b = node.inputs
    return [
        e.unbroadcast(e.op("Mul", dy, b), a, out) if node.needs[0] else None,
        e.unbroadcast(e.op("Mul", dy, a), b, out) if node.needs[1] else None,
    ]


def sum_(e: Emitter, node: Node, dys):
    """Variadic Sum: each operand gets the (unbroadcast) incoming gradient."""
    return add(e, node, dys)


RULES = {
    "Add": add,
    "Sub": sub,
    "Mul": mul,
    "Sum": sum_,
}
