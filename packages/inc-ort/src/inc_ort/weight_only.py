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

GPTQ and AWQ read the statistics of each MatMul's input ``A`` that ``calibrate`` collects;
AWQ's input scale is folded into a LayerNormalization producing ``A`` when nothing else reads
it, else applied by a ``Mul``. ``accuracy_level`` is measured (``accuracy_level``).

Only the top-level graph's float32 ``MatMul`` nodes whose ``B`` is a 2-D initializer (not also
a graph input, which a user could override) are replaced; every other node is left as it is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import onnx
from onnx import helper, numpy_helper

from inc_core.errors import ConfigError
from inc_core.space import OpCapability, OpInfo, QuantPlan, TensorRanges
from inc_core.weight_only import (
    InputStatsCollector,
    QuantizedWeight,
    WeightOnlyScheme,
    calibrated_ops,
    op_choices,
    quantize_weights,
    schemes,
    weight_options,
)
from inc_core.weight_only.options import CALIBRATED_ALGORITHMS as CALIBRATED
from inc_core.weight_only.plan import WEIGHT_ONLY_ACTIVATION

from . import model_io
from .accuracy_level import chosen_level
from .matmulnbits import pack

#: bits MatMulNBits unpacks (a byte holds a whole number of values); inc-core allows 2-8
KERNEL_BITS: tuple[int, ...] = (2, 4, 8)
#: block sizes MatMulNBits accepts: powers of two from 16 (its shape inference and MLAS'
#: kernels require this); larger blocks than 256 run on its slower generic path
MIN_BLOCK = 16
#: algorithms implemented here (GPTQ and AWQ with the inputs' statistics from ``calibrate``)
ALGORITHMS: tuple[str, ...] = ("RTN", "GPTQ", "AWQ")
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
    algorithm: str = "RTN"


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
    recipes: Mapping[str, Any] | None = None,
    stats: Mapping[str, Any] | None = None,
    full_range: bool = False,
    mse_search: bool = False,
    accuracy_level: int | None = 0,
    copy: bool = True,
) -> tuple[onnx.ModelProto, list[Replaced]]:
    """``model`` with every candidate ``MatMul`` whose setting is not ``None`` as MatMulNBits.

    ``choose`` maps a node's name (``node_name``) to its setting: a callable, or a mapping where
    a missing name keeps the node in fp32. ``recipes`` are the plan's (``rtn_args``,
    ``gptq_args``, ``awq_args``); ``full_range``/``mse_search`` set ``rtn_args`` when no
    recipes are given. ``stats``: per node name, the ``InputStats`` GPTQ and AWQ read
    (``calibrate``). AWQ's input scale is folded into a LayerNormalization producing the
    input when every reader of that tensor shares the scale, else applied by a ``Mul``.
    ``accuracy_level`` (0-4) is written when not 0; 4 lets the CPU kernel quantize ``A`` to
    int8 and use its VNNI path; ``None`` measures per weight shape (``accuracy.chosen_level``).
    With ``copy`` the caller's model is left untouched. Every setting is checked before the
    graph is changed.
    """
    if accuracy_level is not None and not 0 <= accuracy_level <= 4:
        raise ConfigError(f"accuracy_level={accuracy_level!r} is not allowed; allowed: 0 to 4")
    if recipes is None:
        recipes = {"rtn_args": {"enable_full_range": full_range, "enable_mse_search": mse_search}}
    stats = stats or {}
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
        if scheme.algorithm in CALIBRATED and node_name(node) not in stats:
            raise ConfigError(
                f"algorithm {scheme.algorithm!r} (op {node_name(node)!r}) reads calibration "
                "activations: pass calib_dataloader to fit, or use algorithm 'RTN'"
            )
        k = int(weights[node.input[1]].dims[0])
        plan.append((node, scheme, block_size_for(scheme, k)))

    replaced: list[Replaced] = []
    new_inits: list[onnx.TensorProto] = []
    scales: list[tuple[list[onnx.NodeProto], np.ndarray]] = []
    built: dict[tuple[str, WeightOnlyScheme], list[str]] = {}
    groups = _groups(plan)
    # a weight is quantized by the first group (model order) reading it with its setting
    owner: dict[tuple[str, WeightOnlyScheme], int] = {}
    for index, group in enumerate(groups):
        for node, scheme, _ in group:
            owner.setdefault((node.input[1], scheme), index)
    inits_of: list[list[onnx.TensorProto]] = [[] for _ in groups]
    scale_of: dict[int, tuple[list[onnx.NodeProto], np.ndarray]] = {}
    for index in _stats_order(groups):
        group = groups[index]
        scheme, block = group[0][1], group[0][2]
        todo = [n for n, _, _ in group if owner[(n.input[1], scheme)] == index]
        if todo:
            arrays = [_array(weights[n.input[1]]) for n in todo]
            results = quantize_weights(arrays, scheme, recipes, stats.get(node_name(todo[0])))
            for node, result in zip(todo, results, strict=True):
                built[(node.input[1], scheme)] = _packed(
                    node, scheme, block, result.weight, inits_of[index]
                )
            if results[0].input_scale is not None:
                scale_of[index] = (todo, results[0].input_scale)
    # the graph is written in model order whatever order the weights were quantized in
    for index, group in enumerate(groups):
        scheme, block = group[0][1], group[0][2]
        new_inits += inits_of[index]
        if index in scale_of:
            scales.append(scale_of[index])
        for node, _, _ in group:
            b_name = node.input[1]
            k, n = (int(d) for d in weights[b_name].dims)
            level = accuracy_level
            if level is None:
                level = chosen_level(k, n, scheme.bits, block, scheme.scheme == "asym")
            attrs: dict[str, int] = {"K": k, "N": n, "bits": scheme.bits, "block_size": block}
            if level:
                attrs["accuracy_level"] = level
            nbits = helper.make_node(
                "MatMulNBits",
                [node.input[0], *built[(b_name, scheme)]],
                list(node.output),
                name=node.name,
                domain=DOMAIN,
                **attrs,
            )
            name = node_name(node)
            node.CopyFrom(nbits)
            replaced.append(
                Replaced(name, b_name, k, n, scheme.bits, block, scheme.scheme, scheme.algorithm)
            )

    if replaced:
        for nodes, scale in scales:
            _apply_input_scale(out, nodes, scale)
        _drop_unread(out, {r.weight for r in replaced})
        out.graph.initializer.extend(new_inits)
        if not any(o.domain == DOMAIN for o in out.opset_import):
            out.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return out, replaced


def _array(tensor: onnx.TensorProto) -> np.ndarray:
    """A weight's values; a detached (>2 GB) model's are a read-only map of inc's store, so
    one weight at a time is paged in and none is loaded into the proto (which would keep it
    until the whole model is freed)."""
    if model_io.in_store(tensor):
        return model_io.mapped(tensor)
    array: np.ndarray = numpy_helper.to_array(tensor)
    return array


def _groups(
    plan: list[tuple[onnx.NodeProto, WeightOnlyScheme, int]],
) -> list[list[tuple[onnx.NodeProto, WeightOnlyScheme, int]]]:
    """GPTQ/AWQ nodes reading one tensor with one setting form one group (one Hessian
    inverse; one shared AWQ input scale, folded once); every other node is its own group.
    Model order is kept."""
    groups: dict[Any, list[tuple[onnx.NodeProto, WeightOnlyScheme, int]]] = {}
    for index, item in enumerate(plan):
        node, scheme, block = item
        key = (node.input[0], scheme, block) if scheme.algorithm in CALIBRATED else index
        groups.setdefault(key, []).append(item)
    return list(groups.values())


def _stats_order(groups: list[list[tuple[onnx.NodeProto, WeightOnlyScheme, int]]]) -> list[int]:
    """The groups' indices in the order to quantize them: GPTQ/AWQ groups by the first
    GPTQ/AWQ group reading their input, the order ``calibrate`` chunks the inputs in, so a
    ``ChunkedStats`` computes each chunk once even when one input has several settings
    (``_groups``); RTN groups, which read no statistics, where they are."""
    first: dict[str, int] = {}
    keys: list[tuple[int, int]] = []
    for index, group in enumerate(groups):
        node, scheme, _ = group[0]
        if scheme.algorithm in CALIBRATED:
            keys.append((first.setdefault(node.input[0], index), index))
        else:
            keys.append((index, index))
    return sorted(range(len(groups)), key=keys.__getitem__)


def _packed(
    node: onnx.NodeProto,
    scheme: WeightOnlyScheme,
    block: int,
    qw: QuantizedWeight,
    new_inits: list[onnx.TensorProto],
) -> list[str]:
    blob, scales, zeros = pack(qw, block)
    tag = f"{node.input[1]}_Q{scheme.bits}G{block}{scheme.scheme}{scheme.algorithm}"
    names = [f"{tag}_B", f"{tag}_scales"]
    new_inits += [numpy_helper.from_array(blob, names[0])]
    new_inits += [numpy_helper.from_array(scales, names[1])]
    if scheme.scheme == "asym":
        names.append(f"{tag}_zero_points")
        new_inits.append(numpy_helper.from_array(zeros, names[2]))
    return names


def _apply_input_scale(
    model: onnx.ModelProto, nodes: list[onnx.NodeProto], scale: np.ndarray
) -> None:
    """Divide the input the ``nodes`` share by AWQ's ``scale``: into the LayerNormalization that
    produces it when nothing else reads it (its gain and bias divided), else by a ``Mul``."""
    tensor = nodes[0].input[0]
    ours = {n.output[0] for n in nodes}
    inverse = (1.0 / scale.astype(np.float64)).astype(np.float32)
    readers = [n for n in model.graph.node if tensor in n.input]
    producer = next((n for n in model.graph.node if tensor in n.output), None)
    inits = {i.name: i for i in model.graph.initializer}
    if (
        producer is not None
        and producer.op_type == "LayerNormalization"
        and all(r.output[0] in ours for r in readers)
        and tensor not in {o.name for o in model.graph.output}
        and all(name in inits for name in producer.input[1:])
    ):
        for position in range(1, len(producer.input)):  # gain, and bias when there is one
            old = numpy_helper.to_array(inits[producer.input[position]])
            name = f"{producer.input[position]}_awq_{nodes[0].output[0]}"
            folded = (old * inverse).astype(old.dtype)
            model.graph.initializer.append(numpy_helper.from_array(folded, name))
            producer.input[position] = name
        return
    first = nodes[0].output[0]
    scale_name = f"{first}/awq_inverse_scale"
    scaled = f"{tensor}/awq_scaled_for_{first}"
    model.graph.initializer.append(numpy_helper.from_array(inverse, scale_name))
    mul = helper.make_node("Mul", [tensor, scale_name], [scaled], name=f"{first}/awq_scale")
    ordered: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.output and node.output[0] in ours:
            if not any(o is mul for o in ordered):
                ordered.append(mul)
            node.input[0] = scaled
        ordered.append(node)
    copies = [onnx.NodeProto() for _ in ordered]
    for target, source in zip(copies, ordered, strict=True):
        target.CopyFrom(source)
    del model.graph.node[:]
    model.graph.node.extend(copies)


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


# -- the core's weight-only contract (inc_core.weight_only.plan), used by OrtBackend ----------

#: group sizes the kernel takes: powers of two from 16 (32 first: INC's default), -1 per column
GROUP_SIZES: tuple[int, ...] = (32, 16, 64, 128, 256, 512, 1024, 2048, 4096, -1)


def capability() -> dict[str, OpCapability]:
    """What MatMulNBits runs, as the core's capability for approach ``weight_only``."""
    options = weight_options((4, 8, 2), GROUP_SIZES, ("sym", "asym"), ALGORITHMS)
    return {"MatMul": OpCapability(WEIGHT_ONLY_ACTIVATION, options)}


def ops(model: onnx.ModelProto) -> list[OpInfo]:
    """The MatMuls whose weight MatMulNBits can take, named as rules name them."""
    return [OpInfo(node_name(n), "MatMul") for n in candidates(model)]


#: memory the GPTQ/AWQ input statistics computed in one calibration pass may hold (Hessians
#: float64 K x K, AWQ's sample rows; ``stats.stats_bytes``): ``calibrate`` groups the distinct
#: MatMul inputs in graph order into chunks within this budget (an input whose statistics alone
#: exceed it is a chunk of its own) and computes one chunk at a time. A 1B-parameter LLM
#: (hidden 2048, MLP 8192) holds ~0.6 GB of Hessians per decoder layer, ~10 GB in all.
STATS_BUDGET_BYTES = 512 * 2**20


def calibrate(model: onnx.ModelProto, dataloader: Iterable[Any], plan: QuantPlan) -> TensorRanges:
    """Per GPTQ/AWQ op of ``plan``, ``InputStats`` of its input (the MatMul's ``A``) over the
    calibration batches, from the fp32 graph with those tensors exposed. Ops that read one
    tensor share one collection.

    Returned as a ``ChunkedStats``: a read-only mapping holding every op as a key whose values
    are computed a chunk of inputs at a time (``STATS_BUDGET_BYTES``), re-running the batches
    for each chunk; reading the ops in graph order (``quantize_model`` does) computes each
    chunk once. The first chunk is computed here, so bad data fails at calibration. A one-shot
    iterator is listed first (the batches are run once per chunk)."""
    from inc_core.weight_only.stats import stats_bytes

    needs = calibrated_ops(plan)
    weights = _weights(model)
    inputs: dict[str, str] = {}
    by_tensor: dict[str, set[str]] = {}
    sizes: dict[str, int] = {}
    for node in candidates(model):
        name = node_name(node)
        if name not in needs:
            continue
        inputs[name] = node.input[0]
        by_tensor.setdefault(node.input[0], set()).add(needs[name])
        sizes[node.input[0]] = int(weights[node.input[1]].dims[0])  # K, the same for all readers
    per_tensor = {t: tuple(sorted(a)) for t, a in by_tensor.items()}
    sized = [(t, stats_bytes(sizes[t], per_tensor[t])) for t in per_tensor]
    data = dataloader if isinstance(dataloader, Sequence) else list(dataloader)
    stats = ChunkedStats(model, data, inputs, per_tensor, chunked(sized, STATS_BUDGET_BYTES))
    stats.load(0)
    # a read-only Mapping where the core's contract names a dict: the core and quantize_plan
    # only read it (get, in, len, items), which a Mapping serves
    return cast(TensorRanges, stats)


def chunked(sized: list[tuple[str, int]], budget: int) -> list[list[str]]:
    """``(name, bytes)`` in order, cut into consecutive chunks of at most ``budget`` bytes each
    (an item larger alone is a chunk of its own)."""
    chunks: list[list[str]] = []
    total = 0
    for name, size in sized:
        if not chunks or total + size > budget:
            chunks.append([])
            total = 0
        chunks[-1].append(name)
        total += size
    return chunks


class ChunkedStats(Mapping[str, Any]):
    """op -> ``InputStats``, computed a chunk of input tensors at a time (``calibrate``).

    Only one chunk's statistics are held: reading an op of another chunk drops the loaded one
    first, then runs every calibration batch again exposing only that chunk's tensors. The
    values are those of one pass over all tensors, bit for bit: the fp32 graph runs without
    graph rewrites whatever it exposes, each tensor's collection sees the same batches in the
    same order, and AWQ's row sample draws from a generator seeded per tensor. Keys, ``len``
    and ``in`` compute nothing; ``items()``/``values()`` compute each chunk once in graph
    order. Thread-safe (tuning may quantize from threads: slower then, as the chunks thrash);
    pickled without the loaded chunk."""

    def __init__(
        self,
        model: onnx.ModelProto,
        data: Sequence[Any],
        inputs: Mapping[str, str],
        needs: Mapping[str, tuple[str, ...]],
        chunks: list[list[str]],
    ) -> None:
        self.model = model
        self.data = data
        self.inputs = dict(inputs)
        self.needs = dict(needs)
        self.chunks = chunks
        #: calibration passes run so far (one per chunk computed)
        self.passes = 0
        self._chunk_of = {t: i for i, chunk in enumerate(chunks) for t in chunk}
        self._index: int | None = None
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __getitem__(self, op: str) -> Any:
        tensor = self.inputs[op]  # KeyError for an op without statistics, as a dict's
        with self._lock:
            self.load(self._chunk_of[tensor])
            return self._loaded[tensor]

    def __contains__(self, op: object) -> bool:
        return op in self.inputs

    def __iter__(self) -> Iterator[str]:
        ordered = sorted(self.inputs, key=lambda op: self._chunk_of[self.inputs[op]])
        return iter(ordered)  # stable: graph order within a chunk

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def loaded(self) -> int | None:
        """The index in ``chunks`` of the chunk held now (None: none)."""
        return self._index

    def load(self, index: int) -> None:
        """Hold chunk ``index``'s statistics (computed unless held already)."""
        if self._index == index or not self.chunks:
            return
        from .calibrate import run_batches  # onnxruntime sessions: only when calibrating

        # let go of the held chunk before computing the next: two are never alive at once
        self._loaded, self._index = {}, None
        tensors = self.chunks[index]
        collector = InputStatsCollector({t: self.needs[t] for t in tensors})
        run_batches(self.model, self.data, tensors, collector.add)
        self.passes += 1
        self._loaded, self._index = collector.result(), index

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_loaded={}, _index=None, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def quantize_plan(
    model: onnx.ModelProto, plan: QuantPlan, ranges: TensorRanges
) -> tuple[onnx.ModelProto, list[Replaced]]:
    """``plan``'s weight-only settings applied to a copy of ``model``; ``accuracy_level``
    measured per weight shape (``accuracy_level.chosen_level``)."""
    chosen = schemes(plan)
    return quantize_model(
        model, dict(chosen), recipes=plan.recipes, stats=ranges, accuracy_level=None
    )
