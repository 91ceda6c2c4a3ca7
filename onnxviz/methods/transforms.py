"""Random image transforms with exact adjoints, and the smoothing priors of feature visualization.

Gradient ascent on the input finds adversarial noise unless the image must keep its score
under small random changes (lucid's ``transform.standard_transforms``, tf-keras-vis' input
modifiers). Each step here draws one :class:`Warp` — an integer roll (jitter) followed by a
scale and rotation about the centre — applies it to the batch in numpy, runs the model on the
warped batch, and maps the gradient back with the warp's *exact* adjoint:

    d score(W x) / dx = Wᵀ · (d score / d(Wx))

The warp is a linear map: each output pixel is a bilinear blend of 4 source pixels (edges
replicated, the roll wrapping around), so ``Wᵀ`` scatters each output gradient back onto the
same 4 pixels with the same weights: ``W`` is a sparse (H·W, H·W) matrix built once per warp,
and both directions are one sparse product over the N·C images.

Images are (N, C, H, W) float arrays throughout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Warp:
    """Roll by ``shift`` = (dy, dx) pixels (wrapping), then scale by ``zoom`` and rotate by
    ``angle`` degrees about the image centre (bilinear, edges replicated; positive angles turn the
    image clockwise as displayed)."""

    shift: tuple[int, int] = (0, 0)
    zoom: float = 1.0
    angle: float = 0.0

    @property
    def is_roll(self) -> bool:
        return self.zoom == 1.0 and self.angle == 0.0

    def apply(self, x: np.ndarray) -> np.ndarray:
        """W x for a batch (N, C, H, W)."""
        if self.is_roll:
            return np.roll(x, self.shift, axis=(2, 3))
        n, c, h, w = x.shape
        return _product(_matrix(self, h, w), x.reshape(n * c, h * w)).reshape(x.shape)

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        """Wᵀ g: the gradient with respect to the unwarped batch."""
        if self.is_roll:
            return np.roll(g, (-self.shift[0], -self.shift[1]), axis=(2, 3))
        n, c, h, w = g.shape
        return _product(_matrix(self, h, w).T, g.reshape(n * c, h * w)).reshape(g.shape)


def _product(mat, rows: np.ndarray) -> np.ndarray:
    """``mat`` applied to every row of (M, H·W): row by row for a few rows (no transposed copies),
    as one multi-vector product for many."""
    if len(rows) > 6:
        return (mat @ rows.T).T
    out = np.empty(rows.shape, np.result_type(rows.dtype, mat.dtype))
    for i, row in enumerate(rows):
        out[i] = mat @ row
    return out


_CURRENT: dict = {}


def _matrix(warp: "Warp", h: int, w: int) -> "sparse.csr_matrix":
    """W as a sparse (H·W, H·W) matrix with 4 bilinear weights per row (``.T`` is a free CSC view).

    Every W of a size has the same sparsity structure, so one matrix per size is refilled in
    place: a step's ``apply`` and ``adjoint`` share it, and no constructor runs per step.
    """
    from scipy import sparse  # imported on use: scipy costs start-up time for every command

    mat, key = _CURRENT.get((h, w), (None, None))
    if mat is None:
        indptr = np.arange(0, 4 * h * w + 1, 4, dtype=np.int32 if 4 * h * w < 2**31 else np.int64)
        mat = sparse.csr_matrix((np.zeros(4 * h * w, np.float32), np.zeros(4 * h * w, indptr.dtype), indptr),
                                shape=(h * w, h * w))
        if len(_CURRENT) > 4:
            _CURRENT.clear()
    if key != warp:
        # float32 weights: float32 images stay float32; W and Wᵀ share the same numbers (exact adjoints)
        _bilinear(warp, h, w, mat.indices.reshape(-1, 4), mat.data.reshape(-1, 4))
        _CURRENT[(h, w)] = (mat, warp)
    return mat


@lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates relative to the image centre, flat."""
    yy, xx = np.meshgrid(np.arange(h) - (h - 1) / 2.0, np.arange(w) - (w - 1) / 2.0, indexing="ij")
    return yy.ravel().astype(np.float32), xx.ravel().astype(np.float32)


def _bilinear(warp: Warp, h: int, w: int, index: Optional[np.ndarray] = None,
              weight: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """For each output pixel (row), its 4 source pixels (flat indices) and bilinear weights, (H·W, 4),
    written into ``index``/``weight`` when given."""
    yy, xx = _grid(h, w)
    t = math.radians(warp.angle)
    cos, sin = np.float32(math.cos(t) / warp.zoom), np.float32(math.sin(t) / warp.zoom)
    # inverse map: output pixel -> source position (rotate by -angle, shrink by zoom)
    sy = cos * yy - sin * xx
    sy += np.float32((h - 1) / 2.0)
    np.clip(sy, 0, h - 1, out=sy)
    sx = sin * yy + cos * xx
    sx += np.float32((w - 1) / 2.0)
    np.clip(sx, 0, w - 1, out=sx)
    y0 = np.minimum(sy.astype(np.int32), max(h - 2, 0))  # sy >= 0: truncation is floor
    x0 = np.minimum(sx.astype(np.int32), max(w - 2, 0))
    fy, fx = sy - y0, sx - x0
    gy, gx = 1 - fy, 1 - fx
    dy, dx = warp.shift
    ry0, rx0 = (y0 - dy) % h, (x0 - dx) % w
    ry1, rx1 = ry0 + 1, rx0 + 1  # the next row/column, wrapping around with the roll
    ry1[ry1 == h] = 0
    rx1[rx1 == w] = 0
    if h == 1:
        ry1 = ry0
    if w == 1:
        rx1 = rx0
    ry0 *= w
    ry1 *= w
    index = np.empty((h * w, 4), np.int64) if index is None else index
    weight = np.empty((h * w, 4), np.float64) if weight is None else weight
    np.add(ry0, rx0, out=index[:, 0])
    np.add(ry0, rx1, out=index[:, 1])
    np.add(ry1, rx0, out=index[:, 2])
    np.add(ry1, rx1, out=index[:, 3])
    np.multiply(gy, gx, out=weight[:, 0], casting="unsafe")
    np.multiply(gy, fx, out=weight[:, 1], casting="unsafe")
    np.multiply(fy, gx, out=weight[:, 2], casting="unsafe")
    np.multiply(fy, fx, out=weight[:, 3], casting="unsafe")
    return index, weight


def random_warp(rng: np.random.Generator, size: tuple[int, int], jitter: float,
                zoom: Optional[tuple[float, float]], rotate: float) -> Warp:
    """A warp with a roll of up to ``jitter`` × side pixels, a zoom drawn uniformly from ``zoom``
    and an angle uniformly from ±``rotate`` degrees."""
    h, w = size
    jy, jx = int(round(jitter * h)), int(round(jitter * w))
    shift = (int(rng.integers(-jy, jy + 1)), int(rng.integers(-jx, jx + 1)))
    z = float(rng.uniform(*zoom)) if zoom and zoom[0] != zoom[1] else float(zoom[0] if zoom else 1.0)
    a = float(rng.uniform(-rotate, rotate)) if rotate else 0.0
    return Warp(shift, z, a)


def blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of (N, C, H, W) over H and W (Yosinski et al., 2015: every few steps)."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, (0, 0, sigma, sigma), mode="nearest")


def total_variation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared total variation per image, Σ (x[i+1,j]−x[i,j])² + (x[i,j+1]−x[i,j])², and its gradient.

    The squared (β = 2) form of Mahendran & Vedaldi (2015): smooth, so its gradient (a discrete
    Laplacian) never flips sign at flat regions as the L1 form's does.
    """
    dy = np.diff(x, axis=2)
    dx = np.diff(x, axis=3)
    value = np.einsum("nchw,nchw->n", dy, dy) + np.einsum("nchw,nchw->n", dx, dx)
    return value, tv_gradient(x, dy, dx)


def tv_gradient(x: np.ndarray, dy: Optional[np.ndarray] = None, dx: Optional[np.ndarray] = None) -> np.ndarray:
    """The gradient of :func:`total_variation` alone."""
    dy = np.diff(x, axis=2) if dy is None else dy
    dx = np.diff(x, axis=3) if dx is None else dx
    dy *= 2
    dx *= 2
    grad = np.zeros_like(x)
    grad[:, :, 1:] += dy
    grad[:, :, :-1] -= dy
    grad[:, :, :, 1:] += dx
    grad[:, :, :, :-1] -= dx
    return grad
