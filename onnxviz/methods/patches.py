"""Maximally activating patches: the crops of a dataset that excite one channel of a layer most.

One pass over the images keeps, per channel, a running top-k of each image's strongest unit
(its value and position); no activations are held beyond the current batch. Each winner is
mapped back to the input through the layer's exact receptive field (``graph.analysis``) and
cropped from the original image with the preprocessing's resize/crop undone (``Geometry``).

Selectivity, used to pick channels with ``n_channels``: with ``m_c(x)`` the largest value of
channel c on image x, ``(mean of the top-k m_c − mean of m_c) / std of m_c`` over the dataset —
how many standard deviations the channel's best images stand above a typical one. It is
scale-free, works for signed (pre-ReLU) layers, and is 0 for a dead or constant channel.

>>> p = top_patches(model, "photos/", layer="relu_3", n_channels=4, top=16)
>>> [(c.channel, round(c.selectivity, 1), c.patches[0].value) for c in p.channels]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..datasets import Dataset, Skipped, scan_folder
from ..errors import OnnxvizError
from ..graph.analysis import ReceptiveField, receptive_field, spatial_axes
from ..images import Geometry, Preprocess, read_image
from .embed import progress_bar, fixed_size, read_batches
from .layers import layer_axes


@dataclass(frozen=True)
class Patch:
    """One top unit: its image, value and position, and the input region it sees.

    ``box`` is (y0, x0, y1, x1) in model-input pixels (half-open, clipped to the input);
    ``original_box`` (left, top, right, bottom) the same region in the original image;
    ``image`` the crop from the original (uint8 RGB), None if the file could not be re-read.
    """

    rank: int
    path: Path
    label: str
    value: float
    unit: tuple  # (i, j) in the layer's height/width
    box: tuple
    original_box: tuple
    image: Optional[np.ndarray] = field(default=None, repr=False)


@dataclass
class ChannelPatches:
    channel: int
    selectivity: float
    patches: list


@dataclass
class Patches:
    """Top patches of some channels of ``layer``; ``selectivity`` holds every channel's score."""

    layer: str
    rf: ReceptiveField
    input_size: tuple
    channels: list
    selectivity: np.ndarray
    images: int  # images that went through the model
    failures: list = field(default_factory=list)
    skipped: list = field(default_factory=list)


class RunningTopK:
    """Per channel, the ``k`` largest values seen and their keys; on ties the earlier one wins.

    ``update(values (C, m), keys (C, m, K))`` merges m new candidates per channel.
    """

    def __init__(self, channels: int, k: int, key_size: int):
        self.k = k
        self.values = np.full((channels, k), -np.inf)
        self.keys = np.full((channels, k, key_size), -1, np.int64)

    def update(self, values: np.ndarray, keys: np.ndarray):
        values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=-np.inf)
        c, m = values.shape
        if m > self.k:  # each channel's k best new candidates (stable: earlier ones win ties)
            candidates = np.argsort(-values, axis=1, kind="stable")[:, :self.k]
            candidates.sort(axis=1)  # back in arrival order, for the merge below
            values = np.take_along_axis(values, candidates, axis=1)
            keys = np.take_along_axis(keys, candidates[..., None], axis=1)
        all_values = np.concatenate([self.values, values], axis=1)
        all_keys = np.concatenate([self.keys, keys], axis=1)
        seq = np.broadcast_to(np.arange(all_values.shape[1]), all_values.shape)
        order = np.lexsort((seq, -all_values), axis=1)[:, :self.k]
        self.values = np.take_along_axis(all_values, order, axis=1)
        self.keys = np.take_along_axis(all_keys, order[..., None], axis=1)


class _Moments:
    """Running mean and standard deviation per channel (shifted sums, so no cancellation)."""

    def __init__(self):
        self.n, self.shift, self.s1, self.s2 = 0, None, 0.0, 0.0

    def update(self, x: np.ndarray):  # x: (n, C)
        x = np.asarray(x, np.float64)
        x = np.where(np.isfinite(x), x, 0.0)
        if self.shift is None:
            self.shift = x.mean(axis=0)
        d = x - self.shift
        self.n += len(x)
        self.s1 = self.s1 + d.sum(axis=0)
        self.s2 = self.s2 + (d * d).sum(axis=0)

    def mean_std(self):
        mean = self.s1 / self.n
        return self.shift + mean, np.sqrt(np.maximum(self.s2 / self.n - mean * mean, 0.0))


def selectivity(top_values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(mean of each row of ``top_values`` − mean) / std, 0 where std is ~0 (see the module docs)."""
    top = np.where(np.isfinite(top_values), top_values, np.nan)
    best = np.nanmean(top, axis=1) if top.size else np.zeros(len(mean))
    scale = np.maximum(np.abs(mean), 1.0) * 1e-6
    out = np.divide(best - mean, std, out=np.zeros_like(mean), where=std > scale)
    return np.nan_to_num(out)


def top_patches(model, folder: Union[str, Path, Dataset], layer: str, channels: Optional[Sequence[int]] = None,
                n_channels: Optional[int] = None, top: int = 16, pre: Optional[Preprocess] = None, *,
                distinct: bool = True, batch_size: int = 32, workers: int = 2, progress: bool = False,
                crops: bool = True) -> Patches:
    """The ``top`` most activating units of each chosen channel of ``layer`` over the images of ``folder``.

    Choose ``channels`` by index, or the ``n_channels`` most selective (default 8). With
    ``distinct`` (default) each image gives at most one patch per channel: its strongest unit
    (the first one in row-major order on ties); otherwise any unit of any image competes.
    ``crops=False`` skips re-reading the winners' images.
    """
    if top < 1:
        raise OnnxvizError(f"top must be at least 1, got {top}")
    if channels is not None and n_channels is not None:
        raise OnnxvizError("choose channels by index (channels, --channel) or by number (n_channels, --channels), "
                           "not both")
    pre = fixed_size(model.input, pre or Preprocess())
    size = pre.size
    rf = layer_field(model, layer, size)
    dataset = folder if isinstance(folder, Dataset) else scan_folder(folder)
    c_axis, h_axis, w_axis = layer_axes(model, layer, strict=False)
    shape = model.tensor_shape(layer)
    n_chan = shape[c_axis] if shape and len(shape) == 4 and shape[c_axis] else None
    if channels is not None:
        channels = [int(c) for c in channels]
        _check_channels(channels, n_chan, layer)

    best = anywhere = None
    moments = _Moments()
    sizes = np.zeros((len(dataset), 2), np.int64)
    failures, seen = [], 0
    bar = progress_bar(len(dataset), progress, f"top units of {layer}")
    try:
        for batch in read_batches(dataset, np.arange(len(dataset)), model.input, pre, batch_size, workers):
            failures += [Skipped(dataset.path(i), reason) for i, reason in batch.failures]
            bar.update(len(batch.indices) + len(batch.failures))
            if batch.x is None:
                continue
            acts = model.activations(batch.x, [layer])[layer]
            if acts.ndim != 4:
                raise OnnxvizError(f"layer {layer!r} gave values of shape {acts.shape}; a 4-D feature map is needed")
            acts = np.transpose(acts, (0, c_axis, h_axis, w_axis))  # (N, C, h, w)
            n, c, h, w = acts.shape
            sizes[batch.indices] = batch.sizes
            flat = acts.reshape(n, c, h * w)
            arg = flat.argmax(axis=2)  # (N, C): first maximum in row-major order
            peak = np.take_along_axis(flat, arg[..., None], axis=2)[..., 0]
            moments.update(peak)
            if best is None:
                best = RunningTopK(c, top, 3)
            images = np.broadcast_to(batch.indices[:, None], (n, c))
            keys = np.stack([images, arg // w, arg % w], axis=-1)  # (N, C, 3)
            best.update(peak.T, keys.transpose(1, 0, 2))
            if not distinct:
                if anywhere is None:
                    anywhere = RunningTopK(c, top, 3)
                pos = np.arange(h * w)
                unit_keys = np.stack(np.broadcast_arrays(batch.indices[:, None], (pos // w)[None], (pos % w)[None]),
                                     axis=-1).reshape(n * h * w, 3)
                anywhere.update(flat.transpose(1, 0, 2).reshape(c, n * h * w),
                                np.broadcast_to(unit_keys, (c, n * h * w, 3)))
            seen += n
    finally:
        bar.close()
    if best is None:
        shown = "; ".join(f"{s.path}: {s.reason}" for s in failures[:3])
        raise OnnxvizError(f"none of the {len(dataset)} image files under {dataset.root} could be read ({shown})")

    mean, std = moments.mean_std()
    scores = selectivity(best.values, mean, std)
    if channels is None:
        channels = [int(k) for k in np.argsort(-scores, kind="stable")[:n_channels or 8]]
    else:
        _check_channels(channels, best.values.shape[0], layer)
    winners = anywhere if anywhere is not None else best
    chosen = []
    for ch in channels:
        patches = []
        for rank, (value, (img, i, j)) in enumerate(zip(winners.values[ch], winners.keys[ch])):
            if img < 0:  # fewer images than ``top``
                break
            box = rf.box(int(i), int(j), clip_to=size)
            patches.append(Patch(rank + 1, dataset.path(int(img)), dataset.files[int(img)].label or "", float(value),
                                 (int(i), int(j)), box, (), None))
        chosen.append(ChannelPatches(ch, float(scores[ch]), patches))
    result = Patches(layer, rf, tuple(size), chosen, scores, seen, failures, list(dataset.skipped))
    if crops:
        _crop_all(result, sizes, dataset, pre)
    return result


def layer_field(model, layer: str, size: tuple) -> ReceptiveField:
    """The receptive field of a feature-map tensor, traced on the model specialised to ``size``."""
    if not model.has_tensor(layer):
        raise OnnxvizError(f"no tensor named {layer!r} in the model; `onnxviz inspect` lists them")
    proto, shapes = model.specialized(*size), model.shapes_at(size)
    axes = spatial_axes(proto, model.input.name, model.input.layout, shapes=shapes)
    shape = model.tensor_shape(layer)
    if layer not in axes or (shape is not None and len(shape) != 4):
        maps = [name for name, ax in axes.items() if name != model.input.name][:12]
        raise OnnxvizError(f"layer {layer!r} is not a feature map with height and width; patches need a "
                           f"convolutional layer, e.g. {', '.join(maps)}")
    return receptive_field(proto, model.input.name, model.input.layout, shapes=shapes)[layer]


def _check_channels(channels, n: Optional[int], layer: str):
    if not channels:
        raise OnnxvizError("no channels chosen")
    bad = [c for c in channels if c < 0 or (n is not None and c >= n)]
    if bad:
        raise OnnxvizError(f"channel(s) {bad} out of range: layer {layer!r} has {n} channels (0..{(n or 1) - 1})")


def _crop_all(result: Patches, sizes: np.ndarray, dataset: Dataset, pre: Preprocess):
    """Fill in each patch's crop and original box, reading each winning image once."""
    by_image: dict = {}
    for cp in result.channels:
        for k, p in enumerate(cp.patches):
            by_image.setdefault(p.path, []).append((cp, k))
    index = {dataset.path(i): i for i in range(len(dataset))}
    for path, uses in by_image.items():
        seen_size = tuple(int(v) for v in sizes[index[path]])
        try:
            im = read_image(path)
            if (im.height, im.width) != seen_size:
                raise OnnxvizError(f"changed during the run (now {im.height}x{im.width}, was "
                                   f"{seen_size[0]}x{seen_size[1]})")
        except Exception as exc:
            result.failures.append(Skipped(path, f"cannot crop patches: {exc}"))
            im = None
        geometry = Geometry.fit(seen_size, result.input_size, pre.resize, pre.crop)
        for cp, k in uses:
            p = cp.patches[k]
            y0, x0, y1, x1 = p.box
            box = (x0, y0, x1, y1)
            crop = np.asarray(geometry.crop(im, box).convert("RGB")) if im is not None else None
            cp.patches[k] = Patch(p.rank, p.path, p.label, p.value, p.unit, p.box, geometry.to_original(box), crop)


def to_json(result: Patches) -> dict:
    """The result without pixels, for patches.json."""
    return {
        "layer": result.layer,
        "input_size": list(result.input_size),
        "receptive_field": {"size": list(result.rf.size), "jump": list(result.rf.jump), "start": list(result.rf.start)},
        "images": result.images,
        "selectivity": "(mean of the top-k per-image maxima - their mean over the dataset) / their std",
        "channels": [
            {"channel": cp.channel, "selectivity": cp.selectivity,
             "patches": [{"rank": p.rank, "path": str(p.path), "label": p.label, "value": p.value,
                          "unit": list(p.unit), "box": list(p.box), "original_box": list(p.original_box)}
                         for p in cp.patches]}
            for cp in result.channels],
        "failures": [{"path": str(s.path), "reason": s.reason} for s in result.failures],
    }
