"""The weight-only matmul: inc-core's group-wise integers packed for a fused CPU kernel.

Measured on a 4096x11008 Linear at batch 1, 2 threads (AVX-512 VNNI, torch 2.13): torch's
stock kernels are slower than fp32 there (``_weight_int8pack_mm`` 0.24-0.30x,
``_weight_int4pack_mm_for_cpu`` 0.08-0.17x), and so is inductor's lowering of
``linear(x, dequantized w)`` (0.06x: it dequantizes the whole weight, then multiplies). What
is fast is the matmul written as one reduction over ``K``, which inductor's C++ backend fuses
into a single vectorised loop that reads the packed bytes once: int8 3-6x fp32, int4 3x. So:

- ``fused`` (rows of ``x`` up to ``FUSED_MAX_ROWS``, a decode step): ``y[m, n] =
  sum_k x[m, k] * (q[n, k] - z[n, k // g]) * s[n, k // g]``, compiled by ``torch.compile``;
- for more rows (a prompt), ``dequantized`` one tile of output channels at a time (about
  ``TILE_ELEMENTS`` floats, cache-sized) and the float GEMM into those outputs: no full fp32
  weight is allocated (allocating one per call cost more in page faults than the GEMM).
  Measured under load, 8 rows of the 4096x11008 layer: fused 71 ms, tiles of 1024 rows 149
  ms, whole-weight dequantize + GEMM 387 ms, fp32 144 ms; at 32 rows fp32 wins (148 ms vs
  315 fused, 366 tiled): prompts run slower than fp32, decode steps faster.

Without a C++ compiler (inductor needs one) the tiles run eagerly for every row count
(``fused`` eagerly would materialise ``M * N * K`` floats): slower than fp32, and ``fit``
says so (``slow_reason``).

Layout, per output channel ``n`` (rows of ``nn.Linear.weight``), group ``G``: ``bits <= 4``
values are two per byte, the low nibble holding position ``j`` of the group and the high
nibble position ``j + g2 / 2`` (``g2`` is ``g`` rounded up to even, padded with the zero
point): unpacking is two shifts, no interleaving. ``bits > 4`` keep one value per byte.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from inc_core.weight_only import QuantizedWeight

log = logging.getLogger(__name__)

#: up to this many rows of ``x`` the fused reduction beats the dequantized tiles (measured: see
#: the module docstring; each row re-decodes the packed weight)
FUSED_MAX_ROWS = 8
#: floats in one dequantized weight tile of the many-rows path (16 MB: stays in L2/L3 between
#: its dequantization and its GEMM; a whole fp32 weight allocated per call cost page faults)
TILE_ELEMENTS = 1 << 22
#: bits stored two per byte
NIBBLE_BITS = 4
#: ``INC_TORCH_WO_KERNEL``: "inductor" or "eager" overrides the choice (tests, debugging)
KERNEL_ENV = "INC_TORCH_WO_KERNEL"
KERNELS: tuple[str, ...] = ("inductor", "eager")


@dataclass(frozen=True)
class Packed:
    """A ``QuantizedWeight`` as the kernel reads it (all tensors, safetensors-compatible)."""

    #: uint8 ``(N, G, g2 / 2)`` for ``bits <= 4``, ``(N, G, g)`` otherwise
    qweight: torch.Tensor
    #: float32 ``(N, G)``
    scale: torch.Tensor
    #: uint8 ``(N, G)`` for asym; None for sym, whose zero point is ``2**(bits - 1)``
    zero_point: torch.Tensor | None
    bits: int
    group_size: int
    in_features: int


def nibbles(bits: int) -> bool:
    return bits <= NIBBLE_BITS


def pack(qw: QuantizedWeight) -> Packed:
    """``qw`` (inc-core's ``(K, N)`` layout, ``K`` padded to whole groups) for the kernel."""
    n = qw.q.shape[1]
    g = qw.group_size
    q = np.ascontiguousarray(qw.q.T).reshape(n, qw.n_groups, g)  # (N, G, g)
    zero = np.ascontiguousarray(qw.zero_point.T)  # (N, G)
    if nibbles(qw.bits):
        if g % 2:  # pad each group with its zero point: it contributes (z - z) * s * x = 0
            q = np.concatenate([q, zero[:, :, None]], axis=2)
        half = q.shape[2] // 2
        q = q[:, :, :half] | (q[:, :, half:] << 4)
    return Packed(
        qweight=torch.from_numpy(np.ascontiguousarray(q, dtype=np.uint8)),
        scale=torch.from_numpy(np.ascontiguousarray(qw.scale.T, dtype=np.float32)),
        zero_point=torch.from_numpy(zero.astype(np.uint8)) if qw.scheme == "asym" else None,
        bits=qw.bits,
        group_size=g,
        in_features=qw.k,
    )


def _values(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """The integer values as float32 ``(N, G, g2)`` (unpacked nibbles, low half first)."""
    if not nibbles(bits):
        return qweight.to(torch.float32)
    low = (qweight & 15).to(torch.float32)
    high = (qweight >> 4).to(torch.float32)
    return torch.cat([low, high], dim=-1)


def _zero(zero_point: torch.Tensor | None, bits: int) -> torch.Tensor | float:
    return float(2 ** (bits - 1)) if zero_point is None else zero_point.to(torch.float32)


def dequantized(
    qweight: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    bits: int,
    group_size: int,
    in_features: int,
) -> torch.Tensor:
    """The float32 ``(N, K)`` weight (``nn.Linear.weight``'s layout) the integers stand for."""
    zero = _zero(zero_point, bits)
    zero = zero[..., None] if isinstance(zero, torch.Tensor) else zero
    values = (_values(qweight, bits)[..., :group_size] - zero) * scale[..., None]
    return values.reshape(values.shape[0], -1)[:, :in_features]


def fused(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    bits: int,
    group_size: int,
) -> torch.Tensor:
    """``x (M, K) @ dequantized.T`` as one reduction over ``K`` (compile it: eagerly this
    materialises ``M * N * K`` floats)."""
    m, k = x.shape
    groups = scale.shape[1]
    width = qweight.shape[-1] * (2 if nibbles(bits) else 1)
    x = F.pad(x, (0, groups * group_size - k)).reshape(m, 1, groups, group_size)
    x = F.pad(x, (0, width - group_size))
    zero = _zero(zero_point, bits)
    zero = zero[..., None] if isinstance(zero, torch.Tensor) else zero
    step = scale[..., None]
    if not nibbles(bits):
        return (x * ((qweight.to(torch.float32) - zero) * step)).sum((-1, -2))
    halves = x.reshape(m, 1, groups, 2, width // 2)
    low = ((qweight & 15).to(torch.float32) - zero) * step
    high = ((qweight >> 4).to(torch.float32) - zero) * step
    return (halves[..., 0, :] * low + halves[..., 1, :] * high).sum((-1, -2))


@functools.cache
def compiler() -> str | None:
    """The C++ compiler inductor would use, or None (then kernels run eagerly)."""
    for name in (os.environ.get("CXX", ""), "g++", "clang++", "c++"):
        if name and shutil.which(name):
            return name
    return None


def default_kernel() -> str:
    """``INC_TORCH_WO_KERNEL`` when set, else "inductor" where a C++ compiler is found."""
    forced = os.environ.get(KERNEL_ENV, "")
    if forced:
        if forced not in KERNELS:
            raise ValueError(
                f"{KERNEL_ENV}={forced!r} is not allowed; allowed: {', '.join(KERNELS)}"
            )
        return forced
    return "inductor" if compiler() is not None else "eager"


def slow_reason() -> str | None:
    """Why the default kernel is slower than fp32 (no compiler), or None."""
    if os.environ.get(KERNEL_ENV) or compiler() is not None:
        return None
    return (
        "no C++ compiler (g++/clang++, or $CXX) is on PATH for torch.compile: the weight-only "
        "layers dequantize their weight on every call, slower than fp32 (they still hold "
        "their int weights only); install a compiler for the fused kernel"
    )


Kernel = Callable[..., torch.Tensor]
# one compiled function per weight shape and format: dynamo caches compiled graphs per code
# object with a limit of 8 (torch._dynamo.config.recompile_limit), which a model with many
# Linear shapes would exceed and silently fall back to eager; a fresh code object each avoids it
_compiled: dict[tuple[Any, ...], Kernel] = {}
_failed: set[tuple[Any, ...]] = set()


def _fresh(fn: Kernel, tag: str) -> Kernel:
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    copy = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__)
    result: Kernel = copy
    return result


def compiled(fn: Kernel, key: tuple[Any, ...]) -> Kernel | None:
    """``fn`` compiled for one weight format ``key``, or None when compiling failed before."""
    full = (fn.__name__, *key)
    if full in _failed:
        return None
    if full not in _compiled:
        tag = "_".join(str(part) for part in full[1:]).replace("-", "m")
        _compiled[full] = torch.compile(_fresh(fn, tag), fullgraph=True)
    return _compiled[full]


def run(fn: Kernel, key: tuple[Any, ...], *args: Any) -> torch.Tensor | None:
    """``fn(*args)`` through its compiled version; None (said once) when compiling fails,
    e.g. a compiler that cannot build inductor's code: the caller then runs eagerly."""
    kernel = compiled(fn, key)
    if kernel is None:
        return None
    try:
        return kernel(*args)
    except Exception as exc:  # compile errors surface at the first call
        _failed.add((fn.__name__, *key))
        log.warning(
            "torch.compile of the weight-only kernel failed (%s: %s); running it eagerly, "
            "slower than fp32",
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
        )
        return None
