"""The default guards hold for every backend: the report keys, per-op sqnr_db, and the switch."""

from __future__ import annotations

import dataclasses
import json
import warnings
from typing import Any

import pytest

from inc_core import PostTrainingQuantConfig, load, quantization
from inc_core import backend as registry
from inc_core.errors import GuardWarning
from inc_core.fidelity import MIN_SQNR_DB, as_arrays
from inc_core.session import prepare_session

WHY = {"slower", "fidelity"}


def default_fit(kit: Any, **conf: Any) -> tuple[Any, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GuardWarning)
        q = quantization.fit(
            kit.model, PostTrainingQuantConfig(**conf), calib_dataloader=kit.calib_loader
        )
    return q, [str(w.message) for w in caught if issubclass(w.category, GuardWarning)]


def test_default_fit_reports_speed_fallback_and_fidelity(kit):
    q, _ = default_fit(kit)
    speed = q.report["speed"]
    assert {"fp32_ms", "int8_ms", "batch"} <= set(speed), speed
    assert speed["fp32_ms"] > 0 and speed["int8_ms"] > 0 and speed["batch"] >= 1
    assert isinstance(q.report["fallback"], list)
    for row in q.report["fallback"]:
        assert isinstance(row["op"], str) and row["op"] in q.plan.ops
        assert row["why"] in WHY
        assert not q.plan.ops[row["op"]].quantized  # what fell back runs in fp32
    fidelity = q.report["fidelity"]
    assert fidelity["held_out_batches"] >= 1
    assert fidelity["holds"] is True, fidelity  # the kits' models quantize well
    assert fidelity["sqnr_db"] >= MIN_SQNR_DB or fidelity["agreement"] >= 0.95
    json.dumps(q.report, allow_nan=False)


@pytest.mark.parametrize("guards", [True, False])
def test_op_report_has_sqnr_db_for_quantized_ops_and_inc_json_keeps_it(kit, tmp_path, guards):
    q, _ = default_fit(kit, guards=guards)
    rows = q.op_report()
    assert all("sqnr_db" in row and "runs_as" in row for row in rows)
    quantized = [row for row in rows if row["op"] in q.plan.quantized_ops()]
    if guards and q.report["speed"].get("returned") == "all ops fp32":
        # a busy machine timed every int8 build slower: the diagnosis of fp32 ops is empty
        assert all(row["sqnr_db"] is None for row in rows)
        return
    assert quantized, "the kit's model keeps int8 ops"
    measured = [row["sqnr_db"] for row in quantized if row["sqnr_db"] is not None]
    assert measured and all(isinstance(v, float) for v in measured), (
        "Backend.op_outputs gives no per-op outputs: every quantized op's sqnr_db is unknown"
    )
    assert all(row["sqnr_db"] is None for row in rows if row not in quantized)
    assert all(isinstance(row["runs_as"], str) for row in rows)
    q.save(tmp_path / "q")
    manifest = json.loads((tmp_path / "q" / "inc.json").read_text())
    assert manifest["op_report"] == rows
    assert manifest["report"]["speed"] == q.report["speed"]
    assert manifest["report"]["fallback"] == q.report["fallback"]
    assert load(tmp_path / "q").op_report() == rows


def test_guards_off_gives_no_fallback_and_no_warning(kit):
    q, caught = default_fit(kit, guards=False)
    assert q.report["fallback"] == []
    assert caught == []
    assert q.report["speed"] == {"skipped": "guards=False"}
    assert q.report["fidelity"] == {"skipped": "guards=False"}


def test_variants_and_kernel_groups_name_the_models_ops_and_build(kit, kit_name):
    """``Backend.variants`` builds of the default plan run and agree with it in shape;
    ``Backend.kernel_groups`` names ops of the model (the speed guard tries them in fp32)."""
    conf = PostTrainingQuantConfig()
    session = prepare_session(kit.model, conf, kit.calib_loader)
    plan = session.default_plan
    for label, group in session.backend.kernel_groups(session.model).items():
        assert isinstance(label, str) and group, (label, group)
        assert set(group) <= set(plan.ops), f"kernel group {label!r} names unknown ops"
    batch = session.calib_inputs[0]
    want = [a.shape for _, a in as_arrays(session.backend.predict(session.build(plan), batch))]
    for name, variant in session.backend.variants(session.model, plan):
        assert isinstance(name, str) and name
        assert variant != plan and set(variant.ops) == set(plan.ops), name
        got = session.backend.predict(session.build(variant), batch)
        assert [a.shape for _, a in as_arrays(got)] == want, name
    # a format the user set is not varied
    pinned = dataclasses.replace(plan, quant_format="QDQ")
    assert all(v.quant_format == "QDQ" for _, v in session.backend.variants(session.model, pinned))


def test_speed_report_says_what_was_tried_and_runs_as_matches_a_fresh_backend(kit, kit_name):
    q, _ = default_fit(kit)
    for row in q.report["speed"].get("tried", []):
        assert isinstance(row["name"], str) and isinstance(row["kept"], bool), row
        assert "ratio" in row or "error" in row or "sqnr_db" in row, row
    # runs_as of the returned model may be read from a session the guard made: it must say
    # what a backend that never saw the model says
    fresh = registry.by_name(kit_name)
    fresh.check_config(PostTrainingQuantConfig())
    again = fresh.runs_as(q.model)
    reported = {
        op: row["runs_as"] for op, row in q.report["op_diagnosis"].items() if "runs_as" in row
    }
    assert reported == {op: str(label) for op, label in again.items() if op in q.plan.ops}
