import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                     help="onnxruntime device for the tests that take the `device` fixture (default: cpu)")


@pytest.fixture(scope="session")
def device(request) -> str:
    """The onnxruntime device chosen with --device."""
    return request.config.getoption("--device")
