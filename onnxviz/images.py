"""Reading images and label files, and turning images into model input and back.

The model sees ``x = (pixel/255 - mean) / std`` per channel after a resize; ``Preprocess``
says which size, resize rule, mean/std and channel order, and ``Geometry`` maps model-input
pixels back to the original image.

>>> spec = InputSpec("input", "NCHW", 3, 224, 224, np.dtype("float32"))
>>> x = preprocess([read_image("cat.jpg")], spec, Preprocess.from_options(norm="imagenet"))
"""
from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, OnnxvizError
from .io import check_memory, protect, regular_file
from .spec import InputSpec

# Presets in 0-255 units and RGB order (as the frameworks' docs give them), and their
# channel order. "caffe" is Keras/Caffe style: BGR, ImageNet mean subtracted, no scaling.
NORMS = {
    "imagenet": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), False),
    "unit": ((0.0,), (255.0,), False),
    "symmetric": ((127.5,), (127.5,), False),
    "raw": ((0.0,), (1.0,), False),
    "caffe": ((123.68, 116.779, 103.939), (1.0,), True),
}
_ALIASES = {"torch": "imagenet", "tf": "symmetric"}  # Keras preprocess_input mode names
RESIZES = ("shorter", "stretch")
GRAYSCALES = ("luma", "mean")
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, what PIL's convert("L") uses

Box = tuple[float, float, float, float]  # (left, top, right, bottom), pixel edges


@dataclass(frozen=True)
class Preprocess:
    """How images become model input: resize, then ``x = (pixel/255 - mean) / std``.

    ``norm``: "imagenet" (torchvision mean/std on [0,1]), "unit" ([0,1]), "symmetric" ([-1,1]),
    "raw" (0-255), "caffe" (BGR 0-255 minus the ImageNet mean) or "custom", where ``mean`` and
    ``std`` are in 0-1 units, one value or one per channel in the model's channel order (BGR
    when ``bgr``). ``from_options`` also takes them in 0-255 units (``scale=255``).
    ``resize``: "shorter" scales the image to cover ``size`` keeping its aspect, then
    center-crops; "stretch" resizes to ``size``. ``crop`` < 1 resizes to ``size/crop`` first
    (0.875 = torchvision's Resize(256) + CenterCrop(224)). ``bgr`` None takes the preset's
    order. ``grayscale``: how colour images become 1 channel, "luma" or "mean".

    >>> Preprocess.from_options(mean=(104, 117, 123), scale=255, bgr=True, size=227)
    """

    size: Optional[tuple[int, int]] = None
    resize: str = "shorter"
    crop: float = 1.0
    norm: str = "imagenet"
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    bgr: Optional[bool] = None
    grayscale: str = "luma"

    def __post_init__(self):
        def set_(field, value):  # the dataclass is frozen; normalize fields once, here
            object.__setattr__(self, field, value)

        set_("size", _parse_size(self.size))
        if self.resize not in RESIZES:
            raise ImageError(f"resize {self.resize!r}: expected one of {', '.join(RESIZES)}")
        if self.grayscale not in GRAYSCALES:
            raise ImageError(f"grayscale {self.grayscale!r}: expected one of {', '.join(GRAYSCALES)}")
        if not 0 < self.crop <= 1:
            raise ImageError(f"crop {self.crop!r}: expected a fraction in (0, 1]")
        if self.norm == "custom":
            if self.mean is None or self.std is None:
                raise ImageError("norm='custom' needs both mean and std")
            set_("mean", _floats(self.mean, "mean"))
            set_("std", _floats(self.std, "std"))
            if min(self.std) <= 0:
                raise ImageError(f"std {self.std}: every value must be positive")
            if max(abs(m) for m in self.mean) > 1:
                raise ImageError(f"mean {self.mean} is in 0-1 units here; values above 1 look like "
                                 "0-255 units: pass scale=255 (--scale 255)")
        elif self.norm in NORMS:
            if self.mean is not None or self.std is not None:
                raise ImageError(f"mean/std go with norm='custom', not with the {self.norm!r} preset")
        else:
            raise ImageError(f"norm {self.norm!r}: expected one of {', '.join([*NORMS, 'custom'])}")
        if self.bgr is None:
            set_("bgr", self.norm in NORMS and NORMS[self.norm][2])

    @classmethod
    def from_options(cls, norm=None, mean=None, std=None, scale=1, resize="shorter", crop=1.0,
                     bgr=None, size=None, grayscale="luma") -> "Preprocess":
        """Build from user options; giving mean/std implies norm="custom".

        ``mean``/``std``: numbers, sequences or "0.5,0.5,0.5" strings, in 0-1 units, or in
        0-255 units with ``scale=255``; a missing one defaults to 0 (mean) or 1 (std).
        ``size``: 224, "224x160" (height first) or (224, 160).
        """
        norm = _ALIASES.get(norm.lower(), norm.lower()) if norm is not None else None
        custom = mean is not None or std is not None
        norm = norm or ("custom" if custom else "imagenet")
        if norm == "custom":
            if not custom:
                raise ImageError("norm='custom' needs mean and/or std")
            if scale not in (1, 255):
                raise ImageError(f"scale {scale!r}: expected 1 (values on 0-1) or 255 (on 0-255)")
            mean = _floats(mean if mean is not None else 0.0, "mean")
            std = _floats(std if std is not None else 1.0, "std")
            mean = tuple(m / scale for m in mean)
            std = tuple(s / scale for s in std)
        elif custom:
            raise ImageError(f"mean/std go with norm='custom', not with the {norm!r} preset")
        return cls(size=size, resize=resize, crop=crop, norm=norm, mean=mean, std=std,
                   bgr=bgr, grayscale=grayscale)

    def stats(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (mean, std) in 0-255 units, in the model's channel order."""
        if self.norm == "custom":
            mean, std = np.array(self.mean) * 255, np.array(self.std) * 255
            for name, v in (("mean", mean), ("std", std)):
                if len(v) not in (1, channels):
                    raise ImageError(f"{name} has {len(v)} values but the model takes "
                                     f"{channels} channel(s)")
        else:
            mean, std = (np.array(v, dtype=float) for v in NORMS[self.norm][:2])
            if channels == 1:  # grey model: the average of the RGB statistics
                mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
            elif self.bgr:
                mean, std = mean[::-1], std[::-1]
        return np.broadcast_to(mean, (channels,)), np.broadcast_to(std, (channels,))


def _floats(v, name: str) -> tuple[float, ...]:
    if isinstance(v, str):
        v = [s for s in re.split(r"[,\s]+", v.strip()) if s]
    try:
        out = tuple(float(x) for x in np.atleast_1d(v))
    except (TypeError, ValueError):
        raise ImageError(f"{name} {v!r}: expected numbers") from None
    if len(out) not in (1, 3) or not all(math.isfinite(x) for x in out):
        raise ImageError(f"{name} {v!r}: expected 1 or 3 finite numbers (one per channel)")
    return out


def _parse_size(size) -> Optional[tuple[int, int]]:
    if size is None:
        return None
    parts = re.split(r"[x,\s]+", size.strip().lower()) if isinstance(size, str) else np.atleast_1d(size)
    try:
        hw = tuple(int(p) for p in parts)
        ok = len(hw) in (1, 2) and min(hw) > 0 and all(float(p) == int(p) for p in parts)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ImageError(f"size {size!r}: expected N, HxW (height first) or (H, W), positive integers")
    return (hw[0], hw[-1])


# ----------------------------------------------------------------------------- geometry

@dataclass(frozen=True)
class Geometry:
    """How one original image became model input: resized to ``resized``, cropped at ``offset``.

    Sizes are (height, width); ``offset`` is the (top, left) of the crop in the resized image.

    >>> g = Geometry.fit((480, 640), (240, 240), "shorter")  # resized to 240x320, 40 px cut each side
    >>> g.to_original((0, 0, 240, 240))  # the part of the original the model saw
    (80.0, 0.0, 560.0, 480.0)
    """

    original: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]
    size: tuple[int, int]

    @classmethod
    def fit(cls, original: tuple[int, int], size: tuple[int, int], resize: str = "shorter",
            crop: float = 1.0) -> "Geometry":
        (h, w), (th, tw) = original, size
        if resize == "stretch":
            rh, rw = round(th / crop), round(tw / crop)
        elif th / h >= tw / w:  # the height is the tight side: fix it, scale the width along
            rh = round(th / crop)  # (truncating the other side, as torchvision's Resize does)
            rw = max(tw, int(rh * w / h))
        else:
            rw = round(tw / crop)
            rh = max(th, int(rw * h / w))
        offset = (int(round((rh - th) / 2.0)), int(round((rw - tw) / 2.0)))
        return cls((h, w), (rh, rw), offset, (th, tw))

    @property
    def scale(self) -> tuple[float, float]:
        """(sy, sx): resized size over original size."""
        return self.resized[0] / self.original[0], self.resized[1] / self.original[1]

    def to_original(self, box: Box, clip: bool = True) -> Box:
        """A (left, top, right, bottom) box in model-input pixel edges, in original-image pixels."""
        (sy, sx), (top, left) = self.scale, self.offset
        x0, y0, x1, y1 = box
        out = ((x0 + left) / sx, (y0 + top) / sy, (x1 + left) / sx, (y1 + top) / sy)
        if clip:
            h, w = self.original
            out = (min(max(out[0], 0.0), w), min(max(out[1], 0.0), h),
                   min(max(out[2], 0.0), w), min(max(out[3], 0.0), h))
        return out

    def crop(self, image: Image.Image, box: Box) -> Image.Image:
        """The patch of the original ``image`` under a model-input box (rounded outward)."""
        x0, y0, x1, y1 = self.to_original(box)
        x0, y0 = math.floor(x0), math.floor(y0)
        return image.crop((x0, y0, max(math.ceil(x1), x0 + 1), max(math.ceil(y1), y0 + 1)))


def input_size(images: Sequence[Image.Image], spec: InputSpec, pre: Preprocess) -> tuple[int, int]:
    """The (height, width) the images will have as model input."""
    fixed = (spec.height, spec.width)
    if pre.size is not None:
        for got, want, what in zip(pre.size, fixed, ("height", "width")):
            if want is not None and got != want:
                raise ImageError(f"size {pre.size[0]}x{pre.size[1]} does not fit model input "
                                 f"{spec.name!r}, whose {what} is fixed at {want}")
        return pre.size
    if spec.size is not None:
        return spec.size
    sizes = sorted({(im.height, im.width) for im in images})
    if len(sizes) > 1:
        shown = ", ".join(f"{h}x{w}" for h, w in sizes[:4])
        raise ImageError(f"model input {spec.name!r} has a dynamic size and the images differ "
                         f"({shown}): pick one with --size HxW (size=(h, w))")
    h, w = sizes[0]
    return (spec.height or h, spec.width or w)


def geometries(images: Sequence[Image.Image], spec: InputSpec, pre: Preprocess) -> list[Geometry]:
    """For each image, how ``preprocess`` maps it to model input."""
    size = input_size(images, spec, pre)
    return [Geometry.fit((im.height, im.width), size, pre.resize, pre.crop) for im in images]


# ----------------------------------------------------------------------------- reading

def read_image(path: Union[str, Path], background: int = 255) -> Image.Image:
    """Read an image file as a fully decoded, upright (EXIF) RGB or L (grey) PIL image.

    Transparent images are composited on grey level ``background`` (255 = white); 16-bit and
    float images are scaled to 8 bits (see ``to_rgb_or_l``).
    """
    p = Path(path)
    if not p.exists():
        raise ImageError(f"image file not found: {p}")
    if p.is_dir():
        raise ImageError(f"{p} is a folder, not an image file")
    try:
        regular_file(p, "image file")  # a FIFO or device would block the read forever
    except OnnxvizError as e:
        raise ImageError(str(e)) from None
    protect(p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as f:
                f.load()  # decode everything now: truncated files fail here, not later
                im = ImageOps.exif_transpose(f)  # a copy that outlives the file
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{p} is too large to open safely ({e}). If you trust it, raise "
                         "PIL.Image.MAX_IMAGE_PIXELS or shrink the image first") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{p} is not an image file that Pillow can read") from e
    except PermissionError as e:
        raise ImageError(f"cannot read {p}: permission denied") from e
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError... for bad data
        raise ImageError(f"{p} is corrupt or truncated and cannot be decoded: {e}") from e
    try:
        return to_rgb_or_l(im, background)
    except ImageError as e:
        raise ImageError(f"{p}: {e}") from e


def to_rgb_or_l(im: Image.Image, background: int = 255) -> Image.Image:
    """Convert any PIL mode to RGB, or L for grey modes.

    Alpha is composited on ``background``; 16-bit integers are scaled by 255/65535; "I" images
    outside 0-65535 and "F" images outside [0, 1] are min-max stretched.
    """
    mode = im.mode
    if mode in ("RGB", "L"):
        return im
    if mode == "1":
        return im.convert("L")
    if mode == "P":
        return to_rgb_or_l(im.convert("RGBA" if "transparency" in im.info else "RGB"), background)
    if mode in ("PA", "RGBa", "La"):
        return to_rgb_or_l(im.convert("LA" if mode == "La" else "RGBA"), background)
    if mode in ("RGBA", "LA"):
        a = np.asarray(im, dtype=np.float64)
        alpha = a[..., -1:] / 255.0
        out = a[..., :-1] * alpha + background * (1.0 - alpha)
        return Image.fromarray(np.rint(out).astype(np.uint8).squeeze(-1) if mode == "LA"
                               else np.rint(out).astype(np.uint8))
    if mode.startswith("I") or mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        lo, hi = float(a.min()), float(a.max())
        if mode == "F" and lo >= 0 and hi <= 1:
            lo, hi = 0.0, 1.0
        elif mode != "F" and lo >= 0 and hi <= 65535:
            lo, hi = 0.0, 65535.0
        out = (a - lo) / ((hi - lo) or 1.0) * 255.0
        return Image.fromarray(np.rint(out).astype(np.uint8))
    try:
        return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX
    except (ValueError, OSError) as e:
        raise ImageError(f"unsupported image mode {mode!r}") from e


# ----------------------------------------------------------------------------- model input

def preprocess(images: Sequence[Image.Image], spec: InputSpec,
               pre: Preprocess = Preprocess()) -> np.ndarray:
    """A batch of PIL images as model input: resized, normalized, in the model's layout and dtype.

    >>> x = preprocess([read_image("cat.jpg")], spec, Preprocess(size=(224, 224)))
    """
    images = [images] if isinstance(images, Image.Image) else list(images)
    if not images:
        raise ImageError("no images to preprocess")
    _check_channels(spec)
    dtype = np.dtype(spec.dtype)
    if dtype.kind in "iu" and pre.norm not in ("raw", "custom"):
        raise ImageError(f"model input {spec.name!r} takes {dtype} pixels: use norm='raw' "
                         f"(--norm raw), not {pre.norm!r}")
    mean, std = pre.stats(spec.channels)
    work = np.float64 if dtype.kind in "iu" or dtype == np.float64 else np.float32
    mean, std = mean.astype(work), std.astype(work)
    geoms = geometries(images, spec, pre)
    h, w = geoms[0].size
    check_memory(len(images) * h * w * spec.channels * np.dtype(work).itemsize,
                 f"a batch of {len(images)} image(s) of {h}x{w}x{spec.channels}")
    out = np.empty((len(images), h, w, spec.channels), work)
    # One image at a time into one buffer: a float64 batch in flight costs 2-10x more.
    for i, (im, g) in enumerate(zip(images, geoms)):
        pixels = _pixels(im, g, spec.channels, pre).astype(work, copy=False)
        if spec.channels == 3 and pre.bgr:
            pixels = pixels[..., ::-1]
        np.subtract(pixels, mean, out=out[i])
        out[i] /= std
    x = spec.from_nchw(out.transpose(0, 3, 1, 2))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        x = np.clip(np.rint(x), info.min, info.max)
    return np.ascontiguousarray(x, dtype=dtype)


def _check_channels(spec: InputSpec) -> None:
    if spec.channels not in (1, 3):
        raise ImageError(f"model input {spec.name!r} has {spec.channels} channels; onnxviz feeds "
                         "images as 1 (grey) or 3 (RGB/BGR) channels")


def _pixels(im: Image.Image, g: Geometry, channels: int, pre: Preprocess) -> np.ndarray:
    """One image resized and cropped, as float (H, W, channels) on 0-255, RGB order."""
    im = to_rgb_or_l(im)
    if (im.height, im.width) != g.resized:
        im = im.resize((g.resized[1], g.resized[0]), Image.BILINEAR)
    (top, left), (h, w) = g.offset, g.size
    if (top, left) != (0, 0) or g.resized != g.size:
        im = im.crop((left, top, left + w, top + h))
    if channels == 3:
        return np.asarray(im.convert("RGB"), dtype=np.float64)
    a = np.asarray(im, dtype=np.float64)
    if a.ndim == 3:
        a = a @ _LUMA if pre.grayscale == "luma" else a.mean(axis=-1)
    return a[..., None]


def deprocess(x: np.ndarray, spec: InputSpec, pre: Preprocess = Preprocess()) -> np.ndarray:
    """Model input back to displayable uint8 RGB images (N, H, W, 3), clipped to 0-255.

    Undoes the normalization, BGR order and layout; grey inputs are repeated to 3 channels.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 4:
        raise ImageError(f"expected a batch (4-D {spec.layout}), got shape {x.shape}")
    nhwc = spec.to_nchw(x).transpose(0, 2, 3, 1)
    c = nhwc.shape[-1]
    if c != spec.channels:
        raise ImageError(f"batch has {c} channels along {spec.layout}'s C axis; "
                         f"model input {spec.name!r} has {spec.channels}")
    mean, std = pre.stats(c)
    p = nhwc * std + mean
    if c == 3 and pre.bgr:
        p = p[..., ::-1]
    if c == 1:
        p = np.repeat(p, 3, axis=-1)
    return np.clip(np.rint(p), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- labels

def load_labels(path: Union[str, Path]) -> list[str]:
    """Class names by output index, from a text file (one per line) or JSON.

    JSON may be a list, ``{"0": "tench"}``, ImageNet's ``{"0": ["n01440764", "tench"]}`` or
    Keras' ``{"tench": 0}``; gaps in the indices become "class <i>".
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise OnnxvizError(f"label file not found: {p}") from None
    except IsADirectoryError:
        raise OnnxvizError(f"{p} is a folder, not a label file") from None
    except UnicodeDecodeError:
        raise OnnxvizError(f"label file {p} is not UTF-8 text") from None
    except OSError as e:
        raise OnnxvizError(f"cannot read label file {p}: {e}") from e
    stripped = text.lstrip()
    if p.suffix.lower() == ".json" or stripped[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if p.suffix.lower() == ".json":
                raise OnnxvizError(f"label file {p} is not valid JSON: {e}") from e
        else:
            return _labels_from_json(data, p)
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise OnnxvizError(f"label file {p} is empty")
    return lines


def _labels_from_json(data, p: Path) -> list[str]:
    def name(v) -> str:
        if isinstance(v, (list, tuple)) and v and all(isinstance(s, str) for s in v):
            return v[-1]  # ["n01440764", "tench"]: the human-readable part
        if isinstance(v, (str, int, float)) and not isinstance(v, bool):
            return str(v)
        raise OnnxvizError(f"label file {p}: cannot read a label from {v!r}")

    if isinstance(data, list):
        labels = [name(v) for v in data]
    elif isinstance(data, dict):
        names_to_indices = all(_index(k) is None and _index(v) is not None for k, v in data.items())
        if data and names_to_indices:  # Keras class_indices: {"cat": 0}
            data = {v: k for k, v in data.items()}
        by_index = {}
        for k, v in data.items():
            i = _index(k)
            if i is None or i < 0:
                raise OnnxvizError(f"label file {p}: key {k!r} is not a class index (0, 1, ...)")
            by_index[i] = name(v)
        labels = [by_index.get(i, f"class {i}") for i in range(max(by_index) + 1)] if by_index else []
    else:
        raise OnnxvizError(f"label file {p}: expected a JSON list or object, got {type(data).__name__}")
    if not labels:
        raise OnnxvizError(f"label file {p} holds no labels")
    return labels


def _index(k) -> Optional[int]:
    if isinstance(k, bool):
        return None
    if isinstance(k, int):
        return k
    if isinstance(k, str) and re.fullmatch(r"\s*-?\d+\s*", k):
        return int(k)
    return None
