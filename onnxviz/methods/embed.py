"""Features of a whole image folder at one layer, streamed to a resumable on-disk cache.

Images are decoded and preprocessed in background threads while onnxruntime runs the
previous batch. With ``cache=DIR`` the features go to ``DIR/features.npy`` (a memory-mapped
(N, D) float32 array, row i = ``manifest["files"][i]``) as they are computed, so memory stays
flat however large the folder; ``DIR/status.npy`` marks finished rows (1 = done, 2 = failed)
and ``DIR/manifest.json`` records what they were computed from (model hash, layer, pooling,
preprocessing, and every file's size and mtime). A second run, or one after Ctrl-C, computes
only the rows that are missing or whose file changed.

>>> emb = embed(model, "photos/", cache="feats/")     # layer: the input of the final FC layer
>>> emb.features.shape, emb.classes, emb.failures
((1200, 96), ('cat', 'dog'), [Skipped(path=PosixPath('photos/cat/broken.jpg'), reason='...')])
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from ..datasets import Dataset, Skipped, scan_folder
from ..errors import ImageError, OnnxvizError
from ..images import Preprocess, preprocess, read_image
from ..graph.heads import penultimate_layer  # noqa: F401  (its home; imported from here by callers)
from ..io import atomic_write, check_output, ensure_out_dir, to_jsonable
from .layers import layer_axes

log = logging.getLogger("onnxviz")

POOLS = ("avg", "max", "flatten")
PENDING, DONE, FAILED = 0, 1, 2
MANIFEST, FEATURES, STATUS = "manifest.json", "features.npy", "status.npy"
CACHE_FORMAT = 1
_CHECKPOINT_S = 1.0  # how often finished rows are committed to status.npy


@dataclass
class Embedding:
    """Features of the readable images of a folder, one row per image, in path order.

    ``labels`` index ``classes`` (-1 for images outside class sub-folders). ``failures`` are
    image files that could not be used, ``skipped`` the other files of the folder.
    ``computed``/``reused`` count rows run through the model in this call / taken from the cache.
    """

    features: np.ndarray  # (n, d) float32; a read-only memory map when every image was read
    paths: list
    labels: np.ndarray
    classes: tuple
    layer: str
    pool: str
    pre: Preprocess
    failures: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    cache: Optional[Path] = None
    computed: int = 0
    reused: int = 0

    def __len__(self) -> int:
        return len(self.paths)

    def label_name(self, i: int) -> str:
        k = int(self.labels[i])
        return self.classes[k] if k >= 0 else ""


class Pooler:
    """Turns a batch of a layer's values into (N, D) float32 rows.

    4-D feature maps are averaged ("avg") or maxed ("max") over their height and width, as
    traced through the graph (so channels-last tensors pool right), or flattened channels-first
    ("flatten"); other tensors are flattened per image.
    """

    def __init__(self, model, layer: str, pool: str = "avg"):
        if pool not in POOLS:
            raise OnnxvizError(f"pool {pool!r}: expected one of {', '.join(POOLS)}")
        self.model, self.layer, self.pool = model, layer, pool
        self._axes = None

    def __call__(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        n = values.shape[0]
        if values.ndim == 4:
            if self._axes is None:
                self._axes = layer_axes(self.model, self.layer, strict=False)
            c, h, w = self._axes
            if self.pool == "avg":
                values = values.mean(axis=(h, w), dtype=np.float64)
            elif self.pool == "max":
                values = values.max(axis=(h, w))
            else:
                values = np.transpose(values, (0, c, h, w))
        return np.ascontiguousarray(values.reshape(n, -1), dtype=np.float32)


def features_of(model, x: np.ndarray, layer: str, pool: str = "avg") -> np.ndarray:
    """(N, D) features of a preprocessed batch (see ``Pooler``)."""
    return Pooler(model, layer, pool)(model.activations(x, [layer])[layer])


def image_features(model, paths: Sequence, layer: str, pool: str = "avg",
                   pre: Optional[Preprocess] = None) -> np.ndarray:
    """(N, D) features of image files, computed as ``embed`` computes them; ImageError if one is unreadable."""
    pre = fixed_size(model.input, pre or Preprocess())
    x = preprocess([read_image(p) for p in paths], model.input, pre)
    return features_of(model, x, layer, pool)


def fixed_size(spec, pre: Preprocess) -> Preprocess:
    """``pre`` with the input size made explicit, so every image of a folder is resized alike."""
    if pre.size is not None:
        for got, want, what in zip(pre.size, (spec.height, spec.width), ("height", "width")):
            if want is not None and got != want:
                raise ImageError(f"size {pre.size[0]}x{pre.size[1]} does not fit model input {spec.name!r}, "
                                 f"whose {what} is fixed at {want}")
        return pre
    if spec.size is None:
        raise ImageError(f"model input {spec.name!r} has a dynamic size: choose the size every image is "
                         "resized to (size=(h, w), --size HxW)")
    return dataclasses.replace(pre, size=spec.size)


# ---------------------------------------------------------------------------- reading in the background

@dataclass
class Batch:
    """Images read and preprocessed: ``x`` holds the rows of ``indices`` (dataset indices)."""

    indices: np.ndarray
    x: Optional[np.ndarray]
    sizes: list  # original (height, width) per row
    stats: list  # (bytes, mtime_ns) per row, as read
    failures: list  # (dataset index, reason)


def read_batches(dataset: Dataset, indices: Sequence[int], spec, pre: Preprocess, batch_size: int = 32,
                 workers: int = 2) -> Iterator[Batch]:
    """Batches of ``dataset`` images, decoded by ``workers`` threads a few batches ahead of the consumer.

    ``pre`` must have a fixed size (``fixed_size``). A file that cannot be read becomes a failure
    in its batch; the others go on.
    """
    if batch_size < 1 or workers < 1:
        raise OnnxvizError(f"batch_size and workers must be positive, got {batch_size} and {workers}")
    indices = np.asarray(indices, dtype=np.int64)
    chunks = iter([indices[i:i + batch_size] for i in range(0, len(indices), batch_size)])
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="onnxviz-read")
    pending: deque = deque()
    try:
        for chunk in itertools.islice(chunks, workers + 1):
            pending.append(pool.submit(_read_batch, dataset, chunk, spec, pre))
        while pending:
            batch = pending.popleft().result()
            chunk = next(chunks, None)
            if chunk is not None:  # keep the readers busy while the caller runs the model
                pending.append(pool.submit(_read_batch, dataset, chunk, spec, pre))
            yield batch
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _read_batch(dataset: Dataset, chunk: np.ndarray, spec, pre: Preprocess) -> Batch:
    rows, ok, sizes, stats, failures = [], [], [], [], []
    for i in chunk:
        path = dataset.path(int(i))
        try:
            st = os.stat(path)
            image = read_image(path)
        except FileNotFoundError:
            failures.append((int(i), "disappeared after the folder was scanned"))
            continue
        except ImageError as exc:
            gone = not path.exists()
            failures.append((int(i), "disappeared after the folder was scanned" if gone else _reason(exc, path)))
            continue
        except Exception as exc:  # never let one file stop the run
            failures.append((int(i), f"{type(exc).__name__}: {exc}"))
            continue
        try:
            # one image at a time: its float arrays stay in cache, 2-10x faster than a whole batch
            rows.append(preprocess([image], spec, pre))
        except Exception as exc:
            failures.append((int(i), f"cannot be preprocessed: {exc}"))
            continue
        ok.append(int(i))
        sizes.append((image.height, image.width))
        stats.append((st.st_size, st.st_mtime_ns))
    x = np.concatenate(rows) if rows else None
    return Batch(np.asarray(ok, dtype=np.int64), x, sizes, stats, failures)


def _reason(exc: Exception, path: Path) -> str:
    text = str(exc)
    for prefix in (f"{path}: ", f"{path} "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


# ---------------------------------------------------------------------------- the cache

def model_digest(model) -> str:
    """SHA-256 of the model file (of the normalized graph when there is no file)."""
    h = hashlib.sha256()
    try:
        with open(model.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        h.update(model.proto.SerializeToString(deterministic=True))
    return h.hexdigest()


def cache_header(model, layer: str, pool: str, pre: Preprocess, digest: Optional[str] = None) -> dict:
    """What the features depend on; a cache is reused only when its header is equal."""
    spec = model.input
    return to_jsonable({
        "format": CACHE_FORMAT,
        "model": {"sha256": digest or model_digest(model), "file": os.path.basename(model.path)},
        "layer": layer,
        "pool": pool,
        "input": {"name": spec.name, "layout": spec.layout, "channels": spec.channels, "dtype": str(spec.dtype)},
        "preprocess": dataclasses.asdict(pre),
    })


class FeatureStore:
    """Rows of features for a dataset, in memory or in a cache folder that survives interruption.

    Rows reach ``status.npy`` as done only after their features are flushed, so a killed run
    leaves a cache whose done rows are all valid.
    """

    def __init__(self, folder: Optional[Union[str, Path]], header: dict, dataset: Dataset):
        self.folder = Path(folder) if folder is not None else None
        self.header = header
        self.dataset = dataset
        self.files = [{"path": f.path, "label": f.label, "size": f.size, "mtime_ns": f.mtime_ns}
                      for f in dataset.files]
        self.failures: dict = {}
        self.features: Optional[np.ndarray] = None
        self.dim: Optional[int] = None
        self._done: list = []
        self._last = time.monotonic()
        if self.folder is None:
            self.status = np.zeros(len(self.files), np.uint8)
        else:
            self._open()
        self.status[self.status == FAILED] = PENDING  # failed files get another try
        self.reused = int((self.status == DONE).sum())

    # -- opening and resuming
    def _path(self, name: str) -> Path:
        return self.folder / name

    def _open(self):
        from numpy.lib.format import open_memmap

        ensure_out_dir(self.folder)
        for name in (MANIFEST, FEATURES, STATUS, FEATURES + ".tmp", STATUS + ".tmp"):
            check_output(self._path(name))  # memory-mapped in place, so checked here, not by atomic_write
        old = self._old_manifest()
        keys = [_key(f) for f in self.files]
        if old is not None and [_key(f) for f in old["files"]] == keys:
            self.status = open_memmap(self._path(STATUS), mode="r+")
            if old.get("dim") is not None and self._path(FEATURES).exists():
                self.features, self.dim = open_memmap(self._path(FEATURES), mode="r+"), int(old["dim"])
        else:
            self._path(MANIFEST).unlink(missing_ok=True)  # invalid until rewritten below
            self.status = self._remap(old) if old is not None else None
            if self.status is None:
                for name in (FEATURES, STATUS):
                    self._path(name).unlink(missing_ok=True)
                self.status = open_memmap(self._path(STATUS), mode="w+", dtype=np.uint8, shape=(len(self.files),))
        self._write_manifest(complete=False)

    def _old_manifest(self) -> Optional[dict]:
        """The folder's manifest when its rows can be reused for this header, else None."""
        from numpy.lib.format import open_memmap

        path = self._path(MANIFEST)
        if not path.exists():
            if self._path(STATUS).exists():
                log.warning("%s has features but no manifest (a run was cut short while rewriting it); "
                            "starting over", self.folder)
            return None
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if {k: old.get(k) for k in self.header} != self.header:
                log.warning("the features cached in %s were computed with another model, layer, pooling or "
                            "preprocessing; computing them again", self.folder)
                return None
            n = len(old["files"])
            status = open_memmap(self._path(STATUS), mode="r")
            ok = status.shape == (n,)
            if old.get("dim") is not None and self._path(FEATURES).exists():
                feats = open_memmap(self._path(FEATURES), mode="r")
                ok = ok and feats.shape == (n, old["dim"]) and feats.dtype == np.float32
            elif (status == DONE).any():
                ok = False
            del status
            if not ok:
                log.warning("the cache in %s is inconsistent (array sizes differ from the manifest); "
                            "starting over", self.folder)
                return None
            return old
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read the cache in %s (%s); starting over", self.folder, exc)
            return None

    def _remap(self, old: dict) -> Optional[np.ndarray]:
        """Carry the done rows of unchanged files over to the new file list (files added/removed/changed)."""
        from numpy.lib.format import open_memmap

        where = {_key(f): j for j, f in enumerate(old["files"])}
        old_status = np.array(open_memmap(self._path(STATUS), mode="r"))
        pairs = [(i, where[_key(f)]) for i, f in enumerate(self.files)
                 if _key(f) in where and old_status[where[_key(f)]] == DONE]
        tmp_status, tmp_feats = self._path(STATUS + ".tmp"), self._path(FEATURES + ".tmp")
        status = open_memmap(tmp_status, mode="w+", dtype=np.uint8, shape=(len(self.files),))
        if pairs:
            dim = int(old["dim"])
            old_feats = open_memmap(self._path(FEATURES), mode="r")
            feats = open_memmap(tmp_feats, mode="w+", dtype=np.float32, shape=(len(self.files), dim))
            for start in range(0, len(pairs), 4096):  # bounded memory
                part = np.array(pairs[start:start + 4096])
                feats[part[:, 0]] = old_feats[part[:, 1]]
            feats.flush()
            del old_feats, feats
            os.replace(tmp_feats, self._path(FEATURES))
            self.features, self.dim = open_memmap(self._path(FEATURES), mode="r+"), dim
            status[np.array([i for i, _ in pairs])] = DONE
        else:
            self._path(FEATURES).unlink(missing_ok=True)
        status.flush()
        del status
        os.replace(tmp_status, self._path(STATUS))
        log.info("reusing %d cached rows of %d files in %s", len(pairs), len(self.files), self.folder)
        return open_memmap(self._path(STATUS), mode="r+")

    # -- writing
    def todo(self) -> np.ndarray:
        return np.flatnonzero(self.status != DONE)

    def write(self, indices: np.ndarray, rows: np.ndarray, stats=()):
        if self.features is None:
            self._create(rows.shape[1])
        if rows.shape[1] != self.dim:
            raise OnnxvizError(f"layer gave {rows.shape[1]} features per image, earlier images {self.dim}")
        self.features[indices] = rows
        for i, (size, mtime_ns) in zip(indices, stats):
            self.files[i]["size"], self.files[i]["mtime_ns"] = int(size), int(mtime_ns)
        self._done.append(np.asarray(indices))
        if time.monotonic() - self._last > _CHECKPOINT_S:
            self.checkpoint()

    def _create(self, dim: int):
        self.dim = int(dim)
        if self.folder is None:
            self.features = np.zeros((len(self.files), self.dim), np.float32)
            return
        from numpy.lib.format import open_memmap

        self.features = open_memmap(self._path(FEATURES), mode="w+", dtype=np.float32,
                                    shape=(len(self.files), self.dim))
        self._write_manifest(complete=False)  # records dim: the done rows below are readable

    def fail(self, index: int, reason: str):
        self.failures[int(index)] = reason
        self.status[index] = FAILED

    def checkpoint(self):
        """Flush features, then mark their rows done (in that order: a done row is always valid)."""
        if self.folder is not None and self.features is not None:
            self.features.flush()
        for indices in self._done:
            self.status[indices] = DONE
        self._done = []
        if self.folder is not None:
            self.status.flush()
        self._last = time.monotonic()

    def close(self):
        self.checkpoint()
        if self.folder is not None:
            self._write_manifest(complete=not (self.status == PENDING).any())

    def _write_manifest(self, complete: bool):
        status = np.asarray(self.status)
        files = []
        for i, f in enumerate(self.files):
            entry = dict(f)
            if i in self.failures:
                entry["error"] = self.failures[i]
            files.append(entry)
        manifest = {
            **self.header,
            "dim": self.dim,
            "dtype": "float32",
            "root": str(self.dataset.root.resolve()),
            "complete": bool(complete),
            "counts": {"files": len(files), "done": int((status == DONE).sum()),
                       "failed": len(self.failures), "skipped": len(self.dataset.skipped)},
            "classes": list(self.dataset.classes),
            "rows": "row i of features.npy holds files[i]; rows of failed or pending files are zeros "
                    "(status.npy: 0 pending, 1 done, 2 failed)",
            "files": files,
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in self.dataset.skipped],
        }
        with atomic_write(self._path(MANIFEST), "w") as f:
            f.write(_manifest_text(manifest))

    # -- reading
    def done(self) -> np.ndarray:
        return np.flatnonzero(self.status == DONE)

    def rows(self) -> np.ndarray:
        """Features of the done rows: the memory map itself when every row is done, else a copy."""
        ok = self.done()
        if self.features is None:
            return np.zeros((0, self.dim or 0), np.float32)
        if self.folder is None:
            return self.features[ok]
        from numpy.lib.format import open_memmap

        feats = open_memmap(self._path(FEATURES), mode="r")
        return feats if len(ok) == len(self.files) else np.asarray(feats[ok])


def _manifest_text(manifest: dict) -> str:
    """Indented JSON with one line per file, so a manifest of 100k files stays readable and small."""
    parts = []
    for k, v in manifest.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            rows = ",\n  ".join(json.dumps(r, ensure_ascii=False) for r in v)
            parts.append(f"{json.dumps(k)}: [\n  {rows}\n ]")
        else:
            parts.append(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}")
    return "{\n " + ",\n ".join(parts) + "\n}\n"


def _key(f: dict) -> tuple:
    return (f["path"], int(f["size"]), int(f["mtime_ns"]))


# ---------------------------------------------------------------------------- extraction

def embed(model, folder: Union[str, Path, Dataset], layer: Optional[str] = None, pre: Optional[Preprocess] = None,
          *, pool: str = "avg", cache: Optional[Union[str, Path]] = None, batch_size: int = 32, workers: int = 2,
          progress: bool = False, digest: Optional[str] = None) -> Embedding:
    """Features at ``layer`` (default ``penultimate_layer``) of every image under ``folder``.

    Spatial layers are pooled to one vector per image (``pool``: "avg", "max" or "flatten").
    With ``cache`` the features stream to that folder and a rerun resumes (see module docs);
    without it they are kept in memory. Unreadable files are skipped and listed in
    ``failures``; ImageError only when no image could be read. ``digest``: the model file's
    SHA-256 when already known.

    >>> emb = embed(model, "data/val", cache="out/features", progress=True)
    """
    pre = fixed_size(model.input, pre or Preprocess())
    dataset = folder if isinstance(folder, Dataset) else scan_folder(folder, exclude=[cache] if cache else [])
    layer = layer or penultimate_layer(model)
    if not model.has_tensor(layer):
        raise OnnxvizError(f"no tensor named {layer!r} in the model; `onnxviz inspect` lists them")
    pooler = Pooler(model, layer, pool)
    store = FeatureStore(cache, cache_header(model, layer, pool, pre, digest), dataset)
    todo = store.todo()
    computed = 0
    bar = progress_bar(len(todo), progress, f"features of {layer}")
    try:
        for batch in read_batches(dataset, todo, model.input, pre, batch_size, workers):
            for i, reason in batch.failures:
                store.fail(i, reason)
                log.info("skipped %s: %s", dataset.path(i), reason)
            if batch.x is not None:
                rows = pooler(model.activations(batch.x, [layer])[layer])
                store.write(batch.indices, rows, batch.stats)
                computed += len(batch.indices)
            bar.update(len(batch.indices) + len(batch.failures))
    finally:  # Ctrl-C included: what is done stays done
        bar.close()
        store.close()
    return stored_embedding(store, dataset, layer, pool, pre, computed, store.reused)


def stored_embedding(store, dataset, layer: str, pool: str, pre, computed: int, reused: int) -> "Embedding":
    """The :class:`Embedding` of a finished feature store over ``dataset``; no readable image is an error."""
    ok = store.done()
    failures = [Skipped(dataset.path(i), reason) for i, reason in sorted(store.failures.items())]
    if not len(ok):
        shown = "; ".join(f"{s.path}: {s.reason}" for s in failures[:3])
        raise ImageError(f"none of the {len(dataset)} image files under {dataset.root} could be read ({shown})")
    return Embedding(
        features=store.rows(), paths=[dataset.path(i) for i in ok], labels=dataset.labels[ok],
        classes=dataset.classes, layer=layer, pool=pool, pre=pre, failures=failures,
        skipped=list(dataset.skipped), cache=store.folder, computed=computed,
        reused=reused)


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def progress_bar(total: int, enabled: bool, desc: str):
    """A tqdm bar over images when enabled, else one that does nothing."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False)
