"""The backward rules, one module per op family. Each module exports ``RULES`` (op_type -> rule)."""
from . import activations, conv, elementwise, shape

STANDARD_RULES = {
    **elementwise.RULES,
    **activations.RULES,
    **conv.RULES,
    **shape.RULES,
}
