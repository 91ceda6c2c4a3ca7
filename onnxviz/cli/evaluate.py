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

from ..errors import OnnxvizError
from ..io import check_not_input, ensure_out_dir, save_figure, save_json
from ..methods.trust import METRICS, evaluate, image_record, summary
from ..outputs import TITLES
from ..session import open_session
from .attribution import parse_targets
from .common import handle_errors, model_options, preprocess_options
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
@out_option("evaluate")
@model_options
@preprocess_options
@handle_errors
def evaluate_cmd(model, images, methods, metrics, boxes, steps, score, target, seed, out, **opts):
    """Can these maps be trusted? Deletion/insertion, ROAD, pointing game and randomization checks.

    \b
    Example:
      onnxviz evaluate models/shapes_cnn.onnx models/images/star_0.png models/images/ring_0.png \\
          --method gradcam,guided --boxes models/images/boxes.json --out out/evaluate
    """
    methods = _names(methods, "method")
    chosen = _names(metrics, "metrics") if metrics else ["deletion", "insertion", "sanity"] + (
        ["pointing"] if boxes else [])
    session = open_session(model, **opts)
    folder = ensure_out_dir(out)
    check_not_input(folder / "metrics.json", [model, *images, *([boxes] if boxes else [])])
    x, pictures, geoms = session.batch(list(images))
    size = session.model.input.hw(x)
    masks = read_boxes(boxes, images, geoms, size) if boxes else None
    targets = parse_targets(target, len(images), session)
    per_image = [{"image": os.path.abspath(p), "methods": {}} for p in images]
    report = {"model": os.path.abspath(model), "metrics": chosen, "steps": steps, "score": score, "seed": seed,
              "images": per_image, "summary": {}, "errors": {}}
    done = {}
    for method in methods:
        click.echo(f"{TITLES.get(method, method)}: {', '.join(chosen)} ...", err=True)
        try:
            ev = evaluate(session.model, x, method, chosen, targets, masks=masks, steps=steps, score=score,
                          seed=seed, progress=True)
        except OnnxvizError as exc:
            if "unknown" in str(exc) or "needs the objects" in str(exc):
                raise
            report["errors"][method] = str(exc)
            click.echo(f"{method}: failed: {exc}", err=True)
            continue
        done[method] = ev
        for i, entry in enumerate(per_image):
            entry["methods"][method] = image_record(ev, i)
        report["summary"][method] = summary(ev)
    if not done:
        raise OnnxvizError("no method could be evaluated: " + "; ".join(f"{m}: {e}" for m, e in report["errors"].items()))
    files = write_figures(done, folder)
    report["files"] = {k: str(v) for k, v in files.items()}
    save_json(report, folder / "metrics.json")
    for method, ev in done.items():
        click.echo(_line(method, ev))
    click.echo(f"wrote {folder / 'metrics.json'}")


def _line(method: str, ev) -> str:
    parts = []
    if ev.deletion is not None:
        parts.append(f"deletion AUC {ev.deletion.auc.mean():.3f}")
    if ev.insertion is not None:
        parts.append(f"insertion AUC {ev.insertion.auc.mean():.3f}")
    if ev.road is not None:
        parts.append(f"ROAD {ev.road.combined.mean():+.3f}")
    if ev.pointing is not None:
        parts.append(f"pointing {ev.pointing.mean():.0%}, energy {ev.energy.mean():.2f}")
    head = f"{method}: " + ", ".join(parts)
    if ev.sanity is not None:
        head += (f"; {ev.sanity.verdict()} (Spearman |map| {ev.sanity.final:.2f} after {len(ev.sanity.layers)} "
                 f"layers; random other class {ev.random_logit.spearman_abs.mean():.2f})")
    return head


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


def read_boxes(path: str, images: Sequence[str], geoms: list, size: tuple) -> np.ndarray:
    """(N, H, W) object masks in model-input pixels from a JSON of boxes per image file name."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise OnnxvizError(f"cannot read boxes from {path}: {exc}") from None
    if not isinstance(data, dict):
        raise OnnxvizError(f"{path}: expected a JSON object keyed by image file name")
    masks = np.zeros((len(images), *size), bool)
    for i, (image, geom) in enumerate(zip(images, geoms)):
        entry = data.get(image, data.get(Path(image).name))
        if entry is None:
            raise OnnxvizError(f"{path} has no box for {Path(image).name}")
        for box in _boxes(entry, path, image):
            masks[i] |= _box_mask(box, geom, size)
    return masks


def _boxes(entry, path: str, image: str) -> list:
    if isinstance(entry, dict):
        entry = entry.get("boxes", entry.get("box"))
    if isinstance(entry, list) and len(entry) == 4 and all(isinstance(v, (int, float)) for v in entry):
        entry = [entry]
    ok = isinstance(entry, list) and entry and all(
        isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b) for b in entry)
    if not ok:
        raise OnnxvizError(f"{path}: the boxes of {Path(image).name} must be [x0, y0, x1, y1] or a list of them")
    return entry


def _box_mask(box, geom, size: tuple) -> np.ndarray:
    """A box in the original image's pixels, mapped through the resize and crop to model input."""
    (sy, sx), (top, left) = geom.scale, geom.offset
    x0, y0, x1, y1 = box
    h, w = size
    cx0, cx1 = np.clip([x0 * sx - left, x1 * sx - left], 0, w)
    cy0, cy1 = np.clip([y0 * sy - top, y1 * sy - top], 0, h)
    # a pixel belongs to the box when its centre does
    xs, ys = np.arange(w) + 0.5, np.arange(h) + 0.5
    return ((ys >= cy0) & (ys < cy1))[:, None] & ((xs >= cx0) & (xs < cx1))[None, :]
COMMANDS = (evaluate_cmd,)
