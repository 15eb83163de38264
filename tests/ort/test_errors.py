"""Bad input gets a clear error, and the user's files stay as they were."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from inc_core import PostTrainingQuantConfig, quantization
from inc_core.errors import BackendNotAvailable, ConfigError, DataError, ModelError
from tests.bad_input import listing

STATIC = PostTrainingQuantConfig(approach="static", guards=False)


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


#: config backend, device, the provider it needs and the package that ships it; only the ones
#: this onnxruntime build lacks are collected (a build that has one gives no error to test)
PROVIDER_CASES = [
    ("onnxrt_dnnl_ep", "cpu", "DnnlExecutionProvider", "onnxruntime-dnnl"),
    ("onnxrt_dml_ep", "npu", "DmlExecutionProvider", "onnxruntime-directml"),
]
MISSING_PROVIDER_CASES = [
    case for case in PROVIDER_CASES if case[2] not in ort.get_available_providers()
]


@pytest.mark.parametrize(("backend", "device", "provider", "package"), MISSING_PROVIDER_CASES)
def test_missing_execution_provider_names_its_package(
    cnn, calib, backend, device, provider, package
):
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
    """The installed runtime is inside the range inc-ort declares, and inc-ort (onnxruntime) and
    inc-ort-gpu (onnxruntime-gpu) pin the same range."""
    import tomllib
    from pathlib import Path

    from inc_ort import _runtime

    _runtime.check_supported()
    low, high = _runtime.SUPPORTED_ORT
    assert low <= _runtime.version_tuple(ort.__version__) < high
    onnx_low, onnx_high = _runtime.SUPPORTED_ONNX
    assert onnx_low <= _runtime.version_tuple(onnx.__version__) < onnx_high
    packages = Path(__file__).parents[2] / "packages"
    pin = f">={low[0]}.{low[1]},<{high[0]}.{high[1]}"
    for distribution, runtime in (("inc-ort", "onnxruntime"), ("inc-ort-gpu", "onnxruntime-gpu")):
        project = tomllib.loads((packages / distribution / "pyproject.toml").read_text())["project"]
        assert f"{runtime}{pin}" in project["dependencies"], distribution
        assert "gpu" not in project.get("optional-dependencies", {})  # never both runtimes


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


# --- the catalogue's table: each case a file the user gave, byte-identical afterwards, and
# nothing left in the working or temporary directory


def _opset(cnn, version):
    model = onnx.ModelProto()
    model.CopyFrom(cnn)
    model.opset_import[0].version = version
    return model


def _quantized(cnn, calib, quant_format):
    conf = PostTrainingQuantConfig(approach="static", quant_format=quant_format, guards=False)
    return quantization.fit(cnn, conf, calib_dataloader=calib).model


def _with_nan(calib, batch):
    data = [(x.copy(), y) for x, y in calib]
    data[batch][0][7, 0, 2, 2] = np.nan
    return data


def _folder(path):
    path.mkdir()
    return path


def _file(path, content):
    path.write_bytes(content)
    return path


def _external_without_data(cnn, work):
    path = work / "external.onnx"
    copy = onnx.ModelProto()
    copy.CopyFrom(cnn)  # save_model moves the tensors of the proto it is given to external data
    onnx.save_model(
        copy, str(path), save_as_external_data=True, location="external.onnx.data", size_threshold=0
    )
    (work / "external.onnx.data").unlink()
    return path


# (id, model maker(cnn, calib, work) -> model object or path, conf, calib maker, error, pattern)
FILE_CASES = [
    (
        "opset-99",
        lambda cnn, calib, work: _opset(cnn, 99),
        STATIC,
        lambda calib: calib,
        ModelError,
        r"opset 99; inc-ort runs opsets up to \d+ with onnx .*opset_version=",
    ),
    (
        "already-quantized-qdq",
        lambda cnn, calib, work: _quantized(cnn, calib, "QDQ"),
        STATIC,
        lambda calib: calib,
        ModelError,
        r"already quantized \(it holds \d+ (Quantize|Dequantize)Linear.*give it the fp32 model",
    ),
    (
        "already-quantized-qoperator",
        lambda cnn, calib, work: _quantized(cnn, calib, "QOperator"),
        STATIC,
        lambda calib: calib,
        ModelError,
        r"already quantized \(it holds .*QLinear.*fp32 model",
    ),
    (
        "nan-in-a-later-batch",
        lambda cnn, calib, work: cnn,
        STATIC,
        lambda calib: _with_nan(calib, 1),
        DataError,
        r"calib_dataloader batch 1: the input contains 1 NaN of \d+ values.*finite",
    ),
    (
        "dtype-changes-in-a-later-batch",
        lambda cnn, calib, work: cnn,
        STATIC,
        lambda calib: [calib[0][0], calib[1][0].astype(np.float16)],
        DataError,
        r"batch 1: the input has dtype float16 but batch 0's has float32",
    ),
    (
        "string-calibration-data",
        lambda cnn, calib, work: cnn,
        STATIC,
        lambda calib: [np.full((4, 1, 8, 8), "0.1")],
        DataError,
        r"batch 0: the input has dtype <U3 \(strings\).*numeric arrays",
    ),
    (
        "inputs-names-given",
        lambda cnn, calib, work: cnn,
        None,  # the config itself is the bad input: built inside the case
        lambda calib: calib,
        ConfigError,
        r"inputs=\['image'\] is not used by inc.*allowed: \[\]",
    ),
    (
        "directory-named-like-a-model",
        lambda cnn, calib, work: _folder(work / "folder.onnx"),
        STATIC,
        lambda calib: calib,
        ModelError,
        r"folder\.onnx does not exist or is not a file",
    ),
    (
        "empty-file",
        lambda cnn, calib, work: _file(work / "empty.onnx", b""),
        STATIC,
        lambda calib: calib,
        ModelError,
        r"empty\.onnx",
    ),
    (
        "external-data-file-missing",
        lambda cnn, calib, work: _external_without_data(cnn, work),
        STATIC,
        lambda calib: calib,
        ModelError,
        r"external\.onnx is not a readable ONNX model",
    ),
    (
        "op-name-not-in-the-model",
        lambda cnn, calib, work: cnn,
        PostTrainingQuantConfig(
            approach="static", op_name_dict={"conv9": {"activation": {"dtype": ["fp32"]}}}
        ),
        lambda calib: calib,
        ConfigError,
        r"'conv9' matches no op",
    ),
    (
        "rules-keep-every-op-fp32",
        lambda cnn, calib, work: cnn,
        PostTrainingQuantConfig(
            approach="static", op_name_dict={".*": {"activation": {"dtype": ["fp32"]}}}
        ),
        lambda calib: calib,
        ConfigError,
        r"op_name_dict keep every op of the model in fp32.*Remove a rule",
    ),
]


@pytest.mark.parametrize(
    ("maker", "conf", "data", "error", "pattern"),
    [case[1:] for case in FILE_CASES],
    ids=[case[0] for case in FILE_CASES],
)
def test_bad_model_or_data(cnn, calib, sandbox, maker, conf, data, error, pattern):
    work = sandbox / "work"
    model = maker(cnn, calib, work)
    if isinstance(model, onnx.ModelProto):
        before = model.SerializeToString()
    elif model.is_file():
        before = model.read_bytes()
    else:
        before = None
    files = listing(sandbox)
    with pytest.raises(error, match=pattern):
        conf = conf or PostTrainingQuantConfig(approach="static", inputs=["image"])
        quantization.fit(model, conf, calib_dataloader=data(calib))
    if isinstance(model, onnx.ModelProto):
        assert model.SerializeToString() == before
    elif before is not None:
        assert model.read_bytes() == before
    assert listing(sandbox) == files


def test_onnx_model_with_another_suffix_is_read_by_content(cnn_path, calib, sandbox):
    path = sandbox / "work" / "model.bin"
    path.write_bytes(cnn_path.read_bytes())
    q = quantization.fit(str(path), STATIC, calib_dataloader=calib)
    assert q.backend == "onnxrt" and q.plan.quantized_ops()
    assert path.read_bytes() == cnn_path.read_bytes()


def test_is_onnx_file_reads_content_not_names(cnn_path, tmp_path):
    from inc_ort import model_io

    renamed = tmp_path / "model.bin"
    renamed.write_bytes(cnn_path.read_bytes())
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    assert model_io.is_onnx_file(renamed)
    assert not model_io.is_onnx_file(text)
    assert not model_io.is_onnx_file(tmp_path / "missing.onnx")


def test_a_classical_ml_model_without_standard_ops_says_there_is_nothing_to_quantize():
    # onnxruntime ships this one: a scikit-learn logistic regression (onnxmltools, ai.onnx.ml)
    from onnxruntime.datasets import get_example

    path = get_example("logreg_iris.onnx")
    before = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    feeds = [{"float_input": np.random.default_rng(0).random((4, 4), dtype=np.float32)}]
    with pytest.raises(ModelError) as info:
        quantization.fit(path, PostTrainingQuantConfig(), calib_dataloader=feeds)
    message = str(info.value)
    assert "imports no standard ONNX operator set" in message and "ai.onnx.ml" in message
    assert "LinearClassifier" in message and "nothing to quantize" in message
    assert "convert_version" not in message  # converting its opset cannot help
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == before


def _conv_model(elem: int, np_dtype: type, extra: list[onnx.TensorProto] | None = None):
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np_dtype), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"], name="relu")],
        "conv", [helper.make_tensor_value_info("x", elem, ["b", 8, 16, 16])],
        [helper.make_tensor_value_info("y", elem, ["b", 16, 16, 16])], [w, *(extra or [])],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_float16_model_is_a_model_error_naming_its_half_tensors(tmp_path):
    """tf2onnx/onnxconverter fp16 exports (slovorez): onnxruntime's quantizer casts the fp16
    weights at run time and finds no Conv to quantize; inc says the model is float16 instead
    of 'no op that onnxruntime can quantize ... Conv'."""
    path = tmp_path / "half.onnx"
    onnx.save(_conv_model(TensorProto.FLOAT16, np.float16), str(path))
    before = path.read_bytes()
    calib = [{"x": np.ones((2, 8, 16, 16), np.float16)}]
    with pytest.raises(ModelError) as info:
        quantization.fit(str(path), STATIC, calib_dataloader=calib)
    message = str(info.value)
    assert "half.onnx computes in float16" in message
    assert "w (float16)" in message and "input x (float16)" in message
    assert "inc quantizes float32 models" in message and "float32" in message
    assert path.read_bytes() == before


def test_a_float32_model_with_a_small_half_constant_is_accepted():
    """A float32 model holding a few half constants (a mixed-precision export) still loads:
    the check goes by where most float weights are."""
    from inc_ort import model_io

    small = onnx.numpy_helper.from_array(np.ones(4, np.float16), "half_constant")
    model_io.check_float32(_conv_model(TensorProto.FLOAT, np.float32, [small]))


def _loop_model() -> onnx.ModelProto:
    """y = x @ w applied 3 times in a Loop (tf2onnx's LSTM shape: chars2vec): the MatMul is
    only in the Loop's body, the main graph holds no op inc lists."""
    w = onnx.numpy_helper.from_array(np.eye(8, dtype=np.float32) * 0.5, "w")
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "w"], ["h_out"], name="body_matmul"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["b", 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["b", 8])],
    )  # fmt: skip
    inits = [
        w,
        onnx.numpy_helper.from_array(np.array(3, np.int64), "trips"),
        onnx.numpy_helper.from_array(np.array(True), "cond"),
    ]
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "x"], ["y"], name="rnn_loop", body=body)],
        "looped", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 8])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_ops_only_inside_a_loop_body_say_so():
    model = _loop_model()
    before = model.SerializeToString()
    calib = [{"x": np.ones((2, 8), np.float32)}]
    ort.InferenceSession(before, providers=["CPUExecutionProvider"]).run(None, calib[0])
    with pytest.raises(ModelError) as info:
        quantization.fit(model, STATIC, calib_dataloader=calib)
    message = str(info.value)
    assert "1 MatMul inside Loop 'rnn_loop'" in message
    assert "inc quantizes ops of the main graph" in message
    assert model.SerializeToString() == before
