"""A toy numpy backend for the tuning tests: a chain of square layers of several op types.

What it makes controllable (unlike the reference MLP): op types with different numbers of
choices, a deterministic simulated latency per op type (quantized ``Add`` runs slower than
fp32, as on some CPUs), ops whose quantization fails inside the backend, and an output error
per op driven by outlier weights. Evaluation functions are module-level so that a process pool
can pickle them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from inc_core import PostTrainingQuantConfig, TuningCriterion, quantization, scheme
from inc_core.backend import Backend
from inc_core.space import OpCapability, OpInfo, QuantPlan, TensorOptions, TensorRange, TensorRanges
from inc_core.tuning import TuningError

CAPABILITY = {
    "Conv": OpCapability(
        TensorOptions(("uint8",), ("asym",), ("per_tensor",), ("minmax", "kl")),
        TensorOptions(("int8",), ("sym",), ("per_channel", "per_tensor")),
    ),
    "MatMul": OpCapability(
        TensorOptions(("uint8",), ("asym",)), TensorOptions(("int8",), ("sym",))
    ),
    "Add": OpCapability(TensorOptions(("int8",), ("sym",))),
}
# Simulated milliseconds per layer: fp32 costs 1.0; quantized Add is slower than fp32.
QUANTIZED_MS = {"Conv": 0.4, "MatMul": 0.5, "Add": 1.6}


@dataclass(frozen=True)
class ToyLayer:
    name: str
    type: str
    weight: np.ndarray


@dataclass(frozen=True)
class ToyNet:
    layers: tuple[ToyLayer, ...]
    broken: frozenset[str] = frozenset()
    plan: QuantPlan | None = None
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.layer_outputs(x)[self.layers[-1].name]

    def layer_outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Each layer's output by name (the last is the model's output)."""
        outputs = {}
        out = np.asarray(x, dtype=np.float64)
        for layer in self.layers:
            op = self.plan.ops[layer.name] if self.plan is not None else None
            act, weight = out, layer.weight
            if op is not None and op.quantized:
                assert op.activation is not None
                lo, hi = self.ranges[layer.name]
                params = scheme.compute_qparams(
                    lo, hi, dtype=op.activation.dtype, scheme=op.activation.scheme
                )
                act = scheme.fake_quantize(np.clip(act, lo, hi), params)
                if op.weight is not None:
                    wq = scheme.weight_qparams(
                        weight,
                        dtype=op.weight.dtype,
                        scheme=op.weight.scheme,
                        granularity=op.weight.granularity,
                        axis=1,
                    )
                    weight = scheme.fake_quantize(weight, wq)
            out = act + 0.5 * (act @ weight) if layer.type == "Add" else act @ weight
            outputs[layer.name] = out
        return outputs


def toy_net(
    types: Sequence[str] = ("Conv", "Conv", "MatMul", "Add"),
    names: Sequence[str] | None = None,
    outliers: Mapping[str, float] | None = None,
    broken: Iterable[str] = (),
    dim: int = 8,
    seed: int = 0,
) -> ToyNet:
    """Layers named conv1, conv2, mm, add by default; ``outliers`` scales one weight entry."""
    rng = np.random.default_rng(seed)
    names = list(names) if names is not None else default_names(types)
    layers = []
    for name, op_type in zip(names, types, strict=True):
        weight = rng.normal(0, 0.4, (dim, dim))
        if outliers and name in outliers:
            weight[0, 0] = outliers[name]
        layers.append(ToyLayer(name, op_type, weight))
    return ToyNet(tuple(layers), frozenset(broken))


def default_names(types: Sequence[str]) -> list[str]:
    counts: dict[str, int] = {}
    names = []
    for op_type in types:
        counts[op_type] = counts.get(op_type, 0) + 1
        prefix = {"Conv": "conv", "MatMul": "mm", "Add": "add"}[op_type]
        total = sum(1 for t in types if t == op_type)
        names.append(f"{prefix}{counts[op_type]}" if total > 1 else prefix)
    return names


def calib_batches(dim: int = 8, batches: int = 4, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, (16, dim)) for _ in range(batches)]


class ToyBackend(Backend):
    name = "toy"
    package = "inc-core"
    framework = "numpy"
    convention = "onnxrt"
    priority = 999

    @classmethod
    def accepts(cls, model: Any) -> bool:
        return isinstance(model, ToyNet)

    def ops(self, model: ToyNet) -> list[OpInfo]:
        return [OpInfo(layer.name, layer.type) for layer in model.layers]

    def capability(self, approach: str, device: str) -> dict[str, OpCapability]:
        return dict(CAPABILITY) if approach == "static" else {}

    def calibrate(self, model: ToyNet, dataloader: Iterable[Any], plan: QuantPlan) -> TensorRanges:
        seen: dict[str, list[np.ndarray]] = {layer.name: [] for layer in model.layers}
        for batch in dataloader:
            out = np.asarray(batch, dtype=np.float64)
            for layer in model.layers:
                seen[layer.name].append(out.ravel())
                out = replace(model, layers=(layer,), plan=None)(out)
        ranges = {}
        for name, chunks in seen.items():
            values = np.concatenate(chunks)
            op = plan.ops[name]
            if op.activation is not None and op.activation.algorithm == "kl":
                lo, hi = np.percentile(values, [1, 99])
            else:
                lo, hi = values.min(), values.max()
            ranges[name] = TensorRange.of(lo, hi)
        return ranges

    def quantize(self, model: ToyNet, plan: QuantPlan, ranges: TensorRanges) -> ToyNet:
        failing = sorted(n for n in model.broken if plan.ops[n].quantized)
        if failing:
            raise RuntimeError(f"no int8 kernel for {', '.join(failing)}")
        used = {n: (float(r.min), float(r.max)) for n, r in ranges.items()}
        return replace(model, plan=plan, ranges=used)

    def predict(self, model: ToyNet, inputs: Any) -> np.ndarray:
        return model(inputs)

    def latency(self, model: ToyNet, inputs: Sequence[Any]) -> float:
        total = 0.0
        for layer in model.layers:
            op = model.plan.ops[layer.name] if model.plan is not None else None
            total += QUANTIZED_MS[layer.type] if op is not None and op.quantized else 1.0
        return total * 1e-3

    def op_outputs(self, model: ToyNet, inputs: Any, ops: Sequence[str]) -> dict[str, Any]:
        outputs = model.layer_outputs(inputs)
        return {name: outputs[name] for name in ops if name in outputs}

    def runs_as(self, model: ToyNet) -> dict[str, str]:
        out = {}
        for layer in model.layers:
            op = model.plan.ops[layer.name] if model.plan is not None else None
            out[layer.name] = (
                f"{layer.type} ({'int8' if op is not None and op.quantized else 'fp32'})"
            )
        return out

    def model_size(self, model: ToyNet) -> int:
        size = 0
        for layer in model.layers:
            op = model.plan.ops[layer.name] if model.plan is not None else None
            size += layer.weight.size * (1 if op is not None and op.quantized else 4)
        return size

    def save(self, model: ToyNet, directory: Path) -> list[str]:
        np.savez(directory / "toy.npz", **{layer.name: layer.weight for layer in model.layers})
        return ["toy.npz"]

    def load(self, directory: Path, **kwargs: Any) -> ToyNet:
        raise NotImplementedError("the toy backend is for tuning tests only")


# -- evaluation functions ---------------------------------------------------------------------

BASE_ACCURACY = 0.9


@dataclass
class PlanScore:
    """Accuracy as a pure function of the plan: each quantized op costs its penalty; an
    algorithm or granularity in ``bonus`` refunds part of it. Picklable, so it runs in workers."""

    penalties: Mapping[str, float]
    bonus: Mapping[str, float] = field(default_factory=dict)
    base: float = BASE_ACCURACY

    def __call__(self, model: ToyNet) -> float:
        if model.plan is None:
            return self.base
        accuracy = self.base
        for name, op in model.plan.ops.items():
            if not op.quantized:
                continue
            penalty = self.penalties.get(name, 0.0)
            for tensor in (op.activation, op.weight):
                if tensor is not None:
                    penalty *= 1.0 - self.bonus.get(tensor.algorithm, 0.0)
                    penalty *= 1.0 - self.bonus.get(tensor.granularity, 0.0)
            accuracy -= penalty
        return accuracy


class Scripted:
    """Returns ``values`` in order (first = the fp32 baseline) and remembers each model's plan."""

    def __init__(self, values: Sequence[float], then: float | None = None) -> None:
        self.values = list(values)
        self.then = then
        self.plans: list[QuantPlan | None] = []

    def __call__(self, model: ToyNet) -> float:
        self.plans.append(model.plan)
        if len(self.plans) <= len(self.values):
            return self.values[len(self.plans) - 1]
        if self.then is None:
            raise AssertionError(
                f"eval_func called {len(self.plans)} times; script has {len(self.values)}"
            )
        return self.then


class Killed(Exception):
    """Stands for the process being killed in the middle of a trial."""


@dataclass
class KillAt:
    """Wraps an evaluation and raises ``Killed`` on call number ``at`` (1 = the baseline)."""

    inner: Any
    at: int
    calls: int = 0

    def __call__(self, model: ToyNet) -> float:
        self.calls += 1
        if self.calls == self.at:
            raise Killed(f"killed during evaluation {self.at}")
        return float(self.inner(model))


def tune_toy(strategy: str, eval_func: Any, workspace: Any, timeout: float = 0, **kw: Any) -> Any:
    """Tune the toy net (conv2 with outliers) at quant_level 1 for accuracy, 25 trials at most;
    ``kw`` goes to ``fit`` (an executor, resume_from). Exhaustive misses the goal within 25
    trials: its closest candidate (``TuningError.best``) is returned to compare."""
    conf = PostTrainingQuantConfig(
        approach="static",
        quant_level=1,
        tuning_criterion=TuningCriterion(
            strategy=strategy, objective="accuracy", max_trials=25, timeout=timeout
        ),
    )
    try:
        return quantization.fit(
            toy_net(outliers={"conv2": 30.0}),
            conf,
            calib_dataloader=calib_batches(),
            eval_func=eval_func,
            workspace=workspace,
            **kw,
        )
    except TuningError as miss:
        assert miss.best is not None
        return miss.best
