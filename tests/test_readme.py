"""The README's examples run as written, so the docs cannot rot."""
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxviz.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _examples():
    return [line.strip() for block in _blocks("bash") for line in block.splitlines()
            if line.strip().startswith("onnxviz ")]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "models").symlink_to(ROOT / "models")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_opens_with_the_two_setup_commands():
    first = _blocks("bash")[0].splitlines()
    assert first[0].startswith('pip install ".[cpu]" && onnxviz demo')
    assert first[1].startswith('pip install -e ".[cpu,test]" && pytest')
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[cpu,test]" && pytest' in ci


@pytest.mark.parametrize("command", [c for c in _examples() if not c.startswith("onnxviz demo")])
def test_readme_command_runs(command, workdir):
    args = shlex.split(command)[1:]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_readme_python_api_runs(workdir):
    code = "\n".join(_blocks("python"))
    exec(compile(code, "README.md", "exec"), {})


def test_every_command_is_in_the_readme_table():
    for name in main.commands:
        assert f"`onnxviz {name}" in README, name
