"""Pictures as arrays: tile grids, filter and activation grids, resizing, colour maps, overlays.

All numpy; ``colorize`` reads matplotlib's colour maps but never touches pyplot.

>>> heat = overlay(image, upsample(cam, image.shape[:2]), alpha=0.5)
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np

Axis = Union[int, Sequence[int], None]


def normalize01(a: np.ndarray, axis: Axis = None) -> np.ndarray:
    """Min-max scale to [0, 1] over ``axis`` (all axes by default); constant slices become 0.

    >>> normalize01(acts, axis=(1, 2))   # each channel of (C, h, w) on its own
    """
    a = np.asarray(a, dtype=np.float64)
    lo = a.min(axis=axis, keepdims=True)
    span = a.max(axis=axis, keepdims=True) - lo
    return np.divide(a - lo, span, out=np.zeros_like(a), where=span > 0)


def grid_shape(n: int, cols: Optional[int] = None) -> tuple[int, int]:
    """(rows, cols) for ``n`` tiles; about square by default."""
    cols = max(1, min(n, cols or math.ceil(math.sqrt(n))))
    return math.ceil(n / cols), cols


def grid(tiles: np.ndarray, cols: Optional[int] = None, pad: int = 1, pad_value=None,
         zoom: int = 1) -> np.ndarray:
    """Lay (N, h, w) or (N, h, w, C) tiles out row by row, ``pad`` pixels between them.

    Tile i sits at row ``i // cols``, column ``i % cols``; empty cells and gaps take
    ``pad_value`` (default white: 255 for integers, 1.0 for floats). ``zoom`` enlarges each
    tile by pixel repetition (useful for 3x3 kernels).
    """
    tiles = np.asarray(tiles)
    if tiles.ndim not in (3, 4) or len(tiles) == 0:
        raise ValueError(f"grid needs (N, h, w) or (N, h, w, C) tiles with N > 0, "
                         f"got shape {tiles.shape}")
    if zoom > 1:
        tiles = tiles.repeat(zoom, axis=1).repeat(zoom, axis=2)
    if pad_value is None:
        pad_value = np.iinfo(tiles.dtype).max if tiles.dtype.kind in "iu" else 1.0
    n, h, w = tiles.shape[:3]
    rows, cols = grid_shape(n, cols)
    out = np.full((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad) + tiles.shape[3:],
                  pad_value, dtype=tiles.dtype)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = tile
    return out


def _to_uint8(a01: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a01 * 255.0), 0, 255).astype(np.uint8)


def filter_grid(weights: np.ndarray, rgb: Optional[bool] = None, bgr: bool = False,
                cols: Optional[int] = None, pad: int = 1, zoom: int = 1) -> np.ndarray:
    """Conv weights (O, I, kh, kw) as a uint8 (H, W, 3) picture, each filter scaled on its own.

    A weight shows as ``0.5 + w / (2 max|w|)`` over its filter, so 0 is mid grey. With 3
    in-channels (``rgb`` None or True) each filter is one colour tile (``bgr`` for BGR models);
    otherwise each row is one filter and each column one in-channel in grey. Depthwise
    filters (I == 1) form a square grid. Slice ``weights`` to show fewer.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"filter_grid needs (out, in, kh, kw) weights, got shape {w.shape}")
    o, i = w.shape[:2]
    if rgb and i != 3:
        raise ValueError(f"rgb tiles need 3 in-channels, these filters have {i}")
    peak = np.abs(w).max(axis=(1, 2, 3), keepdims=True)
    w01 = 0.5 + np.divide(w, 2 * peak, out=np.zeros_like(w), where=peak > 0)
    if i == 3 and rgb is not False:
        tiles = w01.transpose(0, 2, 3, 1)
        return grid(_to_uint8(tiles[..., ::-1] if bgr else tiles), cols, pad, zoom=zoom)
    grey = _to_uint8(w01).reshape(o * i, *w.shape[2:])
    out = grid(grey, cols if i == 1 else i, pad, zoom=zoom)
    return np.repeat(out[..., None], 3, axis=-1)


def rank_channels(acts: np.ndarray, order: Optional[str] = "mean") -> np.ndarray:
    """Channel indices of (C, h, w) activations, most active first by "mean" or "max".

    Ties keep index order; ``order=None`` keeps all channels in index order.
    """
    acts = np.asarray(acts)
    if order is None:
        return np.arange(len(acts))
    if order not in ("mean", "max"):
        raise ValueError(f"order {order!r}: expected 'mean', 'max' or None")
    score = acts.reshape(len(acts), -1)
    score = score.mean(axis=1) if order == "mean" else score.max(axis=1)
    return np.argsort(-score, kind="stable")


def activation_grid(acts: np.ndarray, top: Optional[int] = None, order: Optional[str] = "mean",
                    scale: str = "channel", cmap: str = "viridis", cols: Optional[int] = None,
                    pad: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(C, h, w) activations as a uint8 (H, W, 3) grid of the ``top`` channels, most active first.

    ``scale``: "channel" stretches each channel to [0, 1]; "shared" uses one range for all
    shown channels, so brightness compares across tiles. Returns (grid, channel indices).

    >>> img, chans = activation_grid(acts[0], top=16)   # chans[0] has the highest mean
    """
    acts = np.asarray(acts, dtype=np.float64)
    if acts.ndim != 3:
        raise ValueError(f"activation_grid needs (C, h, w) activations of one image, "
                         f"got shape {acts.shape}")
    if scale not in ("channel", "shared"):
        raise ValueError(f"scale {scale!r}: expected 'channel' or 'shared'")
    chosen = rank_channels(acts, order)[:top]
    shown = normalize01(acts[chosen], axis=(1, 2) if scale == "channel" else None)
    return grid(colorize(shown, cmap), cols, pad), chosen


def _taps(n_in: int, n_out: int, mode: str) -> tuple:
    """Source pixels and weights of half-pixel sampling: source = (dst + 0.5) · n_in / n_out − 0.5."""
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    if mode == "nearest":
        near = np.clip(np.floor(src + 0.5), 0, n_in - 1).astype(np.intp)
        return near, near, np.zeros(n_out)
    src = np.clip(src, 0, n_in - 1)
    lo = np.floor(src).astype(np.intp)
    return lo, np.minimum(lo + 1, n_in - 1), src - lo


def upsample(m: np.ndarray, size: tuple[int, int], mode: str = "bilinear", dtype=np.float64) -> np.ndarray:
    """Resize (..., h, w) maps to (..., H, W) as torch's interpolate(align_corners=False) and cv2 do.

    Bilinear with half-pixel centres, edges clamped (no antialiasing when shrinking);
    "nearest" takes the pixel whose centre is nearest. Computed in ``dtype``, element-wise
    only: BLAS threads would compete with onnxruntime's pool for the cores right after a run
    (as ``R_h @ m @ R_w.T``, 8 maps 14x14 -> 224x224 took 13 ms on a busy 2-core machine
    against 0.8 ms here). Columns first, on the small (..., h, W) array; then every output row
    is a blend of two whole rows, contiguous copies: gathering columns of the full-size array
    instead was 7x slower.

    >>> upsample(cam, (224, 224))
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode {mode!r}: expected 'bilinear' or 'nearest'")
    m = np.asarray(m, dtype=dtype)
    if m.ndim < 2:
        raise ValueError(f"upsample needs (..., h, w) maps, got shape {m.shape}")
    (h, w), (H, W) = m.shape[-2:], size
    a, b, f = _taps(w, W, mode)
    f = f.astype(m.dtype)
    cols = m[..., a] * (1 - f) + m[..., b] * f
    a, b, f = _taps(h, H, mode)
    f = f.astype(m.dtype)[:, None]
    out = np.take(cols, a, axis=-2)
    out *= 1 - f
    far = np.take(cols, b, axis=-2)
    far *= f
    out += far
    return out


def colorize(map01: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """Values in [0, 1] (clipped) through a matplotlib colour map, as uint8 RGB (..., 3)."""
    import matplotlib

    try:
        cm = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown colour map {cmap!r}; try jet, viridis, inferno, magma, gray, "
                         "RdBu_r") from None
    return cm(np.clip(np.asarray(map01, dtype=np.float64), 0.0, 1.0), bytes=True)[..., :3]


def overlay(image: np.ndarray, map01: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a colourized map over a uint8 image: ``(1 - alpha) * image + alpha * colour``.

    ``image`` is (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (alpha dropped); a map of another
    size is resized bilinearly to (H, W). Returns uint8 (H, W, 3).
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha {alpha!r}: expected a value in [0, 1]")
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):
        raise ValueError(f"overlay needs an (H, W[, 1|3|4]) image, got shape {np.shape(image)}")
    img = np.broadcast_to(img[..., :3], img.shape[:2] + (3,)).astype(np.float64)
    m = np.asarray(map01, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"overlay needs a 2-D map, got shape {m.shape}")
    if m.shape != img.shape[:2]:
        m = upsample(m, img.shape[:2])
    out = (1 - alpha) * img + alpha * colorize(m, cmap)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
