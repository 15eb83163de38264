"""User-facing configuration, validated at construction.

Every class is a frozen dataclass whose fields are the names INC 2.x users already write.
A wrong key, type or value raises ``ConfigError`` (a ``ValueError``) that names the key, the bad
value and the allowed values, with the closest spelling when there is one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import backend as registry
from . import first_party
from .errors import ConfigError, closest, not_allowed
from .scheme import GRANULARITIES, SCHEMES
from .space import ALGORITHMS, ALL_DTYPES
from .strategy import registry as strategy_registry
from .weight_only import options as woq

APPROACHES = ("auto", "static", "dynamic", "weight_only")
# INC 2.x also accepts its internal approach names; they mean the short ones.
APPROACH_ALIASES = {
    "post_training_static_quant": "static",
    "post_training_dynamic_quant": "dynamic",
    "post_training_auto_quant": "auto",
    "post_training_weight_only": "weight_only",
}
QUANT_FORMATS = ("default", "QDQ", "QOperator")
DOMAINS = ("auto", "cv", "object_detection", "nlp", "recommendation_system")
QUANT_LEVELS = ("auto", 0, 1)
EXCLUDABLE_PRECISIONS = ("bf16", "fp16")
#: inc's own strategies, named by their classes; installed ones are found in the registry
STRATEGIES: tuple[str, ...] = strategy_registry.BUILTIN_NAMES
# INC 2.x strategies left out, and why (said in the error instead of a bare "not allowed").
UNSUPPORTED_STRATEGIES = {
    "sigopt": "it needs a SigOpt account and network access",
    "tpe": "it needs the hyperopt package; use 'bayesian' for a model-based search",
    "hawq_v2": "it needs second-order gradients from a PyTorch loss; use 'mse_v2' or 'sensitivity'",
}
OBJECTIVES = ("performance", "accuracy", "modelsize", "footprint")
GRAPH_OPTIMIZATION_LEVELS = ("DISABLE_ALL", "ENABLE_BASIC", "ENABLE_EXTENDED", "ENABLE_ALL")

#: The spec's "Specify Quantization Backend and Device" table (backend value -> devices) for
#: inc's own plugins, installed or not; an installed plugin adds its own config backends and
#: devices (``Backend.devices``), read only for a name this table lacks.
BACKEND_DEVICES: dict[str, tuple[str, ...]] = first_party.BACKEND_DEVICES
DEVICES: tuple[str, ...] = first_party.DEVICES

RULE_TENSORS = ("activation", "weight")
RULE_FIELDS: dict[str, tuple[str, ...]] = {
    "dtype": ALL_DTYPES,
    "scheme": SCHEMES,
    "granularity": GRANULARITIES,
    "algorithm": ALGORITHMS,
}

# recipe name -> check of its value (raises ConfigError) ; the spec's recipe table.
_BOOL_RECIPES = (
    "smooth_quant",
    "fast_bias_correction",
    "weight_correction",
    "first_conv_or_matmul_quantization",
    "last_conv_or_matmul_quantization",
    "pre_post_process_quantization",
    "gemm_to_matmul",
    "add_qdq_pair_to_weight",
    "dedicated_qdq_pair",
)
RECIPES = (
    *_BOOL_RECIPES,
    "smooth_quant_args",
    "graph_optimization_level",
    "optypes_to_exclude_output_quant",
    *woq.RECIPE_ARGS,
    *woq.UNIMPLEMENTED_RECIPES,
)
# recipes about activation quantization: meaningless when only weights are quantized
_ACTIVATION_RECIPES = (
    "smooth_quant",
    "smooth_quant_args",
    "fast_bias_correction",
    "weight_correction",
    "add_qdq_pair_to_weight",
    "dedicated_qdq_pair",
    "optypes_to_exclude_output_quant",
)
SMOOTH_QUANT_ARGS = ("alpha", "folding", "op_types", "scale_sharing", "auto_alpha_args")

OpRules = dict[str, dict[str, dict[str, tuple[str, ...]]]]
"""op name or type -> tensor ("activation"/"weight") -> field -> allowed values in order."""


def _check_choice(key: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise not_allowed(key, value, allowed)


def _check_backend_device(backend: Any, device: Any) -> None:
    """``backend`` and ``device`` against inc's own table; a pair it lacks is looked up in the
    installed plugins' tables (loading them), so configuring scans no plugin in the usual case."""
    table = BACKEND_DEVICES
    if not isinstance(backend, str) or device not in table.get(backend, ()):
        table = registry.config_devices()
    _check_choice("backend", backend, tuple(table))
    _check_choice("device", device, tuple(dict.fromkeys(d for ds in table.values() for d in ds)))
    if device not in table[backend]:
        allowed = ", ".join(repr(d) for d in table[backend])
        raise ConfigError(
            f"device={device!r} is not supported by backend={backend!r}; allowed: {allowed}"
        )


def _check_type(key: str, value: Any, types: type | tuple[type, ...], described: str) -> None:
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise ConfigError(f"{key} must be {described}, got {type(value).__name__} {value!r}")


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _strict_init(cls: type) -> type:
    """Make unknown keyword arguments a ``ConfigError`` that names the key and the allowed ones."""
    init = cls.__init__  # type: ignore[misc]
    names = [f.name for f in dataclasses.fields(cls)]

    @functools.wraps(init)
    def checked_init(self: Any, *args: Any, **kwargs: Any) -> None:
        for key in kwargs:
            if key not in names:
                hint = closest(key, names)
                suggestion = f"; did you mean {hint!r}?" if hint else ""
                raise ConfigError(
                    f"{cls.__name__} got an unknown key {key!r}; allowed keys: {', '.join(names)}"
                    f"{suggestion}"
                )
        init(self, *args, **kwargs)

    cls.__init__ = checked_init  # type: ignore[misc]
    return cls


def _normalize_rules(
    which: str, rules: Mapping[str, Any] | None, regex_keys: bool, weight_only: bool = False
) -> OpRules:
    if weight_only:
        return _normalize_weight_only_rules(which, rules)
    if rules is None:
        return {}
    _check_type(which, rules, Mapping, "a dict of op -> {'activation': {...}, 'weight': {...}}")
    normalized: OpRules = {}
    for op_key, tensors in rules.items():
        where = f"{which}[{op_key!r}]"
        _check_type(f"{which} key", op_key, str, "a string")
        if regex_keys:
            try:
                re.compile(op_key)
            except re.error as exc:
                raise ConfigError(
                    f"{where}: {op_key!r} is not a valid regular expression ({exc}); keys match "
                    "op names literally or as a full-match regex: escape special characters "
                    "with re.escape(name)"
                ) from exc
        _check_type(where, tensors, Mapping, "a dict with keys 'activation' and/or 'weight'")
        normalized[op_key] = {}
        for tensor, fields in tensors.items():
            _check_choice(f"{where} tensor", tensor, RULE_TENSORS)
            _check_type(
                f"{where}[{tensor!r}]",
                fields,
                Mapping,
                "a dict of dtype/scheme/granularity/algorithm",
            )
            normalized[op_key][tensor] = {}
            for name, values in fields.items():
                _check_choice(f"{where}[{tensor!r}] key", name, tuple(RULE_FIELDS))
                listed = [values] if isinstance(values, str) else values
                _check_type(
                    f"{where}[{tensor!r}][{name!r}]",
                    listed,
                    (list, tuple),
                    "a string or list of strings",
                )
                if not listed:
                    raise ConfigError(
                        f"{where}[{tensor!r}][{name!r}] is empty; give at least one value"
                    )
                for value in listed:
                    _check_choice(f"{where}[{tensor!r}][{name!r}]", value, RULE_FIELDS[name])
                normalized[op_key][tensor][name] = tuple(listed)
    return normalized


def _check_recipes(recipes: Mapping[str, Any] | None, approach: str = "auto") -> dict[str, Any]:
    if recipes is None:
        return {}
    _check_type("recipes", recipes, Mapping, "a dict")
    for name, value in recipes.items():
        _check_choice("recipes key", name, RECIPES)
        key = f"recipes[{name!r}]"
        if name in woq.UNIMPLEMENTED_RECIPES:
            raise ConfigError(
                f"{key}: {woq.UNIMPLEMENTED_RECIPES[name]}; weight-only recipes inc has: "
                f"{', '.join(woq.RECIPE_ARGS)}"
            )
        if name in woq.RECIPE_ARGS and approach != "weight_only":
            raise ConfigError(
                f"{key} applies to approach='weight_only' only (approach={approach!r} would "
                "ignore it); set approach='weight_only' or remove it"
            )
        if name in _ACTIVATION_RECIPES and approach == "weight_only":
            raise ConfigError(
                f"{key} concerns activation quantization, which approach='weight_only' does "
                f"not do; remove it (weight-only recipes: {', '.join(woq.RECIPE_ARGS)})"
            )
        if name in woq.RECIPE_ARGS:
            continue  # checked and normalised below
        if name in _BOOL_RECIPES:
            _check_type(key, value, bool, "True or False")
        elif name == "graph_optimization_level":
            _check_choice(key, value, GRAPH_OPTIMIZATION_LEVELS)
        elif name == "optypes_to_exclude_output_quant":
            _check_type(key, value, (list, tuple), "a list of op type names")
            for item in value:
                _check_type(key, item, str, "a list of op type names")
        elif name == "smooth_quant_args":
            _check_type(key, value, Mapping, "a dict such as {'alpha': 0.5}")
            for arg, arg_value in value.items():
                _check_choice(f"{key} key", arg, SMOOTH_QUANT_ARGS)
                if arg == "alpha":
                    _check_alpha(f"{key}['alpha']", arg_value)
    # A private, JSON-shaped copy: the user's dicts are not shared and to_dict round-trips.
    checked = _json_shaped(recipes)
    for name in woq.RECIPE_ARGS:
        if name in checked:
            checked[name] = _weight_only_args(name, recipes[name])
    return checked


def _check_alpha(key: str, alpha: Any) -> None:
    if alpha == "auto":
        return
    values = alpha if isinstance(alpha, (list, tuple)) else [alpha]
    for value in values:
        _check_type(key, value, (int, float), "a float in [0, 1], a list of them, or 'auto'")
        if not 0.0 <= float(value) <= 1.0:  # also rejects NaN
            raise ConfigError(f"{key}={value!r} is outside [0, 1]")


# -- weight-only (approach="weight_only"): INC 2.x's weight rules and recipe arguments --------


def _normalize_weight_only_rules(which: str, rules: Mapping[str, Any] | None) -> OpRules:
    """``{pattern: {"weight": {field: values}}}`` with each field's values as a tuple."""
    if rules is None:
        return {}
    _check_type(which, rules, Mapping, "a dict of op -> {'weight': {'bits': 4, ...}}")
    normalized: OpRules = {}
    for op_key, tensors in rules.items():
        where = f"{which}[{op_key!r}]"
        _check_type(f"{which} key", op_key, str, "a string")
        try:
            re.compile(op_key)
        except re.error as exc:
            raise ConfigError(
                f"{where}: {op_key!r} is not a valid regular expression ({exc}); with "
                "approach='weight_only' keys are full-match patterns such as '.*'"
            ) from exc
        _check_type(where, tensors, Mapping, "a dict with the key 'weight'")
        normalized[op_key] = {}
        for tensor, fields in tensors.items():
            if tensor == "activation":
                raise ConfigError(
                    f"{where}['activation']: approach='weight_only' quantizes weights only "
                    "(activations stay in float); allowed tensor: 'weight'"
                )
            _check_choice(f"{where} tensor", tensor, ("weight",))
            _check_type(
                f"{where}['weight']", fields, Mapping, "a dict of " + "/".join(woq.RULE_DEFAULTS)
            )
            normalized[op_key][tensor] = {
                name: _weight_only_values(f"{where}['weight'][{name!r}]", name, values)
                for name, values in fields.items()
            }
    return normalized


def _weight_only_values(key: str, name: Any, values: Any) -> tuple[Any, ...]:
    """One weight-rule field's values (a value or a list of them to tune over), checked."""
    _check_choice(f"{key.rsplit('[', 1)[0]} key", name, tuple(woq.RULE_DEFAULTS))
    listed = list(values) if isinstance(values, (list, tuple)) else [values]
    if not listed:
        raise ConfigError(f"{key} is empty; give a value or a list of values")
    checked = [_weight_only_value(key, name, value) for value in listed]
    return tuple(dict.fromkeys(checked))


def _weight_only_value(key: str, name: str, value: Any) -> Any:
    if name == "bits":
        if isinstance(value, bool) or value not in woq.BITS:
            raise ConfigError(
                f"{key}={value!r} is not allowed; allowed: integers {woq.BITS[0]} to "
                f"{woq.BITS[-1]} (4 and 8 are the fast kernel paths)"
            )
        return int(value)
    if name == "group_size":
        _check_type(key, value, int, "-1 (per output channel) or a positive integer")
        if value != -1 and value < 1:
            raise ConfigError(
                f"{key}={value!r} is not allowed; allowed: -1 (one group per output channel) "
                "or a positive integer such as 32, 64, 128"
            )
        return value
    _check_type(key, value, str, "a string")
    if name == "algorithm":
        value = value.upper()
        if value in woq.UNIMPLEMENTED_ALGORITHMS:
            raise ConfigError(
                f"{key}={value!r} is not implemented in inc: {woq.UNIMPLEMENTED_ALGORITHMS[value]}; "
                f"allowed: {', '.join(map(repr, woq.ALGORITHMS))}"
            )
        _check_choice(key, value, woq.ALGORITHMS)
    elif name == "dtype":
        value = value.lower()
        if value in woq.UNIMPLEMENTED_DTYPES:
            raise ConfigError(
                f"{key}={value!r} is not implemented in inc ({woq.UNIMPLEMENTED_DTYPES[value]}); "
                f"allowed: {', '.join(map(repr, woq.DTYPES))}"
            )
        if re.fullmatch(r"u?int\d+", value):
            raise ConfigError(
                f"{key}={value!r}: weight-only rules give the width in 'bits'; use "
                f"{{'dtype': 'int', 'bits': {value.lstrip('uint') or 4}}} (allowed dtypes: "
                f"{', '.join(map(repr, woq.DTYPES))})"
            )
        _check_choice(key, value, woq.DTYPES)
    else:
        _check_choice(key, value, woq.SCHEMES)
    return value


def _weight_only_args(recipe: str, args: Any) -> dict[str, Any]:
    """``gptq_args``/``awq_args``/``rtn_args`` checked, INC 2.x's alias spellings renamed."""
    key = f"recipes[{recipe!r}]"
    defaults = woq.RECIPE_ARGS[recipe]
    aliases = woq.ARG_ALIASES.get(recipe, {})
    _check_type(key, args, Mapping, "a dict such as " + repr(dict(list(defaults.items())[:2])))
    checked: dict[str, Any] = {}
    for raw_name, value in args.items():
        _check_choice(f"{key} key", raw_name, (*defaults, *aliases))
        name = aliases.get(raw_name, raw_name)
        if name in checked:
            raise ConfigError(
                f"{key} gives {name!r} twice (as {name!r} and its INC 2.x alias); keep one"
            )
        arg_key = f"{key}[{raw_name!r}]"
        default = defaults[name]
        if isinstance(default, bool):
            _check_type(arg_key, value, bool, "True or False")
        elif isinstance(default, int):
            _check_type(arg_key, value, int, "a positive integer")
            if value < 1:
                raise ConfigError(f"{arg_key}={value!r} must be a positive integer")
        else:  # percdamp
            _check_type(arg_key, value, (int, float), "a number in (0, 1]")
            if not 0.0 < float(value) <= 1.0:  # also rejects NaN
                raise ConfigError(
                    f"{arg_key}={value!r} is outside (0, 1]; INC's default is {default}"
                )
        checked[name] = value
    return checked


@_strict_init
@dataclass(frozen=True)
class AccuracyCriterion:
    """How much accuracy the quantized model may lose against the fp32 baseline."""

    higher_is_better: bool = True
    criterion: str = "relative"
    tolerable_loss: float = 0.01

    def __post_init__(self) -> None:
        _check_type("higher_is_better", self.higher_is_better, bool, "True or False")
        _check_choice("criterion", self.criterion, ("relative", "absolute"))
        _check_type("tolerable_loss", self.tolerable_loss, (int, float), "a number")
        if not math.isfinite(self.tolerable_loss):
            raise ConfigError(f"tolerable_loss={self.tolerable_loss!r} must be a finite number")
        if self.tolerable_loss < 0 or (self.criterion == "relative" and self.tolerable_loss >= 1):
            upper = "1 (exclusive)" if self.criterion == "relative" else "any positive number"
            raise ConfigError(
                f"tolerable_loss={self.tolerable_loss!r} must be between 0 and {upper}"
            )

    def loss(self, baseline: float, accuracy: float) -> float:
        """How much worse ``accuracy`` is than ``baseline``, in this criterion's unit (<0 is a gain)."""
        drop = baseline - accuracy if self.higher_is_better else accuracy - baseline
        if self.criterion == "absolute":
            return drop
        return drop / abs(baseline) if baseline != 0 else drop

    def is_met(self, baseline: float, accuracy: float) -> bool:
        return self.loss(baseline, accuracy) <= self.tolerable_loss + 1e-12


@_strict_init
@dataclass(frozen=True)
class TuningCriterion:
    """Which strategy searches, and when it stops."""

    strategy: str = "basic"
    timeout: float = 0
    max_trials: int = 100
    objective: str | tuple[str, ...] | Mapping[str, float] = "performance"
    strategy_kwargs: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.strategy in UNSUPPORTED_STRATEGIES:
            raise ConfigError(
                f"strategy={self.strategy!r} is an INC 2.x strategy inc does not provide "
                f"({UNSUPPORTED_STRATEGIES[self.strategy]}); allowed: {', '.join(STRATEGIES)}"
            )
        if not isinstance(self.strategy, str):
            raise not_allowed("strategy", self.strategy, STRATEGIES)
        strategy_registry.get(self.strategy)  # inc's own or an installed one
        _check_type(
            "timeout",
            self.timeout,
            (int, float),
            "a number of seconds (0 = stop at the first pass)",
        )
        if not self.timeout >= 0:  # also rejects NaN
            raise ConfigError(f"timeout={self.timeout!r} must be >= 0")
        _check_type("max_trials", self.max_trials, int, "a positive integer")
        if self.max_trials < 1:
            raise ConfigError(f"max_trials={self.max_trials!r} must be >= 1")
        objective: Any = self.objective  # users pass lists too (INC 2.x's documented form)
        if isinstance(objective, list):
            object.__setattr__(self, "objective", tuple(objective))
        elif isinstance(objective, Mapping):
            object.__setattr__(self, "objective", _json_shaped(objective))
        objectives = self.objective_weights()
        if not objectives:
            raise ConfigError(
                f"objective={self.objective!r} names no objective; allowed: {', '.join(OBJECTIVES)}"
            )
        for name, weight in objectives.items():
            _check_choice("objective", name, OBJECTIVES)
            _check_type(f"objective weight of {name!r}", weight, (int, float), "a number")
        if self.strategy_kwargs is not None:
            _check_type("strategy_kwargs", self.strategy_kwargs, Mapping, "a dict")

    def objective_weights(self) -> dict[str, float]:
        """The objective as {name: weight}; a single name weighs 1."""
        if isinstance(self.objective, str):
            return {self.objective: 1.0}
        if isinstance(self.objective, Mapping) and "objective" in self.objective:
            return _inc_objective_weights(self.objective)
        if isinstance(self.objective, Mapping):
            return {str(k): v for k, v in self.objective.items()}
        if isinstance(self.objective, (list, tuple)):
            return {str(name): 1.0 / len(self.objective) for name in self.objective}
        raise ConfigError(
            f"objective must be a name, a list of names or a dict of weights, got {self.objective!r}; "
            f"allowed names: {', '.join(OBJECTIVES)}"
        )


def _inc_objective_weights(objective: Mapping[str, Any]) -> dict[str, float]:
    """INC 2.x's dict form: ``{"objective": [names], "weight": [numbers], "higher_is_better": ...}``."""
    for key in objective:
        _check_choice("objective key", key, ("objective", "weight", "higher_is_better"))
    names = objective["objective"]
    names = [names] if isinstance(names, str) else names
    _check_type("objective['objective']", names, (list, tuple), "a name or a list of names")
    weights = objective.get("weight")
    if weights is None:
        weights = [1.0 / len(names)] * len(names) if names else []
    _check_type("objective['weight']", weights, (list, tuple), "a list of numbers")
    if len(weights) != len(names):
        raise ConfigError(
            f"objective['weight'] has {len(weights)} entries but objective['objective'] has "
            f"{len(names)}; give one weight per objective"
        )
    return {str(name): weight for name, weight in zip(names, weights, strict=True)}


@dataclass(frozen=True)
class _QuantConfig:
    """Fields shared by post-training and quantization-aware configs."""

    device: str = "cpu"
    backend: str = "default"
    inputs: Sequence[str] = ()
    outputs: Sequence[str] = ()
    op_type_dict: Mapping[str, Any] | None = None
    op_name_dict: Mapping[str, Any] | None = None
    reduce_range: bool | None = None
    quant_format: str = "default"
    excluded_precisions: Sequence[str] = ()
    quant_level: str | int = "auto"
    accuracy_criterion: AccuracyCriterion = field(default_factory=AccuracyCriterion)
    tuning_criterion: TuningCriterion = field(default_factory=TuningCriterion)

    def __post_init__(self) -> None:
        _check_backend_device(self.backend, self.device)
        for key in ("inputs", "outputs"):
            value = getattr(self, key)
            _check_type(key, value, (list, tuple), "a list of tensor names")
            for name in value:
                _check_type(key, name, str, "a list of tensor names (strings)")
            if value:
                # INC 2.x read these for TensorFlow graph (.pb) models only; every model inc
                # takes names its own inputs and outputs, so a value here would be ignored
                raise ConfigError(
                    f"{key}={list(value)!r} is not used by inc: INC 2.x needed it only for "
                    "TensorFlow graph (.pb) models, and every model inc quantizes (Keras, "
                    "ONNX, PyTorch, MXNet) names its own inputs and outputs; leave "
                    f"{key} empty (allowed: [])"
                )
            object.__setattr__(self, key, tuple(value))
        if self.reduce_range is not None:
            _check_type("reduce_range", self.reduce_range, bool, "True, False or None (auto)")
        _check_choice("quant_format", self.quant_format, QUANT_FORMATS)
        _check_type("excluded_precisions", self.excluded_precisions, (list, tuple), "a list")
        for precision in self.excluded_precisions:
            _check_choice("excluded_precisions", precision, EXCLUDABLE_PRECISIONS)
        object.__setattr__(self, "excluded_precisions", tuple(self.excluded_precisions))
        if isinstance(self.quant_level, bool) or self.quant_level not in QUANT_LEVELS:
            raise not_allowed("quant_level", self.quant_level, QUANT_LEVELS)
        # weight-only rules have their own fields (bits, group_size, ...), and their
        # op_type_dict keys are patterns as in INC 2.x ({".*": {"weight": {...}}})
        approach = getattr(self, "approach", None)
        weight_only = isinstance(approach, str) and (
            APPROACH_ALIASES.get(approach, approach) == "weight_only"
        )
        object.__setattr__(
            self,
            "op_type_dict",
            _normalize_rules("op_type_dict", self.op_type_dict, weight_only, weight_only),
        )
        object.__setattr__(
            self,
            "op_name_dict",
            _normalize_rules("op_name_dict", self.op_name_dict, True, weight_only),
        )
        _check_type(
            "accuracy_criterion", self.accuracy_criterion, AccuracyCriterion, "an AccuracyCriterion"
        )
        _check_type("tuning_criterion", self.tuning_criterion, TuningCriterion, "a TuningCriterion")

    @property
    def effective_strategy(self) -> str:
        """The strategy that runs: INC 2.x semantics of ``quant_level`` with ``strategy``."""
        if self.quant_level == 0:
            return "conservative"
        if self.quant_level == "auto" and self.tuning_criterion.strategy == "basic":
            return "auto"
        return self.tuning_criterion.strategy

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``from_dict`` gives an equal config back."""
        data: dict[str, Any] = {"type": type(self).__name__}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (AccuracyCriterion, TuningCriterion)):
                value = dataclasses.asdict(value)
            elif f.name == "example_inputs":
                value = None  # arrays or tensors do not belong in a JSON config
            data[f.name] = json.loads(json.dumps(value, default=_jsonable))
        return data

    @classmethod
    def from_dict(cls: type[_C], data: Mapping[str, Any]) -> _C:
        """The config ``to_dict`` described (also after a trip through JSON)."""
        _check_type(f"{cls.__name__}.from_dict data", data, Mapping, "a dict from to_dict()")
        kind = data.get("type", cls.__name__)
        if kind != cls.__name__:
            raise ConfigError(
                f"{cls.__name__}.from_dict got a dict of type {kind!r}; "
                "use inc_core.config.config_from_dict to rebuild either config"
            )
        values = {k: v for k, v in data.items() if k != "type"}
        if isinstance(values.get("accuracy_criterion"), Mapping):
            values["accuracy_criterion"] = AccuracyCriterion(**values["accuracy_criterion"])
        if isinstance(values.get("tuning_criterion"), Mapping):
            tuning = dict(values["tuning_criterion"])
            if isinstance(tuning.get("objective"), list):
                tuning["objective"] = tuple(tuning["objective"])
            values["tuning_criterion"] = TuningCriterion(**tuning)
        return cls(**values)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    # e.g. a loss function in strategy_kwargs: recorded by name, it cannot round-trip
    return f"<{type(value).__name__} {getattr(value, '__qualname__', '')}>".replace(" >", ">")


def _json_shaped(value: Mapping[str, Any]) -> dict[str, Any]:
    """A private copy of ``value`` as JSON would give it back (tuples become lists)."""
    shaped: dict[str, Any] = json.loads(json.dumps(dict(value), default=_jsonable))
    return shaped


_C = TypeVar("_C", bound=_QuantConfig)


@_strict_init
@dataclass(frozen=True)
class PostTrainingQuantConfig(_QuantConfig):
    """Post-training static or dynamic quantization (``approach="auto"`` chooses per op)."""

    approach: str = "auto"
    domain: str = "auto"
    recipes: Mapping[str, Any] = field(default_factory=dict)
    calibration_sampling_size: int | Sequence[int] = (100,)
    example_inputs: Any = None
    diagnosis: bool = False
    ni_workload_name: str = "quantization"
    model_name: str = ""
    #: INC 2.x compatibility; parallel trials come from ``fit(..., executor=...)``
    use_distributed_tuning: bool = False
    #: the default guards of ``fit`` (int8 never slower than fp32, never silently wrong):
    #: ``False`` quantizes every op the rules allow and measures nothing
    guards: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.approach, str) and self.approach in APPROACH_ALIASES:
            object.__setattr__(self, "approach", APPROACH_ALIASES[self.approach])
        _check_choice("approach", self.approach, APPROACHES)
        _check_choice("domain", self.domain, DOMAINS)
        object.__setattr__(self, "recipes", _check_recipes(self.recipes, self.approach))
        sizes: Any = self.calibration_sampling_size
        listed = [sizes] if isinstance(sizes, int) and not isinstance(sizes, bool) else sizes
        _check_type(
            "calibration_sampling_size", listed, (list, tuple), "a positive integer or list of them"
        )
        if not listed:
            raise ConfigError(
                "calibration_sampling_size is empty; give a positive number of samples"
            )
        for size in listed:
            _check_type(
                "calibration_sampling_size", size, int, "a positive integer or list of them"
            )
            if size < 1:
                raise ConfigError(f"calibration_sampling_size={size!r} must be >= 1")
        if len(listed) > 1:
            # INC 2.x tried each size as a tuning option; inc's strategies tune op settings
            # only, so the other sizes would be silently ignored
            raise ConfigError(
                f"calibration_sampling_size={list(listed)!r} gives {len(listed)} sizes; inc "
                "calibrates on one sample count: give one positive integer, e.g. "
                f"calibration_sampling_size={max(listed)}"
            )
        object.__setattr__(self, "calibration_sampling_size", tuple(listed))
        _check_type("diagnosis", self.diagnosis, bool, "True or False")
        _check_type("ni_workload_name", self.ni_workload_name, str, "a string")
        _check_type("model_name", self.model_name, str, "a string")
        _check_type("use_distributed_tuning", self.use_distributed_tuning, bool, "True or False")
        _check_type(
            "guards", self.guards, bool, "True (default: speed and fidelity guards) or False"
        )


@_strict_init
@dataclass(frozen=True)
class QuantizationAwareTrainingConfig(_QuantConfig):
    """Quantization-aware training: fake quantization during fine-tuning, int8 at the end."""

    model_name: str = ""
    example_inputs: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_type("model_name", self.model_name, str, "a string")

    @property
    def approach(self) -> str:
        return "static"

    @property
    def recipes(self) -> Mapping[str, Any]:
        return {}


AnyQuantConfig = PostTrainingQuantConfig | QuantizationAwareTrainingConfig


def config_from_dict(data: Mapping[str, Any]) -> AnyQuantConfig:
    """Rebuild either config from ``to_dict()`` output (dispatching on its ``type``)."""
    kinds: dict[str, type[AnyQuantConfig]] = {
        "PostTrainingQuantConfig": PostTrainingQuantConfig,
        "QuantizationAwareTrainingConfig": QuantizationAwareTrainingConfig,
    }
    kind = data.get("type", "PostTrainingQuantConfig")
    if kind not in kinds:
        raise not_allowed("type", kind, tuple(kinds))
    return kinds[kind].from_dict(data)
