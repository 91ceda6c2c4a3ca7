"""Start-up: `onnxviz --help` and `--version` must not pay for onnxruntime, matplotlib,
scikit-learn or scipy (together 3-5 s on a 2-core machine); they are imported where used.

Wall time is not asserted (timed tests are flaky on shared machines): the modules that cost
the time are checked instead, in a fresh interpreter.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("onnxruntime", "matplotlib", "sklearn", "scipy")


def python(*args, code=None):
    cmd = [sys.executable, *(("-c", code) if code else args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("statement", ["import onnxviz.cli", "import onnxviz"])
def test_import_loads_no_heavy_module(statement):
    probe = f"{statement}; import sys, json; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = python(code=probe)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["cam", "--help"], ["report", "--help"]])
def test_help_and_version_run_without_heavy_modules(args):
    # runs the real entry point, then reports what it imported (click exits via SystemExit)
    probe = ("import sys, json, runpy\n"
             f"sys.argv = ['onnxviz', *{args!r}]\n"
             "try:\n    runpy.run_module('onnxviz', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             f"print('\\nHEAVY=' + json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
             "sys.exit(code or 0)\n")
    done = python(code=probe)
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout or "version" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "HEAVY=[]"


def test_module_entry_point_prints_help():
    done = python("-m", "onnxviz", "--help")
    assert done.returncode == 0 and "Usage:" in done.stdout, done.stderr
