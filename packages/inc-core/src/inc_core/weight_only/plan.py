"""How ``fit`` runs ``approach="weight_only"`` on any backend: the contract plugins build on.

Per op, the rules give the settings (``op_choices``): ``op_type_dict`` patterns first
(full-match on the op type), then ``op_name_dict`` patterns (literal or full-match on the op
name) override them field by field; fields no rule gives take ``options.RULE_DEFAULTS``. A
field with several values is a tuning choice; the first is the default.

The core's part (``inc_core.session`` / ``inc_core.quantization``):

1. ``build_space`` turns each weight op's settings into ``OpQuant(approach="weight_only",
   weight=TensorScheme(dtype="int4", scheme="sym", granularity="group_32",
   algorithm="RTN"))`` choices (``op_quant``; ``granularity`` is ``"per_channel"`` for
   ``group_size=-1``), followed by an 8-bit RTN choice (when the op's own choices have no
   8-bit one and the backend runs 8 bits) and fp32, so accuracy-aware tuning can mix bits and
   group sizes per op and fall back to 8 bits or fp32. Plans, trials, the history and
   inc.json carry these as any other ``OpQuant``; ``op_report()``'s ``weight`` column says
   ``int4``, and ``report["weight_only"]`` lists bits, group size, scheme and algorithm per op
   and the model size (``inc_core.weight_only.summary``).
2. No int8 calibration: RTN-only plans are built with empty ranges. When an op's algorithm
   is GPTQ or AWQ, ``Session.ranges_for`` calls ``backend.calibrate(model, data, plan)``
   once per distinct need; the backend returns, per op named by ``calibrated_ops(plan)``,
   ``stats.InputStats`` (a ``TensorRange`` of the op's input carrying GPTQ's Hessian and/or
   AWQ's sample rows), built by feeding the op's input activations to
   ``stats.InputStatsCollector``.
3. The default path (no evaluation) builds the default plan once; no op falls back (the
   speed guard does not apply: weight-only trades compute for memory), and with held-out
   calibration data the fidelity of the outputs is measured and reported (a warning when
   below the threshold). With an evaluation the strategies tune as for int8.

A backend's part (``Backend.supports_weight_only = True``), weight ``w`` in the core's
layout ``(K, N)`` (``y = x @ w``, groups along ``K``; transpose a ``(N, K)`` Linear weight):

- ``check_config(conf)`` sees ``conf.approach == "weight_only"``; ``ops(model)`` then lists
  only the ops whose weight it can quantize (names as in ``op_name_dict``);
- ``capability("weight_only", device)``: ``{op_type: OpCapability(WEIGHT_ONLY_ACTIVATION,
  weight_options(bits, group_sizes, schemes, algorithms))}``: what its kernels run; a rule
  asking for anything else is a ``ConfigError`` naming the op, field and allowed values;
- ``calibrate(model, data, plan)`` for a weight-only plan: the inputs of each op in
  ``calibrated_ops(plan)`` fed to ``InputStatsCollector.for_plan(plan)``, its ``result()``
  returned (only called when some op uses GPTQ or AWQ);
- ``quantize(model, plan, ranges)``: for each op, ``scheme_of(plan.ops[name])`` (``None``:
  keep fp32) and ``quantize_weights(weights, scheme, plan.recipes, ranges.get(name))``
  (``inc_core.weight_only.run``: RTN/GPTQ/AWQ with the ``rtn_args``/``gptq_args``/
  ``awq_args`` of ``plan.recipes``, defaults filled); pack each ``QuantizedWeight`` for the
  kernel; an AWQ ``input_scale`` divides the op's input (folded into its producer where the
  graph allows, else an explicit multiply). Pure, as for int8;
- ``model_size(native)`` for the report's size ratio.
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..space import OpCapability, OpInfo, OpQuant, OpSpace, QuantPlan, TensorOptions, TensorScheme
from .options import ALGORITHMS, BITS, CALIBRATED_ALGORITHMS, RECIPE_ARGS, RULE_DEFAULTS, SCHEMES

APPROACH = "weight_only"
#: activations stay in float: what a weight-only ``OpCapability`` says for them
WEIGHT_ONLY_ACTIVATION = TensorOptions(dtype=("fp32",), scheme=("sym",), algorithm=("minmax",))
PER_CHANNEL = "per_channel"


@dataclass(frozen=True)
class WeightOnlyScheme:
    """How one op's weight is quantized."""

    bits: int = RULE_DEFAULTS["bits"]
    group_size: int = RULE_DEFAULTS["group_size"]
    scheme: str = RULE_DEFAULTS["scheme"]
    algorithm: str = RULE_DEFAULTS["algorithm"]


def _matches(pattern: str, text: str) -> bool:
    return pattern == text or re.fullmatch(pattern, text) is not None


def _type_matches(pattern: str, op_type: str, aliases: Mapping[str, Sequence[str]]) -> bool:
    """An ``op_type_dict`` key against an op type: a full-match pattern, or a name the
    backend aliases to it (``"MatMul"`` for torch's ``Linear``, ``"Linear"`` for ONNX)."""
    return _matches(pattern, op_type) or op_type in aliases.get(pattern, ())


def merged_fields(
    conf: Any, op_name: str, op_type: str, aliases: Mapping[str, Sequence[str]] | None = None
) -> dict[str, tuple[Any, ...]]:
    """The weight fields the rules give ``op_name`` (of ``op_type``), defaults filled in;
    ``aliases`` are the backend's ``op_type_aliases``."""
    fields: dict[str, tuple[Any, ...]] = {k: (v,) for k, v in RULE_DEFAULTS.items()}
    for pattern, tensors in (conf.op_type_dict or {}).items():
        if _type_matches(pattern, op_type, aliases or {}):
            fields.update(tensors.get("weight", {}))
    for pattern, tensors in (conf.op_name_dict or {}).items():
        if _matches(pattern, op_name):
            fields.update(tensors.get("weight", {}))
    return fields


def op_choices(
    conf: Any, op_name: str, op_type: str, aliases: Mapping[str, Sequence[str]] | None = None
) -> list[WeightOnlyScheme | None]:
    """Every setting the rules allow for the op, default first; ``None`` keeps it in fp32
    (last, or alone when the rules ask only for fp32)."""
    fields = merged_fields(conf, op_name, op_type, aliases)
    choices: list[WeightOnlyScheme | None] = []
    if "int" in fields["dtype"]:
        combos = itertools.product(
            fields["bits"], fields["group_size"], fields["scheme"], fields["algorithm"]
        )
        choices.extend(WeightOnlyScheme(*combo) for combo in combos)
    if "fp32" in fields["dtype"]:
        choices.append(None)
    return choices


# -- the settings as the core's plan types ---------------------------------------------------


def granularity(group_size: int) -> str:
    return PER_CHANNEL if group_size == -1 else f"group_{group_size}"


def op_quant(scheme: WeightOnlyScheme) -> OpQuant:
    """``scheme`` as a plan's ``OpQuant`` (activations stay float: ``activation=None``)."""
    weight = TensorScheme(
        dtype=f"int{scheme.bits}",
        scheme=scheme.scheme,
        granularity=granularity(scheme.group_size),
        algorithm=scheme.algorithm,
    )
    return OpQuant(approach=APPROACH, weight=weight)


def scheme_of(op: OpQuant) -> WeightOnlyScheme | None:
    """The setting ``op_quant`` wrote into ``op``; ``None`` for a float op."""
    if op.approach != APPROACH:
        if op.quantized:
            raise ValueError(f"{op.approach!r} is not a weight-only decision")
        return None
    assert op.weight is not None, "a weight-only OpQuant always has a weight scheme"
    g = op.weight.granularity
    return WeightOnlyScheme(
        bits=int(op.weight.dtype.removeprefix("int")),
        group_size=-1 if g == PER_CHANNEL else int(g.removeprefix("group_")),
        scheme=op.weight.scheme,
        algorithm=op.weight.algorithm,
    )


def is_weight_only(plan: QuantPlan) -> bool:
    return any(op.approach == APPROACH for op in plan.ops.values())


def schemes(plan: QuantPlan) -> dict[str, WeightOnlyScheme]:
    """Op name -> setting, for the plan's quantized weight-only ops (model order)."""
    out = {}
    for name, op in plan.ops.items():
        found = scheme_of(op)
        if found is not None:
            out[name] = found
    return out


def calibrated_ops(plan: QuantPlan) -> dict[str, str]:
    """Op name -> algorithm, for the ops whose algorithm reads calibration activations."""
    return {
        name: s.algorithm
        for name, s in schemes(plan).items()
        if s.algorithm in CALIBRATED_ALGORITHMS
    }


def recipe_args(recipes: Mapping[str, Any], recipe: str) -> dict[str, Any]:
    """``recipes[recipe]`` (``rtn_args``/``gptq_args``/``awq_args``) with the defaults filled."""
    given = recipes.get(recipe) or {}
    return {**RECIPE_ARGS[recipe], **given}


def weight_options(
    bits: Iterable[int],
    group_sizes: Iterable[int],
    schemes: Iterable[str] = SCHEMES,
    algorithms: Iterable[str] = ALGORITHMS,
) -> TensorOptions:
    """A weight-only capability's ``weight`` options (``group_sizes``: -1 for per channel)."""
    return TensorOptions(
        dtype=tuple(f"int{b}" for b in bits),
        scheme=tuple(schemes),
        granularity=tuple(granularity(g) for g in group_sizes),
        algorithm=tuple(algorithms),
    )


# -- the tuning space -----------------------------------------------------------------------


def _check_offered(op: OpInfo, scheme: WeightOnlyScheme, options: TensorOptions) -> None:
    wanted = op_quant(scheme).weight
    assert wanted is not None
    for field, value, shown in (
        ("dtype", wanted.dtype, ("bits", scheme.bits)),
        ("granularity", wanted.granularity, ("group_size", scheme.group_size)),
        ("scheme", wanted.scheme, ("scheme", scheme.scheme)),
        ("algorithm", wanted.algorithm, ("algorithm", scheme.algorithm)),
    ):
        offered: tuple[str, ...] = getattr(options, field)
        if value in offered:
            continue
        allowed = [_shown(field, v) for v in offered]
        raise ConfigError(
            f"op {op.name!r} ({op.type}): weight {shown[0]}={shown[1]!r} has no weight-only "
            f"kernel on this backend; allowed: {', '.join(map(str, allowed))}"
        )


def _shown(field: str, value: str) -> Any:
    """A capability value in the rule's own terms (``int4`` -> 4, ``group_32`` -> 32)."""
    if field == "dtype":
        return int(value.removeprefix("int"))
    if field == "granularity":
        return -1 if value == PER_CHANNEL else int(value.removeprefix("group_"))
    return repr(value)


def _check_rule_keys(
    conf: Any, ops: Sequence[OpInfo], aliases: Mapping[str, Sequence[str]]
) -> None:
    names = [op.name for op in ops]
    for key in conf.op_name_dict or {}:
        if not any(_matches(key, n) for n in names):
            close = difflib.get_close_matches(key, names, n=5, cutoff=0.3) or names[:10]
            raise ConfigError(
                f"op_name_dict key {key!r} matches no op whose weight this backend can quantize "
                f"(approach='weight_only'); such ops: {', '.join(close)}"
            )
    types = sorted({op.type for op in ops})
    for key in conf.op_type_dict or {}:
        if not any(_type_matches(key, t, aliases) for t in types):
            named = sorted(a for a, targets in aliases.items() if set(targets) & set(types))
            also = f"; or their aliases: {', '.join(named)}" if named else ""
            raise ConfigError(
                f"op_type_dict key {key!r} matches no op type with weight-only kernels in this "
                f"model (keys are full-match patterns); types: {', '.join(types)}{also}"
            )


def build_space(
    ops: Sequence[OpInfo],
    capability: Mapping[str, OpCapability],
    conf: Any,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> list[OpSpace]:
    """The weight-only choices of each op the capability covers (others are left out):
    the rules' settings (default first), an 8-bit RTN fallback, then fp32. ``aliases`` are
    the backend's ``op_type_aliases`` (``op_type_dict`` keys may name an aliased type)."""
    aliases = aliases or {}
    weight_ops = [
        op for op in ops if op.type in capability and capability[op.type].weight is not None
    ]
    _check_rule_keys(conf, weight_ops, aliases)
    spaces = []
    for op in weight_ops:
        options = capability[op.type].weight
        assert options is not None
        quant: list[OpQuant] = []
        for choice in op_choices(conf, op.name, op.type, aliases):
            if choice is not None:
                _check_offered(op, choice, options)
                quant.append(op_quant(choice))
        if quant and not any(q.weight and q.weight.dtype == "int8" for q in quant):
            default = scheme_of(quant[0])
            assert default is not None
            eight = WeightOnlyScheme(8, default.group_size, default.scheme, "RTN")
            try:
                _check_offered(op, eight, options)
                quant.append(op_quant(eight))
            except ConfigError:
                pass  # no 8-bit kernel for this op: fp32 is its only fallback
        choices = (*quant, OpQuant.float("fp32"))
        spaces.append(OpSpace(op, tuple(dict.fromkeys(choices))))
    return spaces


__all__ = [
    "APPROACH",
    "BITS",
    "WEIGHT_ONLY_ACTIVATION",
    "WeightOnlyScheme",
    "build_space",
    "calibrated_ops",
    "is_weight_only",
    "merged_fields",
    "op_choices",
    "op_quant",
    "recipe_args",
    "scheme_of",
    "schemes",
    "weight_options",
]
