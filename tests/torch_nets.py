"""Small CNNs written in plain torch, the way people write them, for the torch parity tests.

Imported only when torch is installed. Each ``NETS`` entry builds an eval-mode network,
names the module whose output is the probed intermediate layer, and gives the input
shape (NCHW, or NHWC for the channels-last net, which permutes at its input as Keras
exports do). Weights are random; BatchNorm statistics are randomized too so that the
folded Conv+BN weights are not trivial.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

CLASSES = 10


def _conv_bn(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """ResNet basic block: conv-bn-relu-conv-bn + shortcut (1x1 conv when the shape changes), relu."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, stride=stride), nn.ReLU(), _conv_bn(cout, cout))
        self.short = _conv_bn(cin, cout, k=1, stride=stride) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.short(x))


class ResNetish(nn.Module):
    """Stem conv, max pool with ceil_mode, two residual blocks, global average pool, linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 16, stride=2), nn.ReLU())
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.block1 = BasicBlock(16, 16)
        self.block2 = BasicBlock(16, 32, stride=2)
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x):
        x = self.block2(self.block1(self.pool(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SqueezeExcite(nn.Module):
    """SE gate as in MobileNetV3: pool, 1x1 conv, ReLU, 1x1 conv, HardSigmoid, scale."""

    def __init__(self, c, r=4):
        super().__init__()
        self.reduce = nn.Conv2d(c, c // r, 1)
        self.expand = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(s))))


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 block: 1x1 expand + ReLU6, depthwise 3x3 + ReLU6, SE, 1x1 project, residual."""

    def __init__(self, c, expand=4, se=True):
        super().__init__()
        h = c * expand
        self.expand = nn.Sequential(_conv_bn(c, h, k=1), nn.ReLU6())
        self.depthwise = nn.Sequential(_conv_bn(h, h, groups=h), nn.ReLU6())
        self.se = SqueezeExcite(h) if se else nn.Identity()
        self.project = _conv_bn(h, c, k=1)

    def forward(self, x):
        return x + self.project(self.se(self.depthwise(self.expand(x))))


class MobileNetish(nn.Module):
    """HardSwish stem, inverted residuals with SE, average pool with ceil_mode, HardSwish head; ends in Softmax."""

    def __init__(self, softmax=True):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 8, stride=2), nn.Hardswish())
        self.block1 = InvertedResidual(8)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
        self.block2 = InvertedResidual(8)
        self.head = nn.Sequential(nn.Conv2d(8, 24, 1), nn.Hardswish())
        self.fc = nn.Linear(24, CLASSES)
        self.softmax = softmax

    def forward(self, x):
        x = self.head(self.block2(self.pool(self.block1(self.stem(x)))))
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return torch.softmax(logits, 1) if self.softmax else logits


class DenseUpNet(nn.Module):
    """PReLU stem, dense concatenations with LeakyReLU, ceil_mode pools, bilinear upsampling and a skip."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(8))
        self.dense1 = nn.Conv2d(8, 4, 3, padding=1)
        self.dense2 = nn.Conv2d(12, 4, 3, padding=1)
        self.down = nn.MaxPool2d(2, ceil_mode=True)
        self.mid = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.LeakyReLU(0.1))
        self.avg = nn.AvgPool2d(2, ceil_mode=True)
        self.fuse = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.PReLU())
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.dense1(F.leaky_relu(x, 0.2))], 1)
        x = torch.cat([x, self.dense2(F.leaky_relu(x, 0.2))], 1)
        skip = self.down(x)
        y = self.avg(self.mid(skip))
        y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        y = self.fuse(torch.cat([skip, y], 1))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


class ChannelsLastNet(nn.Module):
    """Takes NHWC images and permutes them at the input, as Keras/TF exports do."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU6(),
        )
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.fc = nn.Linear(16 * 16 * 16, CLASSES)

    def forward(self, x):
        x = self.up(self.features(x.permute(0, 3, 1, 2)))
        return self.fc(torch.flatten(x, 1))


@dataclass(frozen=True)
class Net:
    """A network factory, the dotted path of the probed module, and the input shape of one image."""

    build: Callable[[], nn.Module]
    probe: str
    shape: tuple  # one image, in the net's own layout
    layout: str = "NCHW"


NETS = {
    "resnet": Net(ResNetish, "block1", (3, 33, 33)),
    "mobilenet": Net(MobileNetish, "block2.se", (3, 30, 30)),
    "denseup": Net(DenseUpNet, "mid", (3, 19, 21)),
    "channels_last": Net(ChannelsLastNet, "features.4", (32, 32, 3), "NHWC"),
}


def build(name: str, seed: int = 0) -> nn.Module:
    """The network in eval mode with random weights and random BatchNorm statistics."""
    torch.manual_seed(seed)
    net = NETS[name].build()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.3)
    return net.eval()


class Probed(nn.Module):
    """Returns (output, probed module's output) so the export names the probed tensor."""

    def __init__(self, net: nn.Module, probe: str):
        super().__init__()
        self.net = net
        self.seen = []
        net.get_submodule(probe).register_forward_hook(lambda _m, _i, out: self.seen.append(out))

    def forward(self, x):
        self.seen.clear()
        y = self.net(x)
        return y, self.seen[-1]


def export(name: str, opset: int, seed: int = 0) -> bytes:
    """ONNX bytes of the net with outputs "output" and "probe" (the probed layer), dynamic batch."""
    spec = NETS[name]
    net = Probed(build(name, seed), spec.probe)
    x = torch.randn(2, *spec.shape)
    buf = io.BytesIO()
    torch.onnx.export(net, (x,), buf, opset_version=opset, dynamo=False, input_names=["input"],
                      output_names=["output", "probe"],
                      dynamic_axes={"input": {0: "N"}, "output": {0: "N"}, "probe": {0: "N"}})
    return buf.getvalue()


def torch_gradients(name: str, x, target, seed: int = 0):
    """(logits, d logit/d input, d logit/d probed layer) by autograd; logit = pre-softmax score of ``target``."""
    spec = NETS[name]
    net = build(name, seed)
    layer = []

    def keep(_m, _i, out):
        out.retain_grad()
        layer.append(out)

    net.get_submodule(spec.probe).register_forward_hook(keep)
    xt = torch.tensor(x, requires_grad=True)
    if isinstance(net, MobileNetish):
        net.softmax = False  # explain the pre-softmax logit
    logits = net(xt)
    idx = torch.as_tensor(target).reshape(-1, 1)
    logits.gather(1, idx).sum().backward()
    return logits.detach().numpy(), xt.grad.numpy(), layer[-1].grad.numpy()
