"""Picklable batch callables: the unit of work that Ray Data's ``map_batches``, a job array or a plain loop maps.

``BatchEmbedder(model_path, layer=...)`` and ``BatchExplainer(model_path, method=...)`` take a
batch ``{"path": (N,) str}`` or ``{"image": (N, H, W[, C]) uint8}`` (decoded images, as
``ray.data.read_images`` gives; ragged sizes as an object array) with optional ``"id"``, and
return ``{"id", "ok", "error", ...results}``, one row per input image. A bad image gives
``ok=False`` and its reason in ``error``; it never stops the batch.

Only the model path and options are pickled. Each process loads the model once, on first use,
and keeps it (with its onnxruntime sessions and gradient graphs) for every later batch and
every other callable over the same model in that process.

>>> embedder = BatchEmbedder("models/shapes_cnn.onnx")
>>> out = embedder({"path": np.array(["a.png", "b.png"])})
>>> out["features"].shape, out["ok"]
((2, 96), array([ True,  True]))
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
from PIL import Image

from ..errors import ImageError, OnnxvizError, OptionError
from ..images import Preprocess, preprocess, read_image
from ..graph.heads import penultimate_layer
from ..methods.embed import Pooler, fixed_size
from ..session import open_session

_SESSIONS: dict = {}  # (path, load options) -> Session: one per process, shared by every callable


def process_session(model_path: str, load_options: dict):
    """This process's copy of the model with its sidecar preprocessing and labels (loaded on first use)."""
    key = (os.path.abspath(model_path), tuple(sorted(load_options.items())))
    if key not in _SESSIONS:
        _SESSIONS[key] = open_session(model_path, **load_options)
    return _SESSIONS[key]


class _BatchCallable:
    def __init__(self, model_path, pre: Optional[Preprocess] = None, device: str = "cpu",
                 threads: Optional[int] = None, readers: int = 2, **load_options):
        self.model_path = str(model_path)
        self.readers = readers  # threads decoding the images of a batch (Pillow releases the GIL)
        self._pool = None
        self.pre = pre  # None: the model's sidecar JSON, else onnxviz's defaults
        self.load_options = {"device": device, "threads": threads, **load_options}
        self._model = None

    def __getstate__(self):  # sessions, graphs and threads stay in the process that made them
        return {**self.__dict__, "_model": None, "_pool": None}

    @property
    def model(self):
        if self._model is None:
            session = process_session(self.model_path, self.load_options)
            self._model, self.labels = session.model, session.labels
            self.pre = fixed_size(self._model.input, self.pre or session.pre)
        return self._model

    def read(self, batch: dict):
        """(x of the readable images, ok (N,) bool, error (N,) str); decoded by ``readers`` threads."""
        self.model  # loaded (and ``pre`` fixed) before the threads start
        decoded = "image" in batch
        items = batch["image"] if decoded else batch["path"]
        if self.readers > 1 and len(items) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.readers, thread_name_prefix="onnxviz-read")
            got = list(self._pool.map(lambda item: self._one(item, decoded), items))
        else:
            got = [self._one(item, decoded) for item in items]
        ok = np.array([isinstance(g, np.ndarray) for g in got], bool)
        error = np.array(["" if k else g for g, k in zip(got, ok)], dtype=object).astype(str)
        x = np.concatenate([g for g, k in zip(got, ok) if k]) if ok.any() else None
        return x, ok, error

    def _one(self, item, decoded: bool):
        """One image as a (1, ...) model input, or the reason it cannot be used."""
        try:
            image = _image(item) if decoded else read_image(str(item))
            return preprocess([image], self.model.input, self.pre)  # one at a time, as `embed` does
        except ImageError as exc:
            return _reason(exc, item)
        except Exception as exc:  # never let one image stop the batch
            return f"{type(exc).__name__}: {exc}"

    def blank(self) -> np.ndarray:
        """One all-zero model input: what a batch with no readable image runs, to keep its columns' shapes."""
        spec = self.model.input
        shape = [1, spec.channels, *self.pre.size] if spec.layout == "NCHW" else [1, *self.pre.size, spec.channels]
        return np.zeros(shape, spec.dtype)

    @staticmethod
    def ids(batch: dict, n: int) -> np.ndarray:
        return np.asarray(batch["id"]) if "id" in batch else np.arange(n)


def _image(array) -> Image.Image:
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise ImageError(f"decoded images must be uint8, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    return Image.fromarray(a)


def _reason(exc: Exception, item) -> str:
    text = str(exc)
    for prefix in (f"{item}: ", f"{item} "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


class BatchEmbedder(_BatchCallable):
    """Features at ``layer`` (default: the input of the final FC layer), pooled as in ``onnxviz.embed``.

    Returns ``features`` (N, D) float32 (zeros for images that failed).
    """

    def __init__(self, model_path, layer: Optional[str] = None, pool: str = "avg", **options):
        super().__init__(model_path, **options)
        self.layer, self.pool = layer, pool
        self._pooler, self._dim = None, None

    def __getstate__(self):
        return {**super().__getstate__(), "_pooler": None, "_dim": None}

    def features(self, x: np.ndarray) -> np.ndarray:
        model = self.model
        if self._pooler is None:
            self.layer = self.layer or penultimate_layer(model)
            if not model.has_tensor(self.layer):
                raise OnnxvizError(f"no tensor named {self.layer!r} in the model; `onnxviz inspect` lists them")
            self._pooler = Pooler(model, self.layer, self.pool)
        return self._pooler(model.activations(x, [self.layer])[self.layer])

    def __call__(self, batch: dict) -> dict:
        x, ok, error = self.read(batch)
        n = len(ok)
        if x is not None:
            rows = self.features(x)
            features = np.zeros((n, rows.shape[1]), np.float32)
            features[ok] = rows
        else:  # nothing readable: keep the column's width for engines that concatenate batches
            features = np.zeros((n, self.dim), np.float32)
        return {"id": self.ids(batch, n), "ok": ok, "error": error, "features": features}

    @property
    def dim(self) -> int:
        """Features per image (found once, by running one blank image)."""
        if self._dim is None:
            self._dim = self.features(self.blank()).shape[1]
        return self._dim


def explainers() -> dict:
    """Method name -> function(model, x, target=..., **options) returning a Heatmap or Attribution."""
    from ..methods.cam import METHODS as CAM
    from ..methods.occlusion import occlusion
    from ..methods.saliency import METHODS as SALIENCY, saliency

    out = dict(CAM)
    for name in SALIENCY:
        out[name] = (lambda m: lambda model, x, **kw: saliency(model, x, method=m, **kw))(name)
    out["occlusion"] = occlusion
    return out


def grad_model_paths(grad_model) -> tuple:
    """None, a path or several, as absolute paths (workers on other nodes start in other folders)."""
    if grad_model is None:
        return ()
    items = [grad_model] if isinstance(grad_model, (str, os.PathLike)) else list(grad_model)
    return tuple(os.path.abspath(p) for p in items)


class BatchExplainer(_BatchCallable):
    """Maps of ``method`` (gradcam, cam, gradcam++, scorecam, layercam, guided-gradcam, vanilla,
    deconvnet, guided, smoothgrad, integrated, occlusion) for a batch of images.

    ``options`` go to the method (``layer``, ``target``, ``top_k``, ``output``, ``score``,
    ``window``...). A batch may carry a per-image ``"target"`` column. Returns ``map`` (N, H, W)
    in [0, 1], ``raw`` (N, ...), ``target`` and ``score`` (N,), ``layer``; with ``top_k=K``
    each of them gains an axis of K after N.

    ``grad_model``: one or more ``onnxviz export-grad`` files (guided-gradcam runs two: standard
    rules at the layer, guided at the input). The process then runs them instead of building
    gradient graphs; a file that does not fit the model or the method is refused on first use.
    """

    def __init__(self, model_path, method: str = "gradcam", *, pre: Optional[Preprocess] = None,
                 device: str = "cpu", threads: Optional[int] = None, readers: int = 2,
                 load_options: Optional[dict] = None, grad_model=None, **options):
        if method not in explainers():
            raise OnnxvizError(f"method {method!r}: expected one of {', '.join(explainers())}")
        super().__init__(model_path, pre=pre, device=device, threads=threads, readers=readers,
                         **(load_options or {}))
        self.method, self.options = method, options
        self.grad_model = grad_model_paths(grad_model)
        self._explaining = None

    def __getstate__(self):
        return {**super().__getstate__(), "_explaining": None}

    @property
    def explaining(self):
        """What the method runs on: the model, or with ``grad_model`` the model answering gradients from it."""
        if not self.grad_model:
            return self.model
        if self._explaining is None:
            from .exported import ExportedGradients, check_exported, read_exported

            model = self.model  # loaded first: it fixes ``pre``'s size
            files = [read_exported(p) for p in self.grad_model]
            check_exported(files, model, self.method, self.options, tuple(self.pre.size))
            self._explaining = ExportedGradients(model, files)
        return self._explaining

    def explain(self, x: np.ndarray, target=None):
        """The method's result (Heatmap / Attribution) for a preprocessed batch."""
        options = dict(self.options)
        if target is not None:
            options["target"] = target
        return explainers()[self.method](self.explaining, x, **options)


    def __call__(self, batch: dict) -> dict:
        x, ok, error = self.read(batch)
        n, k = len(ok), self.options.get("top_k") or 1
        out = {"id": self.ids(batch, n), "ok": ok, "error": error}
        target = np.asarray(batch["target"])[ok] if "target" in batch else None
        if x is None:  # nothing readable: zero rows, shaped as the method's (engines concatenate batches)
            result, good = self.explain(self.blank()), np.array([], np.int64)
        else:
            result, good = self.explain(x, target), np.flatnonzero(ok)
        for name in ("map", "raw", "target", "score"):
            values = np.asarray(getattr(result, name))
            full = np.zeros((n, k, *values.shape[1:]), values.dtype)
            if len(good):
                full[good] = values.reshape(len(good), k, *values.shape[1:])
            out[name] = full if self.options.get("top_k") else full[:, 0]
        out["layer"] = np.full(n, result.layer or "", dtype=object).astype(str)
        return out


def _check_names(methods, metrics) -> None:
    """Unknown method or metric names, refused where the callable is made (the driver), with the
    local engine's message: inside a worker they would surface as a failed Ray run."""
    from ..methods.sanity import method_function
    from ..methods.trust import check_metrics

    check_metrics(metrics, have_regions=True)  # names only: whether boxes came is the caller's check
    for method in methods:
        if method not in explainers() and not callable(method):
            method_function(method)  # raises "unknown method ...: choose from ..."


class BatchEvaluator(_BatchCallable):
    """Trust metrics (``onnxviz evaluate``) of ``methods`` for a batch of images, one record per image.

    A batch may carry ``"target"`` (class per image) and ``"boxes"`` (per image, the JSON of its
    boxes [[x0, y0, x1, y1], ...] in the original image's pixels, for the pointing game). Returns
    ``result``: per image the JSON of ``{"methods": {method: image_record}, "meta": {method:
    run_meta}, "errors": {method: reason}}`` (a method that cannot be evaluated on this model,
    e.g. CAM's randomization test, is an error of the method, not of the image).
    """

    def __init__(self, model_path, methods=("gradcam",), metrics=("deletion", "insertion", "sanity"), *,
                 steps: int = 50, score: str = "prob", seed: int = 0, resolution: str = "native",
                 pre: Optional[Preprocess] = None, device: str = "cpu", threads: Optional[int] = None,
                 readers: int = 2, load_options: Optional[dict] = None):
        _check_names(methods, metrics)
        super().__init__(model_path, pre=pre, device=device, threads=threads, readers=readers,
                         **(load_options or {}))
        self.methods, self.metrics = list(methods), list(metrics)
        self.settings = {"steps": steps, "score": score, "seed": seed, "resolution": resolution}

    def masks(self, batch: dict, ok: np.ndarray, size: tuple) -> Optional[np.ndarray]:
        """(n_ok, H, W) object masks of the readable images, or None without boxes."""
        import json

        from ..images import geometries
        from ..methods.trust import boxes_mask

        if "boxes" not in batch:
            return None
        items = batch["image"] if "image" in batch else batch["path"]
        out = []
        for item, boxes in zip(np.asarray(items, dtype=object)[ok], np.asarray(batch["boxes"])[ok]):
            image = _image(item) if "image" in batch else read_image(str(item))
            out.append(boxes_mask(json.loads(str(boxes)), geometries([image], self.model.input, self.pre)[0], size))
        return np.stack(out)

    def evaluate(self, x: np.ndarray, target=None, masks=None) -> list:
        """Per image of ``x``: {"methods", "meta", "errors"} as described above."""
        from ..methods.trust import evaluate, image_record, run_meta

        out = [{"methods": {}, "meta": {}, "errors": {}} for _ in range(len(x))]
        for method in self.methods:
            try:
                ev = evaluate(self.model, x, method, self.metrics, target, masks=masks, **self.settings)
            except OptionError:
                raise
            except OnnxvizError as exc:
                for rec in out:
                    rec["errors"][method] = str(exc)
                continue
            meta = run_meta(ev)
            for i, rec in enumerate(out):
                rec["methods"][method], rec["meta"][method] = image_record(ev, i), meta
        return out

    def __call__(self, batch: dict) -> dict:
        import json

        x, ok, error = self.read(batch)
        n = len(ok)
        result = np.full(n, "", dtype=object)
        if x is not None:
            target = np.asarray(batch["target"])[ok] if "target" in batch else None
            records = self.evaluate(x, target, self.masks(batch, ok, self.model.input.hw(x)))
            for i, rec in zip(np.flatnonzero(ok), records):
                result[i] = json.dumps(rec)
        return {"id": self.ids(batch, n), "ok": ok, "error": error, "result": result.astype(str)}
