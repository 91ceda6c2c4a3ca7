"""inspect, filters, activations: what the model is, what its first layer looks for, what a layer sees."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..images import deprocess
from ..inspection import describe, format_table
from ..io import ensure_out_dir, safe_name, save_figure, save_json, save_npy
from ..methods.features import activations, filters
from ..render import activations_figure, filters_figure
from ..render.tiles import rank_channels
from ..session import open_session
from .common import handle_errors, model_options, out_dir, preprocess_options
from .options import out_option


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
@click.option("--all", "show_all", is_flag=True, help="List every tensor, not only layers with parameters or "
              "spatial changes.")
@model_options
@handle_errors
def inspect(model, as_json, show_all, **opts):
    """Describe a model: inputs/outputs, opset, layers with shapes, parameters, MACs and receptive fields.

    Grad-CAM candidate layers are marked with *.

    \b
    Example:
      onnxviz inspect models/shapes_cnn.onnx
    """
    session = open_session(model, verify=False, finite=False, **opts)  # inspect describes; it warns
    info = describe(session.model, size=session.pre.size)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
    else:
        click.echo(format_table(info, show_all=show_all))


@click.command("filters")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--layer", default=None, help="A Conv's output tensor or node name (default: the first Conv).")
@out_option("filters")
@model_options
@handle_errors
def filters_cmd(model, layer, out, **opts):
    """Show a convolution's filters as an image grid (RGB when it sees 3 channels). Saves PNG and NPY.

    \b
    Example:
      onnxviz filters models/shapes_cnn.onnx --out out/filters
    """
    session = open_session(model, verify=False, **opts)
    f = filters(session.model, layer)
    folder = out_dir(out, "onnxviz-out/filters")
    stem = safe_name(f.layer, "tensor")
    bgr = bool(session.pre.bgr)
    title = f"{f.layer}: {f.weights.shape[0]} filters {f.weights.shape[2]}x{f.weights.shape[3]}"
    png = save_figure(filters_figure(f.weights, title, bgr=bgr), folder / f"{stem}.png")
    npy = save_npy(f.weights, folder / f"{stem}.npy")
    click.echo(f"{f.layer}: weights {tuple(f.weights.shape)} -> {png}, {npy}")


@click.command("activations")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--layer", required=True, help="ONNX tensor name (see `onnxviz inspect`).")
@click.option("--top", type=click.IntRange(1), default=32, show_default=True, help="Show the K most active channels.")
@out_option("activations")
@model_options
@preprocess_options
@handle_errors
def activations_cmd(model, image, layer, top, out, **opts):
    """Show a layer's feature maps for an image, most active channels first. Saves PNG and NPY.

    \b
    Example:
      onnxviz activations models/shapes_cnn.onnx models/images/star_0.png --layer /features/features.14/Relu_output_0
    """
    session = open_session(model, **opts)
    x, images, _ = session.batch([image])
    acts = activations(session.model, x, layer)
    chosen = rank_channels(acts.values[0])[:top]
    folder = ensure_out_dir(out_dir(out, "onnxviz-out/activations") / safe_name(Path(image).stem, "image"))

    shown = deprocess(x, session.model.input, session.pre)[0]
    title = f"{layer} {tuple(acts.values.shape[1:])}: top {len(chosen)} channels by mean activation"
    stem = safe_name(layer, "tensor")
    png = save_figure(activations_figure(shown, acts.values[0], chosen, title), folder / f"{stem}.png")
    npy = save_npy(acts.values[0], folder / f"{stem}.npy")
    save_json({"layer": layer, "image": os.path.abspath(image), "channels": [int(c) for c in chosen],
               "shape": list(acts.values.shape[1:])}, folder / f"{stem}.json")
    click.echo(f"{layer}: {tuple(acts.values.shape[1:])} -> {png}, {npy}")


COMMANDS = (inspect, filters_cmd, activations_cmd)
