"""Reading and writing files: every output appears whole or not at all, and never over an input.

One guard decides every output path. Inside ``guard()`` (every CLI command runs in one),
each file onnxviz reads is recorded by identity (``st_dev``, ``st_ino``: hard links and
symlinks included) and each folder it reads from is recorded by its real path; every write
goes through ``atomic_write``, which refuses a path that is a recorded input or lies inside
a recorded folder.

>>> with guard():
...     protect("model.onnx")
...     with atomic_write("out/scores.json", "w") as f:
...         f.write("{}")
"""
from __future__ import annotations

import contextvars
import json
import math
import os
import secrets
import stat
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

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
    check_output(path)
    with _replacing(path) as (_tmp, fd):
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


@contextmanager
def _replacing(path: Path) -> Iterator[tuple[Path, int]]:
    """A new temp file beside ``path`` (its name and open descriptor); renamed over ``path`` when
    the block succeeds, removed when it raises (KeyboardInterrupt included)."""
    tmp, fd = _create_temp(path)
    try:
        yield tmp, fd
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
        except NotADirectoryError:
            raise OnnxvizError(f"cannot write {path}: {path.parent} is not a folder") from None
        except PermissionError:
            raise OnnxvizError(f"cannot write {path}: permission denied in {path.parent}") from None
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


def save_model(proto, path: PathLike) -> Path:
    """Save an ONNX model atomically; over 2 GB its weights go to ``<name>.data`` beside it."""
    import onnx

    path = Path(path)
    check_output(path)
    big = proto.ByteSize() >= 2**31 - 2**26
    if big:
        check_output(path.with_name(path.name + ".data"))
    with _replacing(path) as (tmp, fd):
        os.close(fd)
        if big:
            onnx.save_model(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=path.name + ".data")
        else:
            onnx.save_model(proto, str(tmp))
    return path


def ensure_out_dir(path: PathLike) -> Path:
    """Create the output folder (and parents) if needed; refuse one that is a file or inside an input folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OnnxvizError(f"output folder {path} exists and is not a folder")
    check_output(path, folder=True)
    made = [p for p in (path, *path.parents) if not p.exists()][::-1]  # outermost first
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OnnxvizError(f"cannot create output folder {path}: a parent of it is a file") from None
    except PermissionError:
        raise OnnxvizError(f"cannot create output folder {path}: permission denied") from None
    active = _GUARD.get()
    if active is not None:
        active.created.extend(made)
    if not os.access(path, os.W_OK | os.X_OK):
        raise OnnxvizError(f"output folder {path} is not writable")
    return path


def check_not_input(out: PathLike, inputs: Iterable[PathLike]) -> None:
    """Refuse an output path that is one of ``inputs`` (same path, symlink or hard link)."""
    with guard(nested=True):
        for inp in inputs:
            protect(inp)
        check_output(out)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then raise it: a group of files is written whole.

    Outside the main thread signals cannot be caught; the block then runs as it is.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


# ---------------------------------------------------------------------------- the input guard

@dataclass
class _Guard:
    files: dict = field(default_factory=dict)  # (st_dev, st_ino) -> path as given
    paths: dict = field(default_factory=dict)  # real path -> path as given (for paths that do not resolve yet)
    folders: dict = field(default_factory=dict)  # real path -> path as given
    created: list = field(default_factory=list)  # output folders this run made, outermost first


def _remove_if_empty(created: list) -> None:
    """After a failed run: the output folders it made that hold nothing, innermost first."""
    for folder in reversed(created):
        try:
            folder.rmdir()  # only ever removes an empty folder
        except OSError:
            pass


_GUARD: contextvars.ContextVar = contextvars.ContextVar("onnxviz_guard", default=None)


@contextmanager
def guard(nested: bool = False) -> Iterator[_Guard]:
    """Record inputs and refuse outputs over them until the block ends.

    ``nested=True`` adds to an active guard instead of starting a fresh one.
    """
    current = _GUARD.get()
    if nested and current is not None:
        yield current
        return
    token = _GUARD.set(_Guard())
    try:
        yield _GUARD.get()
    except BaseException:  # a failed run leaves no empty output folder behind
        _remove_if_empty(_GUARD.get().created)
        raise
    finally:
        _GUARD.reset(token)


def _identities(path: PathLike) -> list:
    out = []
    for fn in (os.stat, os.lstat):
        try:
            st = fn(path)
        except (OSError, ValueError):
            continue
        out.append((st.st_dev, st.st_ino))
    return out


def protect(path: Optional[PathLike]) -> None:
    """Record ``path`` as an input (a file, or a folder and every file under it); no-op outside ``guard()``."""
    g = _GUARD.get()
    if g is None or path is None:
        return
    path = Path(path)
    if path.is_dir():
        g.folders[os.path.realpath(path)] = path
        for root, dirs, files in os.walk(path):  # symlinked sub-folders are not followed, as scan_folder
            for name in files:
                for ident in _identities(os.path.join(root, name)):
                    g.files.setdefault(ident, Path(root) / name)
        return
    for ident in _identities(path):
        g.files.setdefault(ident, path)
    g.paths.setdefault(os.path.realpath(path), path)


def check_output(path: PathLike, folder: bool = False) -> None:
    """Refuse writing ``path`` when it is a recorded input (by identity) or lies inside an input folder."""
    g = _GUARD.get()
    if g is None:
        return
    path = Path(path)
    for ident in _identities(path):
        if ident in g.files:
            raise OnnxvizError(f"refusing to write {path}: it is the input file {g.files[ident]}")
    real = os.path.realpath(path)
    if real in g.paths:
        raise OnnxvizError(f"refusing to write {path}: it is the input file {g.paths[real]}")
    for base, given in g.folders.items():
        if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
            what = "is" if real == base else "is inside"
            kind = "output folder" if folder else "output"
            raise OnnxvizError(f"refusing to write {kind} {path}: it {what} the input folder {given}; "
                               "choose an output outside it")


def regular_file(path: PathLike, what: str = "file") -> Path:
    """``path`` if it is a regular file (or a link to one); a FIFO or device would block or never end."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise OnnxvizError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise OnnxvizError(f"cannot read {what} {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise OnnxvizError(f"{path} is a folder, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise OnnxvizError(f"{path} is not a regular file (a pipe, socket or device): not a {what}")
    return path


def inside(folder: PathLike, relative: str, what: str) -> Path:
    """``folder/relative`` for a path a model or sidecar names: relative, no '..', no symlink out of ``folder``.

    The rule ONNX applies to external data, for every path a file we read tells us to read.
    """
    if not isinstance(relative, str) or not relative:
        raise OnnxvizError(f"{what}: expected a non-empty relative path, got {relative!r}")
    rel = Path(relative)
    if rel.is_absolute() or relative.startswith(("/", "\\")) or (len(relative) > 1 and relative[1] == ":"):
        raise OnnxvizError(f"{what} {relative!r} is an absolute path; only paths relative to the model's "
                           "folder are allowed")
    if ".." in rel.parts:
        raise OnnxvizError(f"{what} {relative!r} points outside the model's folder ('..')")
    base = os.path.realpath(folder)
    real = os.path.realpath(os.path.join(base, relative))
    if not real.startswith(base.rstrip(os.sep) + os.sep):
        raise OnnxvizError(f"{what} {relative!r} leads outside the model's folder (through a symbolic link)")
    return Path(folder) / rel


# ---------------------------------------------------------------------------- memory

def physical_memory() -> Optional[int]:
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(nbytes: int, what: str, fraction: float = 0.5) -> None:
    """Refuse before allocating ``nbytes`` for ``what`` when it exceeds ``fraction`` of the RAM.

    numpy would raise MemoryError after a long wait, or the OS would kill the process; a size
    a model declares or a user asks for should be refused up front, saying how large it is.
    """
    total = physical_memory()
    if total and nbytes > fraction * total:
        raise OnnxvizError(f"{what} needs {format_bytes(nbytes)} of memory, more than this machine can "
                           f"hold ({format_bytes(total)} RAM): use a smaller --size or --batch-size")


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} PB"


# ---------------------------------------------------------------------------- names

def safe_name(name: str, default: str = "file", limit: int = 120) -> str:
    """A tensor or image name as one file-name component: no separators, never '.', '..' or hidden.

    >>> safe_name(".."), safe_name("/features/relu_1")
    ('file', '_features_relu_1')
    """
    text = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
    text = text.strip(".")[:limit].strip(".")
    return text or default


def label(labels: Optional[Sequence], k: int) -> str:
    """The name of class ``k``, or "class k" when there is no label for it."""
    if labels and 0 <= k < len(labels):
        return str(labels[k])
    return f"class {k}"
