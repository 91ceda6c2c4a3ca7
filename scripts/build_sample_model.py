"""Train the bundled sample model on procedural shapes and export it to ONNX.

    python scripts/build_sample_model.py                       # writes models/, about 5 minutes on 2 CPU cores
    python scripts/build_sample_model.py --quick --out /tmp/m  # smoke run, seconds, no quality checks

The network is conv(3x3)+BatchNorm+ReLU blocks with max-pool downsampling, global
average pooling, one linear layer and a final softmax, so CAM applies and the
"explain the pre-softmax logit" path of onnxviz is exercised. It expects NCHW
float32 RGB in [0, 1], normalized with the ImageNet mean and std.

Needs torch (build time only; onnxviz itself never imports it) and onnxruntime.
"""
from __future__ import annotations

import argparse
import json
import sys
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from onnxviz.synthetic import CLASSES, make_shapes  # noqa: E402

NAME = "shapes_cnn"
SIZE = 64
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
# Disjoint seeds: training, held-out test, pointing game, bundled sample images.
SEED_TRAIN, SEED_TEST, SEED_POINTING, SEED_SAMPLES = 0, 1001, 1002, 2024
MIN_ACCURACY, MIN_POINTING, MAX_DIFF = 0.97, 0.90, 1e-4


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "models", help="output folder (default: models/)")
    parser.add_argument("--quick", action="store_true", help="tiny data, 1 epoch, skip the quality thresholds")
    parser.add_argument("--train", type=int, default=24000, help="training images")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.quick:
        args.train, args.epochs = 600, 1

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED_TRAIN)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()

    model = train(make_shapes(args.train, SIZE, seed=SEED_TRAIN), args.epochs)
    train_s = time.perf_counter() - start
    print(f"trained in {train_s:.0f} s")

    # Export and check in a scratch folder: a failed build leaves --out untouched.
    with tempfile.TemporaryDirectory() as scratch:
        trial = Path(scratch) / f"{NAME}.onnx"
        export(model, trial)
        session = ort.InferenceSession(str(trial), providers=["CPUExecutionProvider"])
        accuracy, pointing, failures = check(model, session, args.quick)
        if failures:
            for failure in failures:
                print(f"FAILED: {failure}", file=sys.stderr)
            print(f"nothing written to {args.out}", file=sys.stderr)
            return 1
        args.out.mkdir(parents=True, exist_ok=True)
        onnx_path = args.out / f"{NAME}.onnx"
        shutil.copyfile(trial, onnx_path)

    write_metadata(args.out, accuracy, pointing)
    write_samples(args.out / "images", session)
    graph = onnx.load(str(onnx_path)).graph
    print(f"ops: {' '.join(node.op_type for node in graph.node)}")
    print(f"{onnx_path}: {onnx_path.stat().st_size / 1024:.0f} KiB; total {time.perf_counter() - start:.0f} s")
    return 0


def check(model: "ShapesCNN", session, quick: bool):
    """Print and test parity, held-out accuracy and the pointing game; return them and failures."""
    n_test, n_point = (200, 50) if quick else (1000, 200)
    diff = max_difference(model, session, make_shapes(64, SIZE, seed=SEED_TEST + 7))
    accuracy = test_accuracy(session, make_shapes(n_test, SIZE, seed=SEED_TEST))
    point_data = make_shapes(n_point, SIZE, seed=SEED_POINTING)
    hits = pointing_hits(model, point_data)
    pointing = float(hits.mean())
    print(f"onnxruntime vs torch max abs diff: {diff:.2e}")
    print(f"held-out accuracy ({n_test} images, onnxruntime): {accuracy:.4f}")
    print(f"Grad-CAM pointing game ({n_point} images, last conv): {pointing:.4f} "
          f"({', '.join(f'{c} {hits[point_data.labels == k].mean():.2f}' for k, c in enumerate(CLASSES))})")

    failures = []
    if diff >= MAX_DIFF:
        failures.append(f"onnxruntime differs from torch by {diff:.2e} (limit {MAX_DIFF})")
    if not quick and accuracy < MIN_ACCURACY:
        failures.append(f"held-out accuracy {accuracy:.4f} < {MIN_ACCURACY}")
    if not quick and pointing < MIN_POINTING:
        failures.append(f"pointing game {pointing:.4f} < {MIN_POINTING}")
    return accuracy, pointing, failures


class ShapesCNN(nn.Module):
    """conv-BN-ReLU blocks 16-32-64-96, 64x64 -> 8x8, then GAP, Linear, Softmax."""

    def __init__(self, classes: int = len(CLASSES), widths=(16, 32, 64, 96)):
        super().__init__()
        layers, c_in = [], 3
        for i, c_out in enumerate(widths):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # exports as GlobalAveragePool
        self.fc = nn.Linear(c_in, classes)
        self.softmax = nn.Softmax(dim=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.softmax(self.logits(x))


def preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC RGB -> ImageNet-normalized float32 NCHW, as the ONNX model expects."""
    x = (images.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def train(data, epochs: int, batch: int = 128, lr: float = 3e-3) -> ShapesCNN:
    x, y = preprocess(data.images), torch.from_numpy(data.labels)
    model = ShapesCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    order_rng = torch.Generator().manual_seed(SEED_TRAIN)
    for epoch in range(epochs):
        model.train()
        t0, total, correct, seen = time.perf_counter(), 0.0, 0, 0
        order = torch.randperm(len(x), generator=order_rng)
        for i in range(len(x) // batch):
            idx = order[i * batch:(i + 1) * batch]
            xb, yb = augment(x[idx], order_rng), y[idx]
            logits = model.logits(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / seen:.4f}, train acc {correct / seen:.4f}, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    return model.eval()


def augment(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flips and 90-degree turns: every class is invariant to them."""
    k = int(torch.randint(4, (1,), generator=gen))
    xb = torch.rot90(xb, k, dims=(2, 3))
    if torch.rand(1, generator=gen).item() < 0.5:
        xb = torch.flip(xb, dims=(3,))
    return xb


def export(model: ShapesCNN, path: Path) -> None:
    # The legacy TorchScript exporter: it names inputs and dynamic axes as asked and
    # emits plain Conv/Relu/MaxPool/GlobalAveragePool/Gemm. It warns that it is legacy.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        _export(model, path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def _export(model: ShapesCNN, path: Path) -> None:
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, SIZE, SIZE),),
        str(path),
        opset_version=17,
        dynamo=False,
        input_names=["image"],
        output_names=["prob"],
        dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "prob": {0: "batch"}},
    )


def run_onnx(session: ort.InferenceSession, images: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([
        session.run(["prob"], {"image": preprocess(images[i:i + batch]).numpy()})[0]
        for i in range(0, len(images), batch)
    ])


def max_difference(model: ShapesCNN, session, data) -> float:
    """Largest |onnxruntime - torch| over the probabilities, at 64x64 and at another size."""
    worst = 0.0
    for images in (data.images, make_shapes(8, 96, seed=SEED_TEST + 8).images):
        with torch.no_grad():
            expected = model(preprocess(images)).numpy()
        worst = max(worst, float(np.abs(run_onnx(session, images) - expected).max()))
    return worst


def test_accuracy(session, data) -> float:
    return float((run_onnx(session, data.images).argmax(1) == data.labels).mean())


def pointing_hits(model: ShapesCNN, data) -> np.ndarray:
    """Per image: does the Grad-CAM peak (last conv, true-class logit) lie in the object's box?"""
    last_relu = [m for m in model.features if isinstance(m, nn.ReLU)][-1]
    kept = {}
    handle = last_relu.register_forward_hook(lambda m, i, out: kept.update(a=out))
    x = preprocess(data.images)
    logits = model.logits(x)
    handle.remove()
    target = logits.gather(1, torch.from_numpy(data.labels)[:, None]).sum()
    (grads,) = torch.autograd.grad(target, kept["a"])
    weights = grads.mean((2, 3), keepdim=True)
    cam = F.relu((weights * kept["a"]).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0].detach().numpy()
    peak = cam.reshape(len(cam), -1).argmax(1)
    py, px = np.divmod(peak, SIZE)
    x0, y0, x1, y1 = data.boxes.T
    return (px >= x0) & (px < x1) & (py >= y0) & (py < y1)


def write_metadata(out: Path, accuracy: float, pointing: float) -> None:
    (out / f"{NAME}.labels.txt").write_text("".join(f"{name}\n" for name in CLASSES))
    meta = {
        "preprocess": {"norm": "imagenet", "resize": "stretch", "size": [SIZE, SIZE]},
        "labels": f"{NAME}.labels.txt",
        "source": "scripts/build_sample_model.py",
        "test_accuracy": round(accuracy, 4),
        "pointing_game": round(pointing, 4),
    }
    (out / f"{NAME}.json").write_text(json.dumps(meta, indent=2) + "\n")


def write_samples(folder: Path, session) -> None:
    """One image per class, first of its class in a seed no training used; plus boxes.json."""
    folder.mkdir(parents=True, exist_ok=True)
    data = make_shapes(4 * len(CLASSES), SIZE, seed=SEED_SAMPLES)
    first = [int(np.flatnonzero(data.labels == k)[0]) for k in range(len(CLASSES))]
    pred = run_onnx(session, data.images[first]).argmax(1)
    boxes = {}
    for i, guess in zip(first, pred):
        name = f"{CLASSES[data.labels[i]]}_0.png"
        Image.fromarray(data.images[i]).save(folder / name)
        boxes[name] = {"box": [int(v) for v in data.boxes[i]], "class": CLASSES[data.labels[i]]}
        print(f"sample {name}: box {boxes[name]['box']}, predicted {CLASSES[guess]}")
    (folder / "boxes.json").write_text(json.dumps(boxes, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
