"""Pictures for the report: uint8 arrays and matplotlib figures as PNG bytes sized for a page.

>>> p = picture(overlay(image, cam.map[0]), "Grad-CAM", side=224)
>>> p.data_uri()[:22]
'data:image/png;base64,'
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np

PANEL = 224  # display side of per-image panels, in CSS pixels


@dataclass(frozen=True)
class Picture:
    """A PNG to inline in the page, its pixel size and its caption; ``pixelated`` for tiny tiles."""

    png: bytes
    width: int
    height: int
    caption: str = ""
    alt: str = ""
    pixelated: bool = False

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def resized(pixels: np.ndarray, side: int, smooth: bool = True) -> np.ndarray:
    """An (H, W[, 3]) uint8 image scaled so its longer side is ``side`` pixels.

    ``smooth=False`` enlarges by whole-pixel repetition (filters, activation tiles) so
    small tiles stay crisp; it never shrinks.
    """
    from PIL import Image

    a = np.ascontiguousarray(pixels)
    h, w = a.shape[:2]
    if not smooth:
        zoom = max(1, side // max(h, w))
        return a.repeat(zoom, axis=0).repeat(zoom, axis=1)
    if max(h, w) == side:
        return a
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.LANCZOS if scale < 1 else Image.BICUBIC
    return np.asarray(Image.fromarray(a).resize(size, resample))


def picture(pixels: np.ndarray, caption: str = "", alt: str = "", side: int | None = None,
            smooth: bool = True) -> Picture:
    """A uint8 (H, W), (H, W, 3) or (H, W, 4) image as a Picture, optionally resized (see ``resized``)."""
    from PIL import Image

    a = np.asarray(pixels)
    if a.dtype != np.uint8:
        raise ValueError(f"picture needs uint8 pixels, got {a.dtype}")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if side is not None:
        a = resized(a, side, smooth)
    buffer = io.BytesIO()
    Image.fromarray(a).save(buffer, format="PNG")  # optimize=True: 5% smaller, 20x slower
    return Picture(buffer.getvalue(), int(a.shape[1]), int(a.shape[0]), caption, alt or caption,
                   pixelated=not smooth)


def figure_picture(fig, caption: str = "", alt: str = "", dpi: int = 110) -> Picture:
    """A matplotlib Figure rendered to PNG (tight bounding box)."""
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    png = buffer.getvalue()
    with Image.open(io.BytesIO(png)) as im:
        width, height = im.size
    return Picture(png, width, height, caption, alt or caption)


def gradient_image(raw_hwc: np.ndarray) -> np.ndarray:
    """An input-space gradient (H, W, C) as a viewable uint8 RGB image.

    Standardized and shown at ±5 standard deviations around mid grey, the convention of
    Springenberg et al.'s guided-backprop figures (and pytorch-grad-cam's ``deprocess_image``).
    """
    g = np.asarray(raw_hwc, dtype=np.float64)
    g = g - g.mean()
    std = g.std()
    g = 0.5 + 0.1 * (g / std if std > 0 else g)
    if g.shape[-1] == 1:
        g = np.repeat(g, 3, axis=-1)
    return np.clip(np.rint(g * 255), 0, 255).astype(np.uint8)
