"""Random image transforms with exact adjoints, and the smoothing priors of feature visualization.

Gradient ascent on the input finds adversarial noise unless the image must keep its score
under small random changes (lucid's ``transform.standard_transforms``, tf-keras-vis' input
modifiers). Each step here draws one :class:`Warp` — an integer roll (jitter) followed by a
scale and rotation about the centre — applies it to the batch in numpy, runs the model on the
warped batch, and maps the gradient back with the warp's *exact* adjoint:

    d score(W x) / dx = Wᵀ · (d score / d(Wx))

The warp is a linear map: each output pixel is a bilinear blend of 4 source pixels (edges
replicated, the roll wrapping around), so ``Wᵀ`` scatters each output gradient back onto the
same 4 pixels with the same weights. Both are one gather/one ``bincount`` over (N·C, H·W).

Images are (N, C, H, W) float arrays throughout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.ndimage import gaussian_filter


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
        index, weight = _bilinear(self, h, w)
        flat = x.reshape(n * c, h * w)
        out = sum(flat[:, index[k]] * weight[k] for k in range(4))
        return out.reshape(x.shape)

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        """Wᵀ g: the gradient with respect to the unwarped batch."""
        if self.is_roll:
            return np.roll(g, (-self.shift[0], -self.shift[1]), axis=(2, 3))
        n, c, h, w = g.shape
        index, weight = _bilinear(self, h, w)
        rows = n * c
        flat = g.reshape(rows, h * w)
        offsets = (np.arange(rows) * (h * w))[:, None]
        where = np.concatenate([(index[k][None, :] + offsets).ravel() for k in range(4)])
        values = np.concatenate([(flat * weight[k]).ravel() for k in range(4)])
        return np.bincount(where, weights=values, minlength=rows * h * w).reshape(g.shape)


def _bilinear(warp: Warp, h: int, w: int) -> tuple[list, list]:
    """For each output pixel, its 4 source pixels (flat indices) and bilinear weights."""
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64) - cy, np.arange(w, dtype=np.float64) - cx,
                         indexing="ij")
    t = math.radians(warp.angle)
    cos, sin = math.cos(t) / warp.zoom, math.sin(t) / warp.zoom
    # inverse map: output pixel -> source position (rotate by -angle, shrink by zoom)
    sy = np.clip(cos * yy - sin * xx + cy, 0, h - 1).ravel()
    sx = np.clip(sin * yy + cos * xx + cx, 0, w - 1).ravel()
    y0 = np.minimum(np.floor(sy).astype(np.int64), h - 2 if h > 1 else 0)
    x0 = np.minimum(np.floor(sx).astype(np.int64), w - 2 if w > 1 else 0)
    fy, fx = sy - y0, sx - x0
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    dy, dx = warp.shift
    index = [((yi - dy) % h) * w + (xi - dx) % w for yi, xi in ((y0, x0), (y0, x1), (y1, x0), (y1, x1))]
    weight = [(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx]
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
    return gaussian_filter(x, (0, 0, sigma, sigma), mode="nearest")


def total_variation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared total variation per image, Σ (x[i+1,j]−x[i,j])² + (x[i,j+1]−x[i,j])², and its gradient.

    The squared (β = 2) form of Mahendran & Vedaldi (2015): smooth, so its gradient (a discrete
    Laplacian) never flips sign at flat regions as the L1 form's does.
    """
    dy = np.diff(x, axis=2)
    dx = np.diff(x, axis=3)
    value = (dy ** 2).sum(axis=(1, 2, 3)) + (dx ** 2).sum(axis=(1, 2, 3))
    grad = np.zeros_like(x)
    grad[:, :, 1:] += 2 * dy
    grad[:, :, :-1] -= 2 * dy
    grad[:, :, :, 1:] += 2 * dx
    grad[:, :, :, :-1] -= 2 * dx
    return value, grad
