"""The speed guard's last candidate: every op in fp32, as the backend builds it.

A backend whose ``load_model`` rewrites the graph (inc-ort canonicalises converter graphs:
constant and batch-norm folding, transposes cancelled) can make its fp32 build faster than
the user's own model by more than any int8 layout does. The toy backend here models that
with a deterministic latency: its folded graph runs each fp32 layer in half the time of the
user's graph, while its int8 ``Add`` stays slower than fp32 (no timing of a real clock).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inc_core import PostTrainingQuantConfig, load, quantization
from inc_core import backend as registry
from inc_core.errors import GuardWarning
from inc_core.report import REPORT_HTML

from .tuning_backend import QUANTIZED_MS, ToyBackend, ToyLayer, ToyNet, calib_batches, toy_net

#: milliseconds of one fp32 layer in the backend's folded graph (the user's graph: 1.0)
FOLDED_MS = 0.5


@dataclasses.dataclass(frozen=True)
class FoldedNet(ToyNet):
    """The toy net as the backend rewrote it: its fp32 layers run in ``FOLDED_MS``."""

    folded: bool = True


class FoldingBackend(ToyBackend):
    """A backend that rewrites the model it loads (as inc-ort canonicalises) and can give
    back the input as the user's runtime runs it (``as_given``)."""

    name = "folding"
    priority = 1

    def load_model(self, model: ToyNet, conf: Any) -> FoldedNet:
        return FoldedNet(model.layers, model.broken)

    def as_given(self, model: ToyNet, conf: Any) -> ToyNet:
        return model

    def latency(self, model: ToyNet, inputs: Any) -> float:
        fp32_ms = FOLDED_MS if getattr(model, "folded", False) else 1.0
        total = 0.0
        for layer in model.layers:
            op = model.plan.ops[layer.name] if model.plan is not None else None
            total += QUANTIZED_MS[layer.type] if op is not None and op.quantized else fp32_ms
        return total * 1e-3

    def save(self, model: ToyNet, directory: Path) -> list[str]:
        np.savez(directory / "toy.npz", **{layer.name: layer.weight for layer in model.layers})
        return ["toy.npz"]

    def load(self, directory: Path, **kwargs: Any) -> FoldedNet:
        with np.load(directory / "toy.npz") as saved:
            layers = tuple(ToyLayer(n, "Add", saved[n]) for n in saved.files)
        return FoldedNet(layers)


class PlainBackend(FoldingBackend):
    """The same latency, but ``load_model`` keeps the user's graph: its fp32 build is the
    input itself (torch, TF, MXNet), so it only ties with fp32."""

    name = "plain"

    def load_model(self, model: ToyNet, conf: Any) -> ToyNet:
        return model


@pytest.fixture
def folding(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    registry.register(FoldingBackend)
    registry.register(PlainBackend)
    # until Session.source is a field set by prepare_session: the guard reads it by name
    real = quantization.prepare_session

    def keeping_source(model: Any, conf: Any, *args: Any, **kwargs: Any) -> Any:
        session = real(model, conf, *args, **kwargs)
        session.source = model
        return session

    monkeypatch.setattr(quantization, "prepare_session", keeping_source)
    yield
    registry.unregister(PlainBackend.name)
    registry.unregister(FoldingBackend.name)


pytestmark = pytest.mark.usefixtures("folding")


def fit(net: Any, backend: str = "folding", **conf: Any) -> Any:
    """fit on the default path with ``backend``; fails on any warning but the guards'."""
    registry_backends = {"folding": FoldingBackend, "plain": PlainBackend}
    keep = registry_backends[backend]
    other = next(cls for name, cls in registry_backends.items() if name != backend)
    registry.unregister(other.name)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            q = quantization.fit(
                net,
                PostTrainingQuantConfig(approach="static", **conf),
                calib_dataloader=calib_batches(),
            )
    finally:
        registry.register(other)
    assert q.backend == keep.name
    others = [w for w in caught if not issubclass(w.category, GuardWarning)]
    assert not others, [str(w.message) for w in others]
    q.guard_warnings = [str(w.message) for w in caught if issubclass(w.category, GuardWarning)]
    return q


def adds() -> ToyNet:
    # user's graph 4 x 1.0 ms; folded fp32 4 x 0.5 = 2.0 ms; int8 Adds 1.6 ms each
    return toy_net(types=("Add",) * 4)


def test_all_fp32_comes_back_when_the_backends_fp32_graph_beats_every_int8_build():
    q = fit(adds())
    assert q.plan.quantized_ops() == []
    speed = q.report["speed"]
    assert speed["returned"] == "all ops fp32"
    # fp32 in the report is the input as given: 4.0 ms, against the folded graph's 2.0 ms
    assert (speed["fp32_ms"], speed["int8_ms"]) == (pytest.approx(4.0), pytest.approx(2.0))
    assert speed["ratio"] == pytest.approx(0.5) and speed["faster"] is True
    assert speed["inc_fp32_ms"] == pytest.approx(2.0)
    # the best int8 build: add1..add3 fp32 (3 x 0.5 + 1.6 ms) against the folded 2.0 ms
    assert speed["best_int8_ratio"] == pytest.approx(3.1 / 2.0)
    last = speed["tried"][-1]
    assert last["name"] == "all ops fp32" and last["kept"] is True
    assert last["fp32"] == ["add4"] and last["input_ratio"] == pytest.approx(0.5)
    slower = [row["op"] for row in q.report["fallback"] if row["why"] == "slower"]
    assert slower == ["add1", "add2", "add3", "add4"]
    (message,) = q.guard_warnings
    assert "no int8 layout beat fp32 on this machine" in message
    assert "1.55x the time of fp32" in message
    assert "has no int8 op: it is inc's optimised fp32 graph, 2.00x faster than the input" in (
        message
    )
    assert "guards=False, or an op_name_dict/op_type_dict rule asking int8, keeps int8" in message
    assert q.report["fidelity"]["holds"] is True
    json.dumps(q.report, allow_nan=False)


def test_an_fp32_build_that_is_the_input_itself_only_ties_and_int8_comes_back():
    q = fit(adds(), backend="plain")  # fp32 4.0 ms, its fp32 build too
    assert q.plan.quantized_ops() == ["add4"]
    last = q.report["speed"]["tried"][-1]
    assert last["name"] == "all ops fp32" and last["kept"] is False
    assert last["ratio"] == pytest.approx(1.0)
    assert "returned" not in q.report["speed"]
    (message,) = q.guard_warnings
    assert "Returning the fastest int8 model found" in message


def test_without_the_input_as_given_the_guard_compares_with_its_own_fp32(monkeypatch):
    # a backend that cannot say what the user ran: the folded graph is all the guard knows
    monkeypatch.setattr(FoldingBackend, "as_given", lambda self, model, conf: None)
    q = fit(adds())
    assert q.plan.quantized_ops() == ["add4"]
    assert q.report["speed"]["tried"][-1]["kept"] is False


def test_once_an_int8_build_beats_fp32_the_all_fp32_build_is_never_tried():
    q = fit(toy_net())  # Conv 0.4 + Conv 0.4 + MatMul 0.5 + Add 1.6 = 2.9 ms vs 2.0 folded
    # the Add in fp32 (1.8 ms) is faster than the folded fp32 graph: the search stops there
    assert q.plan.quantized_ops() == ["conv1", "conv2", "mm"]
    assert q.report["speed"]["faster"] is True
    assert "all ops fp32" not in [row["name"] for row in q.report["speed"]["tried"]]
    q = fit(toy_net(types=("Conv",) * 4))  # 1.6 ms int8 vs 2.0 ms folded fp32: faster
    assert q.plan.quantized_ops() == ["conv1", "conv2", "conv3", "conv4"]
    assert "tried" not in q.report["speed"]


@pytest.mark.parametrize(
    "rules",
    [
        {"op_name_dict": {"add2": {"activation": {"dtype": ["int8"]}}}},
        {"op_type_dict": {"Add": {"activation": {"dtype": "int8"}}}},
    ],
)
def test_a_rule_asking_int8_keeps_int8(rules):
    q = fit(adds(), **rules)
    assert q.plan.quantized_ops()
    assert all(row["name"] != "all ops fp32" for row in q.report["speed"]["tried"])


def test_guards_off_keeps_every_op_int8():
    q = fit(adds(), guards=False)
    assert q.plan.quantized_ops() == ["add1", "add2", "add3", "add4"]
    assert q.guard_warnings == []


def test_a_model_without_int8_ops_saves_loads_and_reports(tmp_path):
    q = fit(adds())
    assert q.plan.quantized_ops() == []
    rows = {row["op"]: row for row in q.op_report()}
    assert set(rows) == {"add1", "add2", "add3", "add4"}
    assert all(row["sqnr_db"] is None for row in rows.values())
    assert rows["add1"]["runs_as"] == "Add (fp32)"
    q.save(tmp_path / "q")
    assert (tmp_path / "q" / REPORT_HTML).is_file()
    loaded = load(tmp_path / "q")
    assert loaded.plan.quantized_ops() == []
    assert loaded.report["speed"] == q.report["speed"]
    assert loaded.op_report() == q.op_report()
    printed = subprocess.run(
        [sys.executable, "-m", "inc_core.report", str(tmp_path / "q")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "0 of 4 quantized" in printed
    assert "add4 (slower)" in printed


def test_an_input_as_given_that_cannot_be_timed_costs_the_candidate_never_the_fit(monkeypatch):
    timed = FoldingBackend.latency

    def refusing(self: FoldingBackend, model: ToyNet, inputs: Any) -> float:
        if not isinstance(model, FoldedNet):
            raise ValueError("the user's graph declares a batch of -1")
        return timed(self, model, inputs)

    monkeypatch.setattr(FoldingBackend, "as_given", lambda self, model, conf: model)
    monkeypatch.setattr(FoldingBackend, "latency", refusing)
    q = fit(adds())
    assert q.plan.quantized_ops() == ["add4"]
    last = q.report["speed"]["tried"][-1]
    assert last["kept"] is False and last["error"].startswith("the input as given: ")
