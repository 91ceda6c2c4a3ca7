"""Parity with plain torch: Grad-CAM, guided backprop and occlusion on exported networks.

Each reference is the straightforward torch way (forward hooks, autograd, backward hooks on the
ReLUs, a loop over windows). Skipped when torch is not installed.
"""
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import onnxviz  # noqa: E402
from onnxviz.methods.occlusion import window_starts  # noqa: E402

TOL = 1e-4  # relative to the largest magnitude of the reference map


def bn(c):
    """BatchNorm with non-trivial running statistics (eval mode)."""
    m = nn.BatchNorm2d(c)
    with torch.no_grad():
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
    return m


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), bn(c_out), nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), bn(c_out)
        self.short = nn.Identity() if stride == 1 and c_in == c_out else \
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), bn(c_out))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + self.short(x))


class ResNet(nn.Module):
    """Stem, an identity residual block, a strided residual block with a 1x1 shortcut, GAP, Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), bn(8), nn.ReLU())
        self.block1, self.block2 = Block(8, 8, 1), Block(8, 16, 2)
        self.fc = nn.Linear(16, 5)
        self.last = self.block2.relu2

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.block2(self.block1(self.stem(x))), 1), 1))


class Depthwise(nn.Module):
    """MobileNet-style: conv-BN-ReLU6, depthwise 3x3/2-BN-ReLU6, pointwise-BN-ReLU6, GAP, Linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1, bias=False), bn(8), nn.ReLU6(),
            nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False), bn(8), nn.ReLU6(),
            nn.Conv2d(8, 16, 1, bias=False), bn(16), nn.ReLU6())
        self.fc = nn.Linear(16, 5)
        self.last = self.features[-1]

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class Pools(nn.Module):
    """Max and average pools with ceil_mode (and padding not counted), on an odd input size."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(8, 8, 3, 1, 1), nn.ReLU(), nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False),
            nn.Conv2d(8, 16, 3, 1, 1), nn.ReLU())
        self.fc = nn.Linear(16, 5)
        self.last = self.features[-1]

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


NETS = {"resnet": (ResNet, 16), "depthwise-relu6": (Depthwise, 16), "pools-ceil": (Pools, 21)}


@pytest.fixture(scope="module", params=list(NETS))
def case(request, tmp_path_factory):
    cls, size = NETS[request.param]
    torch.manual_seed(0)
    net = cls().eval()
    path = tmp_path_factory.mktemp(request.param) / "net.onnx"
    buffer = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(1, 3, size, size),), buffer, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})
    path.write_bytes(buffer.getvalue())
    model = onnxviz.load(str(path), device="cpu")
    x = np.random.default_rng(1).standard_normal((3, 3, size, size)).astype(np.float32)
    return net, model, x


def close(ours, ref, what):
    ref = np.asarray(ref, np.float64)
    err = np.abs(np.asarray(ours, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-12)
    print(f"{what}: max error / max |reference| = {err:.2e}")
    assert err < TOL, f"{what}: relative error {err:.2e}"


def torch_grad_cam(net, x, target):
    kept = {}
    handle = net.last.register_forward_hook(lambda m, i, out: kept.update(a=out))
    logits = net(torch.from_numpy(x))
    handle.remove()
    (grads,) = torch.autograd.grad(logits[torch.arange(len(x)), torch.as_tensor(target)].sum(), kept["a"])
    cam = F.relu((grads.mean((2, 3), keepdim=True) * kept["a"]).sum(1))
    return cam.detach().numpy(), logits.detach().numpy()


def torch_guided(net, x, target):
    """Guided backprop the captum way: every ReLU-like module passes only positive gradients."""
    hooks = [m.register_full_backward_hook(lambda m, gin, gout: (torch.clamp(gin[0], min=0),))
             for m in net.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    xt = torch.from_numpy(x).requires_grad_(True)
    net(xt)[torch.arange(len(x)), torch.as_tensor(target)].sum().backward()
    for h in hooks:
        h.remove()
    return xt.grad.numpy()


def torch_occlusion(net, x, target, window, stride, baseline):
    n, _, h, w = x.shape
    xt = torch.from_numpy(x)
    rows = torch.arange(n)
    with torch.no_grad():
        before = net(xt)[rows, torch.as_tensor(target)]
        total, count = torch.zeros(n, h, w, dtype=torch.float64), torch.zeros(h, w, dtype=torch.float64)
        for y0 in window_starts(h, window, stride):
            for x0 in window_starts(w, window, stride):
                occluded = xt.clone()
                occluded[:, :, y0:y0 + window, x0:x0 + window] = baseline
                drop = (before - net(occluded)[rows, torch.as_tensor(target)]).double()
                total[:, y0:y0 + window, x0:x0 + window] += drop[:, None, None]
                count[y0:y0 + window, x0:x0 + window] += 1
    return (total / count).numpy()


def test_grad_cam(case):
    """Every class of every image (top_k = all classes): mixed targets in one batch."""
    net, model, x = case
    ours = onnxviz.grad_cam(model, x, top_k=5)
    assert model.producer(ours.layer).op_type in ("Relu", "Clip")
    ref, logits = torch_grad_cam(net, x[ours.image], ours.target)
    assert ours.raw.shape == ref.shape and (ref.max(axis=(1, 2)) > 0).sum() >= 3
    close(ours.raw, ref, f"{type(net).__name__} Grad-CAM raw")
    np.testing.assert_allclose(ours.score, logits[np.arange(len(ref)), ours.target], rtol=1e-4, atol=1e-5)
    up = F.interpolate(torch.from_numpy(ref)[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)
    up = up[:, 0].numpy().astype(np.float64)
    lo, span = up.min((1, 2), keepdims=True), np.ptp(up, axis=(1, 2), keepdims=True)
    close(ours.map, np.where(span > 0, (up - lo) / np.where(span > 0, span, 1), 0),
          f"{type(net).__name__} Grad-CAM map (upsampling)")


def test_guided_backprop(case):
    net, model, x = case
    target = [1, 1, 2]
    ours = onnxviz.saliency(model, x, target=target, method="guided")
    close(ours.raw, torch_guided(net, x, target), f"{type(net).__name__} guided backprop")


def test_occlusion(case):
    net, model, x = case
    target = [2, 0, 4]
    ours = onnxviz.occlusion(model, x, target=target, window=6, stride=3, baseline=0.0, batch_size=16)
    close(ours.raw, torch_occlusion(net, x, target, 6, 3, 0.0), f"{type(net).__name__} occlusion")
