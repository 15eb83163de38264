"""Per op, the weight-only settings a config's rules give (the contract plugins build on).

Rules merge field by field as for int8: ``op_type_dict`` patterns first (full-match on the op
type), then ``op_name_dict`` patterns (literal or full-match on the op name) override them;
fields no rule gives take ``options.RULE_DEFAULTS``. A field with several values is a tuning
choice; the first is the default.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

from .options import RULE_DEFAULTS


@dataclass(frozen=True)
class WeightOnlyScheme:
    """How one op's weight is quantized."""

    bits: int = RULE_DEFAULTS["bits"]
    group_size: int = RULE_DEFAULTS["group_size"]
    scheme: str = RULE_DEFAULTS["scheme"]
    algorithm: str = RULE_DEFAULTS["algorithm"]


def _matches(pattern: str, text: str) -> bool:
    return pattern == text or re.fullmatch(pattern, text) is not None


def merged_fields(conf: Any, op_name: str, op_type: str) -> dict[str, tuple[Any, ...]]:
    """The weight fields the rules give ``op_name`` (of ``op_type``), defaults filled in."""
    fields: dict[str, tuple[Any, ...]] = {k: (v,) for k, v in RULE_DEFAULTS.items()}
    for rules, key in ((conf.op_type_dict or {}, op_type), (conf.op_name_dict or {}, op_name)):
        for pattern, tensors in rules.items():
            if _matches(pattern, key):
                fields.update(tensors.get("weight", {}))
    return fields


def op_choices(conf: Any, op_name: str, op_type: str) -> list[WeightOnlyScheme | None]:
    """Every setting the rules allow for the op, default first; ``None`` keeps it in fp32
    (last, or alone when the rules ask only for fp32)."""
    fields = merged_fields(conf, op_name, op_type)
    choices: list[WeightOnlyScheme | None] = []
    if "int" in fields["dtype"]:
        combos = itertools.product(
            fields["bits"], fields["group_size"], fields["scheme"], fields["algorithm"]
        )
        choices.extend(WeightOnlyScheme(*combo) for combo in combos)
    if "fp32" in fields["dtype"]:
        choices.append(None)
    return choices
