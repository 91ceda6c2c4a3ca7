"""Reverse-mode autodiff of ONNX graphs into ONNX graphs.

Rule sets are values: ``GUIDED`` and ``DECONVNET`` are ``STANDARD`` with the rules of
ReLU-like ops replaced.
"""
from .backward import GradientModel, gradient_graph
from .ruleset import Node, RuleSet
from .rules import STANDARD_RULES, activations

STANDARD = RuleSet("standard", STANDARD_RULES, exact=True)
GUIDED = STANDARD.replace("guided", **activations.GUIDED)
DECONVNET = STANDARD.replace("deconvnet", **activations.DECONVNET)
REDIRECTED = STANDARD.replace("redirected", **activations.REDIRECTED)  # class visualization only
RULESETS = {"standard": STANDARD, "guided": GUIDED, "deconvnet": DECONVNET}


def ruleset(rules) -> RuleSet:
    """A RuleSet from its name or itself."""
    if isinstance(rules, RuleSet):
        return rules
    try:
        return RULESETS[rules]
    except KeyError:
        raise ValueError(f"unknown rule set {rules!r}; choose from {', '.join(RULESETS)}") from None


__all__ = ["GradientModel", "gradient_graph", "Node", "RuleSet", "STANDARD", "GUIDED", "DECONVNET", "REDIRECTED",
           "ruleset"]
