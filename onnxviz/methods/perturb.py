"""The perturbation engine: score many perturbed copies of each image (or layer value) in batches.

Occlusion, Score-CAM and the deletion/insertion metrics all perturb an input many
times and read the target score back. :func:`perturbed_scores` runs those copies through a
forward in large batches built in one reused buffer; :func:`head_runner` re-runs only the graph
after a layer; :func:`blurred` is the usual "removed information" baseline.

A new perturbation metric is a ``fill`` (how copy k of row r is perturbed) and a ``run``
(the score of a batch), handed to :func:`perturbed_scores`, plus a typed result.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import OnnxvizError
from ..graph.surgery import head

BATCH = 64

# run(batch, row per copy) -> score per copy; fill(batch, row per copy, copy index within its row)
Run = Callable[[np.ndarray, np.ndarray], np.ndarray]
Fill = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


def perturbed_scores(run: Run, fill: Fill, n_rows: int, per_row: int, shape: tuple, dtype,
                     batch_size: int = BATCH, progress: bool = False, desc: str = "perturbing") -> np.ndarray:
    """Scores (n_rows, per_row) of ``per_row`` perturbed copies of each row, in batches of one buffer."""
    total = n_rows * per_row
    if total == 0:
        return np.zeros((n_rows, per_row))
    size = max(1, min(batch_size, total))
    buffer = np.empty((size, *shape), dtype)
    out = np.empty(total, np.float64)
    starts = range(0, total, size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, leave=False)
    for start in starts:
        stop = min(total, start + size)
        row, copy = np.divmod(np.arange(start, stop), per_row)
        batch = buffer[:stop - start]
        fill(batch, row, copy)
        out[start:stop] = run(batch, row)
    return out.reshape(n_rows, per_row)


def image_rng(seed: int, image: np.ndarray) -> np.random.Generator:
    """A generator seeded by ``seed`` and the image's own values, not its place in the batch: an
    image draws the same noise whichever images it is batched with (per-image dataset engines, shards)."""
    import hashlib

    digest = hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int.from_bytes(digest[:8], "little")])


def segments(row: np.ndarray):
    """(row, start, stop) runs of equal rows in a chunk: copies of one image lie side by side."""
    cuts = np.flatnonzero(np.diff(row)) + 1
    bounds = [0, *cuts.tolist(), len(row)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        yield int(row[a]), a, b


def blurred(x: np.ndarray, spatial_axes: tuple, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Gaussian blur of a batch along its two spatial axes (kernel cut at ``truncate``·σ, scipy's default 4)."""
    from scipy.ndimage import gaussian_filter

    sig = [0.0] * x.ndim
    for a in spatial_axes:
        sig[a] = sigma
    return gaussian_filter(x.astype(np.float64), sig, mode="nearest", truncate=truncate).astype(x.dtype)


def head_runner(model, x: np.ndarray, layer: str, obj):
    """Run only the graph after ``layer`` (with the image too when residual paths bypass the layer)."""
    h, w = model.input.hw(x)
    graph, needs_image = model.derived(f"head:{layer}:{obj.tensor}:{h}x{w}",
                                       lambda: head(model.specialized(h, w), layer, [obj.tensor]))

    def forward(batch, row):
        feeds = {layer: batch}
        if needs_image:
            feeds[model.input.name] = x[row]
        if model.other_inputs:
            extra = model.extra_feeds(len(x), graph)
            feeds.update({k: v[row] if v.ndim and v.shape[0] == len(x) else v for k, v in extra.items()})
        return model.run_graph(graph, feeds, outputs=[obj.tensor], batch_size=model.input.batch,
                               desc="head")[obj.tensor]

    return forward


# ---------------------------------------------------------------------------- ranked perturbations


def pixel_order(maps: np.ndarray) -> np.ndarray:
    """(N, H·W): positions most relevant first; ties keep their raster order (stable sort)."""
    flat = np.asarray(maps, np.float64).reshape(len(maps), -1)
    if not np.isfinite(flat).all():
        raise OnnxvizError("the maps contain NaN or infinite values")
    return np.argsort(-flat, axis=1, kind="stable")


def step_counts(positions: int, steps: int) -> np.ndarray:
    """How many positions are changed after each of 0..steps steps: slices of ceil(positions/steps)."""
    if steps < 1:
        raise OnnxvizError(f"steps must be at least 1, not {steps}")
    size = -(-positions // steps)
    return np.minimum(np.arange(steps + 1) * size, positions)


def ranked_filler(start: np.ndarray, end: np.ndarray, order: np.ndarray, counts: np.ndarray, spec) -> Fill:
    """Copy k of row r: ``end`` at the first counts[k] positions of ``order[r]``, ``start`` elsewhere.

    Deletion (start = the image, end = the baseline) and insertion (the other way round); the
    channels of a position move together. Consecutive copies of a row are built from the one
    before (a plain copy, then the positions of one slice), not each by a masked pass over the
    whole image.
    """
    h, w = spec.hw(start)
    nhwc = spec.channel_axis != 1

    def positions(img: np.ndarray) -> np.ndarray:
        """(H·W, C) view of one image, (C, H, W) or (H, W, C): a row per position."""
        return img.reshape(h * w, -1) if nhwc else img.reshape(-1, h * w).T

    def fill(batch, row, copy):
        for r, a, b in segments(row):
            src = positions(end[r])
            done = 0
            for j in range(a, b):
                k = counts[copy[j]]
                if j > a and copy[j] == copy[j - 1] + 1 and k >= done:
                    batch[j] = batch[j - 1]
                else:
                    batch[j] = start[r]
                    done = 0
                changed = order[r, done:k]
                positions(batch[j])[changed] = src[changed]
                done = k

    return fill
