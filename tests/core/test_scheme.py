"""The golden math against values worked out by hand from the spec's per-framework formulas.

Ranges are chosen so the expected scales are simple fractions: amax = 2 over [-1, 2].
"""

from __future__ import annotations

import numpy as np
import pytest

from inc_core.errors import ConfigError, DataError
from inc_core.scheme import (
    CONVENTIONS,
    SUPPORTED,
    QuantParams,
    check_supported,
    compute_qparams,
    dequantize,
    fake_quantize,
    integer_range,
    quantize,
    tensor_range,
    weight_qparams,
)

F32_EPS = float(np.finfo(np.float32).eps)

# (convention, dtype, scheme, reduce_range, expected scale, expected zero point) for [-1, 2]
HAND_COMPUTED = [
    # oneDNN int8: 2 * amax / (127 - (-128) - 1) = 4 / 254
    ("tensorflow", "int8", "sym", False, 4 / 254, 0),
    ("ipex", "int8", "sym", False, 4 / 254, 0),
    ("mxnet", "int8", "sym", False, 4 / 254, 0),
    # oneDNN uint8: max(rmin, rmax) / (255 - 0) = 2 / 255
    ("tensorflow", "uint8", "sym", False, 2 / 255, 0),
    ("ipex", "uint8", "sym", False, 2 / 255, 0),
    ("mxnet", "uint8", "sym", False, 2 / 255, 0),
    # pytorch symmetric: amax / ((127 - (-128)) / 2) = 2 / 127.5, uint8 zero point 128
    ("pytorch", "int8", "sym", False, 2 / 127.5, 0),
    ("pytorch", "uint8", "sym", False, 2 / 127.5, 128),
    # asymmetric: (2 - (-1)) / 255, zero point qmin - round(-1 / (3/255)) = qmin + 85
    ("pytorch", "uint8", "asym", False, 3 / 255, 85),
    ("pytorch", "int8", "asym", False, 3 / 255, -128 + 85),
    ("onnxrt", "uint8", "asym", False, 3 / 255, 85),
    ("onnxrt", "int8", "asym", False, 3 / 255, -128 + 85),
    # onnxrt int8 symmetric: 2 * amax / (127 - (-128) - 1)
    ("onnxrt", "int8", "sym", False, 4 / 254, 0),
    # onnxrt uint8 symmetric (onnxruntime's rule): 2 * amax / 255, zero point round(127.5) = 128
    ("onnxrt", "uint8", "sym", False, 4 / 255, 128),
    # reduce_range, 7 bits: int8 [-64, 63], uint8 [0, 127]
    ("tensorflow", "int8", "sym", True, 4 / 126, 0),
    ("mxnet", "uint8", "sym", True, 2 / 127, 0),
    ("pytorch", "int8", "sym", True, 2 / 63.5, 0),
    ("pytorch", "uint8", "sym", True, 2 / 63.5, 64),
    # uint8 asym reduced: 3 / 127, zero point -round(-1 / (3/127)) = round(42.33) = 42
    ("pytorch", "uint8", "asym", True, 3 / 127, 42),
    ("onnxrt", "uint8", "asym", True, 3 / 127, 42),
    # onnxruntime's reduced int8 is [-64, 64]: 2 * amax / 128; asym 3 / 128, -64 - round(-42.67)
    ("onnxrt", "int8", "sym", True, 4 / 128, 0),
    ("onnxrt", "int8", "asym", True, 3 / 128, -64 + 43),
    ("onnxrt", "uint8", "sym", True, 4 / 127, 64),
]


@pytest.mark.parametrize(("convention", "dtype", "scheme", "reduce", "scale", "zp"), HAND_COMPUTED)
def test_scale_and_zero_point_match_hand_computed_values(
    convention: str, dtype: str, scheme: str, reduce: bool, scale: float, zp: int
) -> None:
    params = compute_qparams(
        -1.0, 2.0, dtype=dtype, scheme=scheme, convention=convention, reduce_range=reduce
    )
    # frameworks store float32 scales: equal there, whichever precision computed them
    assert np.float32(params.scale) == np.float32(scale)
    assert int(params.zero_point) == zp
    assert (params.qmin, params.qmax) == integer_range(dtype, reduce, convention)


def test_hand_computed_table_covers_every_supported_scheme() -> None:
    covered = {(c, d, s) for c, d, s, reduce, _, _ in HAND_COMPUTED if not reduce}
    expected = {(c, d, s) for c, pairs in SUPPORTED.items() for d, s in pairs}
    assert covered == expected


def test_integer_ranges() -> None:
    assert integer_range("int8") == (-128, 127)
    assert integer_range("uint8") == (0, 255)
    assert integer_range("int8", reduce_range=True) == (-64, 63)
    assert integer_range("uint8", reduce_range=True) == (0, 127)
    assert integer_range("int8", reduce_range=True, convention="onnxrt") == (-64, 64)
    with pytest.raises(ConfigError, match="'int8', 'uint8'"):
        integer_range("int4")


def test_quantize_known_values_and_rounding_ties_to_even() -> None:
    # int8 sym with amax 127 gives scale exactly 1: quantization is plain rounding.
    params = compute_qparams(-127.0, 127.0, dtype="int8", convention="onnxrt")
    assert float(params.scale) == 1.0
    q = quantize([0.5, 1.5, 2.5, -0.5, -1.5, 3.7, 300.0, -300.0], params)
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q, [0, 2, 2, 0, -2, 4, 127, -128])
    np.testing.assert_array_equal(dequantize(q, params), [0, 2, 2, 0, -2, 4, 127, -128])


def test_uint8_asym_quantize_dequantize_by_hand() -> None:
    # [-1, 2] uint8 asym: scale 3/255 = 1/85, zero point 85.
    params = compute_qparams(-1.0, 2.0, dtype="uint8", scheme="asym", convention="onnxrt")
    q = quantize([-1.0, 0.0, 1.0, 2.0, 5.0, -4.0], params)
    assert q.dtype == np.uint8
    np.testing.assert_array_equal(q, [0, 85, 170, 255, 255, 0])
    np.testing.assert_allclose(dequantize(q, params), [-1.0, 0.0, 1.0, 2.0, 2.0, -1.0])


def test_onednn_uint8_clips_negative_values_to_zero() -> None:
    params = compute_qparams(-1.0, 2.0, dtype="uint8", convention="tensorflow")
    np.testing.assert_array_equal(quantize([-1.0, -0.001, 0.0, 2.0], params), [0, 0, 0, 255])


def test_per_channel_weight_params_along_axis_0() -> None:
    # Row amax 127/64 and 127/32: int8 sym scales 1/64 and 1/32, exact in binary.
    weight = np.array([[-127 / 64, 0.5, 0.25], [0.0, 3.0, -127 / 32]])
    params = weight_qparams(weight, granularity="per_channel", axis=0, convention="onnxrt")
    np.testing.assert_array_equal(params.scale, [1 / 64, 1 / 32])
    np.testing.assert_array_equal(params.zero_point, [0, 0])
    assert params.axis == 0
    np.testing.assert_array_equal(quantize(weight, params), [[-127, 32, 16], [0, 96, -127]])
    np.testing.assert_array_equal(fake_quantize(weight, params), weight)


@pytest.mark.parametrize("axis", [1, -1])
def test_per_channel_on_the_last_axis(axis: int) -> None:
    weight = np.array([[-127 / 64, 0.5, 0.25], [0.0, 3.0, -127 / 32]]).T  # channels on axis 1
    params = weight_qparams(weight, granularity="per_channel", axis=axis, convention="onnxrt")
    np.testing.assert_array_equal(params.scale, [1 / 64, 1 / 32])
    np.testing.assert_array_equal(quantize(weight, params), [[-127, 0], [32, 96], [16, -127]])


def test_per_channel_asym_zero_points_per_channel() -> None:
    lo, hi = tensor_range([[-1.0, 2.0], [1.0, 3.0]], granularity="per_channel", axis=0)
    params = compute_qparams(lo, hi, dtype="uint8", scheme="asym", convention="pytorch", axis=0)
    # channel 0: [-1, 2] -> 3/255, zp 85; channel 1: [1, 3] widened to [0, 3] -> 3/255, zp 0
    np.testing.assert_array_equal(params.scale.astype(np.float32), np.float32([3 / 255, 3 / 255]))
    np.testing.assert_array_equal(params.zero_point, [85, 0])


def test_per_channel_shape_mismatch_is_a_data_error() -> None:
    params = weight_qparams(np.ones((2, 3)), granularity="per_channel", axis=0)
    with pytest.raises(DataError, match="2 channels on axis 0"):
        quantize(np.ones((3, 2)), params)


def test_per_channel_ranges_need_an_axis() -> None:
    with pytest.raises(ConfigError, match="axis"):
        compute_qparams(np.array([-1.0, -2.0]), np.array([1.0, 2.0]))


def test_bad_granularity_lists_the_allowed_ones() -> None:
    with pytest.raises(ConfigError, match="per_tensor"):
        tensor_range(np.ones(3), granularity="per_row")


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_all_zero_tensor_is_exact_and_finite(convention: str) -> None:
    zeros = np.zeros((4, 3))
    for dtype, scheme in sorted(SUPPORTED[convention]):
        params = weight_qparams(zeros, dtype=dtype, scheme=scheme, convention=convention)
        assert np.all(np.isfinite(params.scale)) and np.all(params.scale > 0)
        np.testing.assert_array_equal(fake_quantize(zeros, params), zeros)


def test_all_zero_tensor_follows_each_framework() -> None:
    # onnxruntime: scale below float32 tiny -> scale 1, zero point 0 (even for symmetric uint8)
    ort = compute_qparams(0.0, 0.0, dtype="uint8", scheme="sym", convention="onnxrt")
    assert (float(ort.scale), int(ort.zero_point)) == (1.0, 0)
    # torch: scale clamped to float32 eps, zero point unchanged
    torch_sym = compute_qparams(0.0, 0.0, dtype="uint8", scheme="sym", convention="pytorch")
    assert (float(torch_sym.scale), int(torch_sym.zero_point)) == (F32_EPS, 128)
    torch_asym = compute_qparams(0.0, 0.0, dtype="uint8", scheme="asym", convention="pytorch")
    assert (float(torch_asym.scale), int(torch_asym.zero_point)) == (F32_EPS, 0)
    tf = compute_qparams(0.0, 0.0, dtype="int8", convention="tensorflow")
    assert (float(tf.scale), int(tf.zero_point)) == (1.0, 0)


def test_min_equal_max_is_widened_to_contain_zero() -> None:
    pos = compute_qparams(3.0, 3.0, dtype="uint8", scheme="asym", convention="onnxrt")
    assert float(pos.scale) == pytest.approx(3 / 255) and int(pos.zero_point) == 0
    assert float(fake_quantize(3.0, pos)) == pytest.approx(3.0)
    neg = compute_qparams(-2.0, -2.0, dtype="uint8", scheme="asym", convention="onnxrt")
    assert float(neg.scale) == pytest.approx(2 / 255) and int(neg.zero_point) == 255
    assert float(fake_quantize(-2.0, neg)) == pytest.approx(-2.0)
    sym = compute_qparams(3.0, 3.0, dtype="int8", convention="mxnet")
    assert float(sym.scale) == pytest.approx(6 / 254)


def test_asym_range_without_zero_widens_to_include_zero() -> None:
    params = compute_qparams(1.0, 3.0, dtype="uint8", scheme="asym", convention="pytorch")
    assert float(params.scale) == pytest.approx(3 / 255) and int(params.zero_point) == 0
    assert float(fake_quantize(0.0, params)) == 0.0
    params = compute_qparams(-3.0, -1.0, dtype="int8", scheme="asym", convention="onnxrt")
    assert float(params.scale) == pytest.approx(3 / 255) and int(params.zero_point) == 127
    assert float(fake_quantize(0.0, params)) == 0.0


def test_min_greater_than_max_is_a_data_error() -> None:
    with pytest.raises(DataError, match="greater than maximum"):
        compute_qparams(2.0, 1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_data_errors(bad: float) -> None:
    word = "NaN" if np.isnan(bad) else "inf"
    with pytest.raises(DataError, match=word):
        compute_qparams(bad, 1.0)
    with pytest.raises(DataError, match=word):
        compute_qparams(-1.0, bad)
    params = compute_qparams(-1.0, 1.0)
    with pytest.raises(DataError, match=word):
        quantize(np.array([0.0, bad]), params)
    with pytest.raises(DataError, match=word):
        weight_qparams(np.array([[1.0, bad]]))


def test_empty_tensor_range_is_a_data_error() -> None:
    with pytest.raises(DataError, match="empty"):
        weight_qparams(np.zeros((0, 3)))


@pytest.mark.parametrize("convention", ["tensorflow", "ipex", "mxnet"])
def test_asymmetric_is_refused_where_the_convention_lacks_it(convention: str) -> None:
    with pytest.raises(ConfigError) as info:
        compute_qparams(-1.0, 1.0, dtype="uint8", scheme="asym", convention=convention)
    message = str(info.value)
    assert convention in message and "int8/sym" in message and "uint8/sym" in message


def test_unknown_convention_dtype_and_scheme_list_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match="'onnxrt'"):
        check_supported("onnx", "int8", "sym")
    with pytest.raises(ConfigError, match="'uint8'"):
        check_supported("onnxrt", "int4", "sym")
    with pytest.raises(ConfigError, match="'asym'"):
        check_supported("onnxrt", "int8", "affine")


def _representable_range(params: QuantParams) -> tuple[float, float]:
    lo = (params.qmin - params.zero_point) * params.scale
    hi = (params.qmax - params.zero_point) * params.scale
    return float(lo), float(hi)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("reduce", [False, True])
def test_round_trip_error_is_at_most_half_a_step_inside_the_range(
    convention: str, reduce: bool
) -> None:
    rng = np.random.default_rng(sum(map(ord, convention)) + reduce)
    for dtype, scheme in sorted(SUPPORTED[convention]):
        for _ in range(20):
            rmin, rmax = np.sort(rng.normal(0.0, rng.choice([1e-3, 1.0, 50.0]), 2))
            params = compute_qparams(
                rmin, rmax, dtype=dtype, scheme=scheme, convention=convention, reduce_range=reduce
            )
            lo, hi = _representable_range(params)
            # inside both the calibrated range and what the integers can express
            low, high = max(rmin, lo), min(rmax, hi)
            if low >= high:  # oneDNN uint8 on an all-negative range: nothing representable
                assert convention in ("tensorflow", "ipex", "mxnet") and dtype == "uint8"
                continue
            x = rng.uniform(low, high, 500)
            error = np.abs(x - fake_quantize(x, params))
            # onnxrt and pytorch quantize float32(x), as their kernels do
            slack = np.abs(x) * 2.0**-23 if convention in ("onnxrt", "pytorch") else 0.0
            bound = float(params.scale) / 2 * (1 + 1e-6) + slack
            assert np.all(error <= bound), (dtype, scheme, rmin, rmax)
            # and the calibrated range itself is inside the representable one (up to half a step)
            if not (convention in ("tensorflow", "ipex", "mxnet") and dtype == "uint8"):
                # plus float32 rounding of the range and the scale where torch computes in float32
                half_step = float(params.scale) / 2 * (1 + 1e-6) + max(-rmin, rmax) * 2.0**-23
                assert lo <= min(rmin, 0) + half_step
                assert hi >= max(rmax, 0) - half_step
            assert float(fake_quantize(0.0, params)) == 0.0


def test_quantize_follows_each_kernels_float32_arithmetic() -> None:
    # Values next to a .5 tie, where float32 and float64 arithmetic round apart. The expected
    # integers are what onnxruntime 1.32's QuantizeLinear and torch 2.13's quantize_per_channel /
    # quantize_per_tensor return for the same float32 inputs (checked when these were chosen).
    ort = compute_qparams(-1.0, 1.0, dtype="int8", convention="onnxrt")  # x / scale in float32
    assert int(quantize(np.float32(-0.9409448504447937), ort)) == -120
    assert round(-0.9409448504447937 / float(ort.scale)) == -119  # what float64 would give
    torch_params = compute_qparams(-1.0, 1.0, dtype="int8", convention="pytorch")  # x * (1/s)
    assert int(quantize(np.float32(-0.9294118285179138), torch_params)) == -118
    assert round(-0.9294118285179138 / float(torch_params.scale)) == -119
