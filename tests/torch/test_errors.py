"""Bad input: each a clear error that says what was wrong, and the user's model untouched."""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import inc_core
from inc_core import PostTrainingQuantConfig, quantization
from inc_core.errors import ConfigError, DataError, DeviceNotAvailable, ModelError

from . import models


def test_xpu_without_an_xpu_is_a_device_error(cnn, calib):
    before = models.fingerprint(cnn)
    conf = PostTrainingQuantConfig(backend="ipex", device="xpu")
    with pytest.raises(DeviceNotAvailable, match=r"xpu.*no Intel GPU"):
        quantization.fit(cnn, conf, calib_dataloader=calib)
    assert models.fingerprint(cnn) == before


def test_calibration_batches_of_the_wrong_shape_name_the_shape(cnn):
    wrong = [(np.zeros((4, 3, 8, 8), np.float32), np.zeros(4))]
    with pytest.raises(
        DataError, match=r"first calib_dataloader batch \(ndarray shape \(4, 3, 8, 8\)\)"
    ):
        quantization.fit(cnn, PostTrainingQuantConfig(approach="static"), calib_dataloader=wrong)


def test_example_inputs_that_do_not_fit_the_model(cnn):
    conf = PostTrainingQuantConfig(approach="dynamic", example_inputs=np.zeros((2, 5), np.float32))
    with pytest.raises(DataError, match="example_inputs do not run through DigitsCNN"):
        quantization.fit(cnn, conf)


def test_unknown_module_name_lists_close_names(cnn, calib):
    conf = PostTrainingQuantConfig(op_name_dict={"conv3": {"activation": {"dtype": ["fp32"]}}})
    with pytest.raises(ConfigError, match=r"'conv3' matches no op.*conv1"):
        quantization.fit(cnn, conf, calib_dataloader=calib)


def test_unknown_op_type_lists_known_types(cnn, calib):
    conf = PostTrainingQuantConfig(
        op_type_dict={"Conv2D_typo": {"activation": {"dtype": ["fp32"]}}}
    )
    with pytest.raises(ConfigError, match=r"Conv2D_typo.*Conv2d"):
        quantization.fit(cnn, conf, calib_dataloader=calib)


def test_an_unsupported_scheme_names_what_is_allowed(cnn, calib):
    conf = PostTrainingQuantConfig(
        approach="static", op_type_dict={"Conv2d": {"activation": {"dtype": ["int8"]}}}
    )
    with pytest.raises(ConfigError, match=r"activation dtype \['int8'\] is not supported.*'uint8'"):
        quantization.fit(cnn, conf, calib_dataloader=calib)


def test_empty_calibration_loader(cnn):
    with pytest.raises(DataError, match="no samples"):
        quantization.fit(cnn, PostTrainingQuantConfig(approach="static"), calib_dataloader=[])


# -- models inc cannot take as they are (issue 13): each says what it is and what to pass -------


def _state(model: nn.Module) -> bytes:
    """The model's state dict as torch.save writes it (int8 and meta tensors included)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def _unchanged(model: nn.Module, before: bytes) -> bool:
    return _state(model) == before


def _fails(model: nn.Module, calib: list, match: str, tmp_path: Path) -> None:
    before, training = _state(model), model.training
    with pytest.raises(ModelError, match=match):
        quantization.fit(
            model,
            PostTrainingQuantConfig(approach="static"),
            calib_dataloader=calib,
            workspace=str(tmp_path / "ws"),
        )
    assert _unchanged(model, before) and model.training == training
    assert not (tmp_path / "ws").exists() or not any((tmp_path / "ws").iterdir())


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_models_say_pass_the_module(cnn, calib, how, tmp_path):
    example = torch.from_numpy(calib[0][0])
    scripted = torch.jit.script(cnn) if how == "script" else torch.jit.trace(cnn, example)
    _fails(scripted, calib, r"TorchScript models are not supported.*pass the nn.Module", tmp_path)


def test_an_int8_model_says_it_is_already_int8(cnn, calib, tmp_path):
    int8 = quantization.fit(cnn, PostTrainingQuantConfig(guards=False), calib_dataloader=calib)
    _fails(int8.model, calib, r"already quantized to int8 \('conv1' is torch\.ao\.nn", tmp_path)


def test_a_dynamically_quantized_model_says_it_is_already_int8(cnn, calib, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        dynamic = torch.ao.quantization.quantize_dynamic(copy.deepcopy(cnn))
    _fails(dynamic, calib, r"already quantized to int8 \('fc1' is .*dynamic", tmp_path)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_a_non_float32_model_names_its_dtype_and_the_fix(cnn, calib, dtype, tmp_path):
    model = copy.deepcopy(cnn).to(dtype)
    _fails(model, calib, rf"weights are {dtype} \('conv1.weight'\).*\.float\(\)", tmp_path)


def test_a_meta_device_model_says_so(calib, tmp_path):
    with torch.device("meta"):
        model = models.DigitsCNN()
    _fails(model, calib, r"weights are on the meta device \('conv1.weight'", tmp_path)


@pytest.mark.parametrize("approach", ["static", "dynamic"])
def test_a_bare_linear_is_quantized_as_one_op(digits, approach, tmp_path):
    torch.manual_seed(0)
    linear = nn.Linear(64, 10)
    before = _state(linear)
    x = digits.x_train[:200].reshape(200, 64)
    calib = [(x[i : i + 50], None) for i in range(0, 200, 50)]
    conf = PostTrainingQuantConfig(approach=approach, guards=False)
    if approach == "dynamic":
        conf = PostTrainingQuantConfig(approach=approach, guards=False, example_inputs=x[:4])
    q = quantization.fit(linear, conf, calib_dataloader=calib if approach == "static" else None)
    assert list(q.plan.ops) == ["module"] and q.plan.ops["module"].quantized
    assert repr(q.model.get_submodule("module")).startswith(("QuantizedLinear", "DynamicQuantized"))
    test = torch.from_numpy(digits.x_test.reshape(-1, 64))
    with torch.no_grad():
        fp32, int8 = linear(test), q.model(test)
    assert float((int8 - fp32).norm() / fp32.norm()) < 0.02
    assert _unchanged(linear, before) and type(linear) is nn.Linear
    with pytest.raises(ModelError, match=r"already quantized to int8 \(the model itself is"):
        quantization.fit(q.model.module, conf, calib_dataloader=calib)
    if approach == "static":
        q.save(tmp_path / "q")
        reloaded = inc_core.load(tmp_path / "q", model=nn.Linear(64, 10)).model
        with torch.no_grad():
            assert torch.equal(reloaded(test), int8)
