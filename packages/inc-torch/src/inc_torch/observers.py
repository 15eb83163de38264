"""Torch observer modules whose statistics and qparams come from ``inc_core``.

torch's quantization passes (``prepare_fx``/``convert_fx``, eager ``prepare``/``convert``,
``quantize_dynamic``) insert observers and later ask each for ``calculate_qparams()``. These
classes make that answer the core's: ranges from ``inc_core.calibration`` observers, scale and
zero point from ``inc_core.scheme.compute_qparams`` under the backend's convention. So the
int8 model carries exactly the parameters the golden reference computes for the same ranges.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.ao.quantization.observer import ObserverBase

from inc_core import scheme
from inc_core.calibration import create_observer
from inc_core.space import TensorRange

TORCH_DTYPES = {"uint8": torch.quint8, "int8": torch.qint8}


def _qscheme(sym: bool, per_channel: bool) -> torch.qscheme:
    if per_channel:
        return torch.per_channel_symmetric if sym else torch.per_channel_affine
    return torch.per_tensor_symmetric if sym else torch.per_tensor_affine


class IncActivationObserver(ObserverBase):
    """Observes an activation with an ``inc_core`` observer; ``seed`` sets a known range.

    Calibration runs the prepared model over data (``forward`` feeds the core's observer);
    quantization builds a fresh prepared model and seeds each observer with the range found
    during calibration, so one calibration serves every candidate plan.
    """

    def __init__(
        self,
        dtype: str = "uint8",
        sym: bool = False,
        algorithm: str = "minmax",
        convention: str = "pytorch",
        reduce_range: bool = False,
    ) -> None:
        super().__init__(dtype=TORCH_DTYPES[dtype])
        self.inc_dtype = dtype
        self.sym = sym
        self.algorithm = algorithm
        self.convention = convention
        self.reduce_range = reduce_range
        self.qscheme = _qscheme(sym, per_channel=False)
        self.quant_min, self.quant_max = scheme.integer_range(dtype, reduce_range)
        self.observer = create_observer(
            algorithm,
            dtype=dtype,
            scheme="sym" if sym else "asym",
            convention=convention,
            reduce_range=reduce_range,
        )
        self.seeded: tuple[float, float] | None = None
        self.observed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.seeded is None and torch.is_tensor(x) and x.is_floating_point():
            self.observer.update(x.detach().float().cpu().numpy())
            self.observed = True
        return x

    def seed(self, rng: TensorRange) -> None:
        self.seeded = (float(rng.min), float(rng.max))

    def range(self) -> TensorRange:
        if self.seeded is not None:
            return TensorRange.of(*self.seeded)
        return TensorRange.of(*self.observer.range())

    def qparams(self) -> scheme.QuantParams:
        rng = self.range()
        return scheme.compute_qparams(
            rng.min,
            rng.max,
            dtype=self.inc_dtype,
            scheme="sym" if self.sym else "asym",
            convention=self.convention,
            reduce_range=self.reduce_range,
        )

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        params = self.qparams()
        return (
            torch.tensor([float(params.scale)], dtype=torch.float64),
            torch.tensor([int(params.zero_point)], dtype=torch.int64),
        )

    def extra_repr(self) -> str:
        return f"dtype={self.inc_dtype}, sym={self.sym}, algorithm={self.algorithm}, convention={self.convention}"


class IncWeightObserver(ObserverBase):
    """Weight qparams from the weight's own min/max, per tensor or per output channel."""

    def __init__(
        self,
        dtype: str = "int8",
        sym: bool = True,
        per_channel: bool = True,
        convention: str = "pytorch",
        ch_axis: int = 0,
    ) -> None:
        super().__init__(dtype=TORCH_DTYPES[dtype])
        self.inc_dtype = dtype
        self.sym = sym
        self.per_channel = per_channel
        self.convention = convention
        self.ch_axis = ch_axis
        self.qscheme = _qscheme(sym, per_channel)
        self.quant_min, self.quant_max = scheme.integer_range(dtype, False)
        self.weight: np.ndarray | None = None

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        self.weight = w.detach().float().cpu().numpy()
        return w

    def qparams(self) -> scheme.QuantParams:
        if self.weight is None:
            raise RuntimeError("weight observer has seen no weight")
        return scheme.weight_qparams(
            self.weight,
            dtype=self.inc_dtype,
            scheme="sym" if self.sym else "asym",
            granularity="per_channel" if self.per_channel else "per_tensor",
            axis=self.ch_axis,
            convention=self.convention,
        )

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        params = self.qparams()
        scale = torch.as_tensor(np.atleast_1d(params.scale), dtype=torch.float64)
        zero_point = torch.as_tensor(np.atleast_1d(params.zero_point), dtype=torch.int64)
        return scale, zero_point

    def extra_repr(self) -> str:
        return (
            f"dtype={self.inc_dtype}, per_channel={self.per_channel}, convention={self.convention}"
        )


def observers_in(model: torch.nn.Module) -> dict[str, IncActivationObserver]:
    """Every activation observer of a prepared model by qualified module name."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, IncActivationObserver)
    }
