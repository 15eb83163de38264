"""The fidelity guard's channel check: a lost part of an output fails even when the whole passes."""

from __future__ import annotations

import numpy as np
import pytest

from inc_core.fidelity import (
    MIN_CHANNEL_SQNR_DB,
    MIN_SQNR_DB,
    SQNR_CLAMP_DB,
    channel_axis,
    channel_sqnr_db,
    compare,
    sqnr_db,
)


def _yolo_head(rng: np.random.Generator) -> np.ndarray:
    """(N, 4 + classes, anchors) as YOLOv8 writes it: box coordinates in pixels next to
    class scores in [0, 1]."""
    boxes = rng.uniform(0, 320, (2, 4, 300))
    scores = rng.uniform(0, 1, (2, 6, 300)) ** 8  # mostly near 0, a few confident anchors
    return np.concatenate([boxes, scores], axis=1)


def _quantized_together(head: np.ndarray) -> np.ndarray:
    """One uint8 scale for the whole tensor, as an int8 Concat of both parts gives it."""
    scale = head.max() / 255.0
    return np.round(head / scale) * scale


def test_channel_axis_is_the_smallest_non_batch_axis():
    assert channel_axis(np.zeros((2, 22, 2100))) == 1
    assert channel_axis(np.zeros((2, 7600, 10))) == 2
    assert channel_axis(np.zeros((2, 4, 19, 19))) == 1
    assert channel_axis(np.zeros((2, 19, 19, 4))) == 3  # NHWC
    assert channel_axis(np.zeros((8, 1, 64, 48))) is None  # a one-channel map: judged whole
    assert channel_axis(np.zeros((8, 10))) is None  # logits: judged as a whole


def test_scores_quantized_with_the_boxes_fail_although_the_whole_output_passes():
    head = _yolo_head(np.random.default_rng(0))
    int8 = _quantized_together(head)
    result = compare([[head]], [[int8]])
    row = result["outputs"][0]
    assert row["sqnr_db"] >= MIN_SQNR_DB  # the boxes dominate the output's power
    assert row["channel_axis"] == 1
    assert row["channel_sqnr_db"] < MIN_CHANNEL_SQNR_DB
    assert result["channel_sqnr_db"] == row["channel_sqnr_db"]
    assert not result["holds"]


def test_each_part_with_its_own_scale_holds():
    head = _yolo_head(np.random.default_rng(1))
    int8 = np.concatenate(
        [_quantized_together(head[:, :4]), _quantized_together(head[:, 4:])], axis=1
    )
    result = compare([[head]], [[int8]])
    assert result["outputs"][0]["channel_sqnr_db"] > 20
    assert result["holds"]


def test_channels_that_are_zero_in_fp32_are_left_out():
    rng = np.random.default_rng(2)
    ref = rng.normal(0, 1, (2, 3, 50))
    ref[:, 1] = 0.0
    test = ref + rng.normal(0, 0.01, ref.shape)
    assert channel_sqnr_db(ref, test, 1) == pytest.approx(40, abs=2)


def test_batches_of_different_shapes_skip_the_channel_check():
    rng = np.random.default_rng(3)
    short, long = rng.normal(0, 1, (1, 5, 8)), rng.normal(0, 1, (1, 7, 8))
    result = compare([[short], [long]], [[short], [long]])
    assert "channel_sqnr_db" not in result["outputs"][0]
    assert result["holds"]


def test_sqnr_in_float32_agrees_with_float64_and_non_finite_values_take_the_exact_path():
    rng = np.random.default_rng(2)
    ref = (rng.standard_normal(200_000) * 3 + 1).astype(np.float32)
    out = ref + (rng.standard_normal(ref.size) * 0.05).astype(np.float32)
    exact = sqnr_db(ref.astype(np.float64), out.astype(np.float64))
    assert sqnr_db(ref, out) == pytest.approx(exact, abs=1e-4)
    # float32 squares overflow at 1e20: the float64 path gives the value
    assert sqnr_db(ref * 1e20, out * 1e20) == pytest.approx(exact, abs=1e-4)
    assert sqnr_db(ref, out.astype(np.float64)) == pytest.approx(exact, abs=1e-4)
    broken = out.copy()
    broken[5] = np.inf
    assert sqnr_db(ref, broken) == -SQNR_CLAMP_DB  # int8 non-finite where fp32 is finite
    masked = ref.copy()
    masked[5] = -np.inf  # fp32 itself holds an -inf (an attention mask): left out
    assert sqnr_db(masked, np.where(np.isinf(masked), masked, out)) == pytest.approx(
        exact, abs=0.01
    )


def test_compare_of_several_batches_matches_one_joined_batch():
    head = _yolo_head(np.random.default_rng(3))
    int8 = _quantized_together(head)
    whole = compare([[head]], [[int8]])
    parts = compare([[head[:1]], [head[1:]]], [[int8[:1]], [int8[1:]]])
    for key in ("sqnr_db", "cosine", "channel_sqnr_db"):
        assert parts[key] == pytest.approx(whole[key], abs=1e-9)
