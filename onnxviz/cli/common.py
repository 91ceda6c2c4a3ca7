"""Options shared by the commands, and the glue from paths to a model and a batch."""
from __future__ import annotations

import functools
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import click
import numpy as np

from ..errors import OnnxvizError
from ..images import NORMS, RESIZES, Preprocess, geometries, load_labels, preprocess, read_image
from ..model import load
from ..runtime import DEVICES
from ..spec import LAYOUTS

log = logging.getLogger("onnxviz")


def handle_errors(fn):
    """Turn onnxviz errors into clean one-line CLI errors; Ctrl-C exits quietly with status 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OnnxvizError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted; nothing partial was written", err=True)
            sys.exit(130)

    return wrapper


class SizeType(click.ParamType):
    """224 or 224x160 (height x width)."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, tuple):
            return value
        parts = str(value).lower().replace(",", "x").split("x")
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            self.fail(f"{value!r} is not a size like 224 or 224x160", param, ctx)
        if len(dims) == 1:
            dims = dims * 2
        if len(dims) != 2 or min(dims) <= 0:
            self.fail(f"{value!r} is not a size like 224 or 224x160", param, ctx)
        return dims


def model_options(fn):
    """--device, --threads, --layout, --size."""
    options = [
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                     help="Where onnxruntime runs: auto = CUDA when onnxruntime-gpu sees a GPU."),
        click.option("--threads", type=click.IntRange(1), default=None, help="onnxruntime intra-op threads."),
        click.option("--layout", type=click.Choice(LAYOUTS), default=None,
                     help="Override the detected input layout."),
        click.option("--size", type=SizeType(), default=None,
                     help="Input size HxW (required for some dynamic-size models; default: the model's)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def preprocess_options(fn):
    """--norm, --mean, --std, --scale, --resize, --crop, --bgr/--rgb, --labels."""
    options = [
        click.option("--norm", type=click.Choice([*NORMS, "custom"]),
                     default=None, help="Normalization preset (default: the model's sidecar JSON, else imagenet)."),
        click.option("--mean", default=None, help="Custom per-channel mean, e.g. 0.5,0.5,0.5 (implies --norm custom)."),
        click.option("--std", default=None, help="Custom per-channel std (implies --norm custom)."),
        click.option("--scale", type=click.Choice(["1", "255"]), default="1", show_default=True,
                     help="Units of --mean/--std: 1 for 0-1 values, 255 for 0-255."),
        click.option("--resize", type=click.Choice(RESIZES), default=None,
                     help="shorter: resize the shorter side and center-crop; stretch: plain resize."),
        click.option("--crop", type=click.FloatRange(0.1, 1.0), default=None,
                     help="Center-crop fraction (0.875 = Resize(256)+CenterCrop(224))."),
        click.option("--bgr/--rgb", default=None, help="Channel order the model expects."),
        click.option("--labels", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Class names: text (one per line) or JSON."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def sidecar(model_path: str) -> dict:
    """Settings shipped beside a model as <name>.json: {"preprocess": {...}, "labels": "file"}."""
    path = Path(model_path).with_suffix(".json")
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    if isinstance(data.get("labels"), str):
        data["labels"] = str(path.parent / data["labels"])
    return data


@dataclass
class Session:
    """A model loaded from CLI options, with its preprocessing and labels."""

    model: object
    pre: Preprocess
    labels: Optional[list]

    def label(self, k: int) -> str:
        if self.labels and 0 <= k < len(self.labels):
            return self.labels[k]
        return f"class {k}"

    def batch(self, paths: Sequence[str]):
        """Read and preprocess images: (x, originals, geometries)."""
        images = [read_image(p) for p in paths]
        return preprocess(images, self.model.input, self.pre), images, geometries(images, self.model.input, self.pre)


def open_session(model_path, device="auto", threads=None, layout=None, size=None, norm=None, mean=None,
                 std=None, scale="1", resize=None, crop=None, bgr=None, labels=None, verify=True, **_) -> Session:
    """Load the model and work out preprocessing from options, falling back on the sidecar JSON."""
    side = sidecar(model_path)
    pre_side = side.get("preprocess", {})
    height, width = size if size else (None, None)
    model = load(model_path, device=device, threads=threads, layout=layout, height=height, width=width,
                 verify=verify)
    for note in model.notes:
        log.info("%s", note)
    side_size = pre_side.get("size")
    pre = Preprocess.from_options(
        norm=norm or (None if (mean or std) else pre_side.get("norm")),
        mean=mean, std=std, scale=int(scale),
        resize=resize or pre_side.get("resize", "shorter"),
        crop=crop or pre_side.get("crop", 1.0),
        bgr=bgr if bgr is not None else pre_side.get("bgr"),
        size=size or (tuple(side_size) if side_size and model.input.size is None else None),
    )
    label_path = labels or side.get("labels")
    names = load_labels(label_path) if label_path else None
    return Session(model, pre, names)


def out_dir(path: Optional[str], default: str) -> Path:
    out = Path(path or default)
    out.mkdir(parents=True, exist_ok=True)
    return out
