"""inc's shortcuts in onnxruntime's quantizers (initializers looked up in a dict, per-channel
weights quantized in one broadcast) build the bytes onnxruntime's own code builds, on every
plan the guards try; a build leaves the model it was given as it was. No timing asserts: the
time saved is measured in benchmarks/models."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import qdq_quantizer, quant_utils
from onnxruntime.quantization.onnx_model import ONNXModel
from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer

from inc_core import PostTrainingQuantConfig
from inc_core.quantization import prepare_session
from inc_core.space import OpQuant, QuantPlan
from inc_ort import initializer_index, quantizer
from inc_ort.initializer_index import IndexedInitializers, indexed_lookups
from tests.corpus.onnx_models import MODELS


def _digest(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString()).hexdigest()


@contextmanager
def _parents_lookups(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """onnxruntime's own lookups and per-channel weight loop, inc's other shortcuts kept."""
    with monkeypatch.context() as patched:
        patched.setattr(quantizer, "IndexedModel", ONNXModel)
        patched.setattr(quantizer, "_LOOKUP_MODEL", ONNXModel)
        patched.setattr(quantizer, "indexed_lookups", lambda model: nullcontext())
        patched.setattr(
            quantizer.IncQOperatorQuantizer,
            "quantize_weight_per_channel_impl",
            ONNXQuantizer.quantize_weight_per_channel_impl,
        )
        yield


def _plans(plan: QuantPlan) -> dict[str, QuantPlan]:
    """The default plan, fallback plans like the guards' (fewer int8 ops), and QOperator."""
    ops = plan.quantized_ops()
    half = plan.with_ops({n: OpQuant.float("fp32") for n in ops[::2]})
    first = plan.with_ops({n: OpQuant.float("fp32") for n in ops[:2]})
    return {
        "qdq": plan,
        "qdq-half-fp32": half,
        "qdq-first-fp32": first,
        "qoperator": replace(plan, quant_format="QOperator"),
        "qoperator-half-fp32": replace(half, quant_format="QOperator"),
    }


def _builds_match(
    model: Any, calib: Any, monkeypatch: pytest.MonkeyPatch, approach: str = "static"
) -> None:
    session = prepare_session(model, PostTrainingQuantConfig(approach=approach), calib)
    backend, fp32, plan = session.backend, session.model, session.default_plan
    ranges = session.ranges_for(plan)
    before = _digest(fp32)
    plans = _plans(plan) if approach == "static" else {"dynamic": plan}
    for name, p in plans.items():
        fast = backend.quantize(fp32, p, ranges)
        with _parents_lookups(monkeypatch):
            slow = backend.quantize(fp32, p, ranges)
        assert _digest(fast) == _digest(slow), name
    assert _digest(fp32) == before  # inc's fp32 graph, built on again by the guards


@pytest.mark.parametrize("approach", ["static", "dynamic"])
def test_builds_are_the_parents_bytes_on_the_digits_cnn(
    cnn: onnx.ModelProto, calib: list[tuple[np.ndarray, np.ndarray]], monkeypatch, approach
) -> None:
    _builds_match(cnn, calib, monkeypatch, approach)


def test_builds_are_the_parents_bytes_on_a_converter_graph(monkeypatch) -> None:
    """paddle2onnx's text-line classifier (rapidocr's wheel): depthwise and per-channel convs,
    shared biases, hundreds of initializers."""
    model = MODELS["ppocr-cls"]  # tox's ort env installs rapidocr: a missing wheel fails here
    _builds_match(str(model.path()), model.batches("calib", 2), monkeypatch)


# ---------------------------------------------------------------------- the index itself
def _tensor(name: str, value: float = 0.0) -> onnx.TensorProto:
    return numpy_helper.from_array(np.full((2,), value, np.float32), name)


def _model(names: list[str]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [_tensor(n, i) for i, n in enumerate(names)],
    )
    return helper.make_model(graph)


def _scan(model: onnx.ModelProto, name: str) -> onnx.TensorProto | None:
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return tensor
    return None


def _agrees(indexed: IndexedInitializers, names: list[str]) -> None:
    for name in names:
        found, expected = indexed.find_initializer(name), _scan(indexed.model, name)
        if expected is None:
            assert found is None, name
        else:  # the list's own element (the quantizer edits what it finds), the first of its name
            assert found is not None and found.name == name
            assert found.SerializeToString() == expected.SerializeToString(), name
            assert indexed.get_initializer(name) is found


def test_the_index_answers_as_the_scan_through_every_change() -> None:
    model = _model(["a", "b", "c"])
    indexed = IndexedInitializers(model)
    names = ["a", "b", "c", "d", "e", "f", "missing"]
    _agrees(indexed, names)
    indexed.add_initializer(_tensor("d", 4))
    indexed.add_initializer(_tensor("a", 9))  # a name that exists: not added (the parent's rule)
    indexed.initializer_extend([_tensor("e", 5), _tensor("b", 7)])  # a second "b", appended
    assert [t.name for t in model.graph.initializer] == ["a", "b", "c", "d", "e", "b"]
    _agrees(indexed, names)
    indexed.remove_initializer(indexed.find_initializer("b"))  # the first "b": the second shows
    _agrees(indexed, names)
    assert numpy_helper.to_array(indexed.find_initializer("b"))[0] == 7
    indexed.remove_initializer(indexed.find_initializer("c"))
    _agrees(indexed, names)
    # changes made to the list directly, as onnxruntime's clean-up does: seen by the length
    del model.graph.initializer[0]
    model.graph.initializer.append(_tensor("f", 6))
    model.graph.initializer.append(_tensor("a", 1))
    _agrees(indexed, names)
    with pytest.raises(ValueError, match="empty list"):  # the parent's refusal
        indexed.initializer_extend([])


def test_find_by_name_is_routed_only_while_a_build_runs_and_only_for_its_list() -> None:
    indexed = IndexedInitializers(_model(["w", "b"]))
    other = _model(["w"])
    original = quant_utils.find_by_name
    with indexed_lookups(indexed):
        assert qdq_quantizer.find_by_name is initializer_index.find_by_name
        tensors = indexed.initializer()
        assert qdq_quantizer.find_by_name("b", tensors) is indexed.find_initializer("b")
        # another list (another quantizer meanwhile) and other kinds of lists get the scan
        assert qdq_quantizer.find_by_name("w", other.graph.initializer) is not None
        assert qdq_quantizer.find_by_name("b", other.graph.initializer) is None
        nodes = indexed.nodes()
        assert qdq_quantizer.find_by_name(nodes[0].name, nodes) is original(nodes[0].name, nodes)
    assert qdq_quantizer.find_by_name is original and quant_utils.find_by_name is original


def test_a_build_does_not_depend_on_the_builds_before_it(
    cnn: onnx.ModelProto, calib: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    """The guards build on one backend in turn: the default plan, then fallback plans with
    fewer int8 ops, QOperator too. Each is the model that plan gives built alone, and
    building the same plan twice gives the same bytes."""
    session = prepare_session(cnn, PostTrainingQuantConfig(), calib)
    backend, fp32, plan = session.backend, session.model, session.default_plan
    ranges = session.ranges_for(plan)
    plans = _plans(plan)
    in_turn = {name: _digest(backend.quantize(fp32, p, ranges)) for name, p in plans.items()}
    again = {name: _digest(backend.quantize(fp32, p, ranges)) for name, p in plans.items()}
    assert again == in_turn
    for name, p in plans.items():
        alone = prepare_session(cnn, PostTrainingQuantConfig(), calib)
        assert _digest(alone.backend.quantize(alone.model, p, ranges)) == in_turn[name], name
