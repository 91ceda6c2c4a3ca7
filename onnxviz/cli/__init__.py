"""The onnxviz command line: thin click commands over the Python API."""
from __future__ import annotations

import logging

import click

from .. import __version__
from .attribution import cam_cmd, occlusion_cmd, saliency_cmd
from .classvis import classvis_cmd
from .dataset import COMMANDS as DATASET_COMMANDS
from .demo import demo
from .describe import activations_cmd, filters_cmd, inspect
from .evaluate import evaluate_cmd
from .grad import check_grad, export_grad
from .report import report_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxviz")
@click.option("-v", "--verbose", count=True, help="More messages (-vv for debug).")
def main(verbose):
    """See how any ONNX CNN sees: filters, activations, gradients, CAMs — computed with onnxruntime."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s: %(message)s")


for command in (inspect, filters_cmd, activations_cmd, export_grad, check_grad, demo,
                cam_cmd, saliency_cmd, occlusion_cmd, classvis_cmd, report_cmd, evaluate_cmd):
    main.add_command(command)
for command in DATASET_COMMANDS:
    main.add_command(command)

__all__ = ["main"]
