"""Writing results: every file appears whole or not at all, and never over an input.

>>> with atomic_write("out/scores.json", "w") as f:
...     f.write("{}")
"""
from __future__ import annotations

import json
import math
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Union

import numpy as np

from .errors import OnnxvizError

PathLike = Union[str, Path]


@contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator:
    """Open a temp file beside ``path``; on success fsync it and rename it over ``path``.

    If the block raises (KeyboardInterrupt included) the temp file is removed and any old
    ``path`` is left untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode {mode!r}: expected 'wb' or 'w'")
    path = Path(path)
    tmp, fd = _create_temp(path)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _create_temp(path: Path) -> tuple[Path, int]:
    # os.open with 0o666 lets the umask decide the final permissions (mkstemp would force 0600).
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        except FileNotFoundError:
            raise OnnxvizError(f"cannot write {path}: folder {path.parent} does not exist") from None
    raise OnnxvizError(f"cannot create a temporary file beside {path}")


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); not possible on Windows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_npy(array: np.ndarray, path: PathLike) -> Path:
    """Save one array as .npy (no pickles)."""
    with atomic_write(path) as f:
        np.save(f, np.asarray(array), allow_pickle=False)
    return Path(path)


def to_jsonable(obj):
    """Numpy scalars/arrays, paths, tuples and sets as plain JSON values; NaN/inf become null."""
    if isinstance(obj, dict):
        return {_json_key(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(obj)]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON has no NaN; browsers reject it
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON: {obj!r:.80}")


def _json_key(k):
    k = k.item() if isinstance(k, np.generic) else k
    return k if isinstance(k, (str, int, float, bool)) or k is None else str(k)


def save_json(obj, path: PathLike, indent: int = 2) -> Path:
    """Save ``obj`` as UTF-8 JSON, converting numpy values (see ``to_jsonable``)."""
    text = json.dumps(to_jsonable(obj), indent=indent, ensure_ascii=False, allow_nan=False)
    with atomic_write(path, "w") as f:
        f.write(text + "\n")
    return Path(path)


def save_png(image: np.ndarray, path: PathLike) -> Path:
    """Save a uint8 image (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) as PNG."""
    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise OnnxvizError(f"save_png needs uint8 pixels, got {a.dtype}: normalize/colorize first")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
        raise OnnxvizError(f"save_png needs an (H, W[, 1|3|4]) image, got shape {a.shape}")
    with atomic_write(path) as f:
        Image.fromarray(a).save(f, format="PNG")
    return Path(path)


def save_figure(fig, path: PathLike, dpi: int = 150) -> Path:
    """Save a matplotlib Figure; the format (png, pdf, svg...) follows the file suffix."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_write(path) as f:
        fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight")
    return path


def ensure_out_dir(path: PathLike) -> Path:
    """Create the output folder (and parents) if needed."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OnnxvizError(f"output folder {path} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_not_input(out: PathLike, inputs: Iterable[PathLike]) -> None:
    """Refuse an output path that is one of the inputs (same path, link or hard link)."""
    out = Path(out)
    for inp in inputs:
        inp = Path(inp)
        same = out.resolve() == inp.resolve()
        if not same and out.exists() and inp.exists():
            same = os.path.samefile(out, inp)
        if same:
            raise OnnxvizError(f"output {out} is the input file {inp}: choose another output path")
