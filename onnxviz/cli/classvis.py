"""classvis: the image a class (or one channel of a layer) responds to most, by gradient ascent.

``OUT/`` gets, per visualization, ``<stem>.png`` (the image, normalization and layout undone),
``<stem>.npy`` (the raw model input), ``<stem>_steps.png`` (snapshots over the steps, left to
right; inputs under 128 pixels enlarged by pixel repetition) and ``classvis.json`` with every
score, probability and file. Stems are ``class<K>[_<start>]`` or ``<layer>_ch<C>[_<start>]``.
"""
from __future__ import annotations

import os
from typing import Optional

import click

from ..errors import OnnxvizError
from ..io import ensure_out_dir, safe_name, save_json, save_npy, save_png
from ..methods.classvis import Ascent, channel_visualization, class_visualization
from ..methods.parameterization import PARAMETERIZATIONS
from ..methods.layers import layer_axes
from ..render.tiles import grid
from ..session import open_session
from ..targets import objective
from .attribution import class_index
from .common import handle_errors, model_options, preprocess_options
from .options import out_option

_D = Ascent()


class RangeType(click.ParamType):
    """LOW,HIGH (two numbers) or one number for a fixed value."""

    name = "LOW,HIGH"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, tuple):
            return value
        try:
            parts = tuple(float(p) for p in str(value).split(",") if p.strip())
        except ValueError:
            parts = ()
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2:
            self.fail(f"{value!r} is not LOW,HIGH like 0.95,1.05", param, ctx)
        return parts


@click.command("classvis")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--target", default=None,
              help="Class(es) to visualize: an index, a label name, a comma list, or 'all'.")
@click.option("--layer", default=None, help="Visualize a channel of this tensor instead (with --channel).")
@click.option("--channel", default=None, help="Channel(s) of --layer: an index or a comma list.")
@click.option("--steps", type=click.IntRange(1), default=_D.steps, show_default=True, help="Adam steps.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=_D.lr, show_default=True,
              help="Adam learning rate, in pixel fractions (0.05 = ~13 grey levels).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the starting noise and the transforms.")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True,
              help="Starts from different noise per target, run together.")
@click.option("--l2", type=click.FloatRange(0), default=_D.l2, show_default=True,
              help="λ of λ‖I‖², relative to the unit-RMS objective gradient.")
@click.option("--tv", type=click.FloatRange(0), default=_D.tv, show_default=True,
              help="Weight of the squared total variation.")
@click.option("--blur-every", type=click.IntRange(0), default=_D.blur_every, show_default=True,
              help="Blur the image every N steps (0: never).")
@click.option("--blur-sigma", type=click.FloatRange(0), default=_D.blur_sigma, show_default=True,
              help="Blur radius, pixels.")
@click.option("--jitter", type=click.FloatRange(0, 0.5, max_open=True), default=_D.jitter, show_default=True,
              help="Random roll of up to this fraction of the side, each step.")
@click.option("--zoom", type=RangeType(), default=",".join(map(str, _D.zoom)), show_default=True,
              help="Random scale range each step (1,1: none).")
@click.option("--rotate", type=click.FloatRange(0), default=_D.rotate, show_default=True,
              help="Random rotation of up to ± this many degrees each step.")
@click.option("--param", type=click.Choice(PARAMETERIZATIONS), default=_D.param, show_default=True,
              help="Optimize pixels, or a decorrelated Fourier spectrum (lucid).")
@click.option("--subtract-others", is_flag=True, help="Class objective: the logit minus the mean of the others.")
@click.option("--snapshots", type=click.IntRange(0), default=_D.snapshots, show_default=True,
              help="Images in the strip over the steps.")
@click.option("--output", default=None, help="Model output whose class is visualized (default: the first).")
@out_option("classvis")
@model_options
@preprocess_options
@handle_errors
def classvis_cmd(model, target, layer, channel, steps, lr, seed, batch, l2, tv, blur_every, blur_sigma,
                 jitter, zoom, rotate, param, subtract_others, snapshots, output, out, **opts):
    """Class visualization (--target) or a channel's preferred input (--layer, --channel), by gradient ascent.

    Starts from low-contrast noise and follows the gradient of the target's pre-softmax logit (or
    the channel's mean activation) minus λ‖I‖², with random jitter, zoom and rotation, periodic
    blur and total variation; each step is one onnxruntime run of the gradient graph.

    \b
    Examples:
      onnxviz classvis models/shapes_cnn.onnx --target all --out vis
      onnxviz classvis models/shapes_cnn.onnx --layer /features/features.6/Relu_output_0 --channel 0,1,2
    """
    if (target is None) == (layer is None):
        raise click.UsageError("give either --target (class visualization) or --layer with --channel")
    if layer is not None and channel is None:
        raise click.UsageError("--layer needs --channel")
    if layer is None and channel is not None:
        raise click.UsageError("--channel goes with --layer")
    session = open_session(model, **opts)
    m = session.model
    folder = ensure_out_dir(out)
    ascent = Ascent(steps=steps, lr=lr, l2=l2, tv=tv, blur_every=blur_every, blur_sigma=blur_sigma,
                    jitter=jitter, zoom=zoom, rotate=rotate, param=param, snapshots=snapshots)
    common = dict(batch=batch, seed=seed, pre=session.pre, size=opts.get("size"), progress=True, settings=ascent)
    if layer is None:
        targets = _targets(target, session, output)
        vis = class_visualization(m, targets, output=output, subtract_others=subtract_others, **common)
    else:
        vis = channel_visualization(m, layer, _channels(channel, m, layer), **common)
    entries = _write(vis, session, folder, batch)
    summary = {"model": os.path.abspath(model), "kind": vis.kind, "tensor": vis.tensor, "layer": vis.layer,
               "settings": vis.settings, "snapshot_steps": vis.snapshot_steps, "items": entries}
    save_json(summary, folder / "classvis.json")
    for e in entries:
        what = e["label"] if vis.kind == "class" else f"{layer} channel {e['target']}"
        prob = f", p={e['probability']:.3f}" if e.get("probability") is not None else ""
        click.echo(f"{what}: score {e['start_score']:.3g} -> {e['score']:.3g}{prob} -> {e['files']['png']}")
    click.echo(f"wrote {folder / 'classvis.json'}")


def _targets(text: str, session, output: Optional[str]) -> list:
    if text.strip().lower() == "all":

        obj = objective(session.model, output, "logit")
        k = (session.model.tensor_shape(obj.tensor) or [None] * obj.rank)[obj.class_axis]
        if not isinstance(k, int):
            k = len(session.labels) if session.labels else None
        if not k:
            raise OnnxvizError("--target all: the number of classes is unknown; list the classes")
        return list(range(k))
    return [class_index(p.strip(), session) for p in text.split(",") if p.strip()]


def _channels(text: str, model, layer: str) -> list:
    if text.strip().lower() == "all":

        shape = model.tensor_shape(layer)
        axis = 1 if shape is not None and len(shape) == 2 else layer_axes(model, layer)[0]
        k = shape[axis] if shape is not None else None
        if not isinstance(k, int):
            raise OnnxvizError(f"--channel all: the channel count of {layer!r} is unknown; list the channels")
        return list(range(k))
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected a channel index, a comma list or 'all'",
                                 param_hint="--channel") from None


def _write(vis, session, folder, batch: int) -> list:
    entries = []
    for r in range(len(vis)):
        k = int(vis.target[r])
        stem = f"class{k}" if vis.kind == "class" else f"{safe_name(vis.layer, 'layer').strip('_')}_ch{k}"
        if batch > 1:
            stem += f"_{r % batch}"
        files = {"png": save_png(vis.image[r], folder / f"{stem}.png"),
                 "npy": save_npy(vis.x[r:r + 1], folder / f"{stem}.npy")}
        if len(vis.snapshots):
            zoom = max(1, 128 // max(vis.image.shape[1:3]))  # small inputs enlarged, pixels repeated
            files["steps"] = save_png(grid(vis.snapshots[:, r], cols=len(vis.snapshots), pad=2, zoom=zoom),
                                      folder / f"{stem}_steps.png")
        entry = {"target": k, "start": r % batch, "start_score": float(vis.start_score[r]),
                 "score": float(vis.score[r]), "norm": float(vis.norm[r]),
                 "files": {kind: str(p) for kind, p in files.items()}}
        if vis.kind == "class":
            entry["label"] = session.label(k)
            entry["probability"] = float(vis.probability[r])
        entries.append(entry)
    return entries


COMMANDS = (classvis_cmd,)
