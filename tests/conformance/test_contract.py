"""The contract every installed backend must honour, on its own small real model."""

from __future__ import annotations

import pytest

from inc_core import PostTrainingQuantConfig, load, quantization
from inc_core import backend as registry
from inc_core.errors import ConfigError, DataError


def test_backend_accepts_its_model_and_lists_named_ops(kit, kit_name):
    backend = registry.for_model(kit.model)
    assert backend.name == kit_name
    native = backend.load_model(kit.model, PostTrainingQuantConfig())
    ops = backend.ops(native)
    assert ops, "a conformance model must have quantizable ops"
    assert len({op.name for op in ops}) == len(ops), "op names must be unique"


def test_fit_keeps_accuracy_and_leaves_the_user_model_alone(kit):
    before = kit.fingerprint(kit.model)
    # guards=False: the speed guard may time every op back to fp32 on a busy machine
    q = quantization.fit(
        kit.model, PostTrainingQuantConfig(approach="static", guards=False), calib_dataloader=kit.calib_loader
    )
    assert kit.fingerprint(kit.model) == before
    assert q.plan.quantized_ops()
    fp32 = kit.accuracy(kit.model)
    assert kit.accuracy(q.model) >= fp32 * 0.98


def test_save_load_round_trip_predicts_the_same(kit, tmp_path):
    q = quantization.fit(kit.model, PostTrainingQuantConfig(approach="static"), calib_dataloader=kit.calib_loader)
    q.save(tmp_path / "q")
    loaded = load(tmp_path / "q")
    assert loaded.plan == q.plan
    assert kit.accuracy(loaded.model) == pytest.approx(kit.accuracy(q.model), abs=1e-6)


def test_op_name_rule_keeps_an_op_in_fp32(kit):
    backend = registry.for_model(kit.model)
    first = backend.ops(backend.load_model(kit.model, PostTrainingQuantConfig()))[0].name
    conf = PostTrainingQuantConfig(
        approach="static",
        op_name_dict={first: {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}},
        guards=False,
    )
    q = quantization.fit(kit.model, conf, calib_dataloader=kit.calib_loader)
    assert first in q.plan.float_ops()
    assert q.plan.quantized_ops()


def test_unknown_op_name_is_an_error_naming_close_ops(kit):
    conf = PostTrainingQuantConfig(op_name_dict={"no_such_op_xyz": {"activation": {"dtype": ["fp32"]}}})
    with pytest.raises(ConfigError, match="no_such_op_xyz"):
        quantization.fit(kit.model, conf, calib_dataloader=kit.calib_loader)


def test_empty_calibration_loader_is_an_error(kit):
    with pytest.raises(DataError, match="no samples"):
        quantization.fit(kit.model, PostTrainingQuantConfig(approach="static"), calib_dataloader=[])
