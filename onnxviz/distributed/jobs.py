"""Dataset-scale `embed` and `cam`/`saliency`/`occlusion` on any engine, resumable from content-keyed parts.

The driver scans the folder (and keeps its ``--shard``), sends the rows still to do to the
engine, and writes what comes back: for ``embed`` the same ``features.npy`` / ``status.npy`` /
``manifest.json`` as the local engine; for maps the same per-image files and ``results.json``.
Workers commit each image's result as a part before returning it, so a rerun after a killed
worker or driver recomputes only images that no process finished.

>>> emb = embed_dataset("model.onnx", "photos/", "out/features", engine=Engine("ray", actors=4))
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..datasets import Dataset, Skipped, scan_folder
from ..errors import OnnxvizError
from ..io import save_json
from ..graph.heads import penultimate_layer
from ..methods.embed import Embedding, FeatureStore, cache_header, fixed_size, model_digest, stored_embedding
from ..session import Session
from .batch import BatchEmbedder, BatchEvaluator, BatchExplainer, process_session
from .engine import default_actors, init_ray, map_batches, require_ray
from .shard import Shard
from .store import PartStore, file_digest, options_digest, part_key, worker_id

log = logging.getLogger("onnxviz")


@dataclass
class Engine:
    """Where the batches run: ``local`` (this process) or ``ray`` (``address`` None: a local Ray runtime)."""

    name: str = "local"
    address: Optional[str] = None
    actors: Optional[int] = None  # ray: actors in the pool (default: cluster CPUs / cpus)
    cpus: float = 1  # ray: CPUs per actor (also its onnxruntime threads)
    gpus: float = 0  # ray: GPUs per actor

    def start(self) -> bool:
        if self.name != "ray":
            return False
        started = init_ray(self.address)
        if self.actors is None:
            self.actors = default_actors(require_ray(), self.cpus, self.gpus)
        return started

    def map(self, rows: list, task, batch_size: int):
        return map_batches(rows, task, self.name, batch_size, self.actors, self.cpus, self.gpus)


def as_engine(engine) -> Engine:
    """None -> local, "ray" -> Ray with defaults, an Engine as it is."""
    if engine is None:
        return Engine()
    if isinstance(engine, str):
        return Engine(engine)
    return engine


@dataclass
class RunStats:
    """What a run did: images computed by a worker, found done in the parts, failed; worker restarts."""

    computed: int = 0
    from_parts: int = 0
    failed: int = 0
    workers: set = field(default_factory=set)
    restarts: int = 0


# ---------------------------------------------------------------------------- tasks (run in workers)

def _hash_rows(batch: dict, digest: str, extra: Sequence[str]):
    """Per row: (key or None, size, mtime_ns, error) — the image's bytes are read and hashed here."""
    out = []
    for path, more in zip(batch["path"], extra):
        try:
            st = os.stat(path)
            out.append((part_key(digest, file_digest(path), more), st.st_size, st.st_mtime_ns, ""))
        except FileNotFoundError:
            out.append((None, 0, 0, "disappeared after the folder was scanned"))
        except OSError as exc:
            out.append((None, 0, 0, f"cannot read: {exc.strerror or exc}"))
    return out


def _saved_texts(hashed, store: PartStore) -> tuple:
    """(ok, error, texts, todo) for text parts: rows already saved are read back, the rest are to do."""
    n = len(hashed)
    ok, error = np.zeros(n, bool), np.array([h[3] for h in hashed], dtype=object)
    texts, todo = np.full(n, "", dtype=object), []
    for i, (key, *_rest) in enumerate(hashed):
        if key is None:
            continue
        part = store.load_text(key)
        if part is not None:
            texts[i], ok[i] = part, True
        else:
            todo.append(i)
    return ok, error, texts, todo


class EmbedTask:
    """Features of a batch of rows ``{"index", "path"}``, reusing and committing parts."""

    def __init__(self, embedder: BatchEmbedder, out: str, digest: str):
        self.embedder, self.store, self.digest = embedder, PartStore(out), digest

    def warm_up(self):
        self.embedder.dim  # loads the model and builds the session before the first batch

    def __call__(self, batch: dict) -> dict:
        n = len(batch["index"])
        hashed = _hash_rows(batch, self.digest, [""] * n)
        ok, error = np.zeros(n, bool), np.array([h[3] for h in hashed], dtype=object)
        computed, features = np.zeros(n, bool), np.zeros((n, self.embedder.dim), np.float32)
        todo = []
        for i, (key, *_rest) in enumerate(hashed):
            if key is None:
                continue
            part = self.store.load_array(key)
            if part is not None and part.shape == features[i].shape:
                features[i], ok[i] = part, True
            else:
                todo.append(i)
        if todo:
            got = self.embedder({"path": np.asarray(batch["path"])[todo]})
            for j, i in enumerate(todo):
                if got["ok"][j]:
                    features[i], ok[i], computed[i] = got["features"][j], True, True
                    self.store.save_array(hashed[i][0], got["features"][j])
                else:
                    error[i] = got["error"][j]
        return {"index": np.asarray(batch["index"]), "ok": ok, "error": error.astype(str), "features": features,
                "computed": computed, "size": np.array([h[1] for h in hashed], np.int64),
                "mtime_ns": np.array([h[2] for h in hashed], np.int64), "worker": np.full(n, worker_id())}


class ExplainTask:
    """Maps of a batch of rows ``{"index", "path", "dir"[, "target"]}``: per-image files written here.

    Each image's files go to its ``dir`` exactly as the local engine writes them; the part
    holds its results.json entry.
    """

    def __init__(self, explainer: BatchExplainer, out: str, digest: str, suffixed: bool, chosen: bool):
        self.explainer, self.store, self.digest = explainer, PartStore(out), digest
        self.suffixed, self.chosen = suffixed, chosen

    def warm_up(self):
        self.explainer.explaining  # the model, and the exported gradient files (checked) when given

    def __call__(self, batch: dict) -> dict:
        from ..images import deprocess
        from ..outputs import write_image

        n = len(batch["index"])
        targets = np.asarray(batch["target"]) if "target" in batch else None
        extra = [f"{d}\0{'' if targets is None else int(targets[i])}" for i, d in enumerate(batch["dir"])]
        hashed = _hash_rows(batch, self.digest, extra)
        ok, error, entries, todo = _saved_texts(hashed, self.store)
        computed = np.zeros(n, bool)
        if todo:
            ex = self.explainer
            x, good, reasons = ex.read({"path": np.asarray(batch["path"])[todo]})
            for j, i in enumerate(todo):
                error[i] = reasons[j]
            if x is not None:
                rows = [i for j, i in enumerate(todo) if good[j]]
                result = ex.explain(x, None if targets is None else targets[rows])
                shown = deprocess(x, ex.model.input, ex.pre)
                session = Session(ex.model, ex.pre, ex.labels)
                for r, i in enumerate(rows):
                    picked = np.flatnonzero(result.image == r)
                    entry = write_image(session, result, picked, shown[r], str(batch["path"][i]),
                                        Path(str(batch["dir"][i])), ex.method, self.suffixed, self.chosen)
                    text = json.dumps(entry)
                    self.store.save_text(hashed[i][0], text)
                    entries[i], ok[i], computed[i] = text, True, True
        return {"index": np.asarray(batch["index"]), "ok": ok, "error": error.astype(str),
                "entry": entries.astype(str), "computed": computed, "worker": np.full(n, worker_id())}


class EvaluateTask:
    """Trust-metric records of a batch of rows ``{"index", "path"[, "target", "boxes"]}``; a part per image."""

    def __init__(self, evaluator: BatchEvaluator, out: str, digest: str):
        self.evaluator, self.store, self.digest = evaluator, PartStore(out), digest

    def warm_up(self):
        self.evaluator.model

    def __call__(self, batch: dict) -> dict:
        n = len(batch["index"])
        extra = [f"{batch['target'][i] if 'target' in batch else ''}\0{batch['boxes'][i] if 'boxes' in batch else ''}"
                 for i in range(n)]
        hashed = _hash_rows(batch, self.digest, extra)
        ok, error, results, todo = _saved_texts(hashed, self.store)
        computed = np.zeros(n, bool)
        if todo:
            sub = {k: np.asarray(batch[k])[todo] for k in ("path", "target", "boxes") if k in batch}
            got = self.evaluator(sub)
            for j, i in enumerate(todo):
                if got["ok"][j]:
                    self.store.save_text(hashed[i][0], str(got["result"][j]))
                    results[i], ok[i], computed[i] = str(got["result"][j]), True, True
                else:
                    error[i] = got["error"][j]
        return {"index": np.asarray(batch["index"]), "ok": ok, "error": error.astype(str),
                "result": results.astype(str), "computed": computed, "worker": np.full(n, worker_id())}


# ---------------------------------------------------------------------------- drivers

def _bar(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, file=sys.stderr, leave=False)


def _drive(rows: list, task, engine: Engine, batch_size: int, progress: bool, desc: str, on_batch) -> RunStats:
    """Run ``task`` over ``rows`` on ``engine``, one progress bar, ``on_batch`` for each batch back."""
    stats = RunStats()
    started = engine.start()
    task.run = uuid.uuid4().hex  # workers record their starts under it: more starts than actors = restarts
    bar = _bar(len(rows), progress, desc)
    try:
        for out in _ray_errors(engine.map(rows, task, batch_size), engine):
            on_batch(out)
            n_ok = int(np.sum(out["ok"]))
            stats.computed += int(np.sum(out["computed"]))
            stats.from_parts += n_ok - int(np.sum(out["computed"]))
            stats.failed += len(out["ok"]) - n_ok
            stats.workers.update(map(str, out["worker"]))
            log.info("batch of %d done (%d computed)", len(out["ok"]), int(np.sum(out["computed"])))
            bar.update(len(out["ok"]))
    finally:
        bar.close()
        if started:
            require_ray().shutdown()
    if engine.name == "ray":
        stats.restarts = max(0, task.store.starts(task.run) - engine.actors)
    if stats.restarts:
        log.warning("%d worker(s) crashed and were restarted by Ray; their batches were retried", stats.restarts)
    return stats


def _ray_errors(batches, engine: Engine):
    """Ray's exceptions (a task that raised, a node lost for good) as one-line onnxviz errors."""
    if engine.name != "ray":
        yield from batches
        return
    from ray.exceptions import RayError

    try:
        yield from batches
    except RayError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        cause = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else "")
        raise OnnxvizError(f"the Ray run failed ({type(exc).__name__}): {cause}; what finished is kept in "
                           "the output folder, so the same command resumes") from None


def _subset(dataset: Dataset, shard: Optional[Shard]) -> Dataset:
    if shard is None:
        return dataset
    keep = shard.indices(dataset)
    return Dataset(dataset.root, [dataset.files[i] for i in keep], list(dataset.skipped))


def embed_dataset(model_path, folder, out, layer: Optional[str] = None, pool: str = "avg", pre=None,
                  load_options: Optional[dict] = None, batch_size: int = 32, engine=None,
                  shard: Optional[Shard] = None, progress: bool = False) -> Embedding:
    """``onnxviz.embed`` over ``folder`` into ``out`` (features.npy, status.npy, manifest.json), on ``engine``.

    With ``shard`` only that slice is computed, into ``out/shard-i-of-n``; a later run without
    a shard assembles the whole folder from the parts every shard committed, computing nothing.
    """
    engine = as_engine(engine)
    model_path = os.path.abspath(model_path)  # workers on other nodes start in other folders
    load_options = dict(load_options or {})
    session = process_session(model_path, load_options)
    model = session.model
    embedder = BatchEmbedder(model_path, layer=layer, pool=pool, pre=pre or session.pre,
                             **_worker_load_options(load_options, engine))
    embedder._model, embedder.labels = model, session.labels  # the driver's copy, for the header below
    embedder.pre = fixed_pre = fixed_size(model.input, embedder.pre)
    layer = layer or penultimate_layer(model)
    embedder.layer = layer
    header = cache_header(model, layer, pool, fixed_pre, model_digest(model))
    out = Path(out).absolute()
    dataset = scan_folder(Path(folder).absolute(), exclude=[out])
    part = _subset(dataset, shard)
    store = FeatureStore(out / shard.name if shard else out, header, part)
    todo = store.todo()
    rows = [{"index": int(i), "path": str(part.path(int(i)))} for i in todo]
    task = EmbedTask(embedder, str(out), options_digest(header))

    def write(batch):
        ok = batch["ok"]
        for i, reason in zip(batch["index"][~ok], batch["error"][~ok]):
            store.fail(int(i), str(reason))
        if ok.any():
            # rows reach status.npy at the store's checkpoints; rows a killed driver had not
            # checkpointed yet are found again in the parts, not recomputed
            store.write(batch["index"][ok], batch["features"][ok], zip(batch["size"][ok], batch["mtime_ns"][ok]))

    try:
        stats = _drive(rows, task, engine, batch_size, progress, f"features of {layer}", write)
    finally:
        store.close()
    emb = stored_embedding(store, part, layer, pool, fixed_pre, stats.computed, store.reused + stats.from_parts)
    emb.stats = stats
    return emb


def _worker_load_options(load_options: dict, engine: Engine) -> dict:
    """A Ray actor reserves ``cpus`` CPUs: its onnxruntime uses that many threads unless told otherwise."""
    options = dict(load_options)
    if engine.name == "ray" and options.get("threads") is None:
        options["threads"] = max(1, int(engine.cpus))
    options.setdefault("device", "auto")
    return options


@dataclass
class ExplainRun:
    entries: list  # results.json entries of the images done, in input order
    failures: list  # Skipped
    stats: RunStats
    results: Path


def explain_dataset(model_path, paths: Sequence, dirs: Sequence, out, method: str, options: dict,
                    targets: Optional[np.ndarray] = None, pre=None, load_options: Optional[dict] = None,
                    batch_size: int = 16, engine=None, shard: Optional[Shard] = None,
                    relative: Optional[Sequence[str]] = None, progress: bool = False,
                    grad_model=None) -> ExplainRun:
    """Maps of ``method`` for every image in ``paths`` (files to ``dirs``), on ``engine``; resumable.

    ``relative``: the names ``shard`` splits by (default the paths as given). Writes
    ``out/results.json`` (``results.shard-i-of-n.json`` for a shard) in input order.
    ``grad_model``: ``export-grad`` file(s) the workers run instead of building gradient graphs
    (checked against the model and method here, before any worker starts).
    """
    engine = as_engine(engine)
    model_path = os.path.abspath(model_path)  # workers on other nodes start in other folders
    load_options = dict(load_options or {})
    session = process_session(model_path, load_options)
    wl = _worker_load_options(load_options, engine)
    explainer = BatchExplainer(model_path, method, pre=pre or session.pre, device=wl.pop("device"),
                               threads=wl.pop("threads"), load_options=wl, grad_model=grad_model, **options)
    fixed = fixed_size(session.model.input, explainer.pre)
    if explainer.grad_model:
        from .exported import check_exported, read_exported

        check_exported([read_exported(p) for p in explainer.grad_model], session.model, method, options,
                       tuple(fixed.size))
    out = Path(out).absolute()
    names = list(relative) if relative is not None else [str(p) for p in paths]
    keep = [i for i in range(len(paths)) if shard is None or shard.contains(names[i])]
    header = {"model": model_digest(session.model), "method": method, "options": options,
              "preprocess": dataclasses.asdict(fixed),
              "input": cache_header(session.model, "", "", fixed, "-")["input"]}
    rows = []
    for i in keep:
        row = {"index": i, "path": os.path.abspath(paths[i]), "dir": os.path.abspath(dirs[i])}
        if targets is not None:
            row["target"] = int(targets[i])
        rows.append(row)
    task = ExplainTask(explainer, str(out), options_digest(header), suffixed=options.get("top_k") is not None,
                       chosen=targets is not None)
    entries, failures = {}, {}
    results = out / (f"results.{shard.name}.json" if shard else "results.json")
    from ..outputs import explained, title

    summary = {"model": os.path.abspath(model_path), "method": method,
               "explained": explained(session.model, options.get("output"), options.get("score") or "logit",
                                      targets),
               "images": []}
    last = [time.monotonic()]

    def collect(batch):
        for i, ok, entry, reason in zip(batch["index"], batch["ok"], batch["entry"], batch["error"]):
            if ok:
                entries[int(i)] = _as_given(json.loads(str(entry)), dirs[int(i)])
            else:
                failures[int(i)] = str(reason)
        if time.monotonic() - last[0] > 1.0:  # results.json stays current without rewriting it per batch
            summary["images"] = [entries[i] for i in sorted(entries)]
            save_json(summary, results)
            last[0] = time.monotonic()

    stats = _drive(rows, task, engine, batch_size, progress, title(method), collect)
    summary["images"] = [entries[i] for i in sorted(entries)]
    if failures:
        summary["failures"] = [{"image": os.path.abspath(paths[i]), "reason": r} for i, r in sorted(failures.items())]
    save_json(summary, results)
    return ExplainRun(summary["images"], [Skipped(Path(paths[i]), r) for i, r in sorted(failures.items())],
                      stats, results)


def _as_given(entry: dict, folder) -> dict:
    """A results.json entry with the image's folder and files as the caller named them (relative
    when ``--out`` was), as the local engine writes them; workers were given absolute ones, since
    they may start in other folders or on other nodes."""
    maps = [{**m, "files": {kind: str(Path(folder) / Path(p).name) for kind, p in m["files"].items()}}
            for m in entry["maps"]]
    return {**entry, "dir": str(folder), "maps": maps}


@dataclass
class EvaluateRun:
    images: list  # absolute paths of the images scored, in input order
    results: list  # per image: {"methods", "meta", "errors"} (BatchEvaluator's record)
    failures: list  # Skipped
    stats: RunStats


def evaluate_dataset(model_path, paths: Sequence, out, methods: Sequence[str], metrics: Sequence[str],
                     boxes: Optional[Sequence] = None, targets: Optional[np.ndarray] = None, *, steps: int = 50,
                     score: str = "prob", seed: int = 0, resolution: str = "native", pre=None,
                     load_options: Optional[dict] = None,
                     batch_size: int = 8, engine=None, shard: Optional[Shard] = None,
                     relative: Optional[Sequence[str]] = None, progress: bool = False) -> EvaluateRun:
    """Trust-metric records (``onnxviz evaluate``) of every image in ``paths``, on ``engine``; resumable.

    ``boxes``: per image its boxes (pointing game). Each image's record is a part keyed by its
    content, the options, its target and boxes, so no image is scored twice across runs,
    shards and engines; the caller builds metrics.json from the records.
    """
    engine = as_engine(engine)
    model_path = os.path.abspath(model_path)
    load_options = dict(load_options or {})
    session = process_session(model_path, load_options)
    wl = _worker_load_options(load_options, engine)
    evaluator = BatchEvaluator(model_path, methods, metrics, steps=steps, score=score, seed=seed,
                               resolution=resolution, pre=pre or session.pre, device=wl.pop("device"),
                               threads=wl.pop("threads"), load_options=wl)
    fixed = fixed_size(session.model.input, evaluator.pre)
    header = {"model": model_digest(session.model), "evaluate": list(methods), "metrics": list(metrics),
              "steps": steps, "score": score, "seed": seed, "sanity_resolution": resolution,
              "preprocess": dataclasses.asdict(fixed),
              "input": cache_header(session.model, "", "", fixed, "-")["input"]}
    names = list(relative) if relative is not None else [str(p) for p in paths]
    rows = []
    for i in range(len(paths)):
        if shard is not None and not shard.contains(names[i]):
            continue
        row = {"index": i, "path": os.path.abspath(paths[i])}
        if targets is not None:
            row["target"] = int(targets[i])
        if boxes is not None:
            row["boxes"] = json.dumps(boxes[i])
        rows.append(row)
    task = EvaluateTask(evaluator, str(Path(out).absolute()), options_digest(header))
    results, failures = {}, {}

    def collect(batch):
        for i, ok, result, reason in zip(batch["index"], batch["ok"], batch["result"], batch["error"]):
            if ok:
                results[int(i)] = json.loads(str(result))
            else:
                failures[int(i)] = str(reason)

    stats = _drive(rows, task, engine, batch_size, progress, "evaluate", collect)
    done = sorted(results)
    return EvaluateRun([os.path.abspath(paths[i]) for i in done], [results[i] for i in done],
                       [Skipped(Path(paths[i]), r) for i, r in sorted(failures.items())], stats)
