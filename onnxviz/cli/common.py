"""Options shared by the commands, and the error handler that makes every failure one line.

Loading a model with its preprocessing and labels is library code: :mod:`onnxviz.session`.
"""
from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Optional

import click

from ..errors import OnnxvizError
from ..images import NORMS, RESIZES
from ..io import guard, protect
from ..runtime import DEVICES
from ..spec import LAYOUTS

log = logging.getLogger("onnxviz")


def handle_errors(fn):
    """Run a command under the input guard; onnxviz and OS errors become one-line CLI errors.

    Every existing path the command was given (click.Path with exists=True: the model, images,
    --labels, dataset folders) is recorded as an input before anything runs, so no output can
    replace it (see ``onnxviz.io.guard``). Ctrl-C exits quietly with status 130.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with guard():
                _protect_arguments(kwargs)
                return fn(*args, **kwargs)
        except OnnxvizError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # unwritable folders, full disks, files vanishing under us
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}") from None
        except MemoryError:
            raise click.ClickException("out of memory: use a smaller --batch-size or --size") from None
        except KeyboardInterrupt:
            click.echo("interrupted; every file written is complete (results.json lists them)", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug or an input we did not foresee: still one line, never a traceback
            log.debug("traceback", exc_info=True)
            raise click.ClickException(f"unexpected {type(exc).__name__}: {_first_line(exc)} "
                                       "(run with -vv for the traceback; please report it)") from None

    return wrapper


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _protect_arguments(values: dict) -> None:
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return
    for param in ctx.command.params:
        if not (isinstance(param.type, click.Path) and param.type.exists):
            continue
        value = values.get(param.name)
        for path in (value if isinstance(value, (tuple, list)) else [value]):
            protect(path)


class SizeType(click.ParamType):
    """224 or 224x160 (height x width)."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, tuple):
            return value
        parts = str(value).lower().replace(",", "x").split("x")
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            self.fail(f"{value!r} is not a size like 224 or 224x160", param, ctx)
        if len(dims) == 1:
            dims = dims * 2
        if len(dims) != 2 or min(dims) <= 0:
            self.fail(f"{value!r} is not a size like 224 or 224x160", param, ctx)
        return dims


def model_options(fn):
    """--device, --threads, --layout, --size."""
    options = [
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                     help="Where onnxruntime runs: auto = CUDA when onnxruntime-gpu sees a GPU."),
        click.option("--threads", type=click.IntRange(1), default=None, help="onnxruntime intra-op threads."),
        click.option("--layout", type=click.Choice(LAYOUTS), default=None,
                     help="Override the detected input layout."),
        click.option("--size", type=SizeType(), default=None,
                     help="Input size HxW (required for some dynamic-size models; default: the model's)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def preprocess_options(fn):
    """--norm, --mean, --std, --scale, --resize, --crop, --bgr/--rgb, --labels."""
    options = [
        click.option("--norm", type=click.Choice([*NORMS, "custom"]),
                     default=None, help="Normalization preset (default: the model's sidecar JSON, else imagenet)."),
        click.option("--mean", default=None, help="Custom per-channel mean, e.g. 0.5,0.5,0.5 (implies --norm custom)."),
        click.option("--std", default=None, help="Custom per-channel std (implies --norm custom)."),
        click.option("--scale", type=click.Choice(["1", "255"]), default="1", show_default=True,
                     help="Units of --mean/--std: 1 for 0-1 values, 255 for 0-255."),
        click.option("--resize", type=click.Choice(RESIZES), default=None,
                     help="shorter: resize the shorter side and center-crop; stretch: plain resize."),
        click.option("--crop", type=click.FloatRange(0.1, 1.0), default=None,
                     help="Center-crop fraction (0.875 = Resize(256)+CenterCrop(224))."),
        click.option("--bgr/--rgb", default=None, help="Channel order the model expects."),
        click.option("--labels", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Class names: text (one per line) or JSON."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def out_dir(path: Optional[str], default: str) -> Path:
    from ..io import ensure_out_dir

    return ensure_out_dir(path or default)


class ShardType(click.ParamType):
    """i/n: shard i (from 0) of n."""

    name = "i/n"

    def convert(self, value, param, ctx):
        from ..distributed.shard import Shard

        if value is None or isinstance(value, Shard):
            return value
        try:
            return Shard.parse(value)
        except OnnxvizError as exc:
            self.fail(str(exc).replace("--shard ", ""), param, ctx)


def engine_options(fn):
    """--engine, --address, --actors, --gpus-per-actor, --shard: where a dataset-scale run computes."""
    options = [
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="local: this process; ray: Ray Data actors (needs the [ray] extra)."),
        click.option("--address", default=None,
                     help="Ray cluster to run on (ray://head:10001, head:6379, or auto for the one started on "
                          "this machine); default: a new local Ray runtime. Images and --out must be on storage "
                          "every node sees."),
        click.option("--actors", type=click.IntRange(1), default=None,
                     help="Ray: actors, each with its own onnxruntime session (default: one per CPU, or per "
                          "GPU with --gpus-per-actor)."),
        click.option("--gpus-per-actor", "gpus_per_actor", type=click.FloatRange(0), default=0, show_default=True,
                     help="Ray: GPUs each actor reserves (1: one GPU each)."),
        click.option("--shard", type=ShardType(), default=None,
                     help="Compute only shard i of n (from 0) of the images, for job arrays (SLURM, k8s); "
                          "results are resumable parts in --out that a run without --shard assembles."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


ENGINE_KEYS = ("engine", "address", "actors", "gpus_per_actor", "shard")
LOAD_KEYS = ("device", "threads", "layout", "size")  # model_options: what a worker needs to load the model


def load_options(opts: dict) -> dict:
    """The model_options values, for workers that load the model as this process did."""
    return {k: opts.get(k) for k in LOAD_KEYS}


def restarts_note(stats) -> str:
    """The tail of a dataset run's summary line: Ray's worker restarts, when there were any."""
    return f"; {stats.restarts} worker restart(s) retried by Ray" if stats.restarts else ""


def pop_engine(opts: dict, out: Optional[str] = None):
    """Remove the engine options from ``opts``: (Engine, shard), or (None, None) for a plain local run.

    A local run into an ``out`` folder that holds parts of a sharded or Ray run continues from
    them (and assembles them) instead of starting over.
    """
    from ..distributed import Engine, require_ray
    from ..distributed.store import PARTS

    engine, address, actors, gpus, shard = (opts.pop(k, None) for k in ENGINE_KEYS)
    if engine != "ray":
        if address or actors or gpus:
            raise OnnxvizError("--address, --actors and --gpus-per-actor need --engine ray")
        parts = out is not None and (Path(out) / PARTS).is_dir()
        return (Engine("local") if shard is not None or parts else None), shard
    require_ray()
    threads = opts.get("threads")
    return Engine("ray", address=address, actors=actors, cpus=float(threads or 1), gpus=float(gpus or 0)), shard
