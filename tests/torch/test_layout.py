"""flatten -> int8 Linear runs on a channels-last view with the Linear's columns permuted:
bit-identical outputs, kept through save/load, and a clear error for other map sizes."""

from __future__ import annotations

import copy

import pytest
import torch

from inc_core import PostTrainingQuantConfig, load, quantization
from inc_core.errors import ModelError
from inc_torch import build, layout
from inc_torch.info import info_of


@pytest.fixture(scope="module")
def int8(cnn, calib):
    return quantization.fit(cnn, PostTrainingQuantConfig(approach="static"), calib_dataloader=calib)


def test_flatten_before_fc1_is_channels_last_and_bit_identical(cnn, calib, digits, int8):
    info = info_of(int8.model)
    assert info.layout == {"flatten": [32, 4, 4]}  # conv2 -> pool gives 32 maps of 4x4
    assert isinstance(int8.model.flatten_channels_last, layout.ChannelsLastFlatten)
    plain = build.quantize(cnn, info.plan, info.ranges, layout={})  # the same model, NCHW flatten
    assert not any(isinstance(m, layout.ChannelsLastFlatten) for m in plain.modules())
    x = torch.from_numpy(digits.x_test)
    with torch.no_grad():
        assert torch.equal(int8.model(x), plain(x))
    # the columns moved, the per-output-channel scales did not
    assert torch.equal(
        int8.model.fc1.weight().q_per_channel_scales(), plain.fc1.weight().q_per_channel_scales()
    )
    assert not torch.equal(int8.model.fc1.weight().int_repr(), plain.fc1.weight().int_repr())


def test_layout_survives_save_and_load(cnn, digits, int8, tmp_path):
    int8.save(tmp_path)
    loaded = load(tmp_path, model=copy.deepcopy(cnn))
    assert info_of(loaded.model).layout == {"flatten": [32, 4, 4]}
    x = torch.from_numpy(digits.x_test)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), int8.model(x))


def test_other_map_sizes_are_a_clear_error(digits, int8):
    big = torch.nn.functional.interpolate(torch.from_numpy(digits.x_test[:4]), size=16)
    with torch.no_grad(), pytest.raises(ModelError, match=r"\(32, 4, 4\).*got \(32, 8, 8\)"):
        int8.model(big)
