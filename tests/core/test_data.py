"""The spec's dataloader contract: (input, label) or inputs; arrays, tuples, dicts; sample counts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pytest

from inc_core import PostTrainingQuantConfig, quantization
from inc_core import backend as registry
from inc_core.data import (
    HELD_OUT_MIN_SAMPLES,
    batch_size,
    drop_samples,
    labelled_batches,
    model_inputs,
    split_batch,
    split_calibration,
    splittable,
    take_samples,
)
from inc_core.errors import DataError
from inc_core.space import QuantPlan, TensorRanges

from .reference_backend import NumpyMLP, ReferenceBackend


class RecordingBackend(ReferenceBackend):
    """The reference backend, remembering the calibration batches the core handed it."""

    name = "recording"
    priority = 0
    seen: list[Any] = []

    def calibrate(
        self, model: NumpyMLP, dataloader: Iterable[Any], plan: QuantPlan
    ) -> TensorRanges:
        batches = list(dataloader)
        RecordingBackend.seen = batches
        return super().calibrate(model, batches, plan)


@pytest.fixture
def recording() -> Iterator[type[RecordingBackend]]:
    registry.register(RecordingBackend)
    RecordingBackend.seen = []
    yield RecordingBackend
    registry.unregister(RecordingBackend.name)


class CountingLoader:
    """A loader that counts how many batches were pulled from it."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches
        self.pulled = 0

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches:
            self.pulled += 1
            yield batch


def static(**kwargs: Any) -> PostTrainingQuantConfig:
    """Static, without the guards: these tests check which batches reach calibration, and the
    fidelity guard holds some back (tests/core/test_guards.py checks which)."""
    return PostTrainingQuantConfig(approach="static", guards=False, **kwargs)


def test_split_batch_reads_pairs_as_input_and_label():
    x, y = np.zeros((4, 3)), np.zeros(4)
    assert split_batch((x, y)) == (x, y)
    assert split_batch([x, y]) == (x, y)
    assert split_batch(x) == (x, None)
    triple = (x, x, x)
    assert split_batch(triple) == (triple, None)
    named = {"a": x}
    assert split_batch(named) == (named, None)


def test_batch_size_reads_the_leading_dimension():
    x = np.zeros((5, 3))
    assert batch_size(x) == 5
    assert batch_size((x, np.zeros((5, 1)))) == 5
    assert batch_size({"ids": x, "mask": x}) == 5
    assert batch_size(np.float32(1.0)) == 1
    with pytest.raises(DataError, match="empty"):
        batch_size(())


def stream(frames: int, start: float = 0.0) -> dict[str, np.ndarray]:
    """One batch of a recurrent model's inputs: ``frames`` rows of signal, one shared state."""
    signal = np.arange(frames * 6, dtype=np.float32).reshape(frames, 6) + start
    return {"h": np.full((1, 1, 4), 7, np.float32), "input": signal, "gain": np.float32(2)}


def test_a_state_input_does_not_make_the_batch_and_is_never_sliced():
    batch = stream(8)  # the state comes first: the batch is still the signal's 8 rows
    assert batch_size(batch) == 8
    assert not splittable(batch)
    head, tail = take_samples(batch, 3), drop_samples(batch, 3)
    assert head["input"].shape == (3, 6) and tail["input"].shape == (5, 6)
    assert head["h"] is batch["h"] and tail["h"] is batch["h"]  # shared by the whole batch
    assert head["gain"] is batch["gain"]  # a scalar has no sample axis
    # arrays that agree on their leading size (and scalars) can be cut
    assert splittable({"ids": np.zeros((4, 2)), "mask": np.zeros((4, 2)), "t": np.float32(1)})


def test_split_calibration_holds_out_whole_batches_with_a_state_input():
    batches = [stream(8, start=100.0 * i) for i in range(6)]
    data = split_calibration(batches, 20)
    # 8 + 8 fit; the third batch would cross 20 and cannot be cut: it is held out whole
    assert [b["input"].shape for b in data.calib] == [(8, 6), (8, 6)]
    assert [b["input"][0, 0] for b in data.held_out] == [200.0, 300.0]
    assert data.how == "beyond calibration"
    for b in data.calib + data.held_out:
        assert b["h"].shape == (1, 1, 4)
    # a first batch bigger than the sampling size is calibrated on whole, not cut
    big = split_calibration(batches, 5)
    assert [b["input"].shape for b in big.calib] == [(8, 6)]
    assert [b["input"][0, 0] for b in big.held_out] == [100.0, 200.0]
    # within the sampling size the usual paths hold whole batches already
    within = split_calibration(batches[:2], 100)
    assert (len(within.calib), len(within.held_out), within.how) == (
        1,
        1,
        "last calibration batches",
    )
    assert all(b["h"].shape == (1, 1, 4) for b in within.calib + within.held_out)


def test_model_inputs_stops_before_a_batch_it_cannot_cut():
    batches = [stream(8, start=100.0 * i) for i in range(3)]
    assert [b["input"].shape[0] for b in model_inputs(batches, 20)] == [8, 8]
    assert [b["input"].shape[0] for b in model_inputs(batches, 5)] == [8]


def test_take_samples_keeps_the_structure():
    x = np.arange(20).reshape(10, 2)
    assert take_samples(x, 3).shape == (3, 2)
    a, b = take_samples((x, x), 4)
    assert a.shape == b.shape == (4, 2)
    named = take_samples({"a": x, "b": [x]}, 2)
    assert named["a"].shape == (2, 2) and named["b"][0].shape == (2, 2)


def test_model_inputs_stops_at_the_sample_count_and_slices_the_last_batch():
    x = np.arange(100.0).reshape(50, 2)
    loader = CountingLoader([(x[i : i + 10], None) for i in range(0, 50, 10)])
    batches = list(model_inputs(loader, 25))
    assert [len(b) for b in batches] == [10, 10, 5]
    assert loader.pulled == 3  # the rest of the loader is not consumed
    np.testing.assert_array_equal(np.concatenate(batches), x[:25])


def test_model_inputs_skips_empty_batches_and_rejects_empty_loaders():
    x = np.ones((4, 2))
    assert [len(b) for b in model_inputs([np.ones((0, 2)), x])] == [4]
    with pytest.raises(DataError, match="calib_dataloader yielded no samples"):
        list(model_inputs([]))
    with pytest.raises(DataError, match="no samples"):
        list(model_inputs(iter([np.ones((0, 2))])))


def test_a_bare_array_is_not_a_loader():
    with pytest.raises(DataError, match=r"single array of shape \(10, 2\).*iterable of batches"):
        list(model_inputs(np.ones((10, 2))))


def test_a_non_iterable_loader_is_a_data_error():
    with pytest.raises(DataError, match=r"must be iterable.*got int"):
        list(model_inputs(3))  # type: ignore[arg-type]


def test_labelled_batches_needs_labels():
    x = np.ones((2, 2))
    assert len(list(labelled_batches([(x, np.zeros(2))]))) == 1
    with pytest.raises(DataError, match=r"\(input, label\) pairs"):
        list(labelled_batches([x]))
    with pytest.raises(DataError, match="no batches"):
        list(labelled_batches([]))


@pytest.mark.parametrize("with_labels", [True, False])
def test_fit_takes_arrays_with_or_without_labels(recording, mlp, blobs, with_labels):
    x, y = blobs
    loader = [
        (x[i : i + 32], y[i : i + 32]) if with_labels else x[i : i + 32] for i in range(0, 96, 32)
    ]
    q = quantization.fit(mlp, static(), calib_dataloader=loader)
    assert [b.shape for b in recording.seen] == [(32, 16)] * 3
    assert q.plan.quantized_ops() == ["fc1", "fc2"]


def test_fit_takes_tuple_inputs(recording, mlp, blobs):
    x, y = blobs
    loader = [((x[i : i + 30, :8], x[i : i + 30, 8:]), y[i : i + 30]) for i in range(0, 90, 30)]
    q = quantization.fit(mlp, static(), calib_dataloader=loader)
    assert all(isinstance(b, tuple) and len(b) == 2 for b in recording.seen)
    reference = quantization.fit(mlp, static(), calib_dataloader=[(x[:90], y[:90])])
    np.testing.assert_allclose(q.model(x), reference.model(x))  # same samples, same ranges


def test_fit_takes_dict_inputs(recording, mlp, blobs):
    x, y = blobs
    loader = [({"a": x[i : i + 30, :5], "b": x[i : i + 30, 5:]}, y[i : i + 30]) for i in (0, 30)]
    quantization.fit(mlp, static(), calib_dataloader=loader)
    assert [sorted(b) for b in recording.seen] == [["a", "b"], ["a", "b"]]


def test_calibration_sampling_size_counts_samples_not_batches(recording, mlp, blobs):
    x, y = blobs
    loader = CountingLoader([(x[i : i + 50], y[i : i + 50]) for i in range(0, 600, 50)])
    quantization.fit(mlp, static(calibration_sampling_size=120), calib_dataloader=loader)
    assert [len(b) for b in recording.seen] == [50, 50, 20]
    assert loader.pulled == 3


def test_calibration_sampling_size_slices_tuple_and_dict_batches(recording, mlp, blobs):
    x, y = blobs
    loader = [({"a": x[i : i + 40, :8], "b": x[i : i + 40, 8:]}, y[i : i + 40]) for i in (0, 40)]
    quantization.fit(mlp, static(calibration_sampling_size=[50]), calib_dataloader=loader)
    assert [(len(b["a"]), len(b["b"])) for b in recording.seen] == [(40, 40), (10, 10)]


def test_fewer_samples_than_asked_uses_them_all(recording, mlp, blobs):
    x, y = blobs
    quantization.fit(mlp, static(), calib_dataloader=[(x[:30], y[:30])])
    assert [len(b) for b in recording.seen] == [30]


def test_a_generator_loader_works(recording, mlp, blobs):
    x, y = blobs
    loader = ((x[i : i + 25], y[i : i + 25]) for i in range(0, 100, 25))
    quantization.fit(mlp, static(), calib_dataloader=loader)
    assert len(recording.seen) == 4


def test_a_reader_with_get_next_is_read_until_none():
    class Reader:  # onnxruntime's CalibrationDataReader protocol, duck-typed
        def __init__(self) -> None:
            self.items = [{"input": np.ones((2, 3))}, {"input": np.zeros((1, 3))}]

        def get_next(self):
            return self.items.pop(0) if self.items else None

    batches = list(model_inputs(Reader()))
    assert [b["input"].shape[0] for b in batches] == [2, 1]


def test_one_dict_of_inputs_is_a_batch_not_a_loader():
    feeds = {"image": np.ones((2, 3)), "mask": np.ones((2, 3))}
    with pytest.raises(DataError, match=r"single dict of inputs \('image', 'mask'\).*\[feeds\]"):
        list(model_inputs(feeds))


def test_single_sample_batches_hold_back_enough_samples_to_compare_on():
    ones = [np.full((1, 2), i, np.float32) for i in range(12)]
    data = split_calibration(ones, 100)
    # a tenth of 12 batches is one sample; up to a quarter (3) are held back to reach 8
    assert (len(data.calib), len(data.held_out)) == (9, 3)
    assert [b[0, 0] for b in data.held_out] == [9.0, 10.0, 11.0]
    many = split_calibration([np.ones((1, 2), np.float32)] * 80, 100)
    assert len(many.held_out) == HELD_OUT_MIN_SAMPLES  # a tenth (8) already holds 8 samples
    eights = split_calibration([np.ones((8, 2), np.float32)] * 4, 100)
    assert len(eights.held_out) == 1  # one batch of 8 is enough
