"""Model.gradients: target semantics, logit vs probability, fd agreement, layouts, spatial outputs."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from builders import save, tiny_cnn
import onnxviz
from onnxviz.errors import OnnxvizError


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return onnxviz.load(save(tiny_cnn(), tmp_path_factory.mktemp("m") / "tiny.onnx"), device="cpu")


def batch(n=3, size=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def logits_of(model, x):
    return model.activations(x, ["logits"])["logits"]


def test_default_target_is_the_predicted_class(model):
    x = batch()
    g = model.gradients(x)
    np.testing.assert_array_equal(g.target, logits_of(model, x).argmax(1))
    np.testing.assert_allclose(g.score, logits_of(model, x).max(1), rtol=1e-6)


def test_mixed_targets_per_image_match_single_runs(model):
    x = batch()
    g = model.gradients(x, target=[0, 3, -1])
    assert g.target[0] == 0 and g.target[1] == 3
    for i, t in enumerate(g.target):
        single = model.gradients(x[i:i + 1], target=int(t))
        np.testing.assert_allclose(g["input"][i], single["input"][0], rtol=1e-5, atol=1e-7)


def test_logit_score_explains_the_pre_softmax_value(model):
    """d logit_c/dx summed over classes c is the gradient of the logits' sum; prob gradients sum to 0."""
    x = batch(1)
    prob = [model.gradients(x, target=c, score="prob")["input"] for c in range(4)]
    np.testing.assert_allclose(np.sum(prob, axis=0), 0, atol=1e-6)  # softmax outputs sum to 1
    logit = [model.gradients(x, target=c)["input"] for c in range(4)]
    assert np.abs(np.sum(logit, axis=0)).max() > 1e-3


def test_graph_gradients_match_finite_differences(tmp_path):
    """grad='fd' is a faithful fallback: on a smooth network (no kinks for the differences to
    cross) float32 central differences agree with the gradient graph."""
    m = tiny_cnn()
    for node in m.graph.node:
        if node.op_type == "Relu":
            node.op_type = "Softplus"
        elif node.op_type == "MaxPool":
            node.op_type = "AveragePool"
    smooth = onnxviz.load(save(m, tmp_path / "smooth.onnx"), device="cpu")
    x = batch(2)
    g = smooth.gradients(x, target=[1, 2], wrt=["input", "relu2"])
    f = smooth.gradients(x, target=[1, 2], wrt=["input", "relu2"], grad="fd")
    for name in ("input", "relu2"):
        err = np.abs(g[name] - f[name]).max() / np.abs(g[name]).max()
        assert err < 5e-3, (name, err)  # float32 differences: rounding and O(eps²) truncation
    np.testing.assert_allclose(g.score, f.score, rtol=1e-5)
    np.testing.assert_array_equal(g.target, f.target)


def test_nhwc_model_gives_the_transposed_gradient(tmp_path):
    nchw = onnxviz.load(save(tiny_cnn(), tmp_path / "a.onnx"), device="cpu")
    nhwc = onnxviz.load(save(tiny_cnn(layout="NHWC"), tmp_path / "b.onnx"), device="cpu")
    x = batch(2)
    a = nchw.gradients(x, target=1)["input"]
    b = nhwc.gradients(x.transpose(0, 2, 3, 1), target=1)["input"]
    np.testing.assert_allclose(b, a.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-7)


def test_dynamic_size_model_at_two_sizes(tmp_path):
    m = onnxviz.load(save(tiny_cnn(dynamic=True), tmp_path / "d.onnx"), device="cpu")
    for size in (16, 24):
        g = m.gradients(batch(1, size), target=0)
        assert g["input"].shape == (1, 3, size, size)


def test_spatial_output_sums_the_target_channel(tmp_path):
    """A segmentation-like head (N, C, H, W): the score is the channel summed over positions."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 3, 1, 1)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["image", "w"], ["seg"])], "seg",
                          [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", 3, 5, 5])],
                          [helper.make_tensor_value_info("seg", onnx.TensorProto.FLOAT, ["N", 3, 5, 5])], [w])
    m = onnxviz.load(save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "s.onnx"),
                     device="cpu")
    x = batch(1, 5)
    res = m.gradients(x, target=2)
    # linear 1x1 conv: d(sum_hw seg[2])/dx[c,h,w] = W[2, c]
    expected = np.broadcast_to(numpy_helper.to_array(w)[2, :, 0, 0][None, :, None, None], x.shape)
    np.testing.assert_allclose(res["input"], expected, rtol=1e-6)
    np.testing.assert_allclose(res.score, m.run(x)["seg"][:, 2].sum(axis=(1, 2)), rtol=1e-5)


def test_bad_requests(model):
    x = batch(2)
    with pytest.raises(OnnxvizError, match="no tensor named 'nope'"):
        model.gradients(x, wrt=["nope"])
    with pytest.raises(OnnxvizError, match="got 3 targets for 2 images"):
        model.gradients(x, target=[1, 2, 3])
    with pytest.raises(OnnxvizError, match="score must be"):
        model.gradients(x, score="logits")
    with pytest.raises(ValueError, match="unknown rule set"):
        model.gradients(x, rules="fancy")


def test_unsupported_op_names_op_node_and_fallback(tmp_path):
    m = tiny_cnn()
    m.graph.node[1].op_type = "Shrink"  # a real ONNX op without a backward rule, replacing the Relu
    model = onnxviz.load(save(m, tmp_path / "u.onnx"), device="cpu")
    with pytest.raises(onnxviz.UnsupportedOpError, match=r"'Shrink'.*Supported operators: .*Conv.*--grad fd"):
        model.gradients(batch(1))
    f = model.gradients(batch(1), grad="fd", wrt=["relu2"])  # the fallback works
    assert f["relu2"].shape == (1, 8, 8, 8)


def test_fd_refuses_a_replaced_rule_set_whatever_its_name(model):
    """grad='fd' stands in only for true gradients: a set with a swapped rule is not one, even
    when it keeps (or is given) the name "standard"."""
    from onnxviz.autodiff import GUIDED, STANDARD
    from onnxviz.autodiff.rules.activations import relu_guided

    x = batch(1)
    for rules in (GUIDED, STANDARD.replace(Relu=relu_guided), STANDARD.replace("standard", Relu=relu_guided)):
        assert not rules.exact
        with pytest.raises(OnnxvizError, match="has no finite-difference equivalent"):
            model.gradients(x, target=0, rules=rules, grad="fd")
    assert STANDARD.replace(Relu=relu_guided).name == "standard+Relu"
    same = STANDARD.replace(Relu=STANDARD["Relu"])  # nothing swapped: still the true gradient
    assert same.exact and same.name == "standard"
    declared = STANDARD.replace("mine", exact=True, Relu=STANDARD["Relu"])
    np.testing.assert_allclose(model.gradients(x, target=0, rules=declared, grad="fd")["input"],
                               model.gradients(x, target=0, grad="fd")["input"])
