"""The vocabulary shared by core and backends: ops, what each op type can run, and plans.

A backend describes a model as ``OpInfo``s and its kernels as a ``Capability`` (per op type,
per approach, the options for activation and weight; the first option is the default). The
core resolves the user's rules against them into a ``QuantPlan``: one ``OpQuant`` per op.
The tuning strategies search over ``OpSpace``s, the options left for each op.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

#: approaches whose ops are quantized (``weight_only``: int weights, float activations)
QUANTIZED_APPROACHES: tuple[str, ...] = ("static", "dynamic", "weight_only")
FLOAT_DTYPES: tuple[str, ...] = ("fp32", "bf16", "fp16")
INT_DTYPES: tuple[str, ...] = ("int8", "uint8")
ALL_DTYPES: tuple[str, ...] = INT_DTYPES + FLOAT_DTYPES
ALGORITHMS: tuple[str, ...] = ("minmax", "kl", "percentile", "mse")


@dataclass(frozen=True)
class OpInfo:
    """One quantizable op of a model, named as the user names it in ``op_name_dict``."""

    name: str
    type: str


@dataclass(frozen=True)
class TensorScheme:
    """How one tensor (an op's activation or weight) is quantized."""

    dtype: str = "int8"
    scheme: str = "sym"
    granularity: str = "per_tensor"
    algorithm: str = "minmax"


@dataclass(frozen=True)
class TensorOptions:
    """What a kernel accepts for one tensor; the first entry of each field is the default."""

    dtype: tuple[str, ...] = ("int8",)
    scheme: tuple[str, ...] = ("sym",)
    granularity: tuple[str, ...] = ("per_tensor",)
    algorithm: tuple[str, ...] = ("minmax",)

    def default(self) -> TensorScheme:
        return TensorScheme(self.dtype[0], self.scheme[0], self.granularity[0], self.algorithm[0])

    def schemes(self) -> Iterator[TensorScheme]:
        for combo in itertools.product(self.dtype, self.scheme, self.granularity, self.algorithm):
            yield TensorScheme(*combo)

    def narrowed(self, **allowed: tuple[str, ...]) -> TensorOptions:
        """These options with each given field restricted to ``allowed`` (order from ``allowed``)."""
        return replace(self, **allowed)


@dataclass(frozen=True)
class OpCapability:
    """The options of one op type under one approach; ``weight`` is None for weightless ops."""

    activation: TensorOptions
    weight: TensorOptions | None = None


Capability = Mapping[str, OpCapability]
"""op type -> what that type can run, for one approach and device."""


@dataclass(frozen=True)
class OpQuant:
    """The resolved decision for one op: ``approach`` is static, dynamic, weight_only (see
    ``inc_core.weight_only.plan``) or a float dtype."""

    approach: str
    activation: TensorScheme | None = None
    weight: TensorScheme | None = None

    @property
    def quantized(self) -> bool:
        return self.approach in QUANTIZED_APPROACHES

    @classmethod
    def float(cls, dtype: str = "fp32") -> OpQuant:
        return cls(approach=dtype)

    def to_dict(self) -> dict[str, Any]:
        return {
            "approach": self.approach,
            "activation": asdict(self.activation) if self.activation else None,
            "weight": asdict(self.weight) if self.weight else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OpQuant:
        act, wgt = data.get("activation"), data.get("weight")
        return cls(
            approach=data["approach"],
            activation=TensorScheme(**act) if act else None,
            weight=TensorScheme(**wgt) if wgt else None,
        )


@dataclass(frozen=True)
class QuantPlan:
    """Everything a backend needs to build one quantized candidate.

    ``ops`` holds every op the backend reported, in model order; float ones stay unquantized.
    """

    ops: Mapping[str, OpQuant]
    op_types: Mapping[str, str]
    backend: str = "default"
    device: str = "cpu"
    quant_format: str = "default"
    reduce_range: bool | None = None
    recipes: Mapping[str, Any] = field(default_factory=dict)

    def quantized_ops(self) -> list[str]:
        return [name for name, op in self.ops.items() if op.quantized]

    def float_ops(self) -> list[str]:
        return [name for name, op in self.ops.items() if not op.quantized]

    def with_ops(self, changes: Mapping[str, OpQuant]) -> QuantPlan:
        return replace(self, ops={**self.ops, **changes})

    def with_recipes(self, changes: Mapping[str, Any]) -> QuantPlan:
        return replace(self, recipes={**self.recipes, **changes})

    def key(self) -> str:
        """A stable identity for this plan (equal plans, equal keys), used by tuning history."""
        import json

        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ops": {name: op.to_dict() for name, op in self.ops.items()},
            "op_types": dict(self.op_types),
            "backend": self.backend,
            "device": self.device,
            "quant_format": self.quant_format,
            "reduce_range": self.reduce_range,
            "recipes": dict(self.recipes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantPlan:
        return cls(
            ops={name: OpQuant.from_dict(op) for name, op in data["ops"].items()},
            op_types=dict(data["op_types"]),
            backend=data.get("backend", "default"),
            device=data.get("device", "cpu"),
            quant_format=data.get("quant_format", "default"),
            reduce_range=data.get("reduce_range"),
            recipes=dict(data.get("recipes", {})),
        )


@dataclass(frozen=True)
class TensorRange:
    """Calibrated range of one tensor: scalars per tensor, or arrays per channel."""

    min: np.ndarray
    max: np.ndarray

    @classmethod
    def of(cls, lo: float | np.ndarray, hi: float | np.ndarray) -> TensorRange:
        return cls(np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64))


TensorRanges = dict[str, TensorRange]
"""tensor name (the backend's own naming) -> calibrated range."""


@dataclass(frozen=True)
class OpSpace:
    """The choices left for one op after the user's rules: candidates in preference order.

    ``choices[0]`` is the default; a float choice (``OpQuant.float()``) appears when fallback
    is allowed.
    """

    op: OpInfo
    choices: tuple[OpQuant, ...]

    @property
    def default(self) -> OpQuant:
        return self.choices[0]

    @property
    def can_fallback(self) -> bool:
        return any(not c.quantized for c in self.choices)

    @property
    def fixed(self) -> bool:
        return len(self.choices) == 1
