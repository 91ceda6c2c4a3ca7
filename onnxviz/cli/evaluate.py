"""evaluate: can these maps be trusted? Faithfulness metrics and sanity checks for each method.

Writes ``OUT/metrics.json`` (per image, per method, per metric, and a summary), the curves
(``deletion.png``, ``insertion.png``), ``sanity.png`` (similarity against layers randomized,
one line per method) and prints one verdict per method. Files are written atomically.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import click
import numpy as np

from ..errors import OnnxvizError, OptionError
from ..io import check_output, ensure_out_dir, save_figure, save_json
from ..methods.sanity import RESOLUTIONS
from ..methods.trust import (METRICS, boxes_mask, check_metrics, collect, evaluate, image_record, parse_boxes,
                             run_meta, summary, verdict_line)
from ..outputs import title
from ..session import open_session
from .attribution import parse_targets
from .common import (engine_options, handle_errors, load_options, model_options, pop_engine, preprocess_options,
                     restarts_note)
from .options import out_option


def _names(text: str, what: str) -> list:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise OnnxvizError(f"--{what} is empty: give a comma-separated list")
    return names


@click.command("evaluate")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--method", "methods", default="gradcam,vanilla,guided", show_default=True,
              help="Comma-separated methods: gradcam, gradcam++, scorecam, layercam, guided-gradcam, vanilla, "
                   "deconvnet, guided, smoothgrad, integrated, occlusion.")
@click.option("--metrics", default=None,
              help=f"Comma-separated, from {', '.join(METRICS)} "
                   "(default: deletion,insertion,sanity, plus pointing with --boxes).")
@click.option("--boxes", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON of object boxes per image file name: {\"a.png\": {\"box\": [x0, y0, x1, y1]}} "
                   "or {\"a.png\": [[x0, y0, x1, y1], ...]}, in the original image's pixels.")
@click.option("--steps", type=click.IntRange(1), default=50, show_default=True,
              help="Deletion/insertion steps (equal slices of pixels).")
@click.option("--score", type=click.Choice(["prob", "logit"]), default="prob", show_default=True,
              help="Score the curves follow: softmax probability or raw logit.")
@click.option("--target", default=None, help="Class to explain: one index/label for all images or one per image "
              "(default: the predicted class).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights, classes and noise.")
@click.option("--sanity-resolution", "resolution", type=click.Choice(RESOLUTIONS), default="native", show_default=True,
              help="Where the randomization and random-class tests compare CAM maps: on the layer's own grid "
                   "(native) or upsampled to the input (input, as displayed). Input-space maps are compared "
                   "at the input's resolution either way.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Images per batch with --engine ray or --shard.")
@out_option("evaluate")
@model_options
@preprocess_options
@engine_options
@handle_errors
def evaluate_cmd(model, images, methods, metrics, boxes, steps, score, target, seed, resolution, batch_size, out,
                 **opts):
    """Can these maps be trusted? Deletion/insertion, ROAD, pointing game and randomization checks.

    \b
    Example:
      onnxviz evaluate models/shapes_cnn.onnx models/images/star_0.png models/images/ring_0.png \\
          --method gradcam,guided --boxes models/images/boxes.json --out out/evaluate
    """
    methods = _names(methods, "method")
    chosen = _names(metrics, "metrics") if metrics else ["deletion", "insertion", "sanity"] + (
        ["pointing"] if boxes else [])
    engine, shard = pop_engine(opts, out)
    session = open_session(model, **opts)
    folder = ensure_out_dir(out)
    check_output(folder / "metrics.json")  # before the long run; handle_errors already protected every input
    targets = parse_targets(target, len(images), session)
    report = {"model": os.path.abspath(model), "metrics": chosen, "steps": steps, "score": score, "seed": seed,
              "sanity_resolution": resolution, "images": [], "summary": {}, "errors": {}}
    settings = dict(steps=steps, score=score, seed=seed, resolution=resolution)
    if engine is not None:
        _evaluate_dataset(model, images, methods, chosen, boxes, targets, settings, session, opts, batch_size,
                          engine, shard, report, folder)
        return
    x, pictures, geoms = session.batch(list(images))
    size = session.model.input.hw(x)
    masks = read_boxes(boxes, images, geoms, size) if boxes else None
    records, metas = {}, {}
    for method in methods:
        click.echo(f"{title(method)}: {', '.join(chosen)} ...", err=True)
        try:
            ev = evaluate(session.model, x, method, chosen, targets, masks=masks, progress=True, **settings)
        except OptionError:
            raise
        except OnnxvizError as exc:
            report["errors"][method] = str(exc)
            click.echo(f"{method}: failed: {exc}", err=True)
            continue
        records[method] = [image_record(ev, i) for i in range(len(images))]
        metas[method] = run_meta(ev)
    finish(report, [os.path.abspath(p) for p in images], methods, records, metas, folder)


def finish(report: dict, images: list, methods: list, records: dict, metas: dict, folder: Path,
           name: str = "metrics.json", figures: bool = True) -> None:
    """metrics.json, the figures and the verdict lines, from per-image records (every engine's path)."""
    if not records:
        raise OnnxvizError("no method could be evaluated: " + "; ".join(f"{m}: {e}" for m, e in report["errors"].items()))
    report["images"] = [{"image": image, "methods": {m: records[m][i] for m in methods if m in records}}
                        for i, image in enumerate(images)]
    done = {m: collect(records[m], metas[m]) for m in methods if m in records}
    report["summary"] = {m: summary(ev) for m, ev in done.items()}
    if figures:
        report["files"] = {k: str(v) for k, v in write_figures(done, folder).items()}
    save_json(report, folder / name)
    for method, ev in done.items():
        click.echo(verdict_line(method, ev))
    click.echo(f"wrote {folder / name}")


def _evaluate_dataset(model, images, methods, chosen, boxes, targets, settings, session, opts, batch_size, engine,
                      shard, report, folder) -> None:
    """--engine ray or --shard: images scored in batches by workers, kept as content-keyed parts (resumable)."""
    from ..distributed import evaluate_dataset
    from .dataset import report as report_failures

    check_metrics(chosen, boxes is not None)
    per_image = read_box_lists(boxes, images) if boxes else None
    run = evaluate_dataset(model, images, folder, methods, chosen, per_image, targets, pre=session.pre,
                           load_options=load_options(opts), batch_size=batch_size, engine=engine, shard=shard,
                           relative=[Path(p).name for p in images], progress=True, **settings)
    report_failures(run.failures, [], folder)
    if run.failures:
        report["failures"] = [{"image": os.path.abspath(str(f.path)), "reason": f.reason} for f in run.failures]
    s = run.stats
    click.echo(f"evaluate: {s.computed} computed, {s.from_parts} already done, {s.failed} failed"
               + restarts_note(s))
    records, metas = {}, {}
    for method in methods:
        error = next((r["errors"][method] for r in run.results if method in r["errors"]), None)
        if error is not None:
            report["errors"][method] = error
            click.echo(f"{method}: failed: {error}", err=True)
            continue
        if run.results:
            records[method] = [r["methods"][method] for r in run.results]
            metas[method] = run.results[0]["meta"][method]
    name = f"metrics.{shard.name}.json" if shard else "metrics.json"
    finish(report, run.images, methods, records, metas, folder, name, figures=shard is None)


def write_figures(done: dict, folder: Path) -> dict:
    from ..render.trust import curves_figure, sanity_figure

    files = {}
    for key in ("deletion", "insertion"):
        curves = {m: getattr(ev, key) for m, ev in done.items() if getattr(ev, key) is not None}
        if curves:
            files[key] = save_figure(curves_figure(curves), folder / f"{key}.png")
    sanity = {m: ev.sanity for m, ev in done.items() if ev.sanity is not None}
    if sanity:
        files["sanity"] = save_figure(sanity_figure(sanity), folder / "sanity.png")
    return files


# ---------------------------------------------------------------------------- boxes


def _box_file(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise OnnxvizError(f"cannot read boxes from {path}: {exc}") from None
    if not isinstance(data, dict):
        raise OnnxvizError(f"{path}: expected a JSON object keyed by image file name")
    return data


def read_box_lists(path: str, images: Sequence[str]) -> list:
    """Per image, its boxes [[x0, y0, x1, y1], ...] in the original image's pixels."""
    data = _box_file(path)
    out = []
    for image in images:
        entry = data.get(image, data.get(Path(image).name))
        if entry is None:
            raise OnnxvizError(f"{path} has no box for {Path(image).name}")
        out.append(parse_boxes(entry, path, image))
    return out


def read_boxes(path: str, images: Sequence[str], geoms: list, size: tuple) -> np.ndarray:
    """(N, H, W) object masks in model-input pixels from a JSON of boxes per image file name."""
    return np.stack([boxes_mask(b, g, size) for b, g in zip(read_box_lists(path, images), geoms)])


COMMANDS = (evaluate_cmd,)
