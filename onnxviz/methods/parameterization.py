"""How the optimized image is parameterized: plain pixels, or a decorrelated Fourier spectrum.

Both map parameters to an image ``p`` of pixel fractions in [0, 1], (N, C, H, W) in the model's
channel order, and map a gradient with respect to ``p`` back to the parameters (``backward``,
the exact adjoint of the map's Jacobian).

* :class:`Pixels` — ``p`` itself; kept in [0, 1] by clipping after every step.
* :class:`Fourier` — lucid's ``fft_image`` + ``to_valid_rgb`` (Olah et al., "Feature
  Visualization", Distill 2017): ``p = sigmoid(Cdecorrelate · irfft2(scale · spectrum))``, where
  ``scale`` ∝ 1/frequency whitens the natural-image spectrum and ``Cdecorrelate`` is the square
  root of the ImageNet colour covariance. Adam then takes equal-sized steps on every frequency,
  which favours large coherent structures over high-frequency noise; the sigmoid keeps every
  pixel in range without clipping.
"""
from __future__ import annotations

import numpy as np

# sqrt of the ImageNet RGB colour covariance (lucid.optvis.param.color), columns scaled to unit max norm
_COLOR_SVD_SQRT = np.array([[0.26, 0.09, 0.02],
                            [0.27, 0.00, -0.05],
                            [0.27, -0.09, 0.03]])
_COLOR = _COLOR_SVD_SQRT / np.max(np.linalg.norm(_COLOR_SVD_SQRT, axis=0))


class Pixels:
    """The image is the parameter."""

    name = "pixel"

    def __init__(self, start: np.ndarray):
        self.params = np.array(start)

    def image(self) -> np.ndarray:
        return self.params

    def backward(self, g: np.ndarray) -> np.ndarray:
        return g.astype(self.params.dtype, copy=False)

    def project(self) -> None:
        np.clip(self.params, 0.0, 1.0, out=self.params)


class Fourier:
    """``p = sigmoid(C · irfft2(scale · S) / 4)``; ``S`` holds the real and imaginary parts of
    the half spectrum, (N, C, H, W//2+1, 2). ``decay`` is the power of 1/frequency in ``scale``
    (lucid's decay_power); ``bgr`` flips the colour matrix for BGR models; 1-channel images
    skip the colour step."""

    name = "fourier"

    def __init__(self, shape: tuple, rng: np.random.Generator, std: float = 0.01, decay: float = 1.0,
                 bgr: bool = False):
        n, c, h, w = shape
        self.hw = (h, w)
        fy = np.fft.fftfreq(h)[:, None]
        fx = np.fft.rfftfreq(w)[None, :]
        freq = np.sqrt(fy * fy + fx * fx)
        self.scale = (np.sqrt(h * w) / np.maximum(freq, 1.0 / max(h, w)) ** decay / 4.0).astype(np.float32)
        color = _COLOR[::-1, ::-1] if bgr else _COLOR
        self.color = (color if c == 3 else np.eye(c)).astype(np.float32)
        # irfft2's adjoint: rfft2 / (H W), with the columns that stand for two conjugate
        # coefficients (all but k = 0 and, for even W, the Nyquist column) counted twice
        twice = np.full(w // 2 + 1, 2.0)
        twice[0] = 1.0
        if w % 2 == 0:
            twice[-1] = 1.0
        self._adjoint = (twice[None, :] / (h * w) * self.scale).astype(np.float32)
        self.params = (rng.standard_normal((n, c, h, w // 2 + 1, 2)) * std).astype(np.float32)
        self._pre = None

    def _spatial(self) -> np.ndarray:
        from scipy import fft

        return fft.irfft2(_complex(self.params) * self.scale, s=self.hw)

    def image(self) -> np.ndarray:
        from scipy.special import expit

        self._pre = expit(np.einsum("ij,njhw->nihw", self.color, self._spatial()))
        return self._pre

    def backward(self, g: np.ndarray) -> np.ndarray:
        """d/dS of <g, p>, at the image last returned by ``image``."""
        p = self._pre if self._pre is not None else self.image()
        gz = g * p * (1.0 - p)
        gs = np.einsum("ij,nihw->njhw", self.color, gz)  # Cᵀ
        from scipy import fft

        spec = fft.rfft2(gs.astype(self.params.dtype, copy=False))
        spec *= self._adjoint
        return spec.view(self.params.dtype).reshape(self.params.shape)

    def project(self) -> None:
        pass


def _complex(pairs: np.ndarray) -> np.ndarray:
    """(..., 2) real/imaginary pairs as a complex array (..., ), without copying."""
    kind = np.complex64 if pairs.dtype == np.float32 else np.complex128
    return np.ascontiguousarray(pairs, dtype=pairs.dtype if kind == np.complex64 else np.float64).view(kind)[..., 0]


PARAMETERIZATIONS = ("pixel", "fourier")
