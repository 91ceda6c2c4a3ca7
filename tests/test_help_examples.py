"""Every command's --help example runs as written on the bundled model (from a scratch folder)."""
from __future__ import annotations

import glob
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxviz.cli import main

ROOT = Path(__file__).resolve().parents[1]


def examples():
    out = []
    for name, cmd in sorted(main.commands.items()):
        text = (cmd.help or "").split("Example")[-1] if "Example" in (cmd.help or "") else ""
        text = text.replace("\\\n", " ")  # a shell line continuation joins the next line
        lines = [" ".join(line.split()) for line in text.splitlines() if line.strip().startswith("onnxviz ")]
        out += [pytest.param(line, id=f"{name}-{k}") for k, line in enumerate(lines)]
    return out


def test_examples_have_no_stray_spaces():
    for name, cmd in main.commands.items():
        for line in (cmd.help or "").splitlines():
            words = line.strip()
            assert not (words.startswith("onnxviz ") and "  " in words), f"{name}: stray spaces in {words!r}"


def test_every_command_has_an_example():
    named = {p.values[0].split()[1] for p in examples()}
    assert named == set(main.commands), set(main.commands) - named


@pytest.mark.parametrize("line", examples())
def test_help_example_runs(line, tmp_path, monkeypatch):
    (tmp_path / "models").symlink_to(ROOT / "models")
    monkeypatch.chdir(tmp_path)
    args = []
    for word in shlex.split(line)[1:]:
        args += sorted(glob.glob(word)) if any(c in word for c in "*?[") else [word]
    if args[0] == "demo":
        pytest.skip("the demo runs in tests/test_demo.py")
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, f"{line}\n{result.output}"


def test_out_is_the_same_flag_type_and_default_pattern_everywhere():
    import click

    for name, cmd in main.commands.items():
        out = next((p for p in cmd.params if p.name == "out"), None)
        if out is None:
            continue
        assert "-o" in out.opts and "--out" in out.opts, name
        assert isinstance(out.type, click.Path), name
        if out.type.dir_okay and not out.type.file_okay:  # a folder
            expected = "onnxviz-demo" if name == "demo" else f"onnxviz-out/{name}"
            assert out.default == expected and out.show_default, name
        else:
            assert not out.type.dir_okay, name  # a file: never a folder by mistake
