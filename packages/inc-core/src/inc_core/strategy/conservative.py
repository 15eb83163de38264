"""``conservative`` (``quant_level=0``): accuracy first. Start from fp32 and quantize one op type
at a time, keeping each type whose quantization still meets the goal."""

from __future__ import annotations

from ..space import QuantPlan
from .base import Batch, Search, Step, Strategy
from .space import TuningSpace, is_compute_type

# INC's priority: the compute-heavy types first, then the rest in model order.
_PRIORITY = ("conv", "matmul", "gemm", "linear", "dense")


def type_priority(space: TuningSpace) -> list[str]:
    def rank(op_type: str) -> int:
        lowered = op_type.lower()
        return next((i for i, t in enumerate(_PRIORITY) if t in lowered), len(_PRIORITY))

    types = space.types()
    return sorted(types, key=lambda t: (rank(t), types.index(t)))


def accumulate_types(space: TuningSpace) -> Step:
    """Returns the most quantized passing plan, or None when no op type passes alone."""
    current = space.all_float()
    accepted: QuantPlan | None = None
    for op_type in type_priority(space):
        names = [n for n in space.ops_of_type(op_type) if space.base.ops[n].quantized]
        if not names:
            continue
        candidate = space.restore(current, names)
        if candidate == current:
            continue
        outcomes = yield Batch([candidate], f"conservative: quantize {op_type}", ends_on_pass=False)
        if outcomes and outcomes[0].passed:
            current = accepted = candidate
    return accepted


class ConservativeStrategy(Strategy):
    name = "conservative"

    def search(self) -> Search:
        yield from accumulate_types(self.space)


__all__ = ["ConservativeStrategy", "accumulate_types", "is_compute_type", "type_priority"]
