"""Calibration batches are checked against the model's declared input shapes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from inc_core.errors import DataError
from inc_ort import feeds


def _identity(dims: list[int | str | None]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph)


@pytest.mark.parametrize("batch_dim", [-1, "N", None])
def test_a_dynamic_axis_takes_any_size_however_the_converter_wrote_it(batch_dim) -> None:
    model = _identity([batch_dim, 3])
    for rows in (1, 8):
        feed = feeds.to_feed(model, np.zeros((rows, 3), np.float32))
        assert feed["x"].shape == (rows, 3)


def test_a_fixed_axis_of_another_size_is_named() -> None:
    with pytest.raises(DataError, match=r"axis 1: 4 != 3"):
        feeds.to_feed(_identity([-1, 3]), np.zeros((2, 4), np.float32))
