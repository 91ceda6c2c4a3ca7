"""The backward rules, one module per op family. Each module exports ``RULES`` (op_type -> rule)."""
from . import activations, conv, elementwise, norm, pool, recurrent, reduce, shape

STANDARD_RULES = {
    **elementwise.RULES,
    **activations.RULES,
    **conv.RULES,
    **pool.RULES,
    **reduce.RULES,
    **norm.RULES,
    **shape.RULES,
    **recurrent.RULES,
}
