"""Running a batch task over a dataset: in this process (``local``) or on Ray Data (``ray``).

A *task* wraps a batch callable (``BatchEmbedder`` / ``BatchExplainer``) with the part store:
for each row it hashes the image, returns the stored result when the key is done, and
otherwise computes, commits the part and returns it. The engine only maps tasks over rows;
the driver (``drive``) consumes what comes back, in one progress bar, and writes the final
outputs. So every engine gives the same outputs, and any of them resumes from the parts of
another.
"""
from __future__ import annotations

import logging
import math
from typing import Iterator, Optional

import numpy as np

from ..errors import OnnxvizError

log = logging.getLogger("onnxviz")

ENGINES = ("local", "ray")
RAY_EXTRA = 'pip install "onnxviz[ray]" (or pip install "ray[data]")'


def columns(rows: list) -> dict:
    """[{"a": 1, "b": "x"}, ...] -> {"a": array([1, ...]), "b": array(["x", ...])}."""
    return {k: np.asarray([r[k] for r in rows]) for k in rows[0]} if rows else {}


def map_local(rows: list, task, batch_size: int) -> Iterator[dict]:
    for start in range(0, len(rows), batch_size):
        yield task(columns(rows[start:start + batch_size]))


def require_ray():
    """The ``ray`` module with Ray Data, or a one-line error saying which extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (the [data] extra: pyarrow, pandas)
    except ImportError as exc:
        raise OnnxvizError(f"--engine ray needs Ray Data, which is not installed ({exc}): {RAY_EXTRA}") from None
    return ray


def init_ray(address: Optional[str] = None) -> bool:
    """Connect to the cluster at ``address``, or start a local Ray runtime; True when this call started it."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    # Without an address: always a new local runtime ("local"), never whatever cluster a stale
    # /tmp/ray/ray_current_cluster names; it needs no dashboard. A running cluster keeps its settings.
    local = {} if address else {"include_dashboard": False}
    try:
        ray.init(address=address or "local", logging_level=logging.WARNING, log_to_driver=False,
                 configure_logging=False, **local)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray runtime"
        raise OnnxvizError(f"cannot start or reach {where}: {exc}") from None
    return True


def default_actors(ray, cpus: float, gpus: float) -> int:
    """Actors the cluster holds at ``cpus`` CPUs (or, when they take GPUs, ``gpus`` GPUs) each."""
    return max(1, int(ray.cluster_resources().get("GPU" if gpus else "CPU", 1) // (gpus or cpus)))


class _Actor:
    """Ray Data's class-based callable: one per actor, so the model is loaded once per actor.

    Ray Data restarts an actor whose process dies (killed, out of memory, segfault) and retries
    its batch there; an exception raised by the task fails the run.
    """

    def __init__(self, task):
        self.task = task
        self.task.warm_up()
        if getattr(task, "run", None):
            task.store.started(task.run)

    def __call__(self, batch: dict) -> dict:
        return self.task(batch)


def map_ray(rows: list, task, batch_size: int, actors: Optional[int] = None, cpus: float = 1,
            gpus: float = 0) -> Iterator[dict]:
    """``from_items(rows) → map_batches(task, concurrency=actors) → iter_batches``, streamed."""
    ray = require_ray()
    from ray.data import DataContext

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its per-run notices would break our one bar
    context = DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows one bar for the whole dataset
    context.print_on_execution_start = False
    if actors is None:
        actors = default_actors(ray, cpus, gpus)
    # Blocks of exactly batch_size rows: batches are the ones the local engine would form.
    ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / batch_size)))
    ds = ds.map_batches(_Actor, fn_constructor_args=(task,), batch_size=batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus, num_gpus=gpus or None)
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


def map_batches(rows: list, task, engine: str = "local", batch_size: int = 32, actors: Optional[int] = None,
                cpus: float = 1, gpus: float = 0) -> Iterator[dict]:
    if not rows:
        return iter(())
    if engine == "local":
        return map_local(rows, task, batch_size)
    if engine == "ray":
        return map_ray(rows, task, batch_size, actors, cpus, gpus)
    raise OnnxvizError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")


