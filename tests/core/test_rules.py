"""How op_type_dict and op_name_dict resolve against a model's ops and a backend's capability."""

from __future__ import annotations

import logging

import pytest

from inc_core import PostTrainingQuantConfig, quantization
from inc_core.errors import ConfigError
from inc_core.rules import build_space, default_plan
from inc_core.space import OpCapability, OpInfo, OpQuant, OpSpace, TensorOptions

from .reference_backend import ReferenceBackend

OPS = [OpInfo("fc1", "Dense"), OpInfo("fc2", "Dense")]
BACKEND = ReferenceBackend()
STATIC = {"static": BACKEND.capability("static", "cpu")}
BOTH = {
    "static": BACKEND.capability("static", "cpu"),
    "dynamic": BACKEND.capability("dynamic", "cpu"),
}
FP32 = {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}


def space(conf: PostTrainingQuantConfig, caps=STATIC, ops=OPS) -> dict[str, OpSpace]:
    spaces = build_space(ops, caps, conf, ReferenceBackend.op_type_aliases)
    return {s.op.name: s for s in spaces}


def quantized(s: OpSpace) -> list[OpQuant]:
    return [c for c in s.choices if c.quantized]


def test_without_rules_every_op_gets_the_full_capability_and_fp32_last():
    spaces = space(PostTrainingQuantConfig())
    for s in spaces.values():
        assert s.choices[-1] == OpQuant.float("fp32")
        assert s.can_fallback
        acts = {c.activation for c in quantized(s)}
        weights = {c.weight for c in quantized(s)}
        # 2 dtypes x 2 schemes x 1 granularity x 4 algorithms, and 2 weight granularities
        assert len(acts) == 16 and len(weights) == 2
        assert s.default.activation is not None and s.default.activation.dtype == "uint8"
        assert s.default.weight is not None and s.default.weight.granularity == "per_channel"


def test_fp32_rule_keeps_an_op_out():
    spaces = space(PostTrainingQuantConfig(op_name_dict={"fc1": FP32}))
    assert spaces["fc1"].choices == (OpQuant.float("fp32"),)
    assert spaces["fc1"].fixed
    assert quantized(spaces["fc2"])
    plan = default_plan(list(spaces.values()), PostTrainingQuantConfig())
    assert plan.float_ops() == ["fc1"] and plan.quantized_ops() == ["fc2"]


def test_activation_fp32_alone_keeps_an_op_out():
    rule = {"fc2": {"activation": {"dtype": ["fp32"]}}}
    assert space(PostTrainingQuantConfig(op_name_dict=rule))["fc2"].choices == (
        OpQuant.float("fp32"),
    )


def test_rule_values_narrow_the_capability_in_the_rules_order():
    rule = {
        "activation": {"dtype": ["int8"], "scheme": ["sym"], "algorithm": ["kl", "minmax"]},
        "weight": {"granularity": ["per_tensor"]},
    }
    s = space(PostTrainingQuantConfig(op_name_dict={"fc1": rule}))["fc1"]
    acts = [c.activation for c in quantized(s)]
    assert {(a.dtype, a.scheme) for a in acts if a} == {("int8", "sym")}
    assert [a.algorithm for a in acts if a] == ["kl", "minmax"]  # the user's order: kl is default
    assert {c.weight.granularity for c in quantized(s) if c.weight} == {"per_tensor"}


def test_op_name_dict_overrides_op_type_dict_field_by_field():
    conf = PostTrainingQuantConfig(
        op_type_dict={
            "Dense": {"activation": {"scheme": ["sym"]}, "weight": {"granularity": ["per_tensor"]}}
        },
        op_name_dict={"fc1": {"activation": {"scheme": ["asym"]}}},
    )
    spaces = space(conf)
    fc1 = quantized(spaces["fc1"])
    fc2 = quantized(spaces["fc2"])
    assert {c.activation.scheme for c in fc1 if c.activation} == {"asym"}  # name wins
    assert {c.weight.granularity for c in fc1 if c.weight} == {"per_tensor"}  # type rule kept
    assert {c.activation.scheme for c in fc2 if c.activation} == {"sym"}
    assert {c.weight.granularity for c in fc2 if c.weight} == {"per_tensor"}


def test_name_rule_can_requantize_an_op_that_its_type_rule_keeps_in_fp32():
    conf = PostTrainingQuantConfig(
        op_type_dict={"Dense": FP32},
        op_name_dict={"fc2": {"activation": {"dtype": ["uint8"]}, "weight": {"dtype": ["int8"]}}},
    )
    spaces = space(conf)
    assert not quantized(spaces["fc1"])
    assert spaces["fc2"].default.quantized


def test_generic_type_alias_applies_to_the_native_type():
    spaces = space(PostTrainingQuantConfig(op_type_dict={"Linear": FP32}))
    assert all(not quantized(s) for s in spaces.values())
    spaces = space(PostTrainingQuantConfig(op_type_dict={"MatMul": FP32}))
    assert all(not quantized(s) for s in spaces.values())


def test_op_name_dict_regex_keys_full_match():
    spaces = space(PostTrainingQuantConfig(op_name_dict={"fc.*": FP32}))
    assert all(not quantized(s) for s in spaces.values())
    spaces = space(PostTrainingQuantConfig(op_name_dict={"fc[2]": FP32}))
    assert quantized(spaces["fc1"]) and not quantized(spaces["fc2"])


def test_literal_key_that_is_also_a_regex_matches_itself():
    ops = [OpInfo("block.0+fc", "Dense"), OpInfo("block.00fc", "Dense")]
    spaces = space(PostTrainingQuantConfig(op_name_dict={"block.0+fc": FP32}), ops=ops)
    assert not quantized(spaces["block.0+fc"])  # literally
    assert not quantized(spaces["block.00fc"])  # and as the pattern it also is


def test_a_rule_the_backend_cannot_run_is_an_error():
    rule = {"fc1": {"weight": {"dtype": ["uint8"]}}}
    with pytest.raises(ConfigError) as exc:
        space(PostTrainingQuantConfig(op_name_dict=rule))
    message = str(exc.value)
    assert "'fc1'" in message and "uint8" in message and "['int8']" in message


def test_a_rule_only_one_approach_can_run_keeps_that_approach():
    # dynamic kernels take uint8 activations only; static ones take int8 too
    rule = {"fc1": {"activation": {"dtype": ["int8"]}}}
    spaces = space(PostTrainingQuantConfig(op_name_dict=rule), caps=BOTH)
    assert {c.approach for c in quantized(spaces["fc1"])} == {"static"}
    assert {c.approach for c in quantized(spaces["fc2"])} == {"static", "dynamic"}


def test_a_rule_no_approach_can_run_names_every_approach():
    rule = {"fc1": {"activation": {"granularity": ["per_channel"]}}}
    with pytest.raises(ConfigError, match=r"no approach can run.*static.*dynamic"):
        space(PostTrainingQuantConfig(op_name_dict=rule), caps=BOTH)


def test_integer_rule_for_an_op_type_without_kernels_is_an_error():
    ops = [*OPS, OpInfo("softmax", "Softmax")]
    rule = {"softmax": {"activation": {"dtype": ["int8"]}}}
    with pytest.raises(ConfigError, match=r"'softmax' \(Softmax\).*cannot quantize Softmax"):
        space(PostTrainingQuantConfig(op_name_dict=rule), ops=ops)
    # without a rule such an op simply stays fp32
    assert space(PostTrainingQuantConfig(), ops=ops)["softmax"].choices == (OpQuant.float(),)


def test_op_name_key_matching_no_op_lists_close_names():
    with pytest.raises(ConfigError) as exc:
        space(PostTrainingQuantConfig(op_name_dict={"fc3": FP32}))
    message = str(exc.value)
    assert "'fc3'" in message and "fc1" in message and "fc2" in message


def test_unknown_op_type_is_an_error_listing_known_types():
    with pytest.raises(ConfigError) as exc:
        space(PostTrainingQuantConfig(op_type_dict={"Dence": FP32}))
    message = str(exc.value)
    assert "'Dence'" in message and "Dense" in message


def test_known_op_type_absent_from_the_model_is_only_a_warning(caplog):
    ops = [OpInfo("fc1", "Dense")]
    caps = {
        "static": {**BACKEND.capability("static", "cpu"), "Conv": OpCapability(TensorOptions())}
    }
    with caplog.at_level(logging.WARNING, logger="inc_core.rules"):
        spaces = space(PostTrainingQuantConfig(op_type_dict={"Conv": FP32}), caps=caps, ops=ops)
    assert quantized(spaces["fc1"])
    assert "'Conv'" in caplog.text and "no op of that type" in caplog.text


def test_float_precisions_in_rules_and_excluded_precisions():
    rule = {"fc1": {"activation": {"dtype": ["bf16", "fp32"]}, "weight": {"dtype": ["bf16"]}}}
    spaces = space(PostTrainingQuantConfig(op_name_dict=rule))
    assert spaces["fc1"].choices == (OpQuant.float("bf16"), OpQuant.float("fp32"))
    spaces = space(PostTrainingQuantConfig(op_name_dict=rule, excluded_precisions=["bf16"]))
    assert spaces["fc1"].choices == (OpQuant.float("fp32"),)


def test_rule_asking_only_for_an_excluded_precision_is_an_error():
    rule = {"fc1": {"activation": {"dtype": ["bf16"]}}}
    with pytest.raises(ConfigError, match=r"'fc1'.*\['bf16'\].*excluded_precisions"):
        space(PostTrainingQuantConfig(op_name_dict=rule, excluded_precisions=["bf16"]))


def test_mixed_int_and_float_rule_quantizes_with_that_float_as_fallback():
    rule = {"fc1": {"activation": {"dtype": ["uint8", "fp16"]}}}
    s = space(PostTrainingQuantConfig(op_name_dict=rule))["fc1"]
    assert s.default.quantized
    assert s.choices[-2:] == (OpQuant.float("fp16"), OpQuant.float("fp32"))


def test_default_plan_carries_the_config_settings():
    conf = PostTrainingQuantConfig(
        quant_format="QDQ", reduce_range=True, recipes={"smooth_quant": True}
    )
    plan = default_plan(build_space(OPS, STATIC, conf), conf)
    assert (plan.quant_format, plan.reduce_range, plan.recipes) == (
        "QDQ",
        True,
        {"smooth_quant": True},
    )
    assert plan.op_types == {"fc1": "Dense", "fc2": "Dense"}


def test_rules_reach_fit(mlp, calib_loader):
    conf = PostTrainingQuantConfig(
        approach="static",
        op_name_dict={"fc2": FP32, "fc1": {"activation": {"dtype": ["int8"], "scheme": ["sym"]}}},
    )
    q = quantization.fit(mlp, conf, calib_dataloader=calib_loader)
    assert q.plan.float_ops() == ["fc2"]
    act = q.plan.ops["fc1"].activation
    assert act is not None and (act.dtype, act.scheme) == ("int8", "sym")
    assert q.model.layers[1].weight_qparams is None
    assert q.model.layers[0].input_qparams is not None
    assert q.model.layers[0].input_qparams.dtype == "int8"
