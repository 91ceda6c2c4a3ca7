"""The files an attribution run writes for each image, the same from the CLI's loop and from the
dataset engines' workers (local, ``--shard``, Ray).

``<folder>/<method>[_<class>].npy`` (the [0, 1] map at input size), ``.raw.npy`` (the unnormalized
map) and ``.png`` (the map over the image), and the image's results.json entry that lists them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .io import ensure_out_dir, safe_name, save_figure, save_npy
from .methods.cam import TITLES as CAM_TITLES
from .methods.saliency import TITLES as SALIENCY_TITLES
from .render import heatmap_figure
from .session import Session
from .targets import describe, normalize, objective

TITLES = {**CAM_TITLES, **SALIENCY_TITLES, "occlusion": "occlusion"}  # each beside its METHODS


def title(method: str) -> str:
    """The method's title for figures and messages (its name when it has none)."""
    return TITLES.get(method, method)


def explained(model, output, score: str, target) -> dict:
    """results.json's "explained": the output, the tensor explained, the score kind and the target
    (class indices, a general target, or the predicted class when ``target`` is None)."""
    obj = objective(model, output, score)
    if target is None:
        target = normalize(model, obj, None, 1)
    return {"output": obj.output, "tensor": obj.tensor, "score": score, "target": describe(target)}


def write_image(session: Session, result, rows, shown, path: str, folder: Path, method: str, suffixed: bool,
                chosen: bool) -> dict:
    """One image's files, all or none: a failure part-way removes what this call wrote.

    ``rows``: the rows of ``result`` that belong to this image; ``shown``: the image as the model saw
    it (for the png); ``suffixed``: name files ``<method>_<class>`` (--top-k); ``chosen``: the
    targets were given, not predicted (the png's caption says which).
    """
    created = not folder.exists()
    ensure_out_dir(folder)
    written: list = []
    try:
        return write_maps(session, result, rows, shown, path, folder, method, suffixed, chosen, written)
    except BaseException:
        for p in written:
            Path(p).unlink(missing_ok=True)
        if created:
            try:
                folder.rmdir()
            except OSError:
                pass
        raise


def write_maps(session, result, rows, shown, path, folder, method, suffixed, chosen, written: list) -> dict:
    """The files of :func:`write_image`, each path appended to ``written`` as soon as it exists (so a
    failure part-way can remove them); returns the image's results.json entry."""
    maps = []
    for r in rows:
        k = int(result.target[r])
        stem = f"{method}_{k}" if suffixed else method
        label = session.label(k) if k >= 0 else "general target"
        caption = f"{'target' if chosen or suffixed else 'predicted'}: {label} ({float(result.score[r]):.3g})"
        heading = title(method) + (f" @ {result.layer}" if result.layer else "")
        files = {}
        for kind, name, save in (
                ("map", f"{stem}.npy", lambda p: save_npy(result.map[r], p)),
                ("raw", f"{stem}.raw.npy", lambda p: save_npy(result.raw[r], p)),
                ("png", f"{stem}.png", lambda p: save_figure(heatmap_figure(shown, result.map[r], heading,
                                                                           label=caption), p))):
            files[kind] = save(folder / name)
            written.append(files[kind])
        maps.append({"target": k, "label": label, "score": float(result.score[r]), "layer": result.layer,
                     "method": method, "files": {kind: str(p) for kind, p in files.items()}})
    return {"image": os.path.abspath(path), "dir": str(folder), "maps": maps}


def image_dirs(images: Sequence[str], folder: Path) -> list:
    """OUT/<stem> per image; stems shared by several images get -2, -3... in order."""
    seen: dict = {}
    out = []
    for path in images:
        stem = safe_name(Path(path).stem, "image")
        seen[stem] = seen.get(stem, 0) + 1
        out.append(folder / (stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"))
    return out
