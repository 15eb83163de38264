"""Weight-only quantization of an ONNX model: ``MatMul`` with a constant ``B`` becomes
``com.microsoft::MatMulNBits`` (INC 2.x's ``approach="weight_only"`` on ONNX Runtime).

The math is inc-core's (``inc_core.weight_only``: groups along ``K`` of ``B`` ``(K, N)``,
``K`` padded to whole groups); this module only packs its result the way the kernel reads it
(onnxruntime's ``ContribOperators.md`` and its own ``MatMulNBitsQuantizer``):

- ``B``: uint8 ``[N, n_blocks, block_size * bits / 8]``, the column's values along ``K``, the
  lower bits of each byte holding the earlier value;
- ``scales``: ``[N * n_blocks]`` in ``A``'s float type, column-major by block;
- ``zero_points``: uint8 ``[N * ceil(n_blocks * bits / 8)]`` packed the same way per column;
  omitted for ``sym``, whose zero point ``2**(bits - 1)`` is the kernel's default.

Only the top-level graph's float32 ``MatMul`` nodes whose ``B`` is a 2-D initializer (not also
a graph input, which a user could override) are replaced; every other node is left as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from inc_core.errors import ConfigError
from inc_core.weight_only import QuantizedWeight, WeightOnlyScheme, op_choices, rtn

#: bits MatMulNBits unpacks (a byte holds a whole number of values); inc-core allows 2-8
KERNEL_BITS: tuple[int, ...] = (2, 4, 8)
#: block sizes MatMulNBits accepts: powers of two from 16 (its shape inference and MLAS'
#: kernels require this); larger blocks than 256 run on its slower generic path
MIN_BLOCK = 16
#: algorithms implemented here; GPTQ and AWQ need calibration activations inc-ort does not
#: collect for weight-only runs yet
ALGORITHMS: tuple[str, ...] = ("RTN",)
DOMAIN = "com.microsoft"

Chooser = Callable[[str], "WeightOnlyScheme | None"]


@dataclass(frozen=True)
class Replaced:
    """One ``MatMul`` this module rewrote, for reports and tests."""

    node: str
    weight: str
    k: int
    n: int
    bits: int
    block_size: int
    scheme: str


def block_size_for(scheme: WeightOnlyScheme, k: int) -> int:
    """The kernel's ``block_size`` for a rule's ``group_size`` (``ConfigError`` when it has none).

    ``group_size=-1`` (one group per output column) becomes one block covering all of ``K``:
    the next power of two from ``K``, the rows past ``K`` padded with the zero point. The scale
    is the same as over ``K`` alone, since padding zeros never widen a range that contains 0.
    """
    if scheme.group_size == -1:
        return max(MIN_BLOCK, 1 << (k - 1).bit_length())
    g = int(scheme.group_size)
    if g < MIN_BLOCK or g & (g - 1):
        raise ConfigError(
            f"group_size={g} has no ONNX Runtime MatMulNBits kernel: its block_size must be a "
            f"power of two from {MIN_BLOCK} (allowed: 16, 32, 64, 128, 256, ...; or -1 for one "
            "group per output channel)"
        )
    return g


def check_scheme(scheme: WeightOnlyScheme) -> None:
    """``ConfigError`` for settings the ONNX Runtime path does not build."""
    if scheme.bits not in KERNEL_BITS:
        raise ConfigError(
            f"bits={scheme.bits} has no ONNX Runtime MatMulNBits kernel; allowed for backend "
            f"'onnxrt': {', '.join(map(str, KERNEL_BITS))} (4 and 8 are the fast paths)"
        )
    if scheme.algorithm not in ALGORITHMS:
        raise ConfigError(
            f"algorithm={scheme.algorithm!r} is not yet available for backend 'onnxrt' "
            f"(weight-only); allowed there now: {', '.join(ALGORITHMS)}"
        )


def pack_values(values: np.ndarray, bits: int) -> np.ndarray:
    """uint8 ``values`` ``(..., L)`` (each below ``2**bits``) packed along the last axis,
    earlier values in the lower bits; ``L`` padded with zeros to whole bytes."""
    per_byte = 8 // bits
    length = values.shape[-1]
    padded_len = -(-length // per_byte) * per_byte
    padded = np.zeros((*values.shape[:-1], padded_len), dtype=np.uint8)
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
    zero_points = pack_values(np.ascontiguousarray(qw.zero_point.T), qw.bits).reshape(-1)
    return blob, scales, zero_points


def _weights(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    graph_inputs = {i.name for i in model.graph.input}
    return {i.name: i for i in model.graph.initializer if i.name not in graph_inputs}


def candidates(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The top-level ``MatMul`` nodes MatMulNBits can replace: float32 ``B`` a 2-D initializer."""
    weights = _weights(model)
    found = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        tensor = weights.get(node.input[1])
        if (
            tensor is not None
            and len(tensor.dims) == 2
            and tensor.data_type == onnx.TensorProto.FLOAT
        ):
            found.append(node)
    return found


def node_name(node: onnx.NodeProto) -> str:
    """The name rules match against: the node's, or its output's when it has none."""
    name: str = node.name or node.output[0]
    return name


def chooser_from_config(conf: Any) -> Chooser:
    """Per ``MatMul`` name, the default setting ``conf``'s rules give (``None``: keep fp32)."""

    def choose(name: str) -> WeightOnlyScheme | None:
        return op_choices(conf, name, "MatMul")[0]

    return choose


def quantize_model(
    model: onnx.ModelProto,
    choose: Chooser | Mapping[str, WeightOnlyScheme | None],
    *,
    full_range: bool = False,
    mse_search: bool = False,
    accuracy_level: int = 0,
    copy: bool = True,
) -> tuple[onnx.ModelProto, list[Replaced]]:
    """``model`` with every candidate ``MatMul`` whose setting is not ``None`` as MatMulNBits.

    ``choose`` maps a node's name (``node_name``) to its setting: a callable, or a mapping where
    a missing name keeps the node in fp32. ``full_range``/``mse_search`` are RTN's recipe
    arguments (``rtn_args``). ``accuracy_level`` (0-4) is written when not 0; 4 lets the CPU
    kernel quantize ``A`` to int8 and use its VNNI path. With ``copy`` the caller's model is
    left untouched. Every setting is checked before the graph is changed.
    """
    if not 0 <= accuracy_level <= 4:
        raise ConfigError(f"accuracy_level={accuracy_level!r} is not allowed; allowed: 0 to 4")
    pick: Chooser = choose.get if isinstance(choose, Mapping) else choose
    out = onnx.ModelProto()
    if copy:
        out.CopyFrom(model)
    else:
        out = model
    weights = _weights(out)
    plan: list[tuple[onnx.NodeProto, WeightOnlyScheme, int]] = []
    for node in candidates(out):
        scheme = pick(node_name(node))
        if scheme is None:
            continue
        check_scheme(scheme)
        k = int(weights[node.input[1]].dims[0])
        plan.append((node, scheme, block_size_for(scheme, k)))

    replaced: list[Replaced] = []
    built: dict[tuple[str, WeightOnlyScheme], list[str]] = {}
    new_inits: list[onnx.TensorProto] = []
    for node, scheme, block in plan:
        b_name = node.input[1]
        key = (b_name, scheme)
        if key not in built:
            w = numpy_helper.to_array(weights[b_name])
            qw = rtn(w, scheme.bits, scheme.group_size, scheme.scheme, full_range, mse_search)
            blob, scales, zeros = pack(qw, block)
            tag = f"{b_name}_Q{scheme.bits}G{block}{scheme.scheme}"
            names = [f"{tag}_B", f"{tag}_scales"]
            new_inits += [numpy_helper.from_array(blob, names[0])]
            new_inits += [numpy_helper.from_array(scales, names[1])]
            if scheme.scheme == "asym":
                names.append(f"{tag}_zero_points")
                new_inits.append(numpy_helper.from_array(zeros, names[2]))
            built[key] = names
        k, n = (int(d) for d in weights[b_name].dims)
        attrs: dict[str, int] = {"K": k, "N": n, "bits": scheme.bits, "block_size": block}
        if accuracy_level:
            attrs["accuracy_level"] = accuracy_level
        nbits = helper.make_node(
            "MatMulNBits",
            [node.input[0], *built[key]],
            list(node.output),
            name=node.name,
            domain=DOMAIN,
            **attrs,
        )
        node.CopyFrom(nbits)
        replaced.append(Replaced(node_name(node), b_name, k, n, scheme.bits, block, scheme.scheme))

    if replaced:
        _drop_unread(out, {r.weight for r in replaced})
        out.graph.initializer.extend(new_inits)
        if not any(o.domain == DOMAIN for o in out.opset_import):
            out.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return out, replaced


def _drop_unread(model: onnx.ModelProto, names: set[str]) -> None:
    """Remove the fp32 weights in ``names`` no node (or subgraph) reads any more."""
    read: set[str] = {o.name for o in model.graph.output}
    for node in model.graph.node:
        read.update(node.input)
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                read.update(names)  # subgraphs may read outer names: keep them all
    keep = [i for i in model.graph.initializer if i.name not in names or i.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
