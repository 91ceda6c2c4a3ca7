"""export-grad and check-grad: the gradient graph as a file, and proof that it is exact."""
from __future__ import annotations

from pathlib import Path

import click
import onnx

from ..autodiff import RULESETS, gradient_graph, ruleset
from ..checkgrad import check_gradients, format_rows, verdict
from ..gradients import check_differentiable
from ..graph.analysis import gradcam_candidates
from ..io import ensure_out_dir, save_model
from ..session import open_session
from ..targets import SCORES, objective
from .common import handle_errors, model_options, preprocess_options


@click.command("export-grad")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--wrt", multiple=True, default=["input"], show_default=True,
              help="Tensor to differentiate with respect to (repeatable); 'input' is the image input.")
@click.option("--output", default=None, help="Model output to explain (default: the first).")
@click.option("--score", type=click.Choice(SCORES), default="logit", show_default=True,
              help="logit: differentiate the pre-softmax tensor when the output ends in Softmax.")
@click.option("--rules", type=click.Choice(list(RULESETS)), default="standard",
              show_default=True, help="Backward rule set.")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Where to write the .onnx.")
@model_options
@handle_errors
def export_grad(model, wrt, output, score, rules, out, **opts):
    """Write the gradient model: one .onnx that onnxruntime runs with a seed input.

    Inputs: the model's inputs plus `seed`, shaped like the differentiated tensor. Outputs: the
    model's outputs, the wrt tensors, and d(seed . tensor)/d(wrt) for each. Models over 2 GB are
    written with external data beside the file. The file's metadata says what it computes, so
    `cam`/`saliency --grad-model` can run it instead of building the graph.

    \b
    Example:
      onnxviz export-grad models/shapes_cnn.onnx --wrt input -o shapes_grad.onnx
    """
    session = open_session(model, verify=False, **opts)
    m = session.model
    obj = objective(m, output, score)
    names = [m.input.name if w == "input" else w for w in wrt]
    proto = m.specialized(*opts["size"]) if opts.get("size") else m.proto
    check_differentiable(proto)
    gm = gradient_graph(proto, obj.tensor, names, ruleset(rules))
    describe_export(gm, m, obj, score, rules, opts.get("size"))
    onnx.checker.check_model(gm.proto) if gm.proto.ByteSize() < 2**31 - 2**26 else None
    ensure_out_dir(Path(out).resolve().parent)
    save_model(gm.proto, out)
    click.echo(f"wrote {out}: seed input {gm.seed!r} (shaped like {obj.tensor!r}); gradient outputs:")
    for t, g in gm.grads.items():
        click.echo(f"  d/d {t} -> {g}")


def describe_export(gm, model, obj, score: str, rules: str, size) -> None:
    """Record in the file what it computes, so a loader (``--grad-model``) can refuse a file that
    does not fit its model, tensors or rule set instead of returning wrong maps."""
    import json

    from ..distributed.exported import META_KEY
    from ..methods.embed import model_digest

    meta = {"model_sha256": model_digest(model), "inputs": [model.input.name, *model.other_inputs],
            "output": obj.output, "tensor": obj.tensor, "score": score, "rules": rules, "seed": gm.seed,
            "grads": dict(gm.grads), "size": list(size) if size else None}
    entry = gm.proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)


@click.command("check-grad")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("image", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--layer", "layers", multiple=True, help="Layers to check (default: the Grad-CAM candidates).")
@click.option("--directions", type=click.IntRange(1), default=2, show_default=True,
              help="Random directions per tensor.")
@click.option("--tolerance", type=float, default=1e-3, show_default=True, help="Largest relative error allowed.")
@click.option("--target", type=int, default=None, help="Class to explain (default: predicted).")
@model_options
@preprocess_options
@handle_errors
def check_grad(model, image, layers, directions, tolerance, target, **opts):
    """Compare the gradient graph with float64 finite differences; exit 1 above tolerance.

    Directional derivatives along random directions, at the input and at each Grad-CAM
    candidate layer, against central differences of the model run in float64 by onnx's
    reference evaluator. The verdict (EXACT, NOT EXACT or INCONCLUSIVE, with the reason) is
    printed on stdout and stderr; INCONCLUSIVE (differences cannot resolve the score, e.g.
    constant weights giving logits ~1e10) exits 0, NOT EXACT exits 1.

    \b
    Example:
      onnxviz check-grad models/shapes_cnn.onnx models/images/star_0.png
    """
    session = open_session(model, **opts)
    m = session.model
    x = session.batch([image])[0] if image else None
    if not layers:
        layers = gradcam_candidates(m.proto, m.input.name, m.input.layout, shapes=m.shapes_at())[:2]
    rows = check_gradients(m, x, layers=list(layers), target=target, directions=directions, tolerance=tolerance,
                           progress=lambda text: click.echo(f"check-grad: {text}", err=True))
    click.echo(format_rows(rows))
    word, why = verdict(rows, tolerance)
    line = f"check-grad: {word.upper()}: {why}"
    click.echo(line)
    click.echo(line, err=True)  # the verdict also where a script that discards the table sees it
    if word == "not exact":
        raise click.exceptions.Exit(1)


COMMANDS = (export_grad, check_grad)
