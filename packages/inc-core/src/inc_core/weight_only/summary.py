"""``report["weight_only"]``: per op the bits, group size, scheme and algorithm that ran, and
the model size against fp32 (what weight-only quantization is for)."""

from __future__ import annotations

from typing import Any

from ..space import QuantPlan
from .plan import is_weight_only, schemes


def describe(plan: QuantPlan) -> dict[str, Any]:
    """The plan's weight-only settings: ``ops`` (op -> fields), ``fp32_ops``, ``bits`` counts."""
    chosen = schemes(plan)
    counts: dict[str, int] = {}
    for s in chosen.values():
        counts[f"int{s.bits}"] = counts.get(f"int{s.bits}", 0) + 1
    return {
        "ops": {
            name: {
                "bits": s.bits,
                "group_size": s.group_size,
                "scheme": s.scheme,
                "algorithm": s.algorithm,
            }
            for name, s in chosen.items()
        },
        "fp32_ops": [n for n in plan.ops if n not in chosen],
        "bits": counts,
    }


def summary(backend: Any, fp32_model: Any, native: Any, plan: QuantPlan) -> dict[str, Any] | None:
    """``describe(plan)`` plus ``size`` (bytes fp32 and quantized, and their ratio), or None
    for a plan that is not weight-only."""
    if not is_weight_only(plan):
        return None
    out = describe(plan)
    size: dict[str, Any] = {}
    try:
        fp32 = int(backend.model_size(fp32_model))
        quantized = int(backend.model_size(native))
        size = {"fp32_bytes": fp32, "bytes": quantized, "ratio": quantized / fp32 if fp32 else None}
    except NotImplementedError:
        size = {"skipped": f"backend {backend.name!r} does not measure model size"}
    out["size"] = size
    return out


def annotate_rows(rows: list[dict[str, Any]], plan: QuantPlan) -> list[dict[str, Any]]:
    """``op_report()`` rows with ``bits``, ``group_size``, ``scheme`` and ``algorithm`` added
    for weight-only ops (None for the others)."""
    chosen = schemes(plan)
    out = []
    for row in rows:
        s = chosen.get(row.get("op", ""))
        out.append(
            {
                **row,
                "bits": s.bits if s else None,
                "group_size": s.group_size if s else None,
                "weight_scheme": s.scheme if s else None,
                "algorithm": s.algorithm if s else None,
            }
        )
    return out
