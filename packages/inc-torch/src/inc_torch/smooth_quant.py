"""SmoothQuant: move activation outliers into the weights of Linear layers before int8.

For a Linear with input X and weight W, per input channel j::

    s_j = max|X_j| ** alpha / max|W_:,j| ** (1 - alpha),   X' = X / s,   W' = W * s

so X' W'^T == X W^T while X' has a flatter range. ``alpha="auto"`` picks, per layer, the alpha
of a small grid whose int8 output is closest (MSE) to the fp32 output on calibration inputs.

Where the division ``X / s`` goes: into the op that produces ``X`` (a LayerNorm/RMSNorm or a
Linear) when only smoothed Linears read its output, which then share one ``s``
(``smooth_fold``: pre-norm transformers' Q/K/V and MLP inputs); otherwise, as in BERT, whose
LayerNorm output also feeds the residual, a per-channel multiply on the Linear's input just
before it is quantized (one cheap elementwise op), exact whatever the graph. Scales are saved
with the model, keyed ``"linear"`` or, when folded, ``"linear@absorber"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from inc_core import scheme
from inc_core.space import QuantPlan, TensorRange, TensorRanges

from . import _ops, smooth_fold
from ._data import call

KEY_PREFIX = "smooth_quant:"
AUTO_ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
_SAMPLE_ROWS = 512


def enabled(plan: QuantPlan) -> bool:
    return bool(plan.recipes.get("smooth_quant", False))


def targets(model: nn.Module, plan: QuantPlan) -> list[str]:
    """Quantized Linear ops of the plan (or of ``smooth_quant_args['op_types']``)."""
    args = plan.recipes.get("smooth_quant_args", {}) or {}
    types = set(args.get("op_types", ["Linear"]))
    return [
        name
        for name, op in plan.ops.items()
        if op.quantized and type(_ops.submodule(model, name)).__name__ in types
    ]


@torch.no_grad()
def compute(model: nn.Module, plan: QuantPlan, batches: Sequence[Any]) -> dict[str, np.ndarray]:
    """Per-input-channel smoothing scales for every target Linear of ``model`` (fp32)."""
    args = plan.recipes.get("smooth_quant_args", {}) or {}
    alpha = args.get("alpha", 0.5)
    names = targets(model, plan)
    amax: dict[str, torch.Tensor] = {}
    samples: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = []
    for name in names:

        def hook(_m: nn.Module, inputs: tuple[Any, ...], name: str = name) -> None:
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            current = x.abs().amax(dim=0)
            amax[name] = current if name not in amax else torch.maximum(amax[name], current)
            if sum(len(s) for s in samples[name]) < _SAMPLE_ROWS:
                samples[name].append(x[:_SAMPLE_ROWS])

        handles.append(_ops.submodule(model, name).register_forward_pre_hook(hook))
    try:
        model.eval()
        for batch in batches:
            call(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    reached = [name for name in names if name in amax]
    folds = smooth_fold.find(model, reached, batches[0]) if batches else []
    folded = {name for fold in folds for name in fold.linears}
    # a group shares one s: the members' weights side by side act as one Linear
    groups = [(fold.linears, "@" + fold.absorber) for fold in folds]
    groups += [((name,), "") for name in reached if name not in folded]
    scales = {}
    for members, suffix in groups:
        weight = torch.cat([_ops.submodule(model, n).weight.detach().float() for n in members])
        act_max = torch.stack([amax[n] for n in members]).amax(dim=0)
        x = torch.cat(samples[members[0]])[:_SAMPLE_ROWS]
        chosen = (
            _auto_alpha(x, weight, act_max)
            if alpha == "auto"
            else float(alpha[0] if isinstance(alpha, (list, tuple)) else alpha)
        )
        s = _scales(act_max, weight, chosen).numpy().astype(np.float64)
        for name in members:
            scales[name + suffix] = s
    return scales


def _scales(act_max: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    w_max = weight.abs().amax(dim=0).clamp(min=1e-5)
    s = act_max.clamp(min=1e-5).pow(alpha) / w_max.pow(1 - alpha)
    return torch.where(act_max > 0, s, torch.ones_like(s)).clamp(min=1e-5)


def _int8_error(x: torch.Tensor, weight: torch.Tensor, s: torch.Tensor) -> float:
    xs, ws = (x / s).numpy(), (weight * s).numpy()
    aq = scheme.compute_qparams(
        xs.min(), xs.max(), dtype="uint8", scheme="asym", convention="pytorch"
    )
    wq = scheme.weight_qparams(ws, granularity="per_channel", axis=0, convention="pytorch")
    approx = scheme.fake_quantize(xs, aq) @ scheme.fake_quantize(ws, wq).T
    exact = x.numpy() @ weight.numpy().T
    return float(np.mean((approx - exact) ** 2))


def _auto_alpha(x: torch.Tensor, weight: torch.Tensor, act_max: torch.Tensor) -> float:
    errors = {a: _int8_error(x, weight, _scales(act_max, weight, a)) for a in AUTO_ALPHAS}
    return min(errors, key=errors.__getitem__)


def split(key: str) -> tuple[str, str]:
    """``"linear@absorber"`` -> (linear, absorber); ``"linear"`` -> (linear, "")."""
    linear, _, absorber = key.partition("@")
    return linear, absorber


def hooked(scales: Mapping[str, Any]) -> bool:
    """Whether some ``X / s`` runs as an input hook (which FX graph mode would not see)."""
    return any(not split(key)[1] for key in scales)


def scale_weights(model: nn.Module, scales: Mapping[str, Sequence[float] | np.ndarray]) -> None:
    """W' = W * s on ``model``'s Linears (a copy the caller owns), and 1/s folded into the
    absorbers of folded groups."""
    absorbed = set()
    with torch.no_grad():
        for key, s in scales.items():
            name, absorber = split(key)
            linear = _ops.submodule(model, name)
            linear.weight.mul_(torch.as_tensor(np.asarray(s), dtype=linear.weight.dtype))
            if absorber and absorber not in absorbed:
                inverse = torch.as_tensor(1.0 / np.asarray(s, dtype=np.float64))
                smooth_fold.fold(_ops.submodule(model, absorber), inverse)
                absorbed.add(absorber)


class _InputScale:
    """A forward pre-hook multiplying the first input by 1/s (picklable, deep-copyable)."""

    def __init__(self, inverse: torch.Tensor) -> None:
        self.inverse = inverse

    def __call__(self, _module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
        return (inputs[0] * self.inverse, *inputs[1:])


def install(model: nn.Module, scales: Mapping[str, Sequence[float] | np.ndarray]) -> None:
    """Divide each smoothed Linear's input by s, on whatever module now sits at its name.

    After eager preparation that module is the quant wrapper, so the quantizer sees X / s.
    Folded scales need nothing here: their absorber already divides.
    """
    for key, s in scales.items():
        name, absorber = split(key)
        if absorber:
            continue
        inverse = torch.as_tensor(1.0 / np.asarray(s, dtype=np.float64), dtype=torch.float32)
        _ops.submodule(model, name).register_forward_pre_hook(_InputScale(inverse))


def to_ranges(scales: Mapping[str, np.ndarray]) -> TensorRanges:
    """Scales carried with the calibrated ranges (the core caches both per recipe set)."""
    return {KEY_PREFIX + name: TensorRange.of(s, s) for name, s in scales.items()}


def from_ranges(ranges: TensorRanges) -> tuple[dict[str, list[float]], TensorRanges]:
    scales = {
        k[len(KEY_PREFIX) :]: np.atleast_1d(r.min).tolist()
        for k, r in ranges.items()
        if k.startswith(KEY_PREFIX)
    }
    rest = {k: r for k, r in ranges.items() if not k.startswith(KEY_PREFIX)}
    return scales, rest
