"""Rule sets: immutable tables op_type -> backward rule, varied by value."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import onnx
from onnx import helper

from ..graph.emitter import Emitter


@dataclass
class Node:
    """What a rule sees of a forward node.

    ``needs[i]`` says whether input i needs a gradient; rules may skip the others.
    ``proto`` is the node inside the graph being rewritten (rules may add optional outputs).
    ``producers`` maps a tensor name to the forward node that made it, for rules that
    spell a two-node pattern's backward as one expression (x · Sigmoid(x)).
    """

    proto: onnx.NodeProto
    opset: int
    needs: tuple = ()
    attrs: dict = field(default_factory=dict)
    producers: Mapping[str, onnx.NodeProto] = field(default_factory=dict)

    def __post_init__(self):
        self.attrs = {a.name: helper.get_attribute_value(a) for a in self.proto.attribute}
        self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in self.attrs.items()}

    @property
    def op(self) -> str:
        return self.proto.op_type

    @property
    def name(self) -> str:
        return self.proto.name or f"<{self.proto.op_type} -> {self.proto.output[0]}>"

    @property
    def inputs(self) -> list:
        return list(self.proto.input)

    @property
    def outputs(self) -> list:
        return list(self.proto.output)

    def input(self, i: int) -> Optional[str]:
        """Input i, or None when absent or given as an empty name."""
        return self.proto.input[i] if i < len(self.proto.input) and self.proto.input[i] else None

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    def producer(self, name: str) -> Optional[onnx.NodeProto]:
        return self.producers.get(name)


# A rule maps (emitter, node, output gradients) to one gradient name per input (None: no gradient).
Rule = Callable[[Emitter, Node, Sequence[Optional[str]]], Sequence[Optional[str]]]


class RuleSet(Mapping):
    """An immutable op_type -> rule table. ``replace`` returns a new set.

    ``exact``: the set computes the true gradient, so finite differences (``grad="fd"``) can
    stand in for it. A set made by ``replace`` with any rule swapped is not exact unless the
    caller says so (``exact=True``): what a set computes is known from its rules, not its name.

    >>> GUIDED = STANDARD.replace(Relu=relu_guided)
    """

    def __init__(self, name: str, rules: Mapping[str, Rule], exact: bool = False):
        self.name = name
        self.exact = exact
        self._rules = dict(rules)

    def __getitem__(self, op_type: str) -> Rule:
        return self._rules[op_type]

    def __iter__(self):
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def replace(self, name: Optional[str] = None, *, exact: bool = False, **rules: Rule) -> "RuleSet":
        """This set with ``rules`` swapped in; unnamed, it is called e.g. ``standard+Relu``."""
        changed = sorted(op for op, rule in rules.items() if self._rules.get(op) is not rule)
        default = f"{self.name}+{','.join(changed)}" if changed else self.name
        return RuleSet(name or default, {**self._rules, **rules}, exact=self.exact and (exact or not changed))

    def __repr__(self) -> str:
        return f"RuleSet({self.name!r}, {len(self)} ops)"
