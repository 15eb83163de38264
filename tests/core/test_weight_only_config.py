"""approach="weight_only": INC 2.x's weight rules and recipes validate like every other key,
and a backend without weight-only kernels says which ones have them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inc_core import quantization
from inc_core.config import PostTrainingQuantConfig, config_from_dict
from inc_core.errors import ConfigError
from inc_core.weight_only import support

from .reference_backend import NumpyMLP, ReferenceBackend

ISSUE_EXAMPLE: dict[str, Any] = {
    "approach": "weight_only",
    "op_type_dict": {
        ".*": {"weight": {"bits": 4, "group_size": 32, "scheme": "sym", "algorithm": "RTN"}}
    },
    "op_name_dict": {".*lm_head": {"weight": {"dtype": "fp32"}}},
    "recipes": {
        "gptq_args": {"percdamp": 0.01, "act_order": False},
        "awq_args": {"enable_auto_scale": True},
    },
}


def woq(**changes: Any) -> PostTrainingQuantConfig:
    return PostTrainingQuantConfig(**{**ISSUE_EXAMPLE, **changes})


def rule(**fields: Any) -> dict[str, Any]:
    return {".*": {"weight": fields}}


def test_the_issue_example_validates_normalises_and_round_trips() -> None:
    conf = woq()
    assert conf.approach == "weight_only"
    assert conf.op_type_dict == {
        ".*": {
            "weight": {"bits": (4,), "group_size": (32,), "scheme": ("sym",), "algorithm": ("RTN",)}
        }
    }
    assert conf.op_name_dict == {".*lm_head": {"weight": {"dtype": ("fp32",)}}}
    assert conf.recipes["gptq_args"] == {"percdamp": 0.01, "act_order": False}
    assert config_from_dict(conf.to_dict()) == conf
    assert PostTrainingQuantConfig(approach="post_training_weight_only").approach == "weight_only"


def test_values_may_be_lists_to_tune_and_are_normalised() -> None:
    conf = woq(
        op_type_dict=rule(bits=[4, 8, 4], group_size=(-1, 128), algorithm=["gptq", "Awq"]),
        op_name_dict={"fc2": {"weight": {"dtype": ["INT", "fp32"], "bits": 8}}},
    )
    assert conf.op_type_dict[".*"]["weight"] == {
        "bits": (4, 8),
        "group_size": (-1, 128),
        "algorithm": ("GPTQ", "AWQ"),
    }
    assert conf.op_name_dict["fc2"]["weight"] == {"dtype": ("int", "fp32"), "bits": (8,)}


@pytest.mark.parametrize(
    ("changes", "parts"),
    [
        ({"op_type_dict": rule(bits=1)}, ["['bits']=1", "2 to 8"]),
        ({"op_type_dict": rule(bits=16)}, ["['bits']=16", "2 to 8"]),
        ({"op_type_dict": rule(bits=True)}, ["['bits']=True", "2 to 8"]),
        ({"op_type_dict": rule(bits="4")}, ["['bits']='4'", "2 to 8"]),
        ({"op_type_dict": rule(bits=[])}, ["['bits'] is empty"]),
        ({"op_type_dict": rule(group_size=0)}, ["['group_size']=0", "-1", "32, 64, 128"]),
        ({"op_type_dict": rule(group_size=-2)}, ["['group_size']=-2", "-1"]),
        ({"op_type_dict": rule(group_size=32.0)}, ["['group_size'] must be", "float"]),
        ({"op_type_dict": rule(scheme="symmetric")}, ["'symmetric'", "'sym'", "'asym'"]),
        ({"op_type_dict": rule(algorithm="RTM")}, ["'RTM'", "'RTN'", "'GPTQ'", "'AWQ'"]),
        ({"op_type_dict": rule(algorithm="teq")}, ["'TEQ' is not implemented", "'AWQ'"]),
        ({"op_type_dict": rule(dtype="nf4")}, ["'nf4' is not implemented", "'int', 'fp32'"]),
        ({"op_type_dict": rule(dtype="int4")}, ["'int4'", "'bits': 4", "'int', 'fp32'"]),
        ({"op_type_dict": rule(dtype="fp16")}, ["'fp16' is not allowed", "'int', 'fp32'"]),
        (
            {"op_type_dict": rule(granularity="per_channel")},
            ["'granularity'", "'bits'", "'group_size'"],
        ),
        (
            {"op_type_dict": {".*": {"activation": {"dtype": "fp32"}}}},
            ["['activation']", "weights only", "'weight'"],
        ),
        ({"op_type_dict": {".*": {"weights": {"bits": 4}}}}, ["'weights'", "'weight'"]),
        ({"op_type_dict": {"[": {"weight": {"bits": 4}}}}, ["'['", "regular expression"]),
        ({"op_name_dict": {"fc(": {"weight": {"dtype": "fp32"}}}}, ["'fc('", "regular expression"]),
    ],
)
def test_bad_weight_rules_name_the_key_and_what_is_allowed(
    changes: dict[str, Any], parts: list[str]
) -> None:
    with pytest.raises(ConfigError) as exc:
        woq(**changes)
    for part in parts:
        assert part in str(exc.value), f"{part!r} missing from: {exc.value}"


@pytest.mark.parametrize(
    ("recipes", "parts"),
    [
        ({"gptq_args": {"percdamp": 0}}, ["['percdamp']=0", "(0, 1]"]),
        ({"gptq_args": {"percdamp": 1.5}}, ["['percdamp']=1.5", "(0, 1]"]),
        ({"gptq_args": {"percdamp": float("nan")}}, ["percdamp", "(0, 1]"]),
        ({"gptq_args": {"percdamp": "0.01"}}, ["percdamp", "a number"]),
        ({"gptq_args": {"act_order": "yes"}}, ["['act_order']", "True or False"]),
        ({"gptq_args": {"block_size": 0}}, ["['block_size']=0", "positive integer"]),
        ({"gptq_args": {"static_groups": 1}}, ["['static_groups']", "True or False"]),
        ({"gptq_args": {"damp": 0.1}}, ["'damp'", "'percdamp'", "'act_order'", "'block_size'"]),
        ({"gptq_args": {"act_order": True, "actorder": True}}, ["'act_order' twice"]),
        ({"gptq_args": [0.01]}, ["recipes['gptq_args'] must be a dict"]),
        ({"awq_args": {"enable_auto_scale": "on"}}, ["['enable_auto_scale']", "True or False"]),
        ({"awq_args": {"folding": None}}, ["['folding']", "True or False"]),
        ({"awq_args": {"n_blocks": 5}}, ["'n_blocks'", "'enable_mse_search'"]),
        ({"rtn_args": {"enable_mse_search": 1}}, ["['enable_mse_search']", "True or False"]),
        ({"teq_args": {"folding": True}}, ["TEQ is not implemented", "gptq_args"]),
        ({"smooth_quant": True}, ["'smooth_quant'", "activation quantization", "weight_only"]),
        ({"fast_bias_correction": True}, ["'fast_bias_correction'", "activation quantization"]),
    ],
)
def test_bad_weight_only_recipes_name_what_is_allowed(
    recipes: dict[str, Any], parts: list[str]
) -> None:
    with pytest.raises(ConfigError) as exc:
        woq(recipes=recipes)
    for part in parts:
        assert part in str(exc.value), f"{part!r} missing from: {exc.value}"


def test_inc_onnx_spellings_of_gptq_args_are_accepted() -> None:
    conf = woq(recipes={"gptq_args": {"actorder": True, "blocksize": 64, "static_groups": True}})
    assert conf.recipes["gptq_args"] == {"act_order": True, "block_size": 64, "static_groups": True}


@pytest.mark.parametrize("approach", ["static", "dynamic", "auto"])
def test_weight_only_recipes_need_the_weight_only_approach(approach: str) -> None:
    with pytest.raises(
        ConfigError, match=r"recipes\['gptq_args'\] applies to approach='weight_only'"
    ):
        PostTrainingQuantConfig(approach=approach, recipes={"gptq_args": {"percdamp": 0.1}})


def test_other_approaches_keep_their_rules() -> None:
    # static rules are unchanged: bits is not one of their fields, op_type_dict keys literal
    with pytest.raises(ConfigError, match="'bits'"):
        PostTrainingQuantConfig(op_type_dict={"MatMul": {"weight": {"bits": 4}}})
    PostTrainingQuantConfig(op_type_dict={"Conv[": {"weight": {"dtype": ["fp32"]}}})


def test_fit_says_which_plugins_have_weight_only(
    mlp: NumpyMLP, calib_loader: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    with pytest.raises(ConfigError) as exc:
        quantization.fit(mlp, woq(), calib_dataloader=calib_loader)
    message = str(exc.value)
    for part in (
        "approach='weight_only' is not available",
        "'reference'",
        "pip install inc-ort",
        "onnxrt",
        "pip install inc-torch",
        "'static'",
    ):
        assert part in message, f"{part!r} missing from: {message}"


class WeightOnlyReference(ReferenceBackend):
    name = "reference_woq"
    supports_weight_only = True


def test_support_check_names_backends_that_have_it_and_calibration_needs() -> None:
    from inc_core import backend as registry

    registry.register(WeightOnlyReference)
    try:
        with pytest.raises(ConfigError, match="installed backends that support it: reference_woq"):
            support.check_backend(ReferenceBackend(), woq(), has_calibration=True)
    finally:
        registry.unregister(WeightOnlyReference.name)
    ready = WeightOnlyReference()
    support.check_backend(ready, woq(), has_calibration=False)  # RTN needs no data
    gptq = woq(op_name_dict={"fc1": {"weight": {"algorithm": ["GPTQ", "AWQ"]}}})
    with pytest.raises(ConfigError, match="'AWQ' and 'GPTQ' reads calibration activations"):
        support.check_backend(ready, gptq, has_calibration=False)
    support.check_backend(ready, gptq, has_calibration=True)
    support.check_backend(ReferenceBackend(), PostTrainingQuantConfig(), has_calibration=False)
    assert support.rule_algorithms(PostTrainingQuantConfig(approach="weight_only")) == {"RTN"}


def test_op_choices_merge_type_rules_then_name_rules() -> None:
    from inc_core.weight_only.plan import WeightOnlyScheme, op_choices

    conf = woq(
        op_type_dict={
            ".*": {"weight": {"bits": 4, "group_size": 32, "algorithm": "GPTQ"}},
            "Gather": {"weight": {"dtype": "fp32"}},
        },
        op_name_dict={
            ".*lm_head": {"weight": {"dtype": "fp32"}},
            "layer0.fc1": {"weight": {"bits": [8, 4], "dtype": ["int", "fp32"]}},
        },
    )
    assert op_choices(conf, "layer1.fc1", "MatMul") == [WeightOnlyScheme(4, 32, "sym", "GPTQ")]
    assert op_choices(conf, "model.lm_head", "MatMul") == [None]
    assert op_choices(conf, "embed", "Gather") == [None]
    assert op_choices(conf, "layer0.fc1", "MatMul") == [
        WeightOnlyScheme(8, 32, "sym", "GPTQ"),
        WeightOnlyScheme(4, 32, "sym", "GPTQ"),
        None,
    ]
    # no rule at all: INC's defaults
    bare = PostTrainingQuantConfig(approach="weight_only")
    assert op_choices(bare, "fc", "MatMul") == [WeightOnlyScheme(4, 32, "sym", "RTN")]


def test_op_type_dict_keys_may_name_the_backends_aliases() -> None:
    from inc_core.space import OpCapability, OpInfo
    from inc_core.weight_only.plan import (
        WEIGHT_ONLY_ACTIVATION,
        build_space,
        scheme_of,
        weight_options,
    )

    ops = [OpInfo("fc1", "Linear"), OpInfo("fc2", "Linear")]
    capability = {"Linear": OpCapability(WEIGHT_ONLY_ACTIVATION, weight_options([4, 8], [32]))}
    aliases = {"MatMul": ("Linear",), "Conv": ("Conv2d",)}
    eight = woq(op_type_dict={"MatMul": {"weight": {"bits": 8}}}, op_name_dict=None)
    spaces = build_space(ops, capability, eight, aliases)
    assert [scheme_of(s.choices[0]).bits for s in spaces] == [8, 8]  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"'Gemm' matches no op type.*aliases: MatMul"):
        gemm = woq(op_type_dict={"Gemm": {"weight": {"bits": 8}}}, op_name_dict=None)
        build_space(ops, capability, gemm, aliases)
