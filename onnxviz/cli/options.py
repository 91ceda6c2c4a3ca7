"""The output flag every command shares: one spelling, one type and one default pattern."""
from __future__ import annotations

from typing import Optional

import click

OUT_ROOT = "onnxviz-out"


def out_option(command: str, default: Optional[str] = None, help: str = "Output folder."):
    """-o/--out, a folder (never a file) defaulting to onnxviz-out/<command>.

    Each command gets its own default folder so that running several of them without --out does
    not mix their files (and results.json) in one place.
    """
    return click.option("-o", "--out", "out", default=default or f"{OUT_ROOT}/{command}", show_default=True,
                        type=click.Path(file_okay=False), help=help)
