"""Resolve the user's ``op_type_dict`` / ``op_name_dict`` against a model's ops and a backend's
capability: the tuning space (``OpSpace`` per op) and its default ``QuantPlan``."""

from __future__ import annotations

import difflib
import itertools
import logging
import re
from collections.abc import Mapping, Sequence

from .config import AnyQuantConfig, OpRules
from .errors import ConfigError
from .space import (
    FLOAT_DTYPES,
    Capability,
    OpCapability,
    OpInfo,
    OpQuant,
    OpSpace,
    QuantPlan,
    TensorOptions,
)

log = logging.getLogger(__name__)


def name_matches(pattern: str, name: str) -> bool:
    """An ``op_name_dict`` key matches an op literally or as a full-match regular expression."""
    if pattern == name:
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def type_matches(key: str, op_type: str, aliases: Mapping[str, Sequence[str]]) -> bool:
    """An ``op_type_dict`` key matches the native type or a generic name the backend maps to it."""
    return key == op_type or op_type in aliases.get(key, ())


def check_rules_name_ops(
    conf: AnyQuantConfig,
    ops: Sequence[OpInfo],
    known_types: Sequence[str],
    aliases: Mapping[str, Sequence[str]],
) -> None:
    """Raise ``ConfigError`` for an op name rule that matches no op, or an op type nobody knows."""
    names = [op.name for op in ops]
    for key in conf.op_name_dict or {}:
        if not any(name_matches(key, name) for name in names):
            close = difflib.get_close_matches(key, names, n=5, cutoff=0.3) or names[:10]
            raise ConfigError(
                f"op_name_dict key {key!r} matches no op in the model; close op names: {', '.join(close)}"
            )
    model_types = {op.type for op in ops}
    for key in conf.op_type_dict or {}:
        if any(type_matches(key, t, aliases) for t in model_types):
            continue
        everything = sorted({*known_types, *aliases})
        if key in everything:
            log.warning("op_type_dict key %r: the model has no op of that type; rule ignored", key)
            continue
        close = difflib.get_close_matches(key, everything, n=5, cutoff=0.3) or everything
        raise ConfigError(
            f"op_type_dict key {key!r} is not an op type of this backend; "
            f"types in the model: {', '.join(sorted(model_types))}; close known types: {', '.join(close)}"
        )


def _rule_for(
    op: OpInfo, conf: AnyQuantConfig, aliases: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, tuple[str, ...]]]:
    """Field-wise merge: op_type_dict rules first, then op_name_dict rules override them."""
    merged: dict[str, dict[str, tuple[str, ...]]] = {"activation": {}, "weight": {}}
    rules: list[OpRules] = []
    type_rules = {
        k: v for k, v in (conf.op_type_dict or {}).items() if type_matches(k, op.type, aliases)
    }
    name_rules = {k: v for k, v in (conf.op_name_dict or {}).items() if name_matches(k, op.name)}
    rules = [type_rules, name_rules]
    for group in rules:
        for tensors in group.values():
            for tensor, fields in tensors.items():
                merged[tensor].update(fields)
    return merged


def _float_dtypes(rule: Mapping[str, Mapping[str, tuple[str, ...]]]) -> tuple[str, ...]:
    """Float dtypes a rule asks for, in its order (activation and weight rules alike)."""
    wanted: list[str] = []
    for fields in rule.values():
        for dtype in fields.get("dtype", ()):
            if dtype in FLOAT_DTYPES and dtype not in wanted:
                wanted.append(dtype)
    return tuple(wanted)


def _narrow(
    op: OpInfo, tensor: str, options: TensorOptions, fields: Mapping[str, tuple[str, ...]]
) -> TensorOptions:
    allowed: dict[str, tuple[str, ...]] = {}
    for field_name, wanted in fields.items():
        offered: tuple[str, ...] = getattr(options, field_name)
        values = (
            wanted if field_name != "dtype" else tuple(v for v in wanted if v not in FLOAT_DTYPES)
        )
        if not values:
            continue
        kept = tuple(v for v in values if v in offered)
        if not kept:
            raise ConfigError(
                f"op {op.name!r} ({op.type}): {tensor} {field_name} {list(values)} is not supported; "
                f"this backend allows {list(offered)}"
            )
        allowed[field_name] = kept
    return options.narrowed(**allowed)


def _quant_choices(
    op: OpInfo, approach: str, cap: OpCapability, rule: Mapping[str, Mapping[str, tuple[str, ...]]]
) -> list[OpQuant]:
    activation = _narrow(op, "activation", cap.activation, rule.get("activation", {}))
    weight = _narrow(op, "weight", cap.weight, rule.get("weight", {})) if cap.weight else None
    weight_schemes = list(weight.schemes()) if weight else [None]
    return [
        OpQuant(approach, act, wgt)
        for act, wgt in itertools.product(activation.schemes(), weight_schemes)
    ]


def _asks_integer(rule: Mapping[str, Mapping[str, tuple[str, ...]]]) -> bool:
    return any(d not in FLOAT_DTYPES for fields in rule.values() for d in fields.get("dtype", ()))


def _op_choices(
    op: OpInfo,
    capabilities: Mapping[str, Capability],
    rule: Mapping[str, Mapping[str, tuple[str, ...]]],
) -> list[OpQuant]:
    """Quantized choices over every allowed approach that can run the rule.

    An approach whose kernels cannot honour the rule is dropped for this op; only when no
    approach can is the rule an error (e.g. activation int8 is static-only on some backends).
    """
    quant: list[OpQuant] = []
    errors: list[tuple[str, ConfigError]] = []
    for approach, capability in capabilities.items():
        if op.type not in capability:
            continue
        try:
            quant.extend(_quant_choices(op, approach, capability[op.type], rule))
        except ConfigError as exc:
            errors.append((approach, exc))
    if not quant and errors:
        if len(errors) == 1:
            raise errors[0][1]
        detail = "; ".join(f"{approach}: {exc}" for approach, exc in errors)
        raise ConfigError(f"no approach can run the rule for op {op.name!r}: {detail}")
    if not quant and _asks_integer(rule):
        approaches = ", ".join(capabilities)
        hint = "" if "static" in capabilities else " (static quantization needs calib_dataloader)"
        raise ConfigError(
            f"op {op.name!r} ({op.type}): the rule asks for an integer dtype but this backend "
            f"cannot quantize {op.type} ops with approach {approaches}{hint}; "
            "use dtype 'fp32' for it"
        )
    return quant


def build_space(
    ops: Sequence[OpInfo],
    capabilities: Mapping[str, Capability],
    conf: AnyQuantConfig,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> list[OpSpace]:
    """The choices for every op, default first and fp32 fallback last.

    ``capabilities`` maps each approach the user allows ("static", "dynamic", in preference
    order) to the backend's capability for it.
    """
    aliases = aliases or {}
    known_types = sorted({t for cap in capabilities.values() for t in cap})
    check_rules_name_ops(conf, ops, known_types, aliases)
    spaces = []
    for op in ops:
        rule = _rule_for(op, conf, aliases)
        wanted_floats = _float_dtypes(rule)
        floats = tuple(d for d in wanted_floats if d not in conf.excluded_precisions)
        only_float = bool(wanted_floats) and all(
            all(d in FLOAT_DTYPES for d in fields.get("dtype", ()))
            for fields in rule.values()
            if "dtype" in fields
        )
        if only_float and not floats:
            raise ConfigError(
                f"op {op.name!r} ({op.type}): its rule asks only for {list(wanted_floats)}, which "
                f"excluded_precisions={list(conf.excluded_precisions)} excludes; "
                "allow it or ask for 'fp32'"
            )
        quant = [] if only_float else _op_choices(op, capabilities, rule)
        fallback = [OpQuant.float(d) for d in floats] or [OpQuant.float("fp32")]
        if "fp32" not in floats:
            fallback.append(OpQuant.float("fp32"))
        choices = fallback if only_float else quant + fallback
        spaces.append(OpSpace(op, tuple(dict.fromkeys(choices))))
    return spaces


def default_plan(
    spaces: Sequence[OpSpace], conf: AnyQuantConfig, **plan_fields: object
) -> QuantPlan:
    """The plan that takes every op's default choice."""
    return QuantPlan(
        ops={s.op.name: s.default for s in spaces},
        op_types={s.op.name: s.op.type for s in spaces},
        backend=conf.backend,
        device=conf.device,
        quant_format=conf.quant_format,
        reduce_range=conf.reduce_range,
        recipes=dict(getattr(conf, "recipes", {})),
        **plan_fields,
    )
