"""inc-core's weight-only algorithms applied as fake quantization (quantize, then dequantize
into the fp32 model): their accuracy, measured before a backend packs them for its kernels.

These rows measure ``inc_core.weight_only`` (RTN/GPTQ/AWQ, numpy) alone; the "inc" rows of the
tables go through ``quantization.fit`` and the backend's real kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inc_core import weight_only as woq


@dataclass(frozen=True)
class Scheme:
    bits: int
    group_size: int
    scheme: str
    algorithm: str

    def label(self) -> str:
        g = "per-channel" if self.group_size == -1 else f"g{self.group_size}"
        return f"int{self.bits} {self.scheme} {g} {self.algorithm}"


def fake_quantized(
    weights: Sequence[np.ndarray], s: Scheme, x: np.ndarray | None = None
) -> list[np.ndarray]:
    """The float weights ``(K, N_i)`` that the quantized ``weights`` compute with.

    ``weights`` read the same input ``x`` (rows ``(n, K)``, needed for GPTQ and AWQ): AWQ picks
    one per-input-channel scale for all of them (what folding it into their shared producer
    allows); the scale is divided back out here, so ``x @ result`` is what the kernel computes
    on ``x / scale``.
    """
    widths = [w.shape[1] for w in weights]
    joined = np.concatenate(weights, axis=1).astype(np.float32)
    if s.algorithm == "RTN":
        out = woq.rtn(joined, s.bits, s.group_size, s.scheme).dequantize()
    elif s.algorithm == "GPTQ":
        assert x is not None
        rows = int(np.prod(np.shape(x)[:-1]))  # the Hessian's sample count, as fit passes it
        out = woq.gptq(
            joined, woq.hessian(x), s.bits, s.group_size, s.scheme, samples=rows
        ).dequantize()
    elif s.algorithm == "AWQ":
        assert x is not None
        found = woq.awq(joined, x, s.bits, s.group_size, s.scheme)
        out = found.weight.dequantize() / found.scale[:, None]
    else:
        raise ValueError(f"algorithm {s.algorithm!r}: RTN, GPTQ or AWQ")
    return np.split(out, np.cumsum(widths)[:-1], axis=1)


def packed_bytes(k: int, n: int, s: Scheme) -> int:
    """Bytes of a ``(K, N)`` weight as ``MatMulNBits`` stores it: packed integers, a float32
    scale per group and column, packed zero points for ``asym``."""
    group = k if s.group_size == -1 else s.group_size
    groups = -(-k // group)
    data = n * groups * group * s.bits // 8
    zeros = n * -(-groups * s.bits // 8) if s.scheme == "asym" else 0
    return data + n * groups * 4 + zeros
