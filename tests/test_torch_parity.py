"""When torch is installed: networks written in plain torch, exported to ONNX, agree with torch autograd.

Each net (residual blocks; depthwise convs with ReLU6 and SE blocks with HardSigmoid/HardSwish;
dense concatenations with PReLU, LeakyReLU, ceil_mode pools and bilinear upsampling; a
channels-last net permuting its input) is exported with the TorchScript exporter at opsets
13 and 17 with an extra output "probe" naming an intermediate layer. onnxviz's gradients of
the pre-softmax logit, for a batch of two images with different targets, w.r.t. the input
and that layer must match torch's to 1e-4 relative to their largest entry.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import onnxviz  # noqa: E402
from torch_nets import NETS, export, torch_gradients  # noqa: E402

RTOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter
TARGETS = [3, 7]


def relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def probed_tensor(model) -> str:
    """The graph tensor behind the "probe" output (the exporter may add an Identity for it)."""
    name = "probe"
    node = model.producer(name)
    while node is not None and node.op_type == "Identity":
        name = node.input[0]
        node = model.producer(name)
    return name


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cache = {}

    def get(name, opset):
        if (name, opset) not in cache:
            path = tmp_path_factory.mktemp("torch") / f"{name}_{opset}.onnx"
            path.write_bytes(export(name, opset))
            cache[name, opset] = str(path)
        return cache[name, opset]

    return get


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("name", sorted(NETS))
def test_gradients_match_torch_autograd(name, opset, exported, device):
    spec = NETS[name]
    model = onnxviz.load(exported(name, opset), device=device)
    assert model.input.layout == spec.layout
    x = np.random.default_rng(1).standard_normal((2, *spec.shape)).astype(np.float32)
    layer = probed_tensor(model)

    logits, dx, dlayer = torch_gradients(name, x, TARGETS)
    g = model.gradients(x, target=TARGETS, wrt=["input", layer], output="output")

    np.testing.assert_array_equal(g.target, TARGETS)
    np.testing.assert_allclose(g.score, logits[[0, 1], TARGETS], rtol=1e-4, atol=1e-5 * np.abs(logits).max())
    assert g["input"].shape == x.shape and g[layer].shape == dlayer.shape
    errors = {"input": relative_error(g["input"], dx), layer: relative_error(g[layer], dlayer)}
    assert max(errors.values()) <= RTOL, f"{name} opset {opset}: relative errors {errors}"
    # both images contribute, each to its own gradient: no cross-talk along the batch
    for i in range(2):
        assert relative_error(g["input"][i], dx[i]) <= RTOL


def test_probe_is_an_inner_tensor(exported, device):
    """The probe resolves to a tensor that the logits depend on (else its gradient would be zero)."""
    model = onnxviz.load(exported("resnet", 17), device=device)
    layer = probed_tensor(model)
    assert model.producer(layer).op_type in ("Relu", "Add", "Sum")
    x = np.random.default_rng(2).standard_normal((1, *NETS["resnet"].shape)).astype(np.float32)
    assert np.abs(model.gradients(x, target=0, wrt=[layer], output="output")[layer]).max() > 0
