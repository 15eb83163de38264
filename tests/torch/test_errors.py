"""Bad input: each a clear error that says what was wrong, and the user's model untouched."""

from __future__ import annotations

import numpy as np
import pytest

from inc_core import PostTrainingQuantConfig, quantization
from inc_core.errors import ConfigError, DataError, DeviceNotAvailable

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
