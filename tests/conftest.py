import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from builders import linear_model, save  # noqa: E402  (needs the path above)


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                     help="onnxruntime device for the tests that take the `device` fixture (default: cpu)")


@pytest.fixture(scope="session")
def device(request) -> str:
    """The onnxruntime device chosen with --device."""
    return request.config.getoption("--device")


@pytest.fixture(scope="module")
def weight():
    """(60, 4) weights of the linear model below: 3·4·5 inputs, 4 classes."""
    return np.random.default_rng(3).standard_normal((60, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def linear(tmp_path_factory, weight):
    """logits = Flatten(x) · weight, loaded in both layouts: closed-form gradients for the methods' tests."""
    import onnxviz

    folder = tmp_path_factory.mktemp("lin")
    return {layout: onnxviz.load(save(linear_model(weight, layout), folder / f"{layout}.onnx"), device="cpu")
            for layout in ("NCHW", "NHWC")}
