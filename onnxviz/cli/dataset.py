"""embed, neighbors, tsne, patches: what a network does across a folder of images."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Optional

import click
import numpy as np

from ..datasets import scan_folder
from ..graph.heads import penultimate_layer
from ..images import read_image
from ..io import safe_name, save_figure, save_json, save_png
from ..methods.embed import POOLS, embed, fixed_size, cache_header, model_digest
from ..methods.neighbors import METRICS, nearest_neighbors
from ..methods.patches import to_json, top_patches
from ..methods.projection import METHODS as PROJECTIONS, projection, save_csv
from ..render.dataset import neighbors_figure, patches_grid, patches_overview, scatter_figure, thumbnail_map
from ..session import open_session
from .common import (engine_options, handle_errors, load_options, model_options, out_dir, pop_engine,
                     preprocess_options, restarts_note)
from .options import out_option

SHOWN_FAILURES = 20


def dataset_options(fn):
    """--batch-size, --workers, --progress/--no-progress."""
    options = [
        click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True,
                     help="Images per onnxruntime run."),
        click.option("--workers", type=click.IntRange(1), default=2, show_default=True,
                     help="Threads decoding images while the model runs."),
        click.option("--progress/--no-progress", default=None,
                     help="Progress bar (default: when stderr is a terminal)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def feature_options(fn):
    """--layer, --pool, --cache/--no-cache."""
    options = [
        click.option("--layer", default=None,
                     help="ONNX tensor name (default: the input of the final fully-connected layer)."),
        click.option("--pool", type=click.Choice(POOLS), default="avg", show_default=True,
                     help="How a spatial layer becomes one vector per image."),
        click.option("--cache", default=None, type=click.Path(file_okay=False),
                     help="Feature cache folder (default: one per model, folder and layer under "
                          "$ONNXVIZ_CACHE or ~/.cache/onnxviz)."),
        click.option("--no-cache", is_flag=True, help="Keep features in memory only."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def resumable(fn):
    """Ctrl-C keeps the features computed so far (they are in the cache) and says so."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("interrupted: the features computed so far are kept in the cache; run the same "
                       "command again to resume", err=True)
            sys.exit(130)

    return wrapper


def _progress(flag: Optional[bool]) -> bool:
    return sys.stderr.isatty() if flag is None else flag


def default_cache(header: dict, folder: str) -> Path:
    """A cache folder per (model, layer, pooling, preprocessing, image folder)."""
    base = os.environ.get("ONNXVIZ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "onnxviz")
    key = json.dumps([header, os.path.realpath(folder)], sort_keys=True)
    stem = safe_name(Path(header["model"]["file"]).stem, "model")
    return Path(base) / "features" / f"{stem}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def _features(session, folder, layer, pool, cache, no_cache, out, batch_size, workers, progress):
    """Embed ``folder`` for a command, resuming from its cache; prints what was left out."""
    model = session.model
    pre = fixed_size(model.input, session.pre)
    layer = layer or penultimate_layer(model)
    digest = model_digest(model)
    if no_cache:
        cache = None
    elif cache is None:
        cache = default_cache(cache_header(model, layer, pool, pre, digest), folder)
    dataset = scan_folder(folder, exclude=[p for p in (cache, out) if p is not None])
    emb = embed(model, dataset, layer, pre, pool=pool, cache=cache, batch_size=batch_size, workers=workers,
                progress=_progress(progress), digest=digest)
    report(emb.failures, emb.skipped, out)
    return emb


def report(failures, skipped, out: Optional[Path] = None):
    """Print every file left out (the first ones, and where the full list is); write failures.json."""
    if skipped:
        click.echo(f"skipped {len(skipped)} file(s) that are not images, e.g. {skipped[0].path}", err=True)
    if not failures:
        return
    listed = out / "failures.json" if out is not None else None
    if listed is not None:
        save_json([{"path": str(f.path), "reason": f.reason} for f in failures], listed)
    click.echo(f"could not use {len(failures)} image file(s):", err=True)
    for f in failures[:SHOWN_FAILURES]:
        click.echo(f"  {f.path}: {f.reason}", err=True)
    if len(failures) > SHOWN_FAILURES:
        where = f" (all listed in {listed})" if listed else ""
        click.echo(f"  ... and {len(failures) - SHOWN_FAILURES} more{where}", err=True)


def read_rgb(path) -> np.ndarray:
    """An image file's RGB pixels, for figures (a grey square when it cannot be read any more)."""
    try:
        return np.asarray(read_image(path).convert("RGB"))
    except Exception:  # gone since it was embedded: show a grey square
        return np.full((32, 32, 3), 128, np.uint8)


# ---------------------------------------------------------------------------- commands

@click.command("embed")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--layer", default=None, help="ONNX tensor name (default: the input of the final fully-connected layer).")
@click.option("--pool", type=click.Choice(POOLS), default="avg", show_default=True,
              help="How a spatial layer becomes one vector per image.")
@out_option("embed", help="Output folder: features.npy, status.npy and manifest.json; a rerun resumes from it.")
@dataset_options
@engine_options
@model_options
@preprocess_options
@handle_errors
@resumable
def embed_cmd(model, folder, layer, pool, out, batch_size, workers, progress, **opts):
    """Compute a layer's features for every image under FOLDER (recursive; sub-folders are labels).

    Row i of features.npy belongs to files[i] of manifest.json, which also records the model hash,
    layer and preprocessing. Interrupted or repeated runs reuse what is done.

    \b
    Example:
      onnxviz embed models/shapes_cnn.onnx models/images --out out/features
    """
    engine, shard = pop_engine(opts, out)
    session = open_session(model, **opts)
    folder_out = out_dir(out, "onnxviz-out/embed")
    if engine is not None:
        return _embed_dataset(model, folder, layer, pool, folder_out, batch_size, progress, session, opts, engine,
                              shard)
    emb = _features(session, folder, layer, pool, folder_out, False, None, batch_size, workers, progress)
    click.echo(f"{emb.layer}: {len(emb)} images x {emb.features.shape[1]} features "
               f"({emb.computed} computed, {emb.reused} reused) -> {folder_out / 'features.npy'}, "
               f"{folder_out / 'manifest.json'}")


def _embed_dataset(model, folder, layer, pool, folder_out, batch_size, progress, session, opts, engine, shard):
    """embed --engine ray / --shard: workers commit content-keyed parts; the same cache files result."""
    from ..distributed import embed_dataset

    emb = embed_dataset(model, folder, folder_out, layer, pool, pre=session.pre, load_options=load_options(opts),
                        batch_size=batch_size, engine=engine, shard=shard, progress=_progress(progress))
    report(emb.failures, emb.skipped, folder_out)
    s = emb.stats
    where = f"shard {shard}: " if shard else ""
    click.echo(f"{where}{emb.layer}: {len(emb)} images x {emb.features.shape[1]} features ({s.computed} computed, "
               f"{emb.reused} reused) -> {emb.cache / 'features.npy'}, {emb.cache / 'manifest.json'}"
               + restarts_note(s))


@click.command("neighbors")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--query", required=True, type=click.Path(exists=True, dir_okay=False), help="The query image.")
@click.option("-k", "k", type=click.IntRange(1), default=8, show_default=True, help="How many neighbours.")
@click.option("--metric", type=click.Choice(METRICS), default="cosine", show_default=True)
@out_option("neighbors")
@feature_options
@dataset_options
@model_options
@preprocess_options
@handle_errors
@resumable
def neighbors_cmd(model, folder, query, k, metric, out, layer, pool, cache, no_cache, batch_size, workers,
                  progress, **opts):
    """Find the K images of FOLDER nearest to a query image in a layer's feature space.

    Saves neighbors.png (the query and its neighbours with distances) and neighbors.json.

    \b
    Example:
      onnxviz neighbors models/shapes_cnn.onnx models/images --query models/images/star_0.png -k 3
    """

    session = open_session(model, **opts)
    folder_out = out_dir(out, "onnxviz-out/neighbors")
    emb = _features(session, folder, layer, pool, cache, no_cache, folder_out, batch_size, workers, progress)
    result = nearest_neighbors(session.model, emb, query, k, metric)
    pictures = [read_rgb(n.path) for n in result.neighbors]
    png = save_figure(neighbors_figure(result, pictures, read_rgb(query)), folder_out / "neighbors.png")
    js = save_json(result.to_json(), folder_out / "neighbors.json")
    for n in result.neighbors:
        click.echo(f"{n.rank:3d}  {n.distance:10.4g}  {n.label:12s}  {n.path}")
    click.echo(f"-> {png}, {js}")


@click.command("tsne")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--method", type=click.Choice(PROJECTIONS), default="tsne", show_default=True)
@click.option("--perplexity", type=click.FloatRange(min=1.0), default=30.0, show_default=True,
              help="t-SNE perplexity (lowered to (n-1)/3 for small folders).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same map.")
@click.option("--init", type=click.Choice(["pca", "random"]), default="pca", show_default=True,
              help="t-SNE's starting layout (random: drawn from --seed).")
@click.option("--thumbnails", type=click.IntRange(0), default=1500, show_default=True,
              help="At most this many images on the thumbnail map (0: no thumbnail map).")
@out_option("tsne")
@feature_options
@dataset_options
@model_options
@preprocess_options
@handle_errors
@resumable
def tsne_cmd(model, folder, method, perplexity, seed, init, thumbnails, out, layer, pool, cache, no_cache,
             batch_size, workers, progress, **opts):
    """Map the images of FOLDER to 2-D by their features (t-SNE after PCA to 50 dims, or PCA).

    Saves <method>.png (points coloured by label), <method>_thumbnails.png (the images at their
    points) and <method>.csv (path, label, x, y).

    \b
    Example:
      onnxviz tsne models/shapes_cnn.onnx models/images --perplexity 30 --seed 0
    """

    session = open_session(model, **opts)
    folder_out = out_dir(out, "onnxviz-out/tsne")
    emb = _features(session, folder, layer, pool, cache, no_cache, folder_out, batch_size, workers, progress)
    proj = projection(emb, method, perplexity, seed, init=init)
    written = [save_figure(scatter_figure(proj), folder_out / f"{method}.png"),
               save_csv(proj, folder_out / f"{method}.csv")]
    if thumbnails:
        canvas, placed = thumbnail_map(proj, limit=thumbnails, seed=seed)
        written.append(save_png(canvas, folder_out / f"{method}_thumbnails.png"))
        if placed < min(len(proj.paths), thumbnails):
            click.echo(f"thumbnail map: {min(len(proj.paths), thumbnails) - placed} image(s) could not be re-read",
                       err=True)
    settings = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in proj.params.items() if k != "method")
    click.echo(f"{method} of {emb.layer} ({len(emb)} images; {settings}) -> {', '.join(map(str, written))}")


@click.command("patches")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--layer", required=True, help="A feature map's ONNX tensor name (see `onnxviz inspect`).")
@click.option("--channel", "channel", type=click.IntRange(0), multiple=True,
              help="Channel to show (repeatable).")
@click.option("--channels", "n_channels", type=click.IntRange(1), default=None,
              help="Show the N most selective channels (default 8): (mean of the top-k per-image "
                   "maxima - their dataset mean) / their standard deviation.")
@click.option("--top", type=click.IntRange(1), default=16, show_default=True, help="Patches per channel.")
@click.option("--any-position", is_flag=True,
              help="Let one image give several patches (default: its strongest unit only).")
@out_option("patches")
@dataset_options
@model_options
@preprocess_options
@handle_errors
def patches_cmd(model, folder, layer, channel, n_channels, top, any_position, out, batch_size, workers, progress,
                **opts):
    """Show the crops of FOLDER's images that excite channels of a layer most.

    Each unit is mapped to the input through the layer's exact receptive field and cropped from
    the original image. Saves patches.png (one row per channel), channel_<c>.png and patches.json.

    \b
    Example:
      onnxviz patches models/shapes_cnn.onnx models/images --layer /features/features.10/Relu_output_0 --top 4
    """

    if channel and n_channels:
        raise click.UsageError("use --channel or --channels, not both")
    session = open_session(model, **opts)
    folder_out = out_dir(out, "onnxviz-out/patches")
    dataset = scan_folder(folder, exclude=[folder_out])
    result = top_patches(session.model, dataset, layer, list(channel) or None, n_channels, top, session.pre,
                         distinct=not any_position, batch_size=batch_size, workers=workers,
                         progress=_progress(progress))
    report(result.failures, result.skipped, folder_out)
    written = [save_png(patches_overview(result), folder_out / "patches.png")]
    for cp in result.channels:
        written.append(save_png(patches_grid(cp), folder_out / f"channel_{cp.channel}.png"))
    written.append(save_json(to_json(result), folder_out / "patches.json"))
    rf = result.rf
    click.echo(f"{layer}: receptive field {rf.size[0]}x{rf.size[1]} px, stride {rf.jump[0]}x{rf.jump[1]}; "
               f"{result.images} images")
    for cp in result.channels:
        best = f"best {cp.patches[0].value:.4g}" if cp.patches else "no patches"
        click.echo(f"  channel {cp.channel}: selectivity {cp.selectivity:.2f}, {best}")
    click.echo(f"-> {written[0]}, {len(result.channels)} channel grids, {written[-1]}")


COMMANDS = (embed_cmd, neighbors_cmd, tsne_cmd, patches_cmd)
