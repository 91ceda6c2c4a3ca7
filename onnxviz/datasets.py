"""Image folders: find the images (recursively), their labels from sub-folder names, and what was left out.

>>> data = scan_folder("photos")          # photos/cat/1.jpg, photos/dog/2.png, photos/notes.txt
>>> data.classes, data.labels, data.skipped
(('cat', 'dog'), array([0, 1]), [Skipped(path=PosixPath('photos/notes.txt'), reason='not an image (.txt)')])
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

from .errors import ImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                              ".ppm", ".pgm", ".pbm", ".pnm"})


@dataclass(frozen=True)
class ImageFile:
    """One image of a folder: its path relative to the root, label (sub-folder) and stat at scan time."""

    path: str  # relative to the root, "/"-separated
    label: Optional[str]
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Skipped:
    """A file left out, and why."""

    path: Path
    reason: str


@dataclass
class Dataset:
    """The images of a folder, sorted by path; ``labels`` index ``classes`` (-1: no sub-folder)."""

    root: Path
    files: list
    skipped: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def classes(self) -> tuple:
        return tuple(sorted({f.label for f in self.files if f.label is not None}))

    @property
    def labels(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index.get(f.label, -1) for f in self.files], dtype=np.int64)

    def path(self, i: int) -> Path:
        return self.root / self.files[i].path

    @property
    def paths(self) -> list:
        return [self.root / f.path for f in self.files]


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def scan_folder(root: Union[str, Path], exclude: Iterable[Union[str, Path]] = ()) -> Dataset:
    """Every image file under ``root`` (by extension, case-insensitive), sorted by relative path.

    An image in ``root/<name>/...`` gets label ``<name>``; images directly in ``root`` get none.
    Other files are listed in ``skipped``. Hidden folders (``.git``, caches) and folders in
    ``exclude`` (e.g. an output folder inside ``root``) are not entered; symlinked folders are
    not followed. Whether an image can be decoded is found out later, when it is read.
    """
    root = Path(root)
    if not root.exists():
        raise ImageError(f"image folder not found: {root}")
    if not root.is_dir():
        raise ImageError(f"{root} is a file, not a folder of images")
    excluded = {_real(p) for p in exclude}
    files, skipped = [], []

    def onerror(exc: OSError):
        skipped.append(Skipped(Path(exc.filename or root), f"cannot list folder: {exc.strerror or exc}"))

    for folder, dirs, names in os.walk(root, onerror=onerror):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and _real(Path(folder, d)) not in excluded)
        rel_folder = Path(folder).relative_to(root)
        label = rel_folder.parts[0] if rel_folder.parts else None
        for name in names:
            full = Path(folder, name)
            if not is_image_name(name):
                skipped.append(Skipped(full, f"not an image ({os.path.splitext(name)[1] or 'no extension'})"))
                continue
            try:
                st = full.stat()
            except OSError as exc:  # a dangling link, or gone already
                skipped.append(Skipped(full, f"cannot read: {exc.strerror or exc}"))
                continue
            if not full.is_file():
                skipped.append(Skipped(full, "not a regular file"))
                continue
            files.append(ImageFile((rel_folder / name).as_posix(), label, st.st_size, st.st_mtime_ns))
    files.sort(key=lambda f: f.path)
    skipped.sort(key=lambda s: str(s.path))
    if not files:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        other = f"; {len(skipped)} other file(s) skipped, e.g. {skipped[0].path}" if skipped else ""
        raise ImageError(f"no image files in {root} (searched sub-folders for {extensions}){other}")
    return Dataset(root, files, skipped)


def _real(p) -> str:
    return os.path.realpath(p)
