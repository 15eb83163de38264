"""What every section shares: inc's ``fit`` with "pending" detection, timing, sizes, cosine."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.models.measure import interleaved
from inc_core import PostTrainingQuantConfig, quantization
from inc_core.errors import ConfigError

__all__ = ["Fitted", "cosine", "inc_fit", "interleaved", "model_bytes", "weight_only_conf"]

#: how inc-core says a backend has no weight-only path yet (D/E wire ONNX Runtime and torch)
NOT_AVAILABLE = "is not available"


@dataclass
class Fitted:
    """A quantized model, or why there is none: ``status`` is "ok", "pending" or "failed"."""

    model: Any
    status: str
    note: str
    seconds: float
    report: Mapping[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def cell(self) -> str:
        """What a table shows instead of a number when there is no model."""
        return "pending" if self.status == "pending" else f"failed: {self.note}"


def weight_only_conf(
    bits: int,
    group_size: int,
    scheme: str,
    algorithm: str,
    keep_fp32: tuple[str, ...] = (),
    full_range: bool = False,
) -> PostTrainingQuantConfig:
    """INC 2.x's weight-only config, verbatim; ``keep_fp32`` op names stay float (``lm_head``);
    ``full_range`` sets the algorithm's ``enable_full_range`` (sym uses -2**(bits-1) too)."""
    rule = {"bits": bits, "group_size": group_size, "scheme": scheme, "algorithm": algorithm}
    recipes: dict[str, Any] = {
        "gptq_args": {"percdamp": 0.01, "act_order": False},
        "awq_args": {"enable_auto_scale": True},
    }
    if full_range:  # the algorithm's own recipe carries it (rtn_args, gptq_args, awq_args)
        recipes.setdefault(f"{algorithm.lower()}_args", {})["enable_full_range"] = True
    return PostTrainingQuantConfig(
        approach="weight_only",
        op_type_dict={".*": {"weight": rule}},
        op_name_dict={name: {"weight": {"dtype": "fp32"}} for name in keep_fp32} or None,
        recipes=recipes,
    )


def inc_fit(model: Any, conf: PostTrainingQuantConfig, **kwargs: Any) -> Fitted:
    """``quantization.fit``; a backend without weight-only support yet is "pending", not a crash."""
    start = time.perf_counter()
    try:
        q = quantization.fit(model, conf, **kwargs)
    except ConfigError as exc:
        status = "pending" if NOT_AVAILABLE in str(exc) else "failed"
        return Fitted(None, status, _short(exc), time.perf_counter() - start, {})
    except Exception as exc:  # a benchmark row says what broke and the others still run
        return Fitted(None, "failed", _short(exc), time.perf_counter() - start, {})
    return Fitted(q.model, "ok", "", time.perf_counter() - start, dict(q.report))


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of matching rows."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def model_bytes(module: Any) -> int:
    """Bytes of the tensors a torch module keeps (parameters and buffers, packed ones included),
    each storage once: a tied ``lm_head`` is the embedding's storage."""
    import torch

    seen: dict[int, int] = {}
    for t in module.state_dict(keep_vars=True).values():
        if isinstance(t, torch.Tensor) and t.numel():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())
