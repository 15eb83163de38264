"""How ``com.microsoft::MatMulNBits`` reads an inc-core ``QuantizedWeight``: the packing
(onnxruntime's ``ContribOperators.md`` and its own ``MatMulNBitsQuantizer``), shared by the
weight-only quantizer and the ``accuracy_level`` measurement."""

from __future__ import annotations

import numpy as np

from inc_core.weight_only import QuantizedWeight


def pack_values(values: np.ndarray, bits: int, fill: int = 0) -> np.ndarray:
    """uint8 ``values`` ``(..., L)`` (each below ``2**bits``) packed along the last axis,
    earlier values in the lower bits; ``L`` padded with ``fill`` to whole bytes."""
    per_byte = 8 // bits
    length = values.shape[-1]
    padded_len = -(-length // per_byte) * per_byte
    padded = np.full((*values.shape[:-1], padded_len), fill, dtype=np.uint8)
    padded[..., :length] = values
    parts = padded.reshape(*values.shape[:-1], padded_len // per_byte, per_byte)
    packed = np.zeros(parts.shape[:-1], dtype=np.uint8)
    for i in range(per_byte):
        packed |= (parts[..., i] << (bits * i)).astype(np.uint8)
    return packed


def pack(qw: QuantizedWeight, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``qw`` as MatMulNBits' ``B`` ``[N, n_blocks, blob]``, ``scales`` ``[N * n_blocks]`` and
    ``zero_points`` ``[N * ceil(n_blocks * bits / 8)]``.

    ``qw``'s groups must be the kernel's blocks, or (``group_size=-1``) one group that the
    single block covers; the rows between ``qw.padded_k`` and the block end hold the zero point.
    """
    n = qw.q.shape[1]
    n_blocks = -(-qw.k // block_size)
    if qw.n_groups != n_blocks or qw.padded_k > n_blocks * block_size:
        raise ValueError(
            f"a weight of {qw.n_groups} group(s) of {qw.group_size} rows does not fit "
            f"MatMulNBits blocks of {block_size} rows over K={qw.k}"
        )
    rows = np.empty((n_blocks * block_size, n), dtype=np.uint8)
    rows[: qw.padded_k] = qw.q
    rows[qw.padded_k :] = qw.zero_point[-1]  # only with one group: the padding is worth 0.0
    by_column = rows.T.reshape(n, n_blocks, block_size)
    blob = pack_values(by_column, qw.bits)
    scales = np.ascontiguousarray(qw.scale.T, dtype=np.float32).reshape(-1)
    # an odd block count's spare zero point nibble is never read: 2**(bits-1), as onnxruntime's
    # own quantizer writes it, so that the bytes are the same
    zp = np.ascontiguousarray(qw.zero_point.T)
    zero_points = pack_values(zp, qw.bits, fill=2 ** (qw.bits - 1)).reshape(-1)
    return blob, scales, zero_points
