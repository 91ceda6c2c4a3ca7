"""cam, saliency, occlusion: where the model looks, for many images, in batches.

For each image, ``OUT/<image stem>/`` gets ``<method>.npy`` (the [0, 1] map at input size),
``<method>.raw.npy`` (the unnormalized map) and ``<method>.png`` (the map over the image), written
by :mod:`onnxviz.outputs` exactly as the dataset engines' workers write them;
``OUT/results.json`` lists every map with its target, label, score, layer and files, and what was
explained (output, explained tensor, target, score kind). Every file
is written atomically, and results.json after each batch, so Ctrl-C leaves no partial files.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import click
import numpy as np

from ..errors import OnnxvizError
from ..images import deprocess, read_image
from ..io import deferred_interrupts, ensure_out_dir, save_json
from ..methods.cam import METHODS as CAM_METHODS, TITLES as CAM_TITLES
from ..methods.occlusion import occlusion
from ..methods.saliency import METHODS as SALIENCY_METHODS, saliency
from ..outputs import explained, image_dirs, title, write_image
from ..session import Session, open_session
from ..targets import SCORES, Target
from .common import (engine_options, handle_errors, load_options, model_options, pop_engine, preprocess_options,
                     restarts_note)
from .options import out_option


def attribution_options(fn):
    """--target, --box, --mask, --step, --negate, --seed, --feed, --top-k, --output, --score, --batch-size, --grad."""
    options = [
        click.option("--target", multiple=True,
                     help="Class to explain: an index or label name, one for all images or a comma list with "
                          "one per image; repeat it to explain the sum of several classes (multi-label). "
                          "Default: the predicted class (dense and sequence outputs: each position's)."),
        click.option("--box", default=None, metavar="X0,Y0,X1,Y1",
                     help="Explain only the output cells this box covers (model-input pixels; dense outputs)."),
        click.option("--mask", "mask_path", default=None, type=click.Path(exists=True, dir_okay=False),
                     help="Image (non-zero = inside) or .npy: explain Σ mask·output over a dense output."),
        click.option("--step", default=None, metavar="T or T0:T1",
                     help="Step(s) of a sequence output (N, T, C) to explain."),
        click.option("--negate", is_flag=True, help="Explain minus the score: what lowers it."),
        click.option("--seed", "seed_path", default=None, type=click.Path(exists=True, dir_okay=False),
                     help="A .npy shaped like the output (or one image's output): explain Σ seed·output."),
        click.option("--feed", multiple=True, metavar="NAME=FILE.npy",
                     help="Value of another model input (repeatable); one row is used for every image."),
        click.option("--top-k", "top_k", type=click.IntRange(1), default=None,
                     help="Explain each image's K highest-scoring classes (files get a _<class> suffix)."),
        click.option("--output", default=None, help="Model output to explain (default: the first)."),
        click.option("--score", type=click.Choice(SCORES), default="logit", show_default=True,
                     help="logit: explain the pre-softmax value when the output ends in Softmax."),
        click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True,
                     help="Images per onnxruntime run (Integrated Gradients and SmoothGrad: path points "
                          "or noisy copies per run): bounds memory."),
        click.option("--grad", type=click.Choice(["exact", "fd"]), default="exact", show_default=True,
                     help="exact: the gradient graph; fd: central finite differences (for operators "
                          "without a backward rule; 2 runs per input element, slow)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def grad_model_option(fn):
    return click.option(
        "--grad-model", "grad_model", multiple=True, type=click.Path(exists=True, dir_okay=False),
        help="An `onnxviz export-grad` file to run instead of building the gradient graph (repeatable: "
             "guided-gradcam needs one with --rules standard and one with --rules guided); refused when it "
             "does not fit the model, --layer, --output/--score or the method's rule set.")(fn)


_MODEL = click.argument("model", type=click.Path(exists=True, dir_okay=False))
_IMAGES = click.argument("images", nargs=-1, required=True, type=click.Path(exists=True))


@click.command("cam")
@_MODEL
@_IMAGES
@click.option("--method", type=click.Choice(list(CAM_METHODS)), default="gradcam", show_default=True,
              help="; ".join(f"{name}: {t}" for name, t in CAM_TITLES.items()) + " (cam needs a GAP+FC head).")
@click.option("--layer", default=None, help="ONNX tensor to explain (default: the last spatial tensor before the "
              "head; `onnxviz inspect` marks the candidates).")
@out_option("cam")
@attribution_options
@grad_model_option
@engine_options
@model_options
@preprocess_options
@handle_errors
def cam_cmd(model, images, method, layer, **opts):
    """Class activation maps (Grad-CAM and relatives) for one or more images.

    \b
    Example:
      onnxviz cam models/shapes_cnn.onnx models/images/star_0.png --method gradcam --out out
    """
    fn = CAM_METHODS[method]
    _explain(model, images, method, lambda m, x, **kw: fn(m, x, layer=layer, **kw), opts, dict(layer=layer))


@click.command("saliency")
@_MODEL
@_IMAGES
@click.option("--method", type=click.Choice(list(SALIENCY_METHODS)), default="vanilla", show_default=True,
              help="vanilla gradient, deconvnet, guided backprop, smoothgrad or integrated gradients.")
@click.option("--samples", type=click.IntRange(1), default=25, show_default=True, help="SmoothGrad: noisy copies.")
@click.option("--noise", type=click.FloatRange(0), default=0.15, show_default=True,
              help="SmoothGrad: noise std as a fraction of each image's value range.")
@click.option("--steps", type=click.IntRange(1), default=32, show_default=True,
              help="Integrated Gradients: path points.")
@click.option("--baseline", type=click.Choice(["zero", "blur"]), default="zero", show_default=True,
              help="Integrated Gradients: start from 0 (in model-input units) or a blurred image.")
@out_option("saliency")
@attribution_options
@grad_model_option
@engine_options
@model_options
@preprocess_options
@handle_errors
def saliency_cmd(model, images, method, samples, noise, steps, baseline, **opts):
    """Input-gradient maps: vanilla, deconvnet, guided backprop, SmoothGrad, Integrated Gradients.

    \b
    Example:
      onnxviz saliency models/shapes_cnn.onnx models/images/star_0.png --method guided --out out
    """
    kw = dict(samples=samples, noise=noise, steps=steps, baseline=baseline)
    _explain(model, images, method, lambda m, x, **o: saliency(m, x, method=method, **kw, **o), opts, kw)


@click.command("occlusion")
@_MODEL
@_IMAGES
@click.option("--window", type=click.IntRange(1), default=32, show_default=True,
              help="Occluding square, in pixels (in positions of --layer when given).")
@click.option("--stride", type=click.IntRange(1), default=16, show_default=True, help="Step between windows.")
@click.option("--baseline", default="0", show_default=True,
              help="What covers the window: a number in model-input units, 'blur' or 'mean'.")
@click.option("--layer", default=None, help="Occlude this tensor's positions instead of pixels, re-running "
              "only the graph after it (faster on large models).")
@out_option("occlusion")
@attribution_options
@engine_options
@model_options
@preprocess_options
@handle_errors
def occlusion_cmd(model, images, window, stride, baseline, layer, **opts):
    """Occlusion: how much the target score drops when a sliding window hides each part of the image.

    \b
    Example:
      onnxviz occlusion models/shapes_cnn.onnx models/images/star_0.png --window 16 --stride 8 --out out
    """
    base = _baseline(baseline)
    _explain(model, images, "occlusion",
             # many windows per image: a bar over them, not only over the images
             lambda m, x, **o: occlusion(m, x, window=window, stride=stride, baseline=base, layer=layer,
                                         progress=True, **o),
             opts, dict(window=window, stride=stride, baseline=base, layer=layer))


def _baseline(text: str):
    if text in ("blur", "mean"):
        return text
    try:
        return float(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected a number, 'blur' or 'mean'", param_hint="--baseline")


# ---------------------------------------------------------------------------- the shared loop


def _explain(model_path: str, images: Sequence[str], method: str, explain: Callable, opts: dict,
             method_options: Optional[dict] = None) -> None:
    target, top_k, output, score = (opts.pop(k) for k in ("target", "top_k", "output", "score"))
    region = {k: opts.pop(k) for k in ("box", "mask_path", "step", "negate", "seed_path")}
    feeds = opts.pop("feed")
    out, batch_size, grad = opts.pop("out"), opts.pop("batch_size"), opts.pop("grad")
    grad_model = opts.pop("grad_model", ())  # cam and saliency; occlusion takes no gradient
    engine, shard = pop_engine(opts, out)
    images, relative = expand_images(images)
    session = open_session(model_path, **opts)
    if feeds:
        session.model.set_feeds(parse_feeds(feeds))
    general = general_target(target, region, session)
    targets = None if general is not None else parse_targets(target[0] if target else None, len(images), session)
    folder = ensure_out_dir(out)
    dirs = image_dirs(images, folder)
    if engine is not None:
        if general is not None or feeds:
            raise OnnxvizError("--engine runs class-index targets on image inputs only; drop --engine for "
                               "--box, --mask, --step, --negate, --seed, repeated --target or --feed")
        options = {**(method_options or {}), "top_k": top_k, "output": output, "score": score}
        if grad == "fd" and method != "occlusion":  # only when asked: the default keeps existing parts' keys
            options["grad"] = grad
        return _explain_dataset(model_path, images, relative, dirs, folder, method, options, targets, session,
                                opts, batch_size, engine, shard, grad_model)
    model = session.model
    if grad_model:
        model = exported_model(model, grad_model, method, {**(method_options or {}), "output": output,
                                                           "score": score, "grad": grad})
    entries: list = []
    summary = {"model": os.path.abspath(model_path), "method": method,
               "explained": explained(session.model, output, score, general if general is not None else targets),
               "images": entries}
    chosen = targets is not None or general is not None
    with click.progressbar(length=len(images), label=title(method), file=sys.stderr) as bar:
        for start in range(0, len(images), batch_size):
            paths = list(images[start:start + batch_size])
            x, _, _ = session.batch(paths)
            t = general if general is not None else None if targets is None else targets[start:start + len(paths)]
            extra = {"grad": grad} if method != "occlusion" else {}  # occlusion takes no gradient
            result = explain(model, x, target=t, top_k=top_k, output=output, score=score,
                             batch_size=batch_size, **extra)
            _warn_degenerate(result, paths)
            shown = deprocess(x, session.model.input, session.pre)
            with deferred_interrupts():  # Ctrl-C lands after the batch's folders and results.json
                for i, path in enumerate(paths):
                    rows = np.flatnonzero(result.image == i)
                    entries.append(write_image(session, result, rows, shown[i], path, dirs[start + i],
                                               method, top_k is not None, chosen))
                save_json(summary, folder / "results.json")
            bar.update(len(paths))
    layers = sorted({m["layer"] for e in entries for m in e["maps"] if m["layer"]})
    if layers:
        click.echo(f"{title(method)} at layer {', '.join(map(repr, layers))}")
    for e in entries:
        maps = "; ".join(f"{m['label']} ({m['score']:.3g})" for m in e["maps"])
        click.echo(f"{e['image']}: {maps} -> {e['dir']}")
    click.echo(f"wrote {folder / 'results.json'}")


def expand_images(images: Sequence[str]) -> tuple:
    """Files as given, folders as their images (recursive, sorted); with the names ``--shard`` splits by."""
    from ..datasets import scan_folder

    paths, relative = [], []
    for item in images:
        if os.path.isdir(item):
            dataset = scan_folder(item)
            paths += [str(p) for p in dataset.paths]
            relative += [f.path for f in dataset.files]
        else:
            paths.append(item)
            relative.append(Path(item).name)
    return paths, relative


def exported_model(model, paths: Sequence[str], method: str, options: dict):
    """``model`` answering gradients from the export-grad files ``paths``, once they are checked to fit."""
    from ..distributed.exported import ExportedGradients, check_exported, read_exported

    files = [read_exported(p) for p in paths]
    check_exported(files, model, method, options)
    return ExportedGradients(model, files)


def _explain_dataset(model_path, images, relative, dirs, folder, method, options, targets, session, opts,
                     batch_size, engine, shard, grad_model) -> None:
    """The dataset-scale path (--engine ray or --shard): resumable, per-image files written by workers."""
    from ..distributed import explain_dataset
    from .dataset import report

    run = explain_dataset(model_path, images, dirs, folder, method, options, targets, pre=session.pre,
                          load_options=load_options(opts), batch_size=batch_size, engine=engine, shard=shard,
                          relative=relative, progress=True, grad_model=grad_model or None)
    report(run.failures, [], folder)
    s = run.stats
    where = f"shard {shard} ({len(run.entries) + len(run.failures)} of {len(images)} images)" if shard else \
        f"{len(run.entries)} images"
    click.echo(f"{title(method)} of {where}: {s.computed} computed, {s.from_parts} already done, "
               f"{s.failed} failed" + restarts_note(s))
    click.echo(f"wrote {run.results}")


def general_target(target: Sequence[str], region: dict, session: Session):
    """A :class:`Target` or seed array from --target (repeated), --box, --mask, --step, --negate, --seed;
    None when the options ask for plain class indices."""
    plain = not any(v for v in region.values())
    if plain and len(target) <= 1:
        return None
    if region["seed_path"]:
        if target or any(region[k] for k in ("box", "mask_path", "step", "negate")):
            raise OnnxvizError("--seed is the whole target: it does not combine with --target, --box, --mask, "
                               "--step or --negate")
        return load_npy(region["seed_path"], "--seed").astype(np.float64)
    classes = [class_index(t, session) for t in target] if target else None
    if classes is not None and len(classes) == 1:
        classes = classes[0]
    return Target(classes, box=parse_box(region["box"]), mask=load_mask(region["mask_path"]),
                  step=parse_step(region["step"]), negate=region["negate"])


def parse_box(text: Optional[str]):
    if text is None:
        return None
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise OnnxvizError(f"--box {text!r}: expected four numbers x0,y0,x1,y1")
    return box


def parse_step(text: Optional[str]):
    if text is None:
        return None
    try:
        if ":" in text:
            a, b = text.split(":")
            return slice(int(a) if a else None, int(b) if b else None)
        return int(text)
    except ValueError:
        raise OnnxvizError(f"--step {text!r}: expected T or T0:T1") from None


def load_npy(path: str, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise OnnxvizError(f"{what} {path}: not a readable .npy file ({exc})") from None


def load_mask(path: Optional[str]):
    """A mask from a .npy or an image (non-zero = inside), at model-input size or the output's."""
    if path is None:
        return None
    if path.endswith(".npy"):
        return load_npy(path, "--mask").astype(np.float64)
    image = np.asarray(read_image(path))
    return (image.reshape(image.shape[0], image.shape[1], -1).max(axis=2) > 0).astype(np.float64)


def parse_feeds(feeds: Sequence[str]) -> dict:
    out = {}
    for item in feeds:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise OnnxvizError(f"--feed {item!r}: expected NAME=FILE.npy")
        out[name] = load_npy(path, f"--feed {name}")
    return out


def parse_targets(text: Optional[str], n: int, session: Session) -> Optional[np.ndarray]:
    """"3", "cat" or "3,1,cat": one class for all images or one per image; names need --labels."""
    if text is None:
        return None
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    classes = [class_index(p, session) for p in parts]
    if len(classes) == 1:
        return np.full(n, classes[0], np.int64)
    if len(classes) != n:
        raise OnnxvizError(f"--target has {len(classes)} classes for {n} images: give one, or one per image")
    return np.asarray(classes, np.int64)


def _warn_degenerate(result, paths) -> None:
    """Say so when a map carries no information (constant); results refuse non-finite maps themselves."""
    for row in range(len(result.raw)):
        raw = np.asarray(result.raw[row])
        name = Path(paths[int(result.image[row]) if result.image is not None else row]).name
        if np.ptp(raw) == 0:
            click.echo(f"warning: {name}: the {result.method} map is flat (every position {float(raw.flat[0]):.3g}): "
                       "nothing to show — constant weights, a window not smaller than the input, or a score "
                       "that does not depend on the input", err=True)


def class_index(text: str, session: Session) -> int:
    """A --target class given as an index or, with --labels, a label name."""
    try:
        k = int(text)
    except ValueError:
        labels = session.labels or []
        if text in labels:
            return labels.index(text)
        shown = ", ".join(map(str, labels[:20])) + (f", ... ({len(labels)} in all)" if len(labels) > 20 else "")
        hint = f"; the labels: {shown}" if labels else " (no label file: pass --labels, or give class indices)"
        raise OnnxvizError(f"--target {text!r} is neither a class index nor a label name{hint}") from None
    if k < 0:
        raise OnnxvizError(f"--target {k}: class indices start at 0")
    return k


COMMANDS = (cam_cmd, saliency_cmd, occlusion_cmd)
