"""``WeightOnlyLinear``: an ``nn.Linear`` whose weight is held as group-wise integers."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from inc_core.weight_only import QuantizedWeight

from . import kernels


class WeightOnlyLinear(nn.Module):
    """``y = (x / input_scale) @ W.T + bias`` with ``W`` dequantized from ``bits``-bit integers,
    one scale (and, for asym, one zero point) per ``group_size`` inputs of each output.

    Every state is a tensor buffer (uint8 ``qweight`` and ``zero_point``, float32 ``scale``,
    ``bias``, ``input_scale``), so ``state_dict`` saves with ``torch.save(weights_only)`` or
    safetensors alike. ``input_scale`` is AWQ's per-input scale (inputs are divided by it).
    ``kernel`` ("inductor" or "eager", see ``kernels``) is how ``forward`` computes.
    """

    qweight: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    bias: torch.Tensor | None
    input_scale: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int,
        scheme: str,
        *,
        bias: bool = True,
        input_scale: bool = False,
        kernel: str | None = None,
    ) -> None:
        super().__init__()
        if group_size < 1 or in_features < 1 or out_features < 1:
            raise ValueError(
                f"in_features={in_features}, out_features={out_features} and resolved "
                f"group_size={group_size} must be positive"
            )
        if kernel is not None and kernel not in kernels.KERNELS:
            raise ValueError(
                f"kernel={kernel!r} is not allowed; allowed: {', '.join(kernels.KERNELS)}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.group_size = group_size
        self.scheme = scheme
        self.kernel = kernel or kernels.default_kernel()
        groups = -(-in_features // group_size)
        width = (group_size + group_size % 2) // 2 if kernels.nibbles(bits) else group_size
        self.register_buffer("qweight", torch.zeros(out_features, groups, width, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, groups))
        zero = torch.zeros(out_features, groups, dtype=torch.uint8) if scheme == "asym" else None
        self.register_buffer("zero_point", zero)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("input_scale", torch.ones(in_features) if input_scale else None)

    @classmethod
    def from_quantized(
        cls,
        qw: QuantizedWeight,
        bias: torch.Tensor | None = None,
        input_scale: np.ndarray | None = None,
        kernel: str | None = None,
    ) -> WeightOnlyLinear:
        """The module for inc-core's result ``qw`` of a weight ``(K, N)`` (``Linear.weight.T``).

        ``input_scale`` (``(K,)``) is AWQ's scale: ``qw`` quantizes ``scale[:, None] * w``.
        """
        packed = kernels.pack(qw)
        n = int(qw.q.shape[1])
        if bias is not None and tuple(bias.shape) != (n,):
            raise ValueError(
                f"bias must have shape ({n},) for {n} outputs, got {tuple(bias.shape)}"
            )
        if input_scale is not None and np.shape(input_scale) != (qw.k,):
            raise ValueError(
                f"input_scale must have shape ({qw.k},) for {qw.k} inputs, got "
                f"{np.shape(input_scale)}"
            )
        module = cls(
            qw.k,
            n,
            qw.bits,
            qw.group_size,
            qw.scheme,
            bias=bias is not None,
            input_scale=input_scale is not None,
            kernel=kernel,
        )
        module.qweight = packed.qweight
        module.scale = packed.scale
        module.zero_point = packed.zero_point
        if bias is not None:
            module.bias = bias.detach().to(torch.float32).clone()
        if input_scale is not None:
            module.input_scale = torch.as_tensor(np.asarray(input_scale, dtype=np.float32))
        return module

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 ``(out_features, in_features)`` weight this module multiplies with
        (``input_scale`` folded in)."""
        weight = kernels.dequantized(
            self.qweight,
            self.scale,
            self.zero_point,
            self.bits,
            self.group_size,
            self.in_features,
        )
        return weight if self.input_scale is None else weight / self.input_scale

    def _key(self, what: str) -> tuple[Any, ...]:
        return (what, self.out_features, self.in_features, self.bits, self.group_size, self.scheme)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"input has {x.shape[-1]} features in its last dimension, this layer takes "
                f"{self.in_features}"
            )
        rows = x.reshape(-1, self.in_features).to(torch.float32)
        if self.input_scale is not None:
            rows = rows / self.input_scale
        out: torch.Tensor | None = None
        inductor = self.kernel == "inductor"
        if inductor and rows.shape[0] <= kernels.FUSED_MAX_ROWS:
            out = kernels.run(
                kernels.fused,
                self._key("fused"),
                rows,
                self.qweight,
                self.scale,
                self.zero_point,
                self.bits,
                self.group_size,
            )
        if out is None:
            out = self._tiled(rows, inductor)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def _tiled(self, rows: torch.Tensor, inductor: bool) -> torch.Tensor:
        """``rows @ W.T`` a block of outputs at a time: each block's weight is dequantized
        into a tile of about ``kernels.TILE_ELEMENTS`` floats (cache-sized: no full fp32
        weight is ever allocated) and multiplied by the float GEMM into its rows of ``out``."""
        n, k = self.out_features, self.in_features
        tiles = -(-n * k // kernels.TILE_ELEMENTS)
        step = -(-n // tiles)
        out_t = torch.empty(n, rows.shape[0], dtype=torch.float32)
        for start in range(0, n, step):
            stop = min(start + step, n)
            zero = None if self.zero_point is None else self.zero_point[start:stop]
            args = (
                self.qweight[start:stop],
                self.scale[start:stop],
                zero,
                self.bits,
                self.group_size,
                k,
            )
            key = (*self._key("tile"), stop - start)
            weight = kernels.run(kernels.dequantized, key, *args) if inductor else None
            if weight is None:
                weight = kernels.dequantized(*args)
            torch.mm(weight, rows.T, out=out_t[start:stop])
        return out_t.T

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bits={self.bits}, group_size={self.group_size}, scheme={self.scheme}, "
            f"bias={self.bias is not None}, awq={self.input_scale is not None}, "
            f"kernel={self.kernel}"
        )
