"""The four benchmark architectures in plain torch, exported to ONNX once into a cache folder.

    python scripts/bench_nets.py                 # writes $ONNXVIZ_BENCH_CACHE or /tmp/onnxviz-bench-nets
    python scripts/bench_nets.py --list

ResNet-50, MobileNetV2, EfficientNet-B0, DenseNet-121 and MobileNetV3-Large (HardSwish, and
squeeze-excite gates through HardSigmoid) with torchvision's layer layout
(written out here: torchvision is not installable for every torch version) and random
weights with non-trivial BatchNorm statistics, exported at opset 17 with a dynamic batch.
torch is needed only to build the files; the benchmarks themselves load the cached ONNX.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

CACHE = Path(os.environ.get("ONNXVIZ_BENCH_CACHE", "/tmp/onnxviz-bench-nets"))
ARCHS = ("resnet50", "mobilenet_v2", "efficientnet_b0", "densenet121", "mobilenet_v3")


def path_of(name: str) -> Path:
    return CACHE / f"{name}.onnx"


def _nets():
    """Module definitions, imported lazily so that reading the cache never needs torch."""
    import torch
    from torch import nn

    def bn(c):
        m = nn.BatchNorm2d(c)
        with torch.no_grad():
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.1, 0.1)
        return m

    # ---- ResNet-50 (torchvision v1.5: stride in the 3x3)
    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            cout = width * 4
            self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), bn(width)
            self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), bn(width)
            self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), bn(cout)
            self.relu = nn.ReLU()
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), bn(cout))

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return self.relu(y + (x if self.down is None else self.down(x)))

    class ResNet50(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), bn(64), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
            layers, cin = [], 64
            for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
                for i in range(blocks):
                    layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
                    cin = width * 4
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(2048, 1000)

        def forward(self, x):
            x = self.layers(self.stem(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    class Residual(nn.Module):
        """body(x), plus x where the block keeps its shape."""

        def __init__(self, layers, residual):
            super().__init__()
            self.body = nn.Sequential(*layers)
            self.residual = residual

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    class PooledClassifier(nn.Module):
        """features, global average pool, classifier: the head every net here ends in."""

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))

    class SqueezeExcite(nn.Module):
        """x · gate(fc2(inner(fc1(mean_HW x)))): EfficientNet's SiLU/sigmoid, MobileNetV3's ReLU/HardSigmoid."""

        def __init__(self, c, squeeze, inner=nn.functional.silu, gate=torch.sigmoid):
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
            self.inner, self.gate = inner, gate

        def forward(self, x):
            s = nn.functional.adaptive_avg_pool2d(x, 1)
            return x * self.gate(self.fc2(self.inner(self.fc1(s))))

    # ---- MobileNetV2
    def conv_bn_act(cin, cout, k, stride, groups=1, act=nn.ReLU6):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), bn(cout)]
        if act is not None:
            layers.append(act())
        return nn.Sequential(*layers)

    class InvertedResidual(Residual):
        def __init__(self, cin, cout, stride, expand):
            hidden = cin * expand
            layers = [] if expand == 1 else [conv_bn_act(cin, hidden, 1, 1)]
            layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden), conv_bn_act(hidden, cout, 1, 1, act=None)]
            super().__init__(layers, stride == 1 and cin == cout)

    class MobileNetV2(PooledClassifier):
        def __init__(self):
            super().__init__()
            layers, cin = [conv_bn_act(3, 32, 3, 2)], 32
            for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                               (6, 160, 3, 2), (6, 320, 1, 1)):
                for i in range(n):
                    layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            layers.append(conv_bn_act(cin, 1280, 1, 1))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Linear(1280, 1000)

    # ---- EfficientNet-B0
    class MBConv(Residual):
        def __init__(self, cin, cout, k, stride, expand):
            hidden = cin * expand
            layers = [] if expand == 1 else [conv_bn_act(cin, hidden, 1, 1, act=nn.SiLU)]
            layers += [conv_bn_act(hidden, hidden, k, stride, groups=hidden, act=nn.SiLU),
                       SqueezeExcite(hidden, max(1, cin // 4)), conv_bn_act(hidden, cout, 1, 1, act=None)]
            super().__init__(layers, stride == 1 and cin == cout)

    class EfficientNetB0(PooledClassifier):
        def __init__(self):
            super().__init__()
            layers, cin = [conv_bn_act(3, 32, 3, 2, act=nn.SiLU)], 32
            for e, k, s, c, n in ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                                  (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)):
                for i in range(n):
                    layers.append(MBConv(cin, c, k, s if i == 0 else 1, e))
                    cin = c
            layers.append(conv_bn_act(cin, 1280, 1, 1, act=nn.SiLU))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Linear(1280, 1000)

    # ---- DenseNet-121
    class DenseLayer(nn.Module):
        def __init__(self, cin, growth=32, bn_size=4):
            super().__init__()
            self.body = nn.Sequential(bn(cin), nn.ReLU(), nn.Conv2d(cin, bn_size * growth, 1, bias=False),
                                      bn(bn_size * growth), nn.ReLU(),
                                      nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False))

        def forward(self, x):
            return torch.cat([x, self.body(x)], 1)

    class DenseNet121(PooledClassifier):
        def __init__(self):
            super().__init__()
            layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), bn(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
            c = 64
            for i, n in enumerate((6, 12, 24, 16)):
                for _ in range(n):
                    layers.append(DenseLayer(c))
                    c += 32
                if i < 3:
                    layers += [bn(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2, 2)]
                    c //= 2
            layers += [bn(c), nn.ReLU()]
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Linear(c, 1000)

    # ---- MobileNetV3-Large
    def divisible(v, d=8):  # torchvision's _make_divisible
        out = max(d, int(v + d / 2) // d * d)
        return out + d if out < 0.9 * v else out

    class V3Block(Residual):
        def __init__(self, cin, k, hidden, cout, se, act, stride):
            layers = [] if hidden == cin else [conv_bn_act(cin, hidden, 1, 1, act=act)]
            layers.append(conv_bn_act(hidden, hidden, k, stride, groups=hidden, act=act))
            if se:
                layers.append(SqueezeExcite(hidden, divisible(hidden // 4), nn.functional.relu,
                                            nn.functional.hardsigmoid))
            layers.append(conv_bn_act(hidden, cout, 1, 1, act=None))
            super().__init__(layers, stride == 1 and cin == cout)

    class MobileNetV3(PooledClassifier):
        def __init__(self):
            super().__init__()
            re, hs = nn.ReLU, nn.Hardswish
            layers, cin = [conv_bn_act(3, 16, 3, 2, act=hs)], 16
            for k, hidden, c, se, act, s in (
                    (3, 16, 16, False, re, 1), (3, 64, 24, False, re, 2), (3, 72, 24, False, re, 1),
                    (5, 72, 40, True, re, 2), (5, 120, 40, True, re, 1), (5, 120, 40, True, re, 1),
                    (3, 240, 80, False, hs, 2), (3, 200, 80, False, hs, 1), (3, 184, 80, False, hs, 1),
                    (3, 184, 80, False, hs, 1), (3, 480, 112, True, hs, 1), (3, 672, 112, True, hs, 1),
                    (5, 672, 160, True, hs, 2), (5, 960, 160, True, hs, 1), (5, 960, 160, True, hs, 1)):
                layers.append(V3Block(cin, k, hidden, c, se, act, s))
                cin = c
            layers.append(conv_bn_act(cin, 960, 1, 1, act=hs))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(nn.Linear(960, 1280), nn.Hardswish(), nn.Linear(1280, 1000))

    return {"resnet50": ResNet50, "mobilenet_v2": MobileNetV2, "efficientnet_b0": EfficientNetB0,
            "densenet121": DenseNet121, "mobilenet_v3": MobileNetV3}


def torch_net(name: str, seed: int = 0):
    """The eval-mode torch module whose export is ``path_of(name)`` (same seed, same weights)."""
    import torch

    torch.manual_seed(seed)
    return _nets()[name]().eval()


def build(name: str, force: bool = False) -> Path:
    """Export ``name`` into the cache unless it is there already; its path."""
    path = path_of(name)
    if path.exists() and not force:
        return path
    import torch

    net = torch_net(name)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.onnx.export(net, torch.zeros(1, 3, 224, 224), str(tmp), opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                      dynamo=False)
    os.replace(tmp, path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"some of {', '.join(ARCHS)} (default: all)")
    parser.add_argument("--force", action="store_true", help="export again even when cached")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args(argv)
    for name in args.names or ARCHS:
        print(build(name, args.force) if not args.list else path_of(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
