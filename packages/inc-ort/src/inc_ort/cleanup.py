"""Clean-ups after onnxruntime's quantizer: drop Q/DQ pairs that only cost time, write the
activations onnxruntime has no int8 kernel for in ops it fuses into int8 ones, and keep fp32
islands (fp32 ops, pools onnxruntime runs slowly on int8) on its fast fp32 kernels."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from . import graph as graphs
from . import kernels
from ._runtime import onnx

log = logging.getLogger(__name__)


def strip_output_qdq(model: onnx.ModelProto) -> int:
    """Remove ``X -> QuantizeLinear -> DequantizeLinear -> graph output`` round trips.

    The float graph output gains nothing from being rounded to int8 first; without the pair
    onnxruntime fuses the producer (DQ-Gemm into QGemm, DQ-MatMul into MatMulIntegerToFloat,
    both with a float output). Only for those producers: a Conv needs its Q to run as
    QLinearConv. In place; returns how many pairs were removed.
    """
    graph = model.graph
    outputs = {o.name for o in graph.output}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    removed = []
    for name in outputs:
        dq = producers.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or consumers.get(q.output[0], 0) != 1:
            continue
        source = producers.get(q.input[0])
        if (
            source is None
            or source.op_type not in graphs.FLOAT_OUTPUT_OPS
            or consumers.get(q.input[0], 0) != 1
            or q.input[0] in outputs
        ):
            continue
        index = list(source.output).index(q.input[0])
        source.output[index] = name
        removed += [q, dq]
    for node in removed:
        graph.node.remove(node)
    return len(removed) // 2


def keep_float(model: onnx.ModelProto, names: set[str]) -> list[str]:
    """Make the fp32 ops ``names`` stay fp32 when onnxruntime loads ``model``.

    onnxruntime fuses ``DQ -> op -> Q`` into an int8 kernel whatever the plan says: a float Add
    between two int8 convs becomes QLinearAdd, a float GlobalAveragePool
    QLinearGlobalAveragePool, and a float Conv/Gemm behind a DQ gets its weight quantized by
    onnxruntime itself. A per-axis DQ with repeated numbers hides the pattern from some of its
    fusions but not all (its GlobalAveragePool fusion takes it and then fails at run time:
    "x_scale must be a scalar"), so every activation input of such an op that comes from a
    DequantizeLinear gets its own dequantization written as ``Cast -> Sub(zero point) ->
    Mul(scale)``: the same numbers, exactly, in ops no fusion looks for.

    A weight (or bias) that an int8 op shares with fp32 ops (tf2onnx's conv1d stacks: one
    weight read by 8-16 Convs) is quantized once, and every reader then gets it from a
    DequantizeLinear at run time: onnxruntime cannot pre-pack a weight computed at run time, so
    each fp32 Conv ran as a plain NCHW convolution instead of its NCHWc kernel (basic-pitch: 22
    such Convs). Such readers (see ``_float_weight_readers``) get the dequantized values as a
    constant: the same numbers, exactly (``(q - zero_point) * scale`` in float32, as the DQ
    computes them). In place; returns the ops changed.
    """
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    changed = []
    for node in list(graph.node):
        if node.name not in names:
            continue
        fed = _fed_by_dq(node, producers, inits)
        for index, dq in fed:
            prefix = f"{node.name}_inc_float_input{index}"
            added = _float_dequantize(graph, dq, inits, prefix)
            at = list(graph.node).index(node)
            for offset, new in enumerate(added):
                graph.node.insert(at + offset, new)
            node.input[index] = added[-1].output[0]
        if fed:
            changed.append(node.name)
    weights = _constant_weights(model, names)
    changed += [name for name in weights if name not in changed]
    if changed:
        _drop_unread_qdq(graph)
    return changed


#: ops onnxruntime runs with a pre-packed constant weight in fp32 (NCHWc Conv, Gemm/MatMul)
_PACKED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _float_weight_readers(
    model: onnx.ModelProto, names: set[str]
) -> list[tuple[onnx.NodeProto, int, onnx.NodeProto]]:
    """(node, input index, weight DQ) where an op that runs in fp32 reads a constant through a
    DequantizeLinear: an op of ``names`` (fp32 by plan), or one onnxruntime cannot fuse into an
    int8 kernel -- a Conv whose activation input is not dequantized or whose output is not all
    quantized, a Gemm/MatMul whose activation input is not dequantized."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers = graphs.consumers_of(model)
    inits = {i.name for i in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type not in _PACKED_OPS or node.domain not in ("", "ai.onnx"):
            continue
        weights = [
            (index, dq)
            for index, name in enumerate(node.input)
            if index > 0
            and (dq := producers.get(name)) is not None
            and dq.op_type == "DequantizeLinear"
            and dq.input[0] in inits
        ]
        if not weights:
            continue
        source = producers.get(node.input[0])
        int8_input = source is not None and source.op_type == "DequantizeLinear"
        readers = consumers.get(node.output[0], [])
        int8_output = bool(readers) and all(r.op_type == "QuantizeLinear" for r in readers)
        fused = int8_input and (int8_output or node.op_type in graphs.FLOAT_OUTPUT_OPS)
        if node.name in names or not fused:
            found += [(node, index, dq) for index, dq in weights]
    return found


def _constant_weights(model: onnx.ModelProto, names: set[str]) -> list[str]:
    """Give the fp32 readers of dequantized constants (``_float_weight_readers``) the values
    as a float initializer, one per DequantizeLinear; returns the ops changed."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    made: dict[str, str | None] = {}
    changed: list[str] = []
    for node, index, dq in _float_weight_readers(model, names):
        key = dq.output[0]
        if key not in made:
            made[key] = _dequantized_constant(graph, dq, inits)
        value = made[key]
        if value is None:
            continue
        node.input[index] = value
        if node.name not in changed:
            changed.append(node.name)
    return changed


def _dequantized_constant(
    graph: onnx.GraphProto, dq: onnx.NodeProto, inits: dict[str, onnx.TensorProto]
) -> str | None:
    """A float32 initializer holding what ``dq`` computes from its constant input, exactly as
    onnxruntime does (integer difference, then one float32 product); None where a parameter is
    not a constant or the values live outside the proto (a model over 2 GB)."""
    parts = [inits.get(name) for name in dq.input[:3] if name]
    if any(t is None or t.data_location == onnx.TensorProto.EXTERNAL for t in parts):
        return None
    arrays = [onnx.numpy_helper.to_array(t) for t in parts if t is not None]
    values, scale = arrays[0], arrays[1].astype(np.float32)
    zero = arrays[2] if len(arrays) > 2 else np.zeros((), values.dtype)
    if scale.size > 1:  # per axis: broadcast along the DQ's axis
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % values.ndim
        shape = [1] * values.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    centered = values.astype(np.int64) - zero.astype(np.int64)
    result = (centered.astype(np.float32) * scale).astype(np.float32)
    name = f"{dq.output[0]}_inc_float_constant"
    graph.initializer.append(onnx.numpy_helper.from_array(result, name))
    return name


def _drop_unread_qdq(graph: onnx.GraphProto) -> None:
    """Remove Q/DQ nodes whose output nothing reads any more (a DQ that fed only fp32 ops)."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {name for node in graph.node for name in node.input} | outputs
        unread = [
            n
            for n in graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] not in read
        ]
        if not unread:
            return
        for node in unread:
            graph.node.remove(node)


def _fed_by_dq(
    node: onnx.NodeProto,
    producers: dict[str, onnx.NodeProto],
    inits: dict[str, onnx.TensorProto],
) -> list[tuple[int, onnx.NodeProto]]:
    """(input index, per-tensor DQ) for the activation inputs of ``node`` read from a DQ."""
    found = []
    for index, name in enumerate(node.input):
        dq = producers.get(name)
        if not name or name in inits or dq is None or dq.op_type != "DequantizeLinear":
            continue
        if dq.input[0] in inits:  # a constant (weight) DQ: no activation fusion starts there
            continue
        scale = inits.get(dq.input[1])
        if scale is None or onnx.numpy_helper.to_array(scale).size != 1:
            continue
        found.append((index, dq))
    return found


def _float_dequantize(
    graph: onnx.GraphProto, dq: onnx.NodeProto, inits: dict[str, onnx.TensorProto], prefix: str
) -> list[onnx.NodeProto]:
    """``dq`` as float ops: ``Cast(x) - zero_point`` (when there is one) ``* scale``."""
    scale = onnx.numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32).reshape(())
    nodes = [
        onnx.helper.make_node(
            "Cast",
            [dq.input[0]],
            [f"{prefix}_cast"],
            name=f"{prefix}_cast",
            to=onnx.TensorProto.FLOAT,
        )
    ]
    zero_point = inits.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    if zero_point is not None:
        z = onnx.numpy_helper.to_array(zero_point).astype(np.float32).reshape(())
        graph.initializer.append(onnx.numpy_helper.from_array(z, f"{prefix}_zero_point"))
        nodes.append(
            onnx.helper.make_node(
                "Sub",
                [nodes[-1].output[0], f"{prefix}_zero_point"],
                [f"{prefix}_centered"],
                name=f"{prefix}_sub",
            )
        )
    graph.initializer.append(onnx.numpy_helper.from_array(scale, f"{prefix}_scale"))
    nodes.append(
        onnx.helper.make_node(
            "Mul",
            [nodes[-1].output[0], f"{prefix}_scale"],
            [f"{prefix}_value"],
            name=f"{prefix}_mul",
        )
    )
    return nodes


def int8_gates(model: onnx.ModelProto) -> list[str]:
    """Run a hard-sigmoid gate between int8 tensors as onnxruntime int8 kernels, in place.

    onnxruntime has no int8 HardSigmoid (nor HardSwish, which it runs as HardSigmoid + Mul), so
    in a QDQ graph ``DQ -> HardSigmoid -> Mul -> Q`` stays fp32: two DequantizeLinear, the
    HardSigmoid, the Mul and a QuantizeLinear on every activation, and in a PP-LCNet or
    MobileNetV3 a layout change on each side of every conv's int8 kernel. But
    ``HardSigmoid(x) = clip(alpha * x + beta, 0, 1)`` is ``x + beta / alpha`` quantized with
    scale ``1 / (alpha * 255)`` and zero point 0 -- uint8 saturation is the clip -- read back
    with scale ``1 / 255``. Written as ``DQ -> Add(beta / alpha) -> Q -> DQ``, onnxruntime fuses
    it into QLinearAdd and the Mul into QLinearMul: the int8 chain runs through the activation
    in NHWC. The gate is rounded to 1/255 (the product is quantized after it anyway).

    Only where onnxruntime fuses both on x86: uint8 per-tensor DQs in, a HardSigmoid with
    alpha > 0 and beta > 0 read only by a Mul whose other input is such a DQ too, and whose
    output is quantized (read by QuantizeLinear only, or by one data-movement op whose output
    is: the Q/DQ is then copied before that op, as onnxruntime's own Q propagation would).
    Returns the HardSigmoid nodes rewritten.
    """
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers = graphs.consumers_of(model)
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    changed: list[str] = []
    for node in list(graph.node):
        if node.op_type != "HardSigmoid" or node.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
        readers = consumers.get(node.output[0], [])
        if alpha <= 0 or beta <= 0 or len(readers) != 1 or node.output[0] in outputs:
            continue
        mul = readers[0]
        if mul.op_type != "Mul" or mul.domain not in ("", "ai.onnx") or len(mul.input) != 2:
            continue
        other = mul.input[1] if mul.input[0] == node.output[0] else mul.input[0]
        if not (
            _uint8_dq(producers.get(node.input[0]), inits)
            and _uint8_dq(producers.get(other), inits)
        ):
            continue
        after = _output_q(mul, consumers, inits, outputs)
        if after is None:
            continue
        prefix = f"{node.name}_inc_int8_gate"
        # each new node goes where the node it serves was: the graph stays in order
        _insert(graph, node, _gate_nodes(graph, node.input[0], node.output[0], alpha, beta, prefix))
        graph.node.remove(node)
        if after.op_type != "QuantizeLinear":  # a data-movement op, then Q: quantize before it
            _insert(graph, after, _requantized(mul, after, consumers, prefix))
        changed.append(node.name)
    return changed


def _insert(graph: onnx.GraphProto, before: onnx.NodeProto, nodes: list[onnx.NodeProto]) -> None:
    at = list(graph.node).index(before)
    for offset, new in enumerate(nodes):
        graph.node.insert(at + offset, new)


def _uint8_dq(node: onnx.NodeProto | None, inits: dict[str, onnx.TensorProto]) -> bool:
    """A per-tensor DequantizeLinear of a uint8 activation."""
    if node is None or node.op_type != "DequantizeLinear" or node.input[0] in inits:
        return False
    scale = inits.get(node.input[1])
    zero_point = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return (
        scale is not None
        and zero_point is not None
        and zero_point.data_type == onnx.TensorProto.UINT8
        and int(np.prod(scale.dims)) == 1
    )


def _output_q(
    mul: onnx.NodeProto,
    consumers: dict[str, list[onnx.NodeProto]],
    inits: dict[str, onnx.TensorProto],
    outputs: set[str],
) -> onnx.NodeProto | None:
    """The QuantizeLinear that quantizes the Mul's output, or the data-movement op between
    them; None when the output is read in float."""
    readers = consumers.get(mul.output[0], [])
    if not readers or mul.output[0] in outputs:
        return None
    if all(_uint8_q(r, inits) for r in readers):
        return readers[0]
    if len(readers) != 1 or readers[0].op_type not in graphs.FOLLOW_OPS:
        return None
    follow = readers[0]
    after = consumers.get(follow.output[0], []) if follow.output else []
    if not after or follow.output[0] in outputs or not all(_uint8_q(r, inits) for r in after):
        return None
    return follow


def _uint8_q(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    if node.op_type != "QuantizeLinear" or len(node.input) < 3:
        return False
    zero_point, scale = inits.get(node.input[2]), inits.get(node.input[1])
    return (
        zero_point is not None
        and scale is not None
        and zero_point.data_type == onnx.TensorProto.UINT8
        and int(np.prod(scale.dims)) == 1
    )


def _gate_nodes(
    graph: onnx.GraphProto, x: str, gate: str, alpha: float, beta: float, prefix: str
) -> list[onnx.NodeProto]:
    """``gate = clip(alpha * x + beta, 0, 1)`` as ``DQ(x) + beta/alpha -> Q -> DQ`` (uint8)."""
    shift = beta / alpha
    helper, from_array = onnx.helper, onnx.numpy_helper.from_array
    graph.initializer.extend(
        [
            # beta / alpha as a quantized constant, exact at 255 (QLinearAdd wants both int8)
            from_array(np.array(255, dtype=np.uint8), f"{prefix}_shift_quantized"),
            from_array(np.array(shift / 255.0, dtype=np.float32), f"{prefix}_shift_scale"),
            from_array(np.array(0, dtype=np.uint8), f"{prefix}_zero_point"),
            from_array(np.array(1.0 / (alpha * 255.0), dtype=np.float32), f"{prefix}_sum_scale"),
            from_array(np.array(1.0 / 255.0, dtype=np.float32), f"{prefix}_gate_scale"),
        ]
    )
    zero = f"{prefix}_zero_point"
    return [
        helper.make_node(
            "DequantizeLinear",
            [f"{prefix}_shift_quantized", f"{prefix}_shift_scale", zero],
            [f"{prefix}_shift"],
            name=f"{prefix}_shift",
        ),
        helper.make_node("Add", [x, f"{prefix}_shift"], [f"{prefix}_sum"], name=f"{prefix}_add"),
        helper.make_node(
            "QuantizeLinear",
            [f"{prefix}_sum", f"{prefix}_sum_scale", zero],
            [f"{prefix}_sum_quantized"],
            name=f"{prefix}_clip",
        ),
        helper.make_node(
            "DequantizeLinear",
            [f"{prefix}_sum_quantized", f"{prefix}_gate_scale", zero],
            [gate],
            name=f"{prefix}_gate",
        ),
    ]


def _requantized(
    mul: onnx.NodeProto,
    follow: onnx.NodeProto,
    consumers: dict[str, list[onnx.NodeProto]],
    prefix: str,
) -> list[onnx.NodeProto]:
    """A Q/DQ pair between ``mul`` and the data-movement op after it, with the parameters of
    the Q after that op (a MaxPool, Reshape, ... keeps the range)."""
    q = consumers[follow.output[0]][0]
    quantized, value = f"{prefix}_product_quantized", f"{prefix}_product"
    index = list(follow.input).index(mul.output[0])
    follow.input[index] = value
    helper = onnx.helper
    return [
        helper.make_node(
            "QuantizeLinear", [mul.output[0], *q.input[1:]], [quantized], name=quantized
        ),
        helper.make_node("DequantizeLinear", [quantized, *q.input[1:]], [value], name=value),
    ]


#: pools onnxruntime runs on int8 tensors with a generic loop when ``DQ -> pool -> Q`` reads
#: the same scale on both sides, where its fp32 kernel is the vectorised NCHWc one: MaxPool
#: (onnxruntime 1.32, one thread, 8 images): 2x2/2 over [200, 6, 24] 0.86 ms uint8 against
#: 0.11 ms DQ + fp32 + Q; 3x3/2 over [16, 56, 56] 2.1 against 0.14 ms; YOLO's SPPF 5x5/1 over
#: [128, 20, 20] 22 against 0.5 ms
SLOW_INT8_POOLS: tuple[str, ...] = ("MaxPool",)


def float_pools(
    model: onnx.ModelProto, providers: Sequence[str] = ("CPUExecutionProvider",)
) -> list[str]:
    """Run the pools of ``SLOW_INT8_POOLS`` that onnxruntime would run on int8 tensors with its
    generic loop in fp32 instead, in place.

    onnxruntime drops the ``DQ -> MaxPool -> Q`` pair around a pool whose two sides share their
    scale and zero point and runs the pool on the int8 tensor (max commutes with a monotonic
    quantization: the numbers are the same). Between two NHWC int8 convs that is its fast
    NhwcMaxPool; elsewhere (after a hard-swish gate, before a pooling head: PP-OCR's text
    classifier) it is a generic NCHW loop, 8-45x slower than dequantizing, pooling in fp32 and
    quantizing again (see SLOW_INT8_POOLS). Which of the two onnxruntime picks is read from
    the graph it optimizes for ``providers``; only the generic ones change. Their DQ is written
    per channel (axis 1) with the per-tensor scale and zero point repeated: the same numbers,
    exactly, which onnxruntime's pair check (scalar parameters on both sides) does not take.
    Only where the channel count is known (a recorded shape, or the weight of the Conv that
    wrote the tensor) and the opset has DQ's axis (13). Returns the pools changed.
    """
    if graphs.opset(model) < 13:
        return []
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    shapes = {v.name: v for v in (*graph.value_info, *graph.input, *graph.output)}
    found: list[tuple[onnx.NodeProto, onnx.NodeProto, int]] = []
    for node in graph.node:
        if node.op_type not in SLOW_INT8_POOLS or node.domain not in ("", "ai.onnx"):
            continue
        dq = producers.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in inits:
            continue
        scale = inits.get(dq.input[1])
        zero = inits.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        if (
            scale is None
            or int(np.prod(scale.dims)) != 1
            or (zero is not None and int(np.prod(zero.dims)) != 1)
        ):
            continue
        channels = _channels(node, dq, shapes, producers, inits)
        if channels is not None:
            found.append((node, dq, channels))
    # asking onnxruntime costs 0.2-0.35 s a build (it optimizes the whole model): only for pools
    # that are not plainly between int8 convs, where it always runs its fast NhwcMaxPool
    consumers = graphs.consumers_of(model)
    asked = {
        node.name
        for node, dq, _ in found
        if not _requantized_otherwise(node, dq, consumers, inits)
        and not _between_int8_convs(node, dq, producers, consumers)
    }
    slow = _generic_int8_pools(model, asked, providers)
    changed = []
    for node, dq, channels in found:
        if node.name not in slow:
            continue
        prefix = f"{node.name}_inc_float_pool"
        inputs = [dq.input[0]]
        for index, suffix in ((1, "scale"), (2, "zero_point")):
            if index >= len(dq.input) or not dq.input[index]:
                continue
            value = onnx.numpy_helper.to_array(inits[dq.input[index]]).reshape(())
            repeated = np.full(channels, value, value.dtype)
            graph.initializer.append(onnx.numpy_helper.from_array(repeated, f"{prefix}_{suffix}"))
            inputs.append(f"{prefix}_{suffix}")
        new = onnx.helper.make_node(
            "DequantizeLinear", inputs, [f"{prefix}_input"], name=f"{prefix}_dq", axis=1
        )
        _insert(graph, node, [new])
        node.input[0] = new.output[0]
        changed.append(node.name)
    if changed:
        _drop_unread_qdq(graph)
    return changed


def _requantized_otherwise(
    pool: onnx.NodeProto,
    dq: onnx.NodeProto,
    consumers: dict[str, list[onnx.NodeProto]],
    inits: dict[str, onnx.TensorProto],
) -> bool:
    """The pool's only reader is a QuantizeLinear with another constant scale or zero point
    than its DQ's (other values, not only other names): onnxruntime keeps ``DQ -> pool -> Q``
    and pools in fp32 already (YOLOv8's SPPF pools, each calibrated on its own). A pool read
    by anything else is left to the check (onnxruntime pools a DQ'd tensor read by a graph
    output on int8 too: test_channels_from_the_conv_that_wrote_the_tensor)."""
    readers = consumers.get(pool.output[0], [])
    if len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
        return False
    q = readers[0]
    for index in (1, 2):
        a = dq.input[index] if index < len(dq.input) else ""
        b = q.input[index] if index < len(q.input) else ""
        if a == b:
            continue
        if not a or not b or a not in inits or b not in inits:
            return False  # not constants both: left to the check
        x, y = (onnx.numpy_helper.to_array(inits[n]) for n in (a, b))
        if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x, y):
            return True
    return False


def _between_int8_convs(
    pool: onnx.NodeProto,
    dq: onnx.NodeProto,
    producers: dict[str, onnx.NodeProto],
    consumers: dict[str, list[onnx.NodeProto]],
) -> bool:
    """``Conv -> Q -> DQ -> pool -> Q -> DQ -> Conv(s)`` with every Conv an int8 one (input and
    weight dequantized, output read only by QuantizeLinear): onnxruntime runs such a pool as
    NhwcMaxPool in the convs' layout (test_converter_float_pools). Strict on purpose: a pool
    this misses is only checked with onnxruntime, one it wrongly took would stay slow."""
    q = producers.get(dq.input[0])
    if (
        q is None
        or q.op_type != "QuantizeLinear"
        or not _int8_conv(producers.get(q.input[0]), producers, consumers)
    ):
        return False
    after = consumers.get(pool.output[0], [])
    if len(after) != 1 or after[0].op_type != "QuantizeLinear":
        return False
    dqs = consumers.get(after[0].output[0], [])
    readers = [r for d in dqs for r in consumers.get(d.output[0], [])]
    return (
        bool(dqs)
        and all(d.op_type == "DequantizeLinear" for d in dqs)
        and bool(readers)
        and all(
            _int8_conv(r, producers, consumers) and r.input[0] in {d.output[0] for d in dqs}
            for r in readers
        )
    )


def _int8_conv(
    node: onnx.NodeProto | None,
    producers: dict[str, onnx.NodeProto],
    consumers: dict[str, list[onnx.NodeProto]],
) -> bool:
    """A Conv onnxruntime fuses into QLinearConv: input and weight from DequantizeLinear, output
    read only by QuantizeLinear."""
    if node is None or node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
        return False
    if len(node.input) < 2 or any(
        (p := producers.get(name)) is None or p.op_type != "DequantizeLinear"
        for name in node.input[:2]
    ):
        return False
    readers = consumers.get(node.output[0], [])
    return bool(readers) and all(r.op_type == "QuantizeLinear" for r in readers)


def _generic_int8_pools(
    model: onnx.ModelProto, names: set[str], providers: Sequence[str]
) -> set[str]:
    """Those of the pools ``names`` that onnxruntime runs as a default-domain op on an int8
    tensor (not as its NHWC kernel, nor in fp32)."""
    if not names:
        return set()
    try:
        optimized = kernels.optimized_graph(model, providers)
    except Exception as exc:  # the pools stay int8: slower, never wrong
        log.info("float_pools: onnxruntime did not load the int8 model (%s); pools left", exc)
        return set()
    if optimized is None:  # over 2 GB: not written in one file; the pools stay as they are
        return set()
    int8 = kernels.int8_tensors(optimized)
    return {
        kernels.origin(node.name, names)
        for node in optimized.graph.node
        if node.op_type in SLOW_INT8_POOLS
        and node.domain in ("", "ai.onnx")
        and node.input
        and node.input[0] in int8
    } & names


def _channels(
    pool: onnx.NodeProto,
    dq: onnx.NodeProto,
    shapes: dict[str, onnx.ValueInfoProto],
    producers: dict[str, onnx.NodeProto],
    inits: dict[str, onnx.TensorProto],
) -> int | None:
    """Axis 1 of the pool's input: from a recorded shape of the pool's input or output (a pool
    keeps the channels) or of the tensor quantized for it, else from the weight of the Conv
    whose output was quantized."""
    q = producers.get(dq.input[0])
    quantized = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else dq.input[0]
    for name in (pool.output[0], pool.input[0], dq.output[0], dq.input[0], quantized):
        info = shapes.get(name)
        dims = info.type.tensor_type.shape.dim if info is not None else []
        if len(dims) >= 3 and dims[1].HasField("dim_value") and dims[1].dim_value > 0:
            return int(dims[1].dim_value)
    source = producers.get(quantized) if quantized != dq.input[0] else None
    if source is not None and source.op_type == "Conv" and len(source.input) > 1:
        weight = producers.get(source.input[1])
        name = (
            weight.input[0]
            if weight is not None and weight.op_type == "DequantizeLinear"
            else (source.input[1])
        )
        if name in inits and len(inits[name].dims) >= 2:
            return int(inits[name].dims[0])
    return None
