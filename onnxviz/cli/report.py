"""report: one self-contained HTML page auditing a model on some images."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import NonFiniteError
from ..io import ensure_out_dir
from ..report import report
from ..session import open_session
from .common import handle_errors, model_options, preprocess_options


def echo_progress(line: str) -> None:
    click.echo(f"report: {line}", err=True)


@click.command("report")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              help="The HTML file to write (replaced atomically).")
@click.option("--dataset", type=click.Path(exists=True, file_okay=False), default=None,
              help="Image folder (sub-folders = classes): adds a t-SNE map, nearest neighbours and top patches.")
@click.option("--layer", default=None, help="Layer for Grad-CAM, activations and patches (default: the last "
              "spatial tensor before the head; `onnxviz inspect` marks the candidates).")
@click.option("--top", type=click.IntRange(1), default=5, show_default=True, help="Predictions listed per image.")
@click.option("--check-grad/--no-check-grad", "check_grad", default=True, show_default=True,
              help="Run the gradient check (float64 finite differences: the slowest section on large models).")
@click.option("--classvis-steps", type=click.IntRange(1), default=None,
              help="Gradient-ascent steps per class visualization (default: the method's own, 256).")
@model_options
@preprocess_options
@handle_errors
def report_cmd(model, images, out, dataset, layer, top, check_grad, classvis_steps, **opts):
    """Audit MODEL on IMAGES in one HTML page you can open offline, print and send.

    The page holds the model card (hash, opset, input, preprocessing, layer table, runtime),
    a gradient check, the first convolution's filters, per image the top predictions with
    Grad-CAM, guided Grad-CAM, guided backprop, occlusion, CAM and activations, class
    visualizations of the predicted classes, and with --dataset a t-SNE map, nearest
    neighbours and top patches. A section that does not apply to the model says why; every
    section is timed. Progress goes to stderr.

    \b
    Example:
      onnxviz report models/shapes_cnn.onnx models/images/*.png --dataset models/images -o report.html
    """

    out = Path(out)
    if out.is_dir():
        raise click.BadParameter(f"{out} is a folder; give the HTML file to write", param_hint="-o/--out")
    ensure_out_dir(out.parent)
    session = open_session(model, finite=False, **opts)  # the sections that cannot be computed say why, in red
    result = report(session.model, images, out, dataset=dataset, labels=session.labels, pre=session.pre,
                    layer=layer, top=top, progress=echo_progress, check_grad=check_grad,
                    classvis_steps=classvis_steps)
    failed = [s.title for s in result.sections if s.status == "error"]
    if failed:
        click.echo(f"report: {len(failed)} section(s) failed, each explained on the page: {', '.join(failed)}",
                   err=True)
    size = out.stat().st_size
    click.echo(f"wrote {out.resolve()} ({size / 1e6:.1f} MB, {result.seconds:.1f} s)")
    if session.nonfinite:
        raise NonFiniteError(f"the model's {session.nonfinite}: the report marks what it could not compute")


COMMANDS = (report_cmd,)
