"""Backward rules checked against finite differences: Relu, Add/Sub/Mul/Sum, Conv, reshapes."""
import numpy as np
import pytest

from gradcheck import Case, Draw, assert_case, away_from_zero, check_case

f32, f64 = np.float32, np.float64
draw = Draw(dtype=f32)
rng = draw.rng
r = draw.r


CASES = [
    Case("Relu", {"x": away_from_zero(rng, (2, 3, 4))}),
    Case("Add", {"a": r(2, 3, 4, 5, dtype=f64), "b": r(3, 1, 5, dtype=f64)}, id="Add-broadcast"),
    Case("Add", {"a": r(2, 3, dtype=f64)}, consts={"b": r(3, dtype=f64)}, id="Add-const"),
    Case("Sub", {"a": r(4, 1, dtype=f64), "b": r(1, 5, dtype=f64)}, id="Sub-outer"),
    Case("Mul", {"a": r(2, 3, 4, 4, dtype=f64), "b": r(2, 3, 1, 1, dtype=f64)}, id="Mul-SE-gate"),
    Case("Sum", {"a": r(2, 3, dtype=f64), "b": r(3, dtype=f64), "c": r(2, 1, dtype=f64)}, id="Sum-3"),
    Case("Reshape", {"x": r(2, 3, 4, dtype=f64)}, consts={"s": np.array([2, -1], np.int64)}),
    Case("Flatten", {"x": r(2, 3, 2, 2, dtype=f64)}, attrs={"axis": 2}),
    Case("Squeeze", {"x": r(2, 1, 3, 1, dtype=f64)}, consts={"axes": np.array([1, 3], np.int64)}),
    Case("Unsqueeze", {"x": r(2, 3, dtype=f64)}, consts={"axes": np.array([0, 3], np.int64)}),
]

CONV_CASES = [
    dict(id="plain", x=(1, 3, 7, 7), w=(4, 3, 3, 3), attrs={}),
    dict(id="stride2-pad", x=(2, 2, 8, 9), w=(3, 2, 3, 3), attrs={"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    dict(id="asym-pads", x=(1, 2, 7, 6), w=(2, 2, 3, 2), attrs={"pads": [0, 1, 2, 0], "strides": [2, 3]}),
    dict(id="dilated", x=(1, 2, 9, 9), w=(2, 2, 3, 3), attrs={"dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    dict(id="group", x=(1, 4, 6, 6), w=(6, 2, 3, 3), attrs={"group": 2, "pads": [1, 1, 1, 1]}),
    dict(id="depthwise-s2", x=(1, 3, 7, 7), w=(3, 1, 3, 3), attrs={"group": 3, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    dict(id="same-upper", x=(1, 2, 7, 8), w=(2, 2, 4, 3), attrs={"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    dict(id="same-lower", x=(1, 2, 7, 8), w=(2, 2, 4, 3), attrs={"auto_pad": "SAME_LOWER", "strides": [2, 3]}),
    dict(id="valid-stride3", x=(1, 2, 10, 11), w=(2, 2, 3, 3), attrs={"auto_pad": "VALID", "strides": [3, 3]}),
    dict(id="1d", x=(1, 2, 11), w=(3, 2, 3), attrs={"strides": [2], "pads": [1, 0]}),
    dict(id="3d", x=(1, 1, 5, 5, 5), w=(2, 1, 3, 3, 3), attrs={"strides": [2, 1, 2], "pads": [1, 1, 1, 1, 1, 1]}),
]
for c in CONV_CASES:
    CASES.append(Case("Conv", {"x": r(*c["x"])}, consts={"w": r(*c["w"]), "b": r(c["w"][0])},
                      attrs=c["attrs"], check="adjoint", id="Conv-" + c["id"], rtol=1e-4))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_rule(case):
    assert_case(case)


def test_conv_output_shape_variant_would_fail():
    """Dropping output_padding (a known-wrong variant) must be caught by the same check."""
    from onnxviz.autodiff import STANDARD

    def conv_no_output_padding(e, node, dys):
        w = node.inputs[1]
        pads = node.attr("pads", [0, 0, 0, 0])
        return [e.op("ConvTranspose", dys[0], w, strides=node.attr("strides"), pads=pads), None, None]

    case = Case("Conv", {"x": r(1, 2, 8, 9)}, consts={"w": r(3, 2, 3, 3), "b": r(3)},
                attrs={"strides": [2, 2], "pads": [1, 1, 1, 1]}, check="adjoint",
                rules=STANDARD.replace(Conv=conv_no_output_padding))
    with pytest.raises(AssertionError, match="has shape"):
        check_case(case)
