"""A tiny numpy backend for the core's own tests: an MLP whose int8 behaviour is simulated with
``inc_core.scheme``'s fake quantization. It exercises the contract without any framework."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from inc_core import scheme
from inc_core.backend import Backend
from inc_core.calibration import create_observer
from inc_core.space import (
    OpCapability,
    OpInfo,
    QuantPlan,
    TensorOptions,
    TensorRange,
    TensorRanges,
    TensorScheme,
)


@dataclass(frozen=True)
class Dense:
    name: str
    weight: np.ndarray  # (in, out)
    bias: np.ndarray
    relu: bool = True
    input_qparams: scheme.QuantParams | None = None
    weight_qparams: scheme.QuantParams | None = None
    dynamic: bool = False


def as_features(inputs: Any) -> np.ndarray:
    """One batch of model inputs as a feature matrix.

    The MLP takes an array, or several inputs (a tuple/list, or a dict in key order) whose
    features are concatenated: that is how the tests feed a "multi-input" model.
    """
    if isinstance(inputs, Mapping):
        inputs = list(inputs.values())
    if isinstance(inputs, (tuple, list)):
        return np.concatenate([np.asarray(part, dtype=np.float64) for part in inputs], axis=1)
    return np.asarray(inputs, dtype=np.float64)


@dataclass(frozen=True)
class NumpyMLP:
    layers: tuple[Dense, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __call__(self, x: Any) -> np.ndarray:
        return self.layer_outputs(x)[self.layers[-1].name]

    def layer_outputs(self, x: Any) -> dict[str, np.ndarray]:
        """Each layer's output by name (the last is the model's output)."""
        outputs = {}
        out = as_features(x)
        for layer in self.layers:
            act = out
            if layer.dynamic:
                lo, hi = scheme.tensor_range(act)
                act = scheme.fake_quantize(
                    act, scheme.compute_qparams(lo, hi, dtype="uint8", scheme="asym")
                )
            elif layer.input_qparams is not None:
                act = scheme.fake_quantize(act, layer.input_qparams)
            weight = layer.weight
            if layer.weight_qparams is not None:
                weight = scheme.fake_quantize(weight, layer.weight_qparams)
            out = act @ weight + layer.bias
            if layer.relu:
                out = np.maximum(out, 0.0)
            outputs[layer.name] = out
        return outputs


_ACT = TensorOptions(
    dtype=("uint8", "int8"),
    scheme=("asym", "sym"),
    granularity=("per_tensor",),
    algorithm=("minmax", "kl", "percentile", "mse"),
)
_WEIGHT = TensorOptions(dtype=("int8",), scheme=("sym",), granularity=("per_channel", "per_tensor"))


@dataclass
class QatDense:
    """A layer being trained with fake quantization: its own weight copy and activation range."""

    name: str
    weight: np.ndarray
    bias: np.ndarray
    relu: bool
    activation: TensorScheme | None  # None: the layer stays fp32
    weight_scheme: TensorScheme | None
    lo: float = np.inf
    hi: float = -np.inf

    def act_qparams(self, convention: str) -> scheme.QuantParams:
        assert self.activation is not None
        return scheme.compute_qparams(
            self.lo,
            self.hi,
            dtype=self.activation.dtype,
            scheme=self.activation.scheme,
            convention=convention,
        )

    def weight_qparams(self, convention: str) -> scheme.QuantParams:
        assert self.weight_scheme is not None
        return scheme.weight_qparams(
            self.weight,
            dtype=self.weight_scheme.dtype,
            scheme=self.weight_scheme.scheme,
            granularity=self.weight_scheme.granularity,
            axis=1,
            convention=convention,
        )


@dataclass
class FakeQuantMLP:
    """What ``prepare_qat`` returns: a trainable copy that fake-quantizes as it runs.

    While ``training`` is on, each quantized layer widens its activation range from the batches
    it sees; ``train_step`` does one step of softmax cross-entropy SGD, passing gradients
    straight through the fake quantization (the usual STE).
    """

    layers: list[QatDense]
    convention: str
    training: bool = True

    def _forward(self, x: Any) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        out = as_features(x)
        cache = []
        for layer in self.layers:
            act, weight = out, layer.weight
            if layer.activation is not None:
                if self.training:
                    layer.lo = min(layer.lo, float(act.min()))
                    layer.hi = max(layer.hi, float(act.max()))
                act = scheme.fake_quantize(act, layer.act_qparams(self.convention))
                weight = scheme.fake_quantize(weight, layer.weight_qparams(self.convention))
            out = act @ weight + layer.bias
            if layer.relu:
                out = np.maximum(out, 0.0)
            cache.append((act, weight))
        return out, cache

    def __call__(self, x: Any) -> np.ndarray:
        return self._forward(x)[0]

    def train_step(self, x: Any, y: np.ndarray, lr: float = 0.05) -> float:
        """One SGD step on softmax cross-entropy; returns the batch loss."""
        logits, cache = self._forward(x)
        logits = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        loss = float(-np.log(probs[np.arange(len(y)), y] + 1e-12).mean())
        grad = probs
        grad[np.arange(len(y)), y] -= 1.0
        grad /= len(y)
        for index in reversed(range(len(self.layers))):
            layer, (act, weight) = self.layers[index], cache[index]
            grad_w, grad_b = act.T @ grad, grad.sum(axis=0)
            grad = grad @ weight.T  # straight through this layer's input fake quantization
            layer.weight = layer.weight - lr * grad_w
            layer.bias = layer.bias - lr * grad_b
            if index > 0 and self.layers[index - 1].relu:
                grad = grad * (act > 0)
        return loss


class ReferenceBackend(Backend):
    name = "reference"
    package = "inc-core"
    framework = "numpy"
    convention = "onnxrt"
    op_type_aliases = {"Linear": ("Dense",), "MatMul": ("Dense",)}
    priority = 1000
    supports_qat = True

    @classmethod
    def accepts(cls, model: Any) -> bool:
        return isinstance(model, NumpyMLP)

    def ops(self, model: NumpyMLP) -> list[OpInfo]:
        return [OpInfo(layer.name, "Dense") for layer in model.layers]

    def capability(self, approach: str, device: str) -> dict[str, OpCapability]:
        if approach == "dynamic":
            return {"Dense": OpCapability(TensorOptions(("uint8",), ("asym",)), _WEIGHT)}
        return {"Dense": OpCapability(_ACT, _WEIGHT)}

    def calibrate(
        self, model: NumpyMLP, dataloader: Iterable[Any], plan: QuantPlan
    ) -> TensorRanges:
        observers = {}
        for layer in model.layers:
            op = plan.ops[layer.name]
            algorithm = op.activation.algorithm if op.activation else "minmax"
            observers[layer.name] = create_observer(algorithm)
        for batch in dataloader:
            out = as_features(batch)
            for layer in model.layers:
                observers[layer.name].update(out)
                out = out @ layer.weight + layer.bias
                if layer.relu:
                    out = np.maximum(out, 0.0)
        return {name: TensorRange.of(*obs.range()) for name, obs in observers.items()}

    def quantize(self, model: NumpyMLP, plan: QuantPlan, ranges: TensorRanges) -> NumpyMLP:
        layers = []
        for layer in model.layers:
            op = plan.ops[layer.name]
            if not op.quantized:
                layers.append(layer)
                continue
            assert op.weight is not None and op.activation is not None
            wq = scheme.weight_qparams(
                layer.weight,
                dtype=op.weight.dtype,
                scheme=op.weight.scheme,
                granularity=op.weight.granularity,
                axis=1,
                convention=self.convention,
            )
            if op.approach == "dynamic":
                layers.append(replace(layer, weight_qparams=wq, dynamic=True))
                continue
            rng = ranges[layer.name]
            aq = scheme.compute_qparams(
                rng.min,
                rng.max,
                dtype=op.activation.dtype,
                scheme=op.activation.scheme,
                convention=self.convention,
            )
            layers.append(replace(layer, input_qparams=aq, weight_qparams=wq))
        used = {name: [float(r.min), float(r.max)] for name, r in ranges.items()}
        return NumpyMLP(tuple(layers), {"plan": plan.to_dict(), "ranges": used})

    def predict(self, model: NumpyMLP, inputs: Any) -> np.ndarray:
        return model(inputs)

    def latency(self, model: NumpyMLP, inputs: Sequence[Any]) -> float:
        """A modelled cost, not a clock: numpy's fake quantization only adds work, while the
        kernels this backend stands for run int8 matmuls at a quarter of fp32's cost."""
        samples = as_features(inputs[0]).shape[0]
        cost = sum(
            layer.weight.size * (0.25 if layer.weight_qparams is not None else 1.0)
            for layer in model.layers
        )
        return cost * samples * 1e-9

    def op_outputs(self, model: NumpyMLP, inputs: Any, ops: Sequence[str]) -> dict[str, Any]:
        outputs = model.layer_outputs(inputs)
        return {name: outputs[name] for name in ops if name in outputs}

    def runs_as(self, model: NumpyMLP) -> dict[str, str]:
        return {
            layer.name: "Dense (int8)" if layer.weight_qparams is not None else "Dense (fp32)"
            for layer in model.layers
        }

    def model_size(self, model: NumpyMLP) -> int:
        return sum(layer.weight.size * (1 if layer.weight_qparams else 4) for layer in model.layers)

    def save(self, model: NumpyMLP, directory: Path) -> list[str]:
        arrays = {}
        for i, layer in enumerate(model.layers):
            arrays[f"w{i}"] = layer.weight
            arrays[f"b{i}"] = layer.bias
        np.savez(directory / "weights.npz", **arrays)
        layout = [{"name": layer.name, "relu": layer.relu} for layer in model.layers]
        (directory / "layout.json").write_text(json.dumps({"layers": layout, "meta": model.meta}))
        return ["weights.npz", "layout.json"]

    def load(self, directory: Path, **kwargs: Any) -> NumpyMLP:
        layout = json.loads((directory / "layout.json").read_text())
        plan = QuantPlan.from_dict(layout["meta"]["plan"]) if "plan" in layout["meta"] else None
        with np.load(directory / "weights.npz", allow_pickle=False) as arrays:
            fp32 = NumpyMLP(
                tuple(
                    Dense(spec["name"], arrays[f"w{i}"], arrays[f"b{i}"], spec["relu"])
                    for i, spec in enumerate(layout["layers"])
                )
            )
        if plan is None:
            return fp32
        ranges = {name: TensorRange.of(*r) for name, r in layout["meta"].get("ranges", {}).items()}
        return self.quantize(fp32, plan, ranges)

    # Quantization-aware training: fake quantization while training, int8 (simulated) after.
    def prepare_qat(self, model: NumpyMLP, plan: QuantPlan) -> FakeQuantMLP:
        layers = []
        for layer in model.layers:
            op = plan.ops[layer.name]
            layers.append(
                QatDense(
                    layer.name,
                    layer.weight.copy(),
                    layer.bias.copy(),
                    layer.relu,
                    op.activation if op.quantized else None,
                    op.weight if op.quantized else None,
                )
            )
        return FakeQuantMLP(layers, self.convention)

    def convert_qat(self, model: FakeQuantMLP, plan: QuantPlan) -> NumpyMLP:
        untrained = [
            layer.name for layer in model.layers if layer.activation and layer.lo > layer.hi
        ]
        if untrained:
            raise RuntimeError(f"layers {untrained} saw no training batch; train before converting")
        fp32 = NumpyMLP(
            tuple(Dense(layer.name, layer.weight, layer.bias, layer.relu) for layer in model.layers)
        )
        ranges = {
            layer.name: TensorRange.of(layer.lo, layer.hi)
            for layer in model.layers
            if layer.activation is not None
        }
        return self.quantize(fp32, plan, ranges)


def train_mlp(x: np.ndarray, y: np.ndarray, hidden: int = 32, seed: int = 0) -> NumpyMLP:
    """A 2-layer MLP fitted by scikit-learn-free least squares on random ReLU features."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 1 / np.sqrt(x.shape[1]), (x.shape[1], hidden))
    b1 = rng.normal(0, 0.1, hidden)
    h = np.maximum(x @ w1 + b1, 0)
    targets = np.eye(int(y.max()) + 1)[y]
    w2, *_ = np.linalg.lstsq(np.c_[h, np.ones(len(h))], targets, rcond=None)
    return NumpyMLP((Dense("fc1", w1, b1, True), Dense("fc2", w2[:-1], w2[-1], False)))
