"""Backward rules of LSTM, GRU and RNN, checked in float64 against central finite differences (every output: Y,
Y_h, Y_c; both directions; batch-first layout; initial states as inputs) on onnx's reference
runtime (onnxruntime has no float64 LSTM), in float32 on onnxruntime, and against torch."""
import numpy as np
import pytest

from gradcheck import Case, check_case, gradients, node_model
from onnxviz.autodiff import STANDARD, gradient_graph
from onnxviz.errors import OnnxvizError

f64 = np.float64
rng = np.random.default_rng(7)


def r(*shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(f64)


GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
OUTPUTS = {"LSTM": 3, "GRU": 2, "RNN": 2}


def recurrent_case(op, steps=4, batch=2, inputs=3, hidden=5, direction="forward", bias=True, states=False, layout=0,
                   dtype=f64, tag="", **attrs):
    """One LSTM/GRU/RNN node: X and (``states``) the initial states differentiated, the weights
    constants; float64 on onnx's reference runtime, float32 on onnxruntime."""
    d, g = 2 if direction == "bidirectional" else 1, GATES[op]
    x = r(steps, batch, inputs) if layout == 0 else r(batch, steps, inputs)
    consts = {"w": r(d, g * hidden, inputs, scale=0.5), "r": r(d, g * hidden, hidden, scale=0.5)}
    order = ["x", "w", "r"]
    if bias:
        consts["b"] = r(d, 2 * g * hidden, scale=0.3)
    order.append("b" if bias else "")
    given = {"x": x}
    if states:
        shape = (d, batch, hidden) if layout == 0 else (batch, d, hidden)
        given["h0"] = r(*shape, scale=0.5)
        order += ["", "h0"]
        if op == "LSTM":
            given["c0"] = r(*shape, scale=0.5)
            order.append("c0")
    ort = dtype == np.float32
    return Case(op, {k: v.astype(dtype) for k, v in given.items()},
                consts={k: v.astype(dtype) for k, v in consts.items()}, order=order, outputs=OUTPUTS[op], opset=14,
                rtol=5e-3 if ort else 1e-6, runtime="ort" if ort else "reference",
                attrs={"hidden_size": hidden, "direction": direction, **({"layout": layout} if layout else {}), **attrs},
                id=f"{op}-{direction}-b{int(bias)}-s{int(states)}-l{layout}-T{steps}{tag}" + ("-ort" if ort else ""))


def lstm_case(*args, **kwargs):
    return recurrent_case("LSTM", *args, **kwargs)


CASES = [
    lstm_case(),
    lstm_case(direction="reverse"),
    lstm_case(direction="bidirectional", states=True),
    lstm_case(bias=False, states=True),
    lstm_case(layout=1, direction="bidirectional", states=True),
    lstm_case(steps=1, direction="bidirectional"),
    lstm_case(direction="bidirectional", states=True, dtype=np.float32),  # onnxruntime's own LSTM
    lstm_case(direction="reverse", bias=False, dtype=np.float32),  # (onnxruntime has no layout 1)
]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("output", [0, 1, 2], ids=["Y", "Y_h", "Y_c"])
def test_lstm_gradient_matches_finite_differences(case, output):
    assert check_case(case, output) < case.rtol


def test_lstm_with_only_its_final_state_used():
    """A recognizer may read Y_h alone: the rule asks the forward node for Y (it recomputes the gates from it)."""
    case = lstm_case(direction="bidirectional")
    model = node_model(case)
    del model.graph.node[0].output[0:1]
    model.graph.node[0].output.insert(0, "")
    model.graph.output.pop(0)
    x = case.inputs["x"]
    seed = r(2, 2, 5)
    g = gradients(model, {"x": x}, "y1", ["x"], seed, runtime="reference")["x"]
    from gradcheck import forward, numeric_vjp

    dirs, nums = numeric_vjp(forward(model, "y1", "reference"), {"x": x}, "x", seed, 1e-6)
    np.testing.assert_allclose([np.sum(g * d) for d in dirs], nums, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("attrs,consts,message", [
    ({"clip": 2.0}, {}, "clip"),
    ({"input_forget": 1}, {}, "input_forget"),
    ({"activations": ["Sigmoid", "Relu", "Tanh"]}, {}, "activations"),
    ({}, {"p": np.ones((1, 15))}, "peephole"),
])
def test_lstm_features_without_a_rule_are_refused_by_name(attrs, consts, message):
    case = lstm_case(**attrs)
    if consts:
        case.consts.update(consts)
        case.order[3:] = ["b", "", "", "", "p"]
    with pytest.raises(OnnxvizError, match=message) as info:
        gradient_graph(node_model(case), "y0", ["x"], STANDARD)
    assert "LSTM node" in str(info.value) and "--grad fd" in str(info.value)


# torch's gate order as positions in ONNX's (LSTM: i, o, f, c -> i, f, g, o; GRU: z, r, h -> r, z, n)
TORCH_ORDER = {"LSTM": [0, 2, 3, 1], "GRU": [1, 0, 2]}


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_against_torch(op):
    """torch's nn.LSTM / nn.GRU (whose reset is applied after the recurrent product, i.e.
    linear_before_reset=1) with the same weights, both directions: the same input gradient."""
    torch = pytest.importorskip("torch")
    steps, batch, inputs, hidden = 5, 2, 3, 4
    case = lstm_case(steps, batch, inputs, hidden, direction="bidirectional") if op == "LSTM" else \
        gru_case(steps, batch, inputs, hidden, direction="bidirectional", lbr=1)
    w, rr, b = case.consts["w"], case.consts["r"], case.consts["b"]
    net = getattr(torch.nn, op)(inputs, hidden, bidirectional=True).double()
    rows = np.concatenate([np.arange(j * hidden, (j + 1) * hidden) for j in TORCH_ORDER[op]])
    half = GATES[op] * hidden
    with torch.no_grad():
        for d, suffix in enumerate(["", "_reverse"]):
            for name, value in (("weight_ih", w[d]), ("weight_hh", rr[d]), ("bias_ih", b[d][:half]),
                                ("bias_hh", b[d][half:])):
                getattr(net, f"{name}_l0{suffix}").copy_(torch.tensor(value[rows]))
    x = case.inputs["x"]
    seed = r(steps, 2, batch, hidden)
    ours = gradients(node_model(case), {"x": x}, "y0", ["x"], seed, runtime="reference")["x"]
    xt = torch.tensor(x, requires_grad=True)
    out, _ = net(xt)  # [T, B, 2H]: forward then reverse halves
    out.backward(torch.tensor(seed.transpose(0, 2, 1, 3).reshape(steps, batch, 2 * hidden)))
    np.testing.assert_allclose(ours, xt.grad.numpy(), rtol=1e-10, atol=1e-12)


def crnn(path, classes=5, hidden=6, height=8, width=16, seed=3):
    """A CTC-style recognizer: Conv-ReLU over a text-line image, columns as time steps, a
    bidirectional LSTM and per-step class logits (N, T, C)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = np.random.default_rng(seed)
    f32 = np.float32
    inits = {"cw": g.standard_normal((4, 1, 3, 3)).astype(f32) * 0.5, "cb": g.standard_normal(4).astype(f32) * 0.1,
             "seq": np.array([0, 0, -1], np.int64), "w": g.standard_normal((2, 4 * hidden, 4 * height)).astype(f32) * 0.2,
             "r": g.standard_normal((2, 4 * hidden, hidden)).astype(f32) * 0.3,
             "b": g.standard_normal((2, 8 * hidden)).astype(f32) * 0.1, "flat": np.array([0, 0, 2 * hidden], np.int64),
             "fc": g.standard_normal((2 * hidden, classes)).astype(f32) * 0.5}
    nodes = [helper.make_node("Conv", ["image", "cw", "cb"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
             helper.make_node("Transpose", ["relu"], ["cols"], perm=[3, 0, 1, 2]),  # [W, N, C, H]
             helper.make_node("Reshape", ["cols", "seq"], ["steps"]),  # [T, N, C*H]
             helper.make_node("LSTM", ["steps", "w", "r", "b"], ["y", "", ""], hidden_size=hidden,
                              direction="bidirectional", name="lstm"),
             helper.make_node("Transpose", ["y"], ["yt"], perm=[2, 0, 1, 3]),  # [N, T, 2, H]
             helper.make_node("Reshape", ["yt", "flat"], ["feat"]),
             helper.make_node("MatMul", ["feat", "fc"], ["logits"])]
    graph = helper.make_graph(nodes, "crnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                            ["N", 1, height, width])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", width, classes])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return str(path)


def test_ctc_recognizer_gradients_through_its_lstm(tmp_path):
    """Saliency and Grad-CAM of a step of a sequence output run through the LSTM; the float64
    gradient graph equals float64 central differences of the model."""
    import onnxviz
    from onnxviz.checkgrad import directional_errors_float64

    model = onnxviz.load(crnn(tmp_path / "crnn.onnx"))
    x = np.random.default_rng(0).random((2, 1, 8, 16)).astype(np.float32)
    target = onnxviz.Target(2, step=5)
    errors = directional_errors_float64(model, x, layers=["relu"])  # every step's predicted class
    assert max(max(v) for v in errors.values()) < 1e-6, errors
    sal = onnxviz.saliency(model, x, target=target)
    assert sal.raw.shape == x.shape and np.abs(sal.raw).max() > 0
    cam = onnxviz.grad_cam(model, x, target=target, layer="relu")
    assert cam.map.shape == (2, 8, 16) and np.isfinite(cam.map).all()


def gru_case(*args, lbr=0, **kwargs):
    return recurrent_case("GRU", *args, linear_before_reset=lbr, tag=f"-lbr{lbr}", **kwargs)


GRU_CASES = [
    gru_case(),
    gru_case(lbr=1, direction="reverse"),
    gru_case(direction="bidirectional", states=True),
    gru_case(lbr=1, direction="bidirectional", states=True, bias=False),
    gru_case(steps=1),
    gru_case(lbr=1, direction="bidirectional", dtype=np.float32),
]


@pytest.mark.parametrize("case", GRU_CASES, ids=str)
@pytest.mark.parametrize("output", [0, 1], ids=["Y", "Y_h"])
def test_gru_gradient_matches_finite_differences(case, output):
    assert check_case(case, output) < case.rtol


def test_gru_features_without_a_rule_are_refused_by_name():
    for case, message in ((gru_case(clip=3.0), "clip"), (gru_case(activations=["HardSigmoid", "Tanh"]), "activations")):
        with pytest.raises(OnnxvizError, match=message) as info:
            gradient_graph(node_model(case), "y0", ["x"], STANDARD)
        assert "GRU node" in str(info.value) and "--grad fd" in str(info.value)


def rnn_case(direction="forward", **kwargs):
    return recurrent_case("RNN", direction=direction, **kwargs)


RNN_CASES = [rnn_case(), rnn_case("reverse", bias=False), rnn_case("bidirectional", states=True), rnn_case(steps=1)]


@pytest.mark.parametrize("case", RNN_CASES, ids=str)
@pytest.mark.parametrize("output", [0, 1], ids=["Y", "Y_h"])
def test_rnn_gradient_matches_finite_differences(case, output):
    assert check_case(case, output) < case.rtol
