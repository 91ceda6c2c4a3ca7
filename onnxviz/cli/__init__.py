"""The onnxviz command line: thin click commands over the Python API."""
from __future__ import annotations

import logging

import click

from .._version import __version__
from . import attribution, classvis, dataset, demo, describe, evaluate, grad, report

# Each command module lists its commands in COMMANDS; a new module joins this tuple.
MODULES = (describe, grad, demo, attribution, classvis, report, dataset, evaluate)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxviz")
@click.option("-v", "--verbose", count=True, help="More messages (-vv for debug).")
def main(verbose):
    """See how any ONNX CNN sees: filters, activations, gradients, CAMs — computed with onnxruntime."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s: %(message)s")


for module in MODULES:
    for command in module.COMMANDS:
        main.add_command(command)

__all__ = ["main"]
