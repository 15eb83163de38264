"""GPTQ/AWQ calibration in bounded memory: ``inc_ort.weight_only.calibrate`` computes the
MatMul inputs' statistics a chunk of tensors at a time (``STATS_BUDGET_BYTES``), re-running
the calibration batches per chunk, and the models built are those of one pass, byte for byte."""

from __future__ import annotations

import gc
import pickle
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inc_core import PostTrainingQuantConfig, quantization
from inc_core.weight_only.stats import MAX_ROWS, stats_bytes
from inc_ort import weight_only as woq

from . import models
from .test_weight_only import NAMES, mlp


def conf(algorithm: str, **rules: Any) -> PostTrainingQuantConfig:
    weight = {"bits": 4, "group_size": 32, "scheme": "sym", "algorithm": algorithm}
    return PostTrainingQuantConfig(
        approach="weight_only", op_type_dict={".*": {"weight": weight}}, op_name_dict=rules or None
    )


@pytest.fixture(scope="module")
def small() -> dict[str, Any]:
    """The MLP of test_weight_only; 800 calibration rows in 8 batches, more than AWQ's
    ``MAX_ROWS`` sample, so its seeded reservoir sampling runs."""
    model, _, _ = mlp()
    rng = np.random.default_rng(5)
    rows = rng.standard_normal((800, 6)) @ rng.standard_normal((6, 64))
    rows = (rows + 0.3 * rng.standard_normal((800, 64))).astype(np.float32)
    assert rows.shape[0] > MAX_ROWS
    return {"model": model, "calib": [rows[i : i + 100] for i in range(0, 800, 100)]}


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """A budget below any tensor's statistics: one input tensor per chunk."""
    monkeypatch.setattr(woq, "STATS_BUDGET_BYTES", 1)


def test_chunked_cuts_in_order_within_the_budget() -> None:
    sized = [("a", 3), ("b", 4), ("c", 9), ("d", 1), ("e", 1)]
    assert woq.chunked(sized, 8) == [["a", "b"], ["c"], ["d", "e"]]
    assert woq.chunked(sized, 1) == [["a"], ["b"], ["c"], ["d"], ["e"]]
    assert woq.chunked(sized, 100) == [["a", "b", "c", "d", "e"]]
    assert woq.chunked([], 8) == []
    assert stats_bytes(10, ("GPTQ",)) == 8 * 100 + 160
    assert stats_bytes(10, ("AWQ", "GPTQ"), max_rows=2) == 8 * 100 + 4 * 20 + 160


@pytest.mark.parametrize("algorithm", ["GPTQ", "AWQ"])
def test_one_tensor_per_chunk_builds_the_bytes_of_one_pass(
    small: dict[str, Any], algorithm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_pass = quantization.fit(small["model"], conf(algorithm), calib_dataloader=small["calib"])
    monkeypatch.setattr(woq, "STATS_BUDGET_BYTES", 1)
    chunked = quantization.fit(small["model"], conf(algorithm), calib_dataloader=small["calib"])
    assert chunked.model.SerializeToString() == one_pass.model.SerializeToString()
    assert chunked.plan == one_pass.plan


@pytest.mark.parametrize("algorithm", ["GPTQ", "AWQ"])
def test_one_quantize_runs_one_pass_per_chunk(
    small: dict[str, Any], algorithm: str, tiny: None
) -> None:
    plan = quantization.fit(small["model"], conf(algorithm), calib_dataloader=small["calib"]).plan
    stats = woq.calibrate(small["model"], small["calib"], plan)
    assert isinstance(stats, woq.ChunkedStats)
    assert stats.chunks == [["x"], ["fc0.relu"], ["fc1.relu"]]
    assert stats.passes == 1 and stats.loaded == 0  # the first chunk: bad data fails here
    # keys, len and membership compute nothing
    assert sorted(stats) == sorted(NAMES) and len(stats) == 3 and "fc1" in stats
    assert "nope" not in stats and stats.get("nope") is None and stats.passes == 1
    built, _ = woq.quantize_plan(small["model"], plan, stats)
    assert stats.passes == len(stats.chunks) == 3
    # a second quantize (the guards', a tuning trial) computes every chunk again
    again, _ = woq.quantize_plan(small["model"], plan, stats)
    assert stats.passes == 6
    assert again.SerializeToString() == built.SerializeToString()


def test_at_most_one_chunks_statistics_are_alive(small: dict[str, Any], tiny: None) -> None:
    plan = quantization.fit(small["model"], conf("GPTQ"), calib_dataloader=small["calib"]).plan
    stats = woq.calibrate(small["model"], small["calib"], plan)
    seen: list[tuple[int | None, weakref.ref[Any]]] = []
    for op in NAMES:  # graph order, as quantize_model reads them
        value = stats[op]
        assert value.hessian is not None
        seen.append((stats.loaded, weakref.ref(value)))
        del value
        gc.collect()
        alive = {chunk for chunk, ref in seen if ref() is not None}
        assert alive == {stats.loaded}, (op, alive)
    # items() reads chunk after chunk too: 3 passes more, values those of the first reads
    hessians = {op: value.hessian for op, value in stats.items()}
    assert stats.passes == 6 and sorted(hessians) == sorted(NAMES)


def two_inputs() -> onnx.ModelProto:
    """``a = x @ Wa``, ``b = y @ Wb``, ``c = x @ Wc``: x is read again after y."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.standard_normal((64, 48)).astype(np.float32), f"W{n}")
        for n in "abc"
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "Wa"], ["a"], name="a"),
        helper.make_node("MatMul", ["y", "Wb"], ["b"], name="b"),
        helper.make_node("MatMul", ["x", "Wc"], ["c"], name="c"),
        helper.make_node("Add", ["a", "b"], ["ab"]),
        helper.make_node("Add", ["ab", "c"], ["out"]),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 64]) for n in "xy"]
    out = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 48])]
    graph = helper.make_graph(nodes, "two_inputs", inputs, out, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_input_read_with_two_settings_is_still_one_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``c`` reads x at group size 64, so x's ops form two groups around y's; they are
    quantized in chunk order (x's, then y's) and written in model order."""
    model = two_inputs()
    rng = np.random.default_rng(2)
    calib = [{n: rng.standard_normal((40, 64)).astype(np.float32) for n in "xy"} for _ in range(3)]
    rules = {"c": {"weight": {"group_size": 64}}}
    plan = quantization.fit(model, conf("GPTQ", **rules), calib_dataloader=calib).plan
    one_pass = woq.calibrate(model, calib, plan)
    assert isinstance(one_pass, woq.ChunkedStats) and one_pass.chunks == [["x", "y"]]
    plain = dict(one_pass.items())
    expected, _ = woq.quantize_plan(model, plan, plain)
    monkeypatch.setattr(woq, "STATS_BUDGET_BYTES", 1)
    stats = woq.calibrate(model, calib, plan)
    assert isinstance(stats, woq.ChunkedStats) and stats.chunks == [["x"], ["y"]]
    built, replaced = woq.quantize_plan(model, plan, stats)
    assert stats.passes == 2  # x's chunk, then y's: never x's again
    assert [r.node for r in replaced] == ["a", "b", "c"]
    assert [r.block_size for r in replaced] == [32, 32, 64]
    assert built.SerializeToString() == expected.SerializeToString()


@pytest.mark.slow
def test_minilm_gptq_chunked_is_the_one_pass_model(
    minilm: onnx.ModelProto, reviews: tuple[list[str], np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """all-MiniLM-L6-v2: 24 distinct MatMul inputs (4 a layer), one chunk by default, 24 with
    a tiny budget; the same bytes."""
    texts, _ = reviews
    calib = [models.encode(texts[i : i + 16]) for i in range(0, 32, 16)]
    one_pass = quantization.fit(minilm, conf("GPTQ"), calib_dataloader=calib)
    stats = woq.calibrate(minilm, calib, one_pass.plan)
    assert isinstance(stats, woq.ChunkedStats) and len(stats.chunks) == 1
    monkeypatch.setattr(woq, "STATS_BUDGET_BYTES", 1)
    chunked = quantization.fit(minilm, conf("GPTQ"), calib_dataloader=calib)
    assert chunked.model.SerializeToString() == one_pass.model.SerializeToString()
    stats = woq.calibrate(minilm, calib, chunked.plan)
    assert len(stats.chunks) == 24


def test_pickled_and_shared_between_threads(small: dict[str, Any], tiny: None) -> None:
    """Tuning may pickle the statistics into a job for another process (without the loaded
    chunk) or quantize from threads at once (the chunks then alternate, the bytes do not)."""
    plan = quantization.fit(small["model"], conf("AWQ"), calib_dataloader=small["calib"]).plan
    stats = woq.calibrate(small["model"], small["calib"], plan)
    expected = woq.quantize_plan(small["model"], plan, stats)[0].SerializeToString()
    copy = pickle.loads(pickle.dumps(stats))
    assert copy.loaded is None and copy.chunks == stats.chunks
    assert woq.quantize_plan(small["model"], plan, copy)[0].SerializeToString() == expected
    with ThreadPoolExecutor(3) as pool:
        jobs = [pool.submit(woq.quantize_plan, small["model"], plan, stats) for _ in range(3)]
        assert all(j.result()[0].SerializeToString() == expected for j in jobs)
