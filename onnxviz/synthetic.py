"""Procedural shapes on cluttered backgrounds, with the object's box and mask known.

A model trained on these images can only succeed by finding the shape, so its
attribution maps (Grad-CAM, occlusion, saliency) can be scored against ground truth:

    >>> data = make_shapes(8, size=64, seed=1)
    >>> data.images.shape, data.classes[data.labels[0]], data.boxes[0].tolist()
    ((8, 64, 64, 3), 'ring', [32, 12, 60, 40])

Only numpy and pillow are used; every image of a chunk is drawn at once, without
Python loops over pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

__all__ = ["CLASSES", "Shapes", "make_shapes", "save_folder"]

CLASSES = ("circle", "square", "triangle", "cross", "star", "ring")

# Every class shape fits the disc of radius r (up to this factor), so placing the
# disc inside the image keeps the object whole.
_REACH = 1.1
# Diameter of that disc, as a fraction of the image side.
_DIAMETER = (0.27, 0.45)
# Minimum RGB distance between the object colour and the background under it.
_CONTRAST = 110.0
_CHUNK = 512


@dataclass
class Shapes:
    """A batch of images, one object each.

    ``labels`` index ``classes``; ``boxes`` are tight ``(x0, y0, x1, y1)`` pixel
    boxes of ``masks`` with exclusive ``x1``/``y1``.
    """

    images: np.ndarray  # (n, size, size, 3) uint8
    labels: np.ndarray  # (n,) int64
    boxes: np.ndarray  # (n, 4) int64
    masks: np.ndarray  # (n, size, size) bool
    classes: tuple = CLASSES

    def __len__(self) -> int:
        return len(self.labels)


def make_shapes(
    n: int, size: int = 64, seed: int = 0, classes: Optional[Sequence[str]] = None
) -> Shapes:
    """Draw ``n`` images of ``size`` x ``size`` pixels, one shape each, deterministically.

    Classes are balanced (counts differ by at most one) and shuffled. ``classes``
    picks a subset of :data:`CLASSES`; labels then index that subset.
    """
    classes = tuple(CLASSES if classes is None else classes)
    unknown = [c for c in classes if c not in _SHAPES]
    if unknown or not classes:
        raise ValueError(f"unknown shape classes {unknown}; choose from {', '.join(CLASSES)}")
    if n < 0 or size < 16:
        raise ValueError(f"need n >= 0 and size >= 16, got n={n}, size={size}")

    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(classes)).astype(np.int64)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), bool)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        kinds = [classes[i] for i in labels[start:stop]]
        images[start:stop], masks[start:stop] = _draw(rng, kinds, size)
    return Shapes(images, labels, _tight_boxes(masks), masks, classes)


def save_folder(shapes: Shapes, folder: Union[str, Path], class_names: bool = True) -> list[Path]:
    """Write ``folder/<class>/<index>.png`` for every image; return the paths.

    Subfolders are named after the class, or after the label number when
    ``class_names`` is False.
    """
    from PIL import Image

    folder = Path(folder)
    width = max(5, len(str(len(shapes))))
    paths = []
    for i, (image, label) in enumerate(zip(shapes.images, shapes.labels)):
        sub = folder / (shapes.classes[label] if class_names else str(int(label)))
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{i:0{width}d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


# Shape tests in the object's own frame: (u, v) in units of its radius, already rotated.

def _circle(u, v):
    return u * u + v * v <= 1.0


def _ring(u, v):
    rho2 = u * u + v * v
    return (rho2 <= 1.0) & (rho2 >= 0.5 ** 2)


def _square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) <= 0.72


def _triangle(u, v):
    # Equilateral, circumradius 1.1 (inradius 0.55): a little larger than the
    # others, whose areas it would otherwise fall well below.
    inside = np.ones(u.shape, bool)
    for a in np.deg2rad([-90.0, 30.0, 150.0]):
        inside &= u * np.cos(a) + v * np.sin(a) <= 0.55
    return inside


def _cross(u, v):
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))


def _star(u, v, inner=0.45):
    # Five points; the boundary between an outer vertex (1, 0) and the next inner
    # vertex is a straight edge, so fold the angle into [0, pi/5] and test one edge.
    sector = 2 * np.pi / 5
    phi = np.mod(np.arctan2(v, u), sector)
    phi = np.minimum(phi, sector - phi)
    dx, dy = inner * np.cos(sector / 2) - 1.0, inner * np.sin(sector / 2)
    edge = dy / (dy * np.cos(phi) - dx * np.sin(phi))
    return u * u + v * v <= edge * edge


_SHAPES = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "star": _star,
    "ring": _ring,
}


def _draw(rng: np.random.Generator, kinds: list, size: int):
    """Images (m, size, size, 3) uint8 and object masks for one chunk."""
    m = len(kinds)
    grid = np.arange(size, dtype=np.float32) + 0.5
    ys, xs = grid[None, :, None], grid[None, None, :]
    image = _background(rng, m, size, xs, ys)
    _distractors(rng, image, size, xs, ys)

    radius = rng.uniform(*_DIAMETER, m).astype(np.float32) * size / 2
    margin = _REACH * radius
    cx = rng.uniform(margin, size - margin).astype(np.float32)
    cy = rng.uniform(margin, size - margin).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi, m).astype(np.float32)
    u, v = _frame(xs, ys, cx, cy, angle, radius)
    mask = np.empty((m, size, size), bool)
    kinds = np.asarray(kinds)
    for kind in np.unique(kinds):
        pick = kinds == kind
        mask[pick] = _SHAPES[kind](u[pick], v[pick])

    colour = _contrasting_colour(rng, image, mask)
    # A soft light gradient across the object, so it is not a flat stencil.
    light = rng.uniform(0, 2 * np.pi, m).astype(np.float32)
    shade = 1.0 + 0.12 * (np.cos(light)[:, None, None] * u + np.sin(light)[:, None, None] * v)
    obj = np.clip(colour[:, None, None, :] * shade[..., None], 0, 255)
    image = np.where(mask[..., None], obj, image)
    image += 4.0 * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def _frame(xs, ys, cx, cy, angle, scale):
    """Pixel grid in each object's rotated frame, divided by ``scale``: (m, H, W) each."""
    c = (np.cos(angle) / scale)[:, None, None]
    s = (np.sin(angle) / scale)[:, None, None]
    dx = xs - cx[:, None, None]
    dy = ys - cy[:, None, None]
    return dx * c + dy * s, dy * c - dx * s


def _background(rng, m, size, xs, ys):
    """Smooth colour noise at two scales, plus stripes on about half the images."""
    image = np.broadcast_to(rng.uniform(30, 225, (m, 1, 1, 3)), (m, size, size, 3)).astype(np.float32)
    for cells, amplitude in ((4, 45.0), (10, 22.0)):
        low = rng.uniform(-1, 1, (m, cells, cells, 3)).astype(np.float32)
        low *= rng.uniform(0.2, 1.0, (m, 1, 1, 1)).astype(np.float32) * amplitude
        image += _upsample(low, _bilinear_matrix(cells, size))

    theta = rng.uniform(0, np.pi, m).astype(np.float32)[:, None, None]
    cycles = rng.uniform(2, 8, m).astype(np.float32)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, m).astype(np.float32)[:, None, None]
    wave = np.sin(2 * np.pi * cycles * (xs * np.cos(theta) + ys * np.sin(theta)) / size + phase)
    sharp = rng.random(m) < 0.5
    wave[sharp] = np.tanh(4 * wave[sharp])
    strength = rng.uniform(-40, 40, (m, 1, 1, 3)).astype(np.float32)
    strength *= (rng.random((m, 1, 1, 1)) < 0.5)
    image += wave[..., None] * strength
    return np.clip(image, 0, 255)


def _upsample(low, up):
    """Bilinear upsampling of (m, g, g, c) to (m, H, W, c) with a (H, g) matrix."""
    planes = up @ low.transpose(0, 3, 1, 2) @ up.T  # (m, c, H, W), batched BLAS
    return planes.transpose(0, 2, 3, 1)


def _bilinear_matrix(cells: int, size: int) -> np.ndarray:
    pos = np.clip((np.arange(size) + 0.5) * cells / size - 0.5, 0, cells - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, cells - 1)
    w = (pos - i0).astype(np.float32)
    matrix = np.zeros((size, cells), np.float32)
    matrix[np.arange(size), i0] += 1 - w
    matrix[np.arange(size), i1] += w
    return matrix


def _distractors(rng, image, size, xs, ys, slots: int = 6):
    """Paint 2-6 small sticks and thin ellipses per image: clutter shaped like no class."""
    m = len(image)
    scale = size / 64.0
    active = np.arange(slots)[None, :] < rng.integers(2, slots + 1, m)[:, None]
    for k in range(slots):
        cx = rng.uniform(0, size, m).astype(np.float32)
        cy = rng.uniform(0, size, m).astype(np.float32)
        angle = rng.uniform(0, np.pi, m).astype(np.float32)
        u, v = _frame(xs, ys, cx, cy, angle, np.ones(m, np.float32))
        length = rng.uniform(3, 8, m).astype(np.float32)[:, None, None] * scale
        width = length / rng.uniform(2.5, 4.5, m).astype(np.float32)[:, None, None]
        width = np.maximum(width, 0.9 * scale)
        ellipse = (u / length) ** 2 + (v / width) ** 2 <= 1
        half = width * 0.6
        stick = (u - np.clip(u, -length, length)) ** 2 + v * v <= half * half
        is_stick = (rng.random(m) < 0.5)[:, None, None]
        paint = np.where(is_stick, stick, ellipse) & active[:, k, None, None]
        colour = rng.uniform(0, 255, (m, 1, 1, 3)).astype(np.float32)
        np.copyto(image, np.broadcast_to(colour, image.shape), where=paint[..., None])


def _contrasting_colour(rng, image, mask, tries: int = 16):
    """A random colour per image, at least _CONTRAST away from the background it covers."""
    m = len(image)
    area = mask.sum((1, 2)).astype(np.float32)[:, None]
    flat = mask.reshape(m, 1, -1).astype(np.float32)
    under = (flat @ image.reshape(m, -1, 3))[:, 0] / area
    candidates = rng.uniform(0, 255, (m, tries, 3)).astype(np.float32)
    distance = np.linalg.norm(candidates - under[:, None, :], axis=-1)
    ok = distance >= _CONTRAST
    pick = np.where(ok.any(1), ok.argmax(1), distance.argmax(1))
    return candidates[np.arange(m), pick]


def _tight_boxes(masks: np.ndarray) -> np.ndarray:
    cols = masks.any(1)
    rows = masks.any(2)
    width = masks.shape[2]
    height = masks.shape[1]
    x0 = cols.argmax(1)
    x1 = width - cols[:, ::-1].argmax(1)
    y0 = rows.argmax(1)
    y1 = height - rows[:, ::-1].argmax(1)
    return np.stack([x0, y0, x1, y1], 1).astype(np.int64)
