"""PostTrainingQuantConfig / QuantizationAwareTrainingConfig: fields, validation, JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from inc_core import (
    AccuracyCriterion,
    PostTrainingQuantConfig,
    QuantizationAwareTrainingConfig,
    TuningCriterion,
)
from inc_core.config import BACKEND_DEVICES, config_from_dict
from inc_core.errors import ConfigError

# Keyword arguments of INC 2.x's neural_compressor/config.py (2.1 ... 2.6), checked against its
# source: every one must be accepted here with the same name.
INC_PTQ_KEYS = {
    "device",
    "backend",
    "domain",
    "recipes",
    "quant_format",
    "inputs",
    "outputs",
    "approach",
    "calibration_sampling_size",
    "op_type_dict",
    "op_name_dict",
    "reduce_range",
    "example_inputs",
    "excluded_precisions",
    "quant_level",
    "accuracy_criterion",
    "tuning_criterion",
    "use_distributed_tuning",
    "diagnosis",
    "ni_workload_name",
    "model_name",
}
INC_QAT_KEYS = {
    "device",
    "backend",
    "inputs",
    "outputs",
    "op_type_dict",
    "op_name_dict",
    "reduce_range",
    "model_name",
    "quant_format",
    "excluded_precisions",
    "quant_level",
    "accuracy_criterion",
    "tuning_criterion",
}


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_every_inc2_field_is_accepted():
    assert field_names(PostTrainingQuantConfig) >= INC_PTQ_KEYS
    assert field_names(QuantizationAwareTrainingConfig) >= INC_QAT_KEYS
    assert field_names(AccuracyCriterion) == {"higher_is_better", "criterion", "tolerable_loss"}
    assert field_names(TuningCriterion) == {
        "strategy",
        "timeout",
        "max_trials",
        "objective",
        "strategy_kwargs",
    }


def test_defaults_are_inc2_defaults():
    conf = PostTrainingQuantConfig()
    assert conf.approach == "auto"
    assert (conf.backend, conf.device, conf.quant_format, conf.domain) == (
        "default",
        "cpu",
        "default",
        "auto",
    )
    assert conf.calibration_sampling_size == (100,)
    assert conf.reduce_range is None
    assert conf.quant_level == "auto"
    assert conf.accuracy_criterion == AccuracyCriterion(True, "relative", 0.01)
    assert conf.tuning_criterion == TuningCriterion("basic", 0, 100, "performance", None)
    assert QuantizationAwareTrainingConfig().approach == "static"


def test_each_config_gets_its_own_criteria_and_containers():
    a, b = PostTrainingQuantConfig(), PostTrainingQuantConfig()
    assert a.accuracy_criterion is not b.accuracy_criterion
    assert a.tuning_criterion is not b.tuning_criterion
    assert a.recipes is not b.recipes
    qa, qb = QuantizationAwareTrainingConfig(), QuantizationAwareTrainingConfig()
    assert qa.accuracy_criterion is not qb.accuracy_criterion


def test_config_does_not_share_the_users_dicts():
    rules = {"fc1": {"activation": {"dtype": ["fp32"]}}}
    recipes = {"smooth_quant": True, "smooth_quant_args": {"alpha": 0.5}}
    conf = PostTrainingQuantConfig(op_name_dict=rules, recipes=recipes)
    rules["fc1"]["activation"]["dtype"].append("int8")
    recipes["smooth_quant_args"]["alpha"] = 0.9
    assert conf.op_name_dict == {"fc1": {"activation": {"dtype": ("fp32",)}}}
    assert conf.recipes["smooth_quant_args"] == {"alpha": 0.5}


def test_configs_are_frozen():
    conf = PostTrainingQuantConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        conf.approach = "static"  # type: ignore[misc]


def full_ptq() -> PostTrainingQuantConfig:
    return PostTrainingQuantConfig(
        device="gpu",
        backend="onnxrt_cuda_ep",
        inputs=[],
        outputs=(),
        approach="static",
        domain="nlp",
        quant_format="QDQ",
        calibration_sampling_size=[50],
        op_type_dict={"MatMul": {"weight": {"granularity": ["per_channel"]}}},
        op_name_dict={
            "fc.*": {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": "fp32"}},
            "layer2.0.conv1": {
                "activation": {
                    "dtype": ["uint8"],
                    "algorithm": ["minmax"],
                    "granularity": ["per_tensor"],
                    "scheme": ["sym"],
                },
                "weight": {"dtype": ["int8"], "scheme": ["sym"], "granularity": ["per_channel"]},
            },
        },
        reduce_range=True,
        recipes={
            "smooth_quant": True,
            "smooth_quant_args": {"alpha": 0.5, "folding": True},
            "graph_optimization_level": "ENABLE_BASIC",
            "optypes_to_exclude_output_quant": ("MatMul",),
            "first_conv_or_matmul_quantization": False,
        },
        excluded_precisions=["bf16"],
        quant_level=1,
        diagnosis=True,
        ni_workload_name="bert",
        model_name="bert-mini",
        use_distributed_tuning=True,
        accuracy_criterion=AccuracyCriterion(
            higher_is_better=False, criterion="absolute", tolerable_loss=0.5
        ),
        tuning_criterion=TuningCriterion(
            strategy="mse",
            timeout=30,
            max_trials=7,
            objective=["performance", "modelsize"],
            strategy_kwargs={"confidence_batches": 2},
        ),
    )


def full_qat() -> QuantizationAwareTrainingConfig:
    return QuantizationAwareTrainingConfig(
        device="cpu",
        backend="ipex",
        op_type_dict={"Linear": {"weight": {"scheme": ["sym"]}}},
        op_name_dict={"fc2": {"activation": {"dtype": ["fp32"]}}},
        reduce_range=False,
        model_name="mlp",
        quant_format="default",
        excluded_precisions=["fp16"],
        quant_level=0,
        accuracy_criterion=AccuracyCriterion(tolerable_loss=0.02),
        tuning_criterion=TuningCriterion(objective={"performance": 0.7, "modelsize": 0.3}),
    )


@pytest.mark.parametrize("make", [PostTrainingQuantConfig, QuantizationAwareTrainingConfig])
def test_default_configs_round_trip_through_json(make):
    conf = make()
    data = json.loads(json.dumps(conf.to_dict()))
    assert type(conf).from_dict(data) == conf
    assert config_from_dict(data) == conf


@pytest.mark.parametrize("make", [full_ptq, full_qat])
def test_full_configs_round_trip_through_json(make):
    conf = make()
    text = json.dumps(conf.to_dict())
    back = config_from_dict(json.loads(text))
    assert type(back) is type(conf)
    assert back == conf
    assert back.to_dict() == conf.to_dict()


def test_to_dict_names_the_type_and_drops_example_inputs():
    data = PostTrainingQuantConfig(example_inputs=[1.0, 2.0]).to_dict()
    assert data["type"] == "PostTrainingQuantConfig"
    assert data["example_inputs"] is None


def test_from_dict_rejects_the_other_configs_dict():
    data = QuantizationAwareTrainingConfig().to_dict()
    with pytest.raises(ConfigError, match="config_from_dict"):
        PostTrainingQuantConfig.from_dict(data)
    with pytest.raises(ConfigError, match=r"type='Pruning'.*PostTrainingQuantConfig"):
        config_from_dict({"type": "Pruning"})


def test_inc_long_approach_names_mean_the_short_ones():
    assert PostTrainingQuantConfig(approach="post_training_static_quant").approach == "static"
    assert PostTrainingQuantConfig(approach="post_training_dynamic_quant").approach == "dynamic"
    assert PostTrainingQuantConfig(approach="post_training_auto_quant").approach == "auto"


def check_message(exc: pytest.ExceptionInfo[ConfigError], *parts: str) -> None:
    message = str(exc.value)
    for part in parts:
        assert part in message, f"{part!r} missing from: {message}"


@pytest.mark.parametrize(
    ("kwargs", "parts"),
    [
        (
            {"approach": "statik"},
            ["approach", "'statik'", "'auto'", "'static'", "'dynamic'", "did you mean 'static'"],
        ),
        (
            {"backend": "onnxrt_tensorrt"},
            ["backend", "'onnxrt_tensorrt'", "'default'", "'onnxrt_cuda_ep'", "did you mean"],
        ),
        (
            {"op_name_dict": {"fc1": {"activation": {"dtype": ["int7"]}}}},
            ["op_name_dict['fc1']['activation']['dtype']", "'int7'", "'uint8'", "'int8'?"],
        ),
        (
            {"op_type_dict": {"Conv": {"weight": {"granularity": ["per_row"]}}}},
            ["op_type_dict['Conv']['weight']['granularity']", "'per_row'", "'per_channel'", "mean"],
        ),
        (
            {"op_type_dict": {"Conv": {"weights": {"dtype": ["fp32"]}}}},
            ["tensor", "'weights'", "'activation'", "did you mean 'weight'"],
        ),
        (
            {"op_type_dict": {"Conv": {"weight": {"dtyp": ["fp32"]}}}},
            ["key", "'dtyp'", "'granularity'", "did you mean 'dtype'"],
        ),
        ({"quant_format": "qdq"}, ["quant_format", "'qdq'", "'QOperator'", "did you mean 'QDQ'"]),
        ({"device": "cuda"}, ["device", "'cuda'", "'gpu'", "'xpu'"]),
        ({"domain": "nlpp"}, ["domain", "'nlpp'", "did you mean 'nlp'"]),
        ({"quant_level": 2}, ["quant_level", "2", "'auto'", "0", "1"]),
        ({"excluded_precisions": ["int8"]}, ["excluded_precisions", "'int8'", "'bf16'"]),
        ({"recipes": {"smoth_quant": True}}, ["recipes key", "did you mean 'smooth_quant'"]),
        (
            {"recipes": {"graph_optimization_level": "ENABLE_MOST"}},
            ["graph_optimization_level", "'ENABLE_MOST'", "'ENABLE_ALL'"],
        ),
        ({"recipes": {"smooth_quant_args": {"alpha": 1.5}}}, ["alpha", "1.5", "[0, 1]"]),
        ({"recipes": {"smooth_quant_args": {"beta": 1}}}, ["smooth_quant_args", "'beta'"]),
    ],
)
def test_bad_values_name_the_key_the_value_and_the_allowed_values(kwargs, parts):
    with pytest.raises(ValueError) as exc:
        PostTrainingQuantConfig(**kwargs)
    assert isinstance(exc.value, ConfigError)
    check_message(exc, *parts)


@pytest.mark.parametrize(
    ("kwargs", "parts"),
    [
        ({"reduce_range": "yes"}, ["reduce_range", "'yes'", "True, False or None"]),
        ({"calibration_sampling_size": "100"}, ["calibration_sampling_size", "'100'"]),
        ({"calibration_sampling_size": [0]}, ["calibration_sampling_size", "0", ">= 1"]),
        ({"calibration_sampling_size": [True]}, ["calibration_sampling_size"]),
        ({"inputs": "input_ids"}, ["inputs", "list of tensor names", "'input_ids'"]),
        ({"outputs": [1]}, ["outputs", "strings"]),
        # INC 2.x's TensorFlow-graph-only keys: inc would ignore them, so it refuses them
        ({"inputs": ["input"]}, ["inputs=['input']", "not used", "allowed: []"]),
        ({"outputs": ("logits",)}, ["outputs=['logits']", "not used", "allowed: []"]),
        # INC 2.x tuned over several sample counts; inc calibrates on one
        (
            {"calibration_sampling_size": [50, 100]},
            ["calibration_sampling_size=[50, 100]", "2 sizes", "calibration_sampling_size=100"],
        ),
        ({"op_name_dict": ["fc1"]}, ["op_name_dict", "dict", "list"]),
        ({"op_name_dict": {"fc1": "fp32"}}, ["op_name_dict['fc1']", "'activation'", "'fp32'"]),
        ({"op_name_dict": {"fc1": {"activation": {"dtype": []}}}}, ["empty"]),
        ({"op_name_dict": {3: {}}}, ["op_name_dict key", "string"]),
        ({"recipes": {"smooth_quant": "yes"}}, ["recipes['smooth_quant']", "True or False"]),
        ({"recipes": ["smooth_quant"]}, ["recipes", "a dict"]),
        ({"recipes": {"optypes_to_exclude_output_quant": "MatMul"}}, ["list of op type"]),
        ({"diagnosis": 1}, ["diagnosis", "True or False"]),
        ({"use_distributed_tuning": "no"}, ["use_distributed_tuning"]),
        ({"model_name": 7}, ["model_name", "string"]),
        (
            {"accuracy_criterion": {"tolerable_loss": 0.1}},
            ["accuracy_criterion", "AccuracyCriterion"],
        ),
        ({"tuning_criterion": "basic"}, ["tuning_criterion", "TuningCriterion"]),
    ],
)
def test_wrong_types_are_config_errors(kwargs, parts):
    with pytest.raises(ConfigError) as exc:
        PostTrainingQuantConfig(**kwargs)
    check_message(exc, *parts)


def test_unknown_keys_name_the_key_the_allowed_keys_and_the_closest():
    with pytest.raises(ConfigError) as exc:
        PostTrainingQuantConfig(aproach="static")
    check_message(exc, "'aproach'", "allowed keys", "calibration_sampling_size", "'approach'")
    with pytest.raises(ConfigError, match=r"unknown key 'calibration_sampling_size'"):
        QuantizationAwareTrainingConfig(calibration_sampling_size=[10])
    with pytest.raises(ConfigError, match=r"'tolerable'.*did you mean 'tolerable_loss'"):
        AccuracyCriterion(tolerable=0.1)
    with pytest.raises(ConfigError, match=r"'trials'.*did you mean 'max_trials'"):
        TuningCriterion(trials=3)


def test_invalid_regex_key_is_an_error_that_says_how_to_escape():
    with pytest.raises(ConfigError) as exc:
        PostTrainingQuantConfig(op_name_dict={"layer[0": {"weight": {"dtype": ["fp32"]}}})
    check_message(exc, "op_name_dict['layer[0']", "regular expression", "re.escape")
    # op_type_dict keys are names, not patterns
    PostTrainingQuantConfig(op_type_dict={"Conv[": {"weight": {"dtype": ["fp32"]}}})


@pytest.mark.parametrize(
    ("kwargs", "parts"),
    [
        ({"criterion": "relativ"}, ["criterion", "'relativ'", "'absolute'", "'relative'?"]),
        ({"tolerable_loss": -0.1}, ["tolerable_loss", "-0.1"]),
        ({"tolerable_loss": 1.5}, ["tolerable_loss", "1.5", "1 (exclusive)"]),
        ({"tolerable_loss": float("nan")}, ["tolerable_loss", "finite"]),
        ({"tolerable_loss": "0.01"}, ["tolerable_loss", "number", "'0.01'"]),
        ({"higher_is_better": "yes"}, ["higher_is_better", "True or False"]),
    ],
)
def test_accuracy_criterion_validation(kwargs, parts):
    with pytest.raises(ConfigError) as exc:
        AccuracyCriterion(**kwargs)
    check_message(exc, *parts)


def test_absolute_criterion_allows_losses_above_one():
    assert AccuracyCriterion(criterion="absolute", tolerable_loss=2.5).tolerable_loss == 2.5


@pytest.mark.parametrize(
    ("kwargs", "parts"),
    [
        ({"strategy": "basik"}, ["strategy", "'basik'", "'exhaustive'", "did you mean 'basic'"]),
        ({"timeout": -1}, ["timeout", ">= 0"]),
        ({"timeout": "10"}, ["timeout", "seconds"]),
        ({"max_trials": 0}, ["max_trials", ">= 1"]),
        ({"max_trials": 2.5}, ["max_trials", "integer"]),
        ({"objective": "speed"}, ["objective", "'speed'", "'performance'"]),
        ({"objective": {"objective": ["performance"], "weight": [0.5, 0.5]}}, ["one weight"]),
        ({"objective": {"objective": "performance", "weights": [1]}}, ["'weights'", "'weight'"]),
        ({"strategy_kwargs": [1]}, ["strategy_kwargs", "dict"]),
    ],
)
def test_tuning_criterion_validation(kwargs, parts):
    with pytest.raises(ConfigError) as exc:
        TuningCriterion(**kwargs)
    check_message(exc, *parts)


def test_objective_forms_give_weights():
    assert TuningCriterion().objective_weights() == {"performance": 1.0}
    assert TuningCriterion(objective=["accuracy", "modelsize"]).objective_weights() == {
        "accuracy": 0.5,
        "modelsize": 0.5,
    }
    inc_form = {"objective": ["performance", "modelsize"], "weight": [0.8, 0.2]}
    assert TuningCriterion(objective=inc_form).objective_weights() == {
        "performance": 0.8,
        "modelsize": 0.2,
    }


def test_accuracy_criterion_loss_arithmetic():
    relative = AccuracyCriterion(tolerable_loss=0.01)
    assert relative.loss(0.80, 0.792) == pytest.approx(0.01)
    assert relative.is_met(0.80, 0.792)
    assert not relative.is_met(0.80, 0.79)
    absolute = AccuracyCriterion(criterion="absolute", tolerable_loss=0.02, higher_is_better=False)
    assert absolute.loss(1.00, 1.03) == pytest.approx(0.03)  # a loss metric went up
    assert not absolute.is_met(1.00, 1.03)
    assert absolute.is_met(1.00, 0.50)


# The spec's "Specify Quantization Backend and Device" table.
SPEC_TABLE = {
    "default": {"cpu"},
    "ipex": {"cpu", "xpu"},
    "onnxrt_trt_ep": {"gpu"},
    "onnxrt_cuda_ep": {"gpu"},
    "onnxrt_dnnl_ep": {"cpu"},
    "onnxrt_dml_ep": {"npu"},
    "itex": {"cpu", "gpu"},
}


def test_backend_device_table_is_the_specs():
    assert {k: set(v) for k, v in BACKEND_DEVICES.items()} == SPEC_TABLE


@pytest.mark.parametrize(
    ("backend", "device"), [(b, d) for b, ds in sorted(SPEC_TABLE.items()) for d in sorted(ds)]
)
def test_every_backend_device_pair_of_the_spec_is_accepted(backend, device):
    for make in (PostTrainingQuantConfig, QuantizationAwareTrainingConfig):
        conf = make(backend=backend, device=device)
        assert (conf.backend, conf.device) == (backend, device)


@pytest.mark.parametrize(
    ("backend", "device"),
    [("default", "gpu"), ("ipex", "gpu"), ("onnxrt_cuda_ep", "cpu"), ("onnxrt_dml_ep", "gpu")],
)
def test_a_device_the_backend_lacks_is_an_error_listing_its_devices(backend, device):
    with pytest.raises(ConfigError) as exc:
        PostTrainingQuantConfig(backend=backend, device=device)
    check_message(exc, f"device={device!r}", f"backend={backend!r}")
    for allowed in SPEC_TABLE[backend]:
        assert repr(allowed) in str(exc.value)


def test_op_name_dict_keys_match_literally_and_as_full_regex():
    from inc_core.rules import name_matches

    assert name_matches("layer1.0.conv1", "layer1.0.conv1")
    assert name_matches("layer1\\..*", "layer1.0.conv1")
    assert name_matches("fc[12]", "fc2")
    assert not name_matches("fc", "fc1")  # full match, not search
    assert not name_matches("conv1", "layer1.0.conv1")
    assert name_matches("a+(b", "a+(b")  # not a regex at all, but literally the name
    assert re.fullmatch("fc.*", "fc1")


def test_to_dict_survives_values_json_cannot_hold():
    def my_loss(output: object) -> float:
        return 0.0

    conf = PostTrainingQuantConfig(
        tuning_criterion=TuningCriterion(strategy_kwargs={"hawq_v2_loss": my_loss})
    )
    data = json.loads(json.dumps(conf.to_dict()))
    assert "my_loss" in data["tuning_criterion"]["strategy_kwargs"]["hawq_v2_loss"]


def test_qat_config_rejects_post_training_keys():
    for key, value in (("approach", "static"), ("recipes", {}), ("domain", "nlp")):
        with pytest.raises(ConfigError, match=f"unknown key {key!r}"):
            QuantizationAwareTrainingConfig(**{key: value})


def test_config_strategies_are_the_implemented_ones():
    from inc_core.config import STRATEGIES
    from inc_core.strategy import STRATEGIES as IMPLEMENTED

    assert set(STRATEGIES) == set(IMPLEMENTED)


@pytest.mark.parametrize("name", ["sigopt", "tpe", "hawq_v2"])
def test_inc_strategies_left_out_say_why(name):
    with pytest.raises(ConfigError, match=rf"strategy='{name}' is an INC 2.x strategy.*allowed: "):
        TuningCriterion(strategy=name)
