"""Bad input gets a clear error, and the user's files stay as they were."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from inc_core import PostTrainingQuantConfig, quantization
from inc_core.errors import BackendNotAvailable, DataError, ModelError

STATIC = PostTrainingQuantConfig(approach="static")


def test_corrupt_onnx_file_is_a_model_error(tmp_path, calib):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    before = path.read_bytes()
    with pytest.raises(ModelError, match=r"not a readable ONNX model|not an ONNX model"):
        quantization.fit(str(path), STATIC, calib_dataloader=calib)
    assert path.read_bytes() == before


def test_text_file_named_onnx_is_a_model_error(tmp_path, calib):
    path = tmp_path / "notes.onnx"
    path.write_text("these are my notes, not a model\n")
    with pytest.raises(ModelError, match=r"notes\.onnx"):
        quantization.fit(str(path), STATIC, calib_dataloader=calib)
    assert path.read_text() == "these are my notes, not a model\n"


def test_missing_file_is_a_model_error(tmp_path, calib):
    with pytest.raises(ModelError, match="does not exist"):
        quantization.fit(str(tmp_path / "nope.onnx"), STATIC, calib_dataloader=calib)


def test_model_without_quantizable_ops(calib):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["image"], ["out"], name="relu")],
        "relu_only",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelError, match="no op"):
        quantization.fit(model, STATIC, calib_dataloader=calib)


def test_calibration_input_name_mismatch(cnn):
    with pytest.raises(DataError, match=r"pixels.*\['image'\]"):
        quantization.fit(
            cnn, STATIC, calib_dataloader=[{"pixels": np.zeros((4, 1, 8, 8), np.float32)}]
        )


def test_calibration_input_shape_mismatch(cnn):
    with pytest.raises(DataError, match=r"shape \[4, 64\].*rank 4"):
        quantization.fit(cnn, STATIC, calib_dataloader=[np.zeros((4, 64), np.float32)])
    with pytest.raises(DataError, match="axis 2: 9 != 8"):
        quantization.fit(cnn, STATIC, calib_dataloader=[np.zeros((4, 1, 9, 9), np.float32)])


def test_empty_calibration_loader(cnn):
    with pytest.raises(DataError, match="no samples"):
        quantization.fit(cnn, STATIC, calib_dataloader=[])


def test_nan_in_calibration_data(cnn, digits, cnn_path):
    before = hashlib.sha256(cnn_path.read_bytes()).hexdigest()
    x = digits.x_train[:8].copy()
    x[0, 0, 3, 3] = np.nan
    with pytest.raises(DataError, match="NaN"):
        quantization.fit(str(cnn_path), STATIC, calib_dataloader=[x])
    assert hashlib.sha256(cnn_path.read_bytes()).hexdigest() == before


@pytest.mark.parametrize(
    ("backend", "device", "package"),
    [
        ("onnxrt_dnnl_ep", "cpu", "onnxruntime-dnnl"),
        ("onnxrt_dml_ep", "npu", "onnxruntime-directml"),
    ],
)
def test_missing_execution_provider_names_its_package(cnn, calib, backend, device, package):
    import onnxruntime as ort

    provider = {"onnxrt_dnnl_ep": "DnnlExecutionProvider", "onnxrt_dml_ep": "DmlExecutionProvider"}[
        backend
    ]
    if provider in ort.get_available_providers():
        pytest.skip(f"this onnxruntime build has {provider}: no missing-provider error to test")
    conf = PostTrainingQuantConfig(approach="static", backend=backend, device=device)
    with pytest.raises(BackendNotAvailable, match=f"{provider}.*pip install {package}"):
        quantization.fit(cnn, conf, calib_dataloader=calib)


def test_device_must_match_the_backend_table():
    from inc_core.errors import ConfigError

    with pytest.raises(
        ConfigError, match="device='cpu' is not supported by backend='onnxrt_cuda_ep'"
    ):
        PostTrainingQuantConfig(backend="onnxrt_cuda_ep", device="cpu")


def test_torch_backend_value_is_rejected_for_onnx_models(cnn, calib):
    from inc_core.errors import ConfigError

    with pytest.raises(ConfigError, match="onnxrt_cuda_ep"):
        quantization.fit(cnn, PostTrainingQuantConfig(backend="ipex"), calib_dataloader=calib)


def test_supported_onnxruntime_range_is_pinned():
    """The installed runtime is inside the range inc-ort declares (and pins in its extras)."""
    import tomllib
    from pathlib import Path

    import onnxruntime as ort

    from inc_ort import _runtime

    _runtime.check_supported()
    low, high = _runtime.SUPPORTED_ORT
    assert low <= _runtime.version_tuple(ort.__version__) < high
    onnx_low, onnx_high = _runtime.SUPPORTED_ONNX
    assert onnx_low <= _runtime.version_tuple(onnx.__version__) < onnx_high
    pyproject = Path(__file__).parents[2] / "packages" / "inc-ort" / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    pin = f">={low[0]}.{low[1]},<{high[0]}.{high[1]}"
    assert extras["cpu"] == [f"onnxruntime{pin}"]
    assert extras["gpu"] == [f"onnxruntime-gpu{pin}"]


def test_opset_below_10_is_converted_on_a_copy_and_said(cnn, calib, caplog):
    # tf2onnx wrote opset 9 for years (Yahoo's open_nsfw ResNet in the corpus is one)
    old = onnx.ModelProto()
    old.CopyFrom(cnn)
    old.opset_import[0].version = 9
    before = old.SerializeToString()
    with caplog.at_level("WARNING"):
        q = quantization.fit(old, STATIC, calib_dataloader=calib)
    assert old.SerializeToString() == before
    assert "opset 9" in caplog.text and "opset 13" in caplog.text
    assert {o.version for o in q.model.opset_import if o.domain in ("", "ai.onnx")} == {13}
    assert q.plan.quantized_ops()
