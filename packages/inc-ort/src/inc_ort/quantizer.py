"""inc's quantizers: subclasses of onnxruntime's own QDQ and QOperator quantizers.

onnxruntime walks the graph and writes the Q/DQ (or QLinear*) nodes; inc decides *what* is
quantized and *with which numbers*. The subclasses receive a ``QuantizerSpec`` — which nodes,
and for every tensor the scale and zero point computed by ``inc_core.scheme`` from inc's
calibrated ranges — and hand them to the parent as ``TensorQuantOverrides``, the parent's
documented way of taking fixed quantization parameters. So the numbers in the graph are
exactly the core's reference math.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnxruntime.quantization import base_quantizer, onnx_quantizer, qdq_quantizer, quant_utils
from onnxruntime.quantization import registry as ort_registry
from onnxruntime.quantization.onnx_model import ONNXModel
from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
from onnxruntime.quantization.operators.base_operator import QuantOperatorBase
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
from onnxruntime.quantization.quant_utils import (
    TENSOR_NAME_QUANT_SUFFIX,
    QuantizationMode,
    QuantType,
    add_infer_metadata,
    model_has_infer_metadata,
)

from inc_core.errors import ModelError

from . import model_io
from ._runtime import onnx, ortq
from .initializer_index import IndexedInitializers, indexed_lookups
from .model_io import PROTOBUF_LIMIT

log = logging.getLogger(__name__)

QUANT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
NP_TYPES = {"int8": np.int8, "uint8": np.uint8}

# Constructor arguments renamed across onnxruntime releases: our name -> older names.
_RENAMED = {"activation_qType": ("input_qType",)}


@dataclass
class QuantizerSpec:
    """What inc asks onnxruntime's quantizer to do, in onnxruntime's own vocabulary."""

    nodes_to_quantize: list[str]
    nodes_to_exclude: list[str] = field(default_factory=list)
    op_types_to_quantize: list[str] = field(default_factory=list)
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = False
    reduce_range: bool = False
    #: tensor -> (rmin, rmax) of the calibrated activations (onnxruntime's tensors_range)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: tensor -> onnxruntime override list: [{"scale", "zero_point", "quant_type"[, "axis"]}, ...]
    overrides: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    extra_options: dict[str, Any] = field(default_factory=dict)
    #: activations to leave in float even though their producer is quantized (QDQ only)
    float_tensors: set[str] = field(default_factory=set)

    def options(self) -> dict[str, Any]:
        options = {
            # Keep inc's weight scales: onnxruntime would otherwise enlarge a weight scale whose
            # int32 bias scale (input_scale * weight_scale) it finds too small.
            "QDQDisableWeightAdjustForInt32Bias": True,
            # Contrib-domain ops defeat ONNX shape inference; their outputs are float here.
            "DefaultTensorType": onnx.TensorProto.FLOAT,
            **self.extra_options,
        }
        if self.overrides:
            options["TensorQuantOverrides"] = self.overrides
        return options


def _tensors_range(spec: QuantizerSpec) -> Any:
    ranges = {
        name: ortq.calibrate.TensorData(lowest=np.float32(lo), highest=np.float32(hi))
        for name, (lo, hi) in spec.ranges.items()
    }
    return ortq.calibrate.TensorsData(ortq.CalibrationMethod.MinMax, ranges)


def _common_kwargs(model: onnx.ModelProto, spec: QuantizerSpec, static: bool) -> dict[str, Any]:
    return {
        "model": model,
        "per_channel": spec.per_channel,
        "reduce_range": spec.reduce_range,
        "weight_qType": QUANT_TYPES[spec.weight_type].tensor_type,
        "activation_qType": QUANT_TYPES[spec.activation_type].tensor_type,
        "tensors_range": _tensors_range(spec) if static else None,
        "nodes_to_quantize": list(spec.nodes_to_quantize),
        "nodes_to_exclude": list(spec.nodes_to_exclude),
        "op_types_to_quantize": list(spec.op_types_to_quantize),
        "extra_options": spec.options(),
    }


class IncQDQQuantizer(QDQQuantizer):  # type: ignore[misc]
    """onnxruntime's QDQ quantizer with inc's nodes, schemes and scales."""

    model: IndexedModel  # the parent's ONNXModel, replaced in __init__

    def __init__(self, model: onnx.ModelProto, spec: QuantizerSpec) -> None:
        self.inc_spec = spec
        values = _common_kwargs(with_inferred_shapes(model), spec, static=True)
        params = inspect.signature(QDQQuantizer.__init__).parameters
        if "mode" in params:  # releases before 1.16 took mode/static here too
            values["mode"] = QuantizationMode.QLinearOps
        if "static" in params:
            values["static"] = True
        QDQQuantizer.__init__(self, **_renamed(values, params))
        self.model = IndexedModel(self.model.model)

    def quantize_model(self) -> Any:
        with _vectorized_weights(), indexed_lookups(self.model):
            return super().quantize_model()

    def quantize_activation_tensor(self, tensor_name: str) -> Any:
        # inc's per-tensor decision: an output no quantized op reads stays float.
        if tensor_name in self.inc_spec.float_tensors:
            return None
        return super().quantize_activation_tensor(tensor_name)

    def _dup_initializer(self, initializer: onnx.TensorProto) -> onnx.TensorProto:
        """A copy of a bias two quantized nodes share, under a name no tensor of the graph has.

        onnxruntime names the copy ``<bias><n>`` with ``n`` past the initializers' own suffixes
        only (onnxruntime#24705); converters number their tensors the same way (tf2onnx: bias
        ``a;a``, the Conv output ``a;a2``), so the copy could shadow an activation and the
        runtime would read the bias where the activation belongs.
        """
        taken = tensor_names(self.model.model.graph)
        suffix = self.model.get_largest_initializer_name_suffix(initializer.name) + 1
        while f"{initializer.name}{suffix}" in taken:
            suffix += 1
        copy = onnx.TensorProto()
        copy.CopyFrom(initializer)
        copy.name = f"{initializer.name}{suffix}"
        self.model.add_initializer(copy)
        return copy


class IncQOperatorQuantizer(ONNXQuantizer):  # type: ignore[misc]
    """onnxruntime's QOperator (QLinear*) / QIntegerOps quantizer with inc's choices."""

    model: IndexedInitializers  # the parent's ONNXModel, replaced in __init__

    def __init__(self, model: onnx.ModelProto, spec: QuantizerSpec, *, static: bool = True) -> None:
        self.inc_spec = spec
        values = _common_kwargs(with_inferred_shapes(model), spec, static=static)
        values["mode"] = QuantizationMode.QLinearOps if static else QuantizationMode.IntegerOps
        values["static"] = static
        params = inspect.signature(ONNXQuantizer.__init__).parameters
        with _in_memory_reload():
            ONNXQuantizer.__init__(self, **_renamed(values, params))
        self.model = _LOOKUP_MODEL(self.model.model)

    def quantize_model(self) -> Any:
        with _vectorized_weights(), indexed_lookups(self.model):
            return super().quantize_model()

    def quantize_initializer_impl(
        self,
        weight: onnx.TensorProto,
        qType: Any,
        reduce_range: bool = False,
        keep_float_weight: bool = False,
    ) -> Any:
        """The parent's, for a weight of a model over 2 GB quantized from inc's store into it
        slab by slab (``_quantized_to_store``): the parent holds the float weight, a flattened
        copy and the int8 result at once. Same initializers, same bytes; anything but the
        per-tensor int8/uint8 overrides inc gives is left to the parent."""
        overrides = self.tensor_quant_overrides.get_per_tensor_overrides(
            weight.name, default_val={}
        )
        if "quant_type" in overrides:
            qType = overrides["quant_type"].tensor_type
        dtype = _NP_BY_ONNX.get(qType)
        if (
            keep_float_weight
            or dtype is None
            or weight.data_type != onnx.TensorProto.FLOAT
            or "scale" not in overrides
            or "zero_point" not in overrides
            or not model_io.in_store(weight)
        ):
            return super().quantize_initializer_impl(weight, qType, reduce_range, keep_float_weight)
        zero_point = np.array(overrides["zero_point"], dtype=dtype)
        scale = np.array(overrides["scale"])
        if (
            scale.size != 1
            or zero_point.size != 1
            or np.result_type(np.float32, scale.dtype) != np.float32
        ):
            return super().quantize_initializer_impl(weight, qType, reduce_range, keep_float_weight)
        q_weight_name = weight.name + TENSOR_NAME_QUANT_SUFFIX
        zp_name, scale_name = weight.name + "_zero_point", weight.name + "_scale"
        self.model.initializer_extend(
            [
                onnx.helper.make_tensor(
                    scale_name, weight.data_type, [], scale.reshape((-1,)).tolist()
                ),
                onnx.helper.make_tensor(zp_name, qType, [], zero_point.reshape((-1,)).tolist()),
            ]
        )
        self.model.initializer_extend(
            [
                _quantized_to_store(
                    weight, scale.reshape(()), zero_point.reshape(()), qType, q_weight_name
                )
            ]
        )
        return q_weight_name, zp_name, scale_name

    def quantize_weight_per_channel_impl(
        self,
        weight_name: str,
        weight_qType: Any,
        channel_axis: int,
        reduce_range: bool = True,
        keep_float_weight: bool = False,
    ) -> Any:
        """The parent's, in one broadcast with inc's per-channel scales: the parent quantizes
        every channel in turn in Python (nudenet's 192 weights: 16k calls, 0.17 s of a 0.3 s
        build); a weight of a model over 2 GB goes from inc's store into it slab by slab. The
        arithmetic per element is the parent's (``_quantized``): same initializers, same
        bytes; anything but int8/uint8 weights with a scale and zero point for every channel
        is left to the parent."""
        weight = self.model.get_initializer(weight_name)
        rows = self.tensor_quant_overrides.get_per_channel_overrides(weight_name, default_val=[])
        if rows and "quant_type" in rows[0]:
            weight_qType = rows[0]["quant_type"].tensor_type
        dtype = _NP_BY_ONNX.get(weight_qType)
        rank = len(weight.dims) if weight is not None else 0
        axis = channel_axis + rank if channel_axis < 0 else channel_axis
        if (
            weight is None
            or keep_float_weight
            or dtype is None
            or weight.data_type != onnx.TensorProto.FLOAT
            or not 0 <= axis < rank
            or len(rows) != weight.dims[axis]
            or any("scale" not in r or "zero_point" not in r for r in rows)
            or rows[0].get("axis", axis) % rank != axis
        ):
            return super().quantize_weight_per_channel_impl(
                weight_name, weight_qType, channel_axis, reduce_range, keep_float_weight
            )
        scales = [np.array(r["scale"]) for r in rows]
        zero_points = [np.array(r["zero_point"], dtype=dtype) for r in rows]
        if any(np.result_type(np.float32, sc.dtype) != np.float32 for sc in scales):
            return super().quantize_weight_per_channel_impl(
                weight_name, weight_qType, channel_axis, reduce_range, keep_float_weight
            )
        q_weight_name = weight_name + TENSOR_NAME_QUANT_SUFFIX
        zp_name, scale_name = weight_name + "_zero_point", weight_name + "_scale"
        count = [int(weight.dims[axis])]
        self.model.initializer_extend(
            [
                onnx.helper.make_tensor(
                    scale_name, weight.data_type, count, np.hstack(scales).tolist()
                ),
                onnx.helper.make_tensor(
                    zp_name, weight_qType, count, np.hstack(zero_points).tolist()
                ),
            ]
        )
        shape = [1] * rank
        shape[axis] = count[0]
        scale = np.hstack(scales).astype(np.float32).reshape(shape)
        zero_point = np.hstack(zero_points).reshape(shape)
        if model_io.in_store(weight):
            quantized = _quantized_to_store(weight, scale, zero_point, weight_qType, q_weight_name)
        else:
            data = _quantized(onnx.numpy_helper.to_array(weight), scale, zero_point, dtype)
            quantized = onnx.numpy_helper.from_array(
                data.reshape(tuple(weight.dims)), q_weight_name
            )
        self.model.initializer_extend([quantized])
        return q_weight_name, zp_name, scale_name


@contextmanager
def _in_memory_reload() -> Iterator[None]:
    """onnxruntime's ``ONNXQuantizer.__init__`` with ``inferred_in_place`` for the reload it
    does after its Gemm rewrite (dynamic quantization): the parent calls the module's function,
    which no method can override. It passes the model it owns and keeps only what it gets
    back, so updating that model in place instead of copying it changes nothing for another
    quantizer running meanwhile."""
    if getattr(onnx_quantizer, _RELOAD, None) is None:  # a release without it
        yield
        return
    original = getattr(onnx_quantizer, _RELOAD)
    setattr(onnx_quantizer, _RELOAD, inferred_in_place)
    try:
        yield
    finally:
        setattr(onnx_quantizer, _RELOAD, original)


_RELOAD = "save_and_reload_model_with_shape_infer"


def with_inferred_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """What onnxruntime's quantizer makes of ``model`` first, without the disk round trip.

    Without the ``onnx.infer`` mark, onnxruntime's quantizer deep-copies the model, saves it
    with its tensors of 1 KB or more as external data, runs ONNX shape inference on the file,
    and loads the result back (``save_and_reload_model_with_shape_infer``): on every build,
    the guards' rebuilds included (a 90 MB MiniLM wrote 2.4 GB to disk). This makes the same
    copy and infers its shapes in memory (``inferred_in_place``): the model onnxruntime would
    have loaded, byte for byte.
    """
    if model_has_infer_metadata(model):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # one copy, as the parent's deepcopy
    return inferred_in_place(copy)


def inferred_in_place(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the shapes ONNX infers, as ``save_and_reload_model_with_shape_infer``
    returns it, but updated in place: no copy of its tensors, nothing written.

    The inference runs on a light copy whose tensors of 1 KB or more are marked external with
    their bytes left out, as they are in the file onnxruntime infers from; what inference
    changes (nodes, inputs, outputs, value_info) is then put into ``model``. onnxruntime's
    dynamic quantizer reloads the model it works on this way after its Gemm rewrite: two more
    copies of the weights (a >2 GB model's weights, loaded for quantization, took 2x their
    size more and 7 s). A model's own external-data tensors (inc's store for models over
    2 GB) stay as they are.
    """
    light, moved = _light_for_inference(model)
    inferred = onnx.shape_inference.infer_shapes(light)
    if not _only_graph_lists_differ(light, inferred):
        return _inferred_copy(model, inferred, moved)
    del light
    originals = _initializers(model)
    main = len(model.graph.initializer)
    # bytes of moved tensors inside subgraphs: their nodes are replaced by the inferred ones
    sub_bytes = {i: originals[i].raw_data for i in moved if i >= main}
    del originals
    for name in _INFERRED_FIELDS:
        target = getattr(model.graph, name)
        del target[:]
        target.extend(getattr(inferred.graph, name))
    for i in moved:
        if i < main:  # as onnx.load leaves a tensor it read back: the location field set
            model.graph.initializer[i].data_location = onnx.TensorProto.DEFAULT
    if sub_bytes:
        tensors = _initializers(model)
        for i, data in sub_bytes.items():
            _restore(tensors[i], data)
    add_infer_metadata(model)
    return model


#: the graph fields shape inference writes (node: the value_info of subgraphs)
_INFERRED_FIELDS = ("node", "input", "output", "value_info")


def _light_for_inference(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[int]]:
    """A copy of ``model`` as onnxruntime's quantizer saves it for shape inference, its tensors
    of 1 KB or more marked external and without their bytes (which are never copied); and
    the indices (in ``_initializers`` order) of the tensors so marked."""
    light = onnx.ModelProto()
    for descriptor, value in model.ListFields():
        if descriptor.name != "graph":
            _assign(light, descriptor, value)
    for descriptor, value in model.graph.ListFields():
        if descriptor.name != "initializer":
            _assign(light.graph, descriptor, value)
    moved = []
    for i, tensor in enumerate(model.graph.initializer):
        if _moves(tensor):
            stub = light.graph.initializer.add()
            for descriptor, value in tensor.ListFields():
                if descriptor.name not in ("raw_data", "external_data", "data_location"):
                    _assign(stub, descriptor, value)
            _mark_external(stub)
            moved.append(i)
        else:
            light.graph.initializer.add().CopyFrom(tensor)
    main = len(model.graph.initializer)
    for i, tensor in enumerate(_initializers(light)[main:], start=main):
        if _moves(tensor):  # a subgraph's tensor, copied whole (subgraphs hold small ones)
            tensor.ClearField("raw_data")
            _mark_external(tensor)
            moved.append(i)
    return light, moved


def _assign(message: Any, descriptor: Any, value: Any) -> None:
    target = getattr(message, descriptor.name)
    if model_io.is_repeated(descriptor):
        target.extend(value)
    elif descriptor.message_type is not None:
        target.CopyFrom(value)
    else:
        setattr(message, descriptor.name, value)


def _moves(tensor: onnx.TensorProto) -> bool:
    """Whether ``onnx.save_model(save_as_external_data=True)`` moves ``tensor`` to the file."""
    return (
        tensor.data_location != onnx.TensorProto.EXTERNAL
        and tensor.HasField("raw_data")
        and len(tensor.raw_data) + _BYTES_OVERHEAD >= _EXTERNAL_THRESHOLD
    )


def _mark_external(tensor: onnx.TensorProto) -> None:
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "inc-shape-inference.data"


def _restore(tensor: onnx.TensorProto, data: bytes) -> None:
    """A moved tensor as ``onnx.load`` gives it back: its bytes inline, no external marks."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        tensor.raw_data = data
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def _only_graph_lists_differ(light: onnx.ModelProto, inferred: onnx.ModelProto) -> bool:
    """Whether inference changed nothing but ``_INFERRED_FIELDS`` (what ``inferred_in_place``
    copies back); both protos are light, so comparing their bytes is cheap."""

    def rest(model: onnx.ModelProto) -> bytes:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        for name in _INFERRED_FIELDS:
            copy.graph.ClearField(name)
        serialized: bytes = copy.SerializeToString(deterministic=True)
        return serialized

    return rest(light) == rest(inferred)


def _inferred_copy(
    model: onnx.ModelProto, inferred: onnx.ModelProto, moved: list[int]
) -> onnx.ModelProto:
    """The inferred light model with the moved tensors' bytes put back (a copy of them)."""
    tensors, originals = _initializers(inferred), _initializers(model)
    for i in moved:
        _restore(tensors[i], originals[i].raw_data)
    add_infer_metadata(inferred)
    return inferred


#: onnx.save_model(save_as_external_data=True) moves a tensor whose raw bytes object
#: (``sys.getsizeof``: length plus CPython's bytes header) is at least this large
_EXTERNAL_THRESHOLD = 1024
_BYTES_OVERHEAD = 33


def _initializers(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The initializers of the graph and its subgraphs, in onnx.external_data_helper's order."""
    return list(onnx.external_data_helper._get_initializer_tensors(model))


#: the ``ONNXModel`` the QOperator quantizer works on (initializers looked up by name in a dict)
_LOOKUP_MODEL = IndexedInitializers


class IndexedModel(IndexedInitializers):
    """onnxruntime's ``ONNXModel`` (initializers looked up in a dict: ``IndexedInitializers``)
    whose ``replace_input_of_all_nodes`` looks the readers of
    a tensor up in an index instead of scanning every node: the QDQ quantizer calls it for
    every quantized tensor (quadratic in graph size; 30% of a rebuild on YOLOv8n).

    The index is built at the first call and follows the graph: nodes are only appended
    while the quantizer rewrites inputs (removal comes last, after every replacement), new
    nodes are indexed when next needed, and the input rewrites that go through this object
    move their nodes in the index. A node the index lists for a tensor it no longer reads
    is skipped by the same equality test the parent applies.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__(model)
        self._readers: dict[str, list[Any]] | None = None
        self._indexed = 0

    def _sync(self) -> dict[str, list[Any]]:
        nodes = self.model.graph.node
        if self._readers is None or len(nodes) < self._indexed:
            self._readers, self._indexed = {}, 0
        for node in nodes[self._indexed :]:
            for name in dict.fromkeys(node.input):
                self._readers.setdefault(name, []).append(node)
        self._indexed = len(nodes)
        return self._readers

    def replace_input_of_all_nodes(self, old_input_name: str, new_input_name: str) -> None:
        readers = self._sync()
        nodes = readers.pop(old_input_name, [])
        for node in nodes:
            ONNXModel.replace_node_input(node, old_input_name, new_input_name)
        readers.setdefault(new_input_name, []).extend(nodes)

    def replace_input_of_nodes(
        self, old_input_name: str, new_input_name: str, node_names_set: Any
    ) -> None:
        super().replace_input_of_nodes(old_input_name, new_input_name, node_names_set)
        self._after_rewrite(new_input_name, [n for n in self.nodes() if n.name in node_names_set])

    def replace_node_input(self, node: Any, old_input_name: str, new_input_name: str) -> None:
        ONNXModel.replace_node_input(node, old_input_name, new_input_name)
        self._after_rewrite(new_input_name, [node])

    def _after_rewrite(self, new_input_name: str, nodes: list[Any]) -> None:
        if self._readers is not None:
            self._sync().setdefault(new_input_name, []).extend(nodes)


def _quantize_initializer(
    weight: onnx.TensorProto,
    quant_type: int,
    zero_point: np.ndarray,
    scale: np.ndarray,
    axis: int | None = None,
    quant_weight_name: str | None = None,
    block_size: int = 0,
) -> onnx.TensorProto:
    """``quant_utils.quantize_onnx_initializer`` for int8/uint8 weights in one broadcast, in
    place: onnxruntime loops over channels in Python (0.45 s per build of MiniLM's 31 weights)
    and, per tensor or per channel, makes three float temporaries the size of the weight (a
    1 GiB weight of a >2 GB model took 3 GiB more); the float arithmetic per element is the
    same (divide, round half to even, add the zero point, clip), so the bytes are the same."""
    dtype = _NP_BY_ONNX.get(quant_type)
    scale, zero_point = np.asarray(scale), np.asarray(zero_point)
    per_tensor = axis is None and scale.size == 1 and zero_point.size == 1
    if (
        block_size
        or dtype is None
        or weight.data_type != onnx.TensorProto.FLOAT
        or len(weight.dims) == 0
        or not (
            per_tensor
            or (
                axis is not None
                and scale.ndim == 1
                and zero_point.shape == scale.shape
                and weight.dims[axis] == scale.size
            )
        )
    ):
        if _QUANTIZE_INITIALIZER is None:  # _vectorized_weights installs this only beside it
            raise RuntimeError("onnxruntime has no quantize_onnx_initializer to fall back on")
        return _QUANTIZE_INITIALIZER(
            weight, quant_type, zero_point, scale, axis, quant_weight_name, block_size=block_size
        )
    name = quant_weight_name or f"{weight.name}{TENSOR_NAME_QUANT_SUFFIX}"
    if per_tensor:
        scale_b, zero_b = scale.reshape(()), zero_point.reshape(())
    else:
        shape = [1] * len(weight.dims)
        shape[axis] = scale.size  # type: ignore[index]
        scale_b, zero_b = scale.reshape(shape), zero_point.reshape(shape)
    if model_io.in_store(weight):  # a model over 2 GB: from the store into the store
        return _quantized_to_store(weight, scale_b, zero_b, quant_type, name)
    data = onnx.numpy_helper.to_array(weight)
    out = _quantized(data, scale_b, zero_b, dtype)
    del data
    return onnx.numpy_helper.from_array(out.reshape(tuple(weight.dims)), name)


def _quantized(
    data: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray,
    dtype: Any,
    low: Any = None,
    high: Any = None,
) -> np.ndarray:
    """``quant_utils.quantize_nparray``'s arithmetic (float32 divide, round half to even, add
    the zero point, clip, cast) in slabs along axis 0, per-channel operands sliced with them
    when that is their axis: the float temporary is a slab's size, not the weight's."""
    data = data.astype(np.float32, copy=False)
    out = np.empty(data.shape, dtype)
    lowest, highest = _bounds(dtype, low, high)
    rows = max(1, _SLAB_BYTES // max(1, data[:1].nbytes)) if data.ndim else 1
    for start in range(0, data.shape[0] if data.ndim else 1, rows):
        part = slice(start, start + rows) if data.ndim else ...
        out[part] = _quantized_slab(data[part], scale, zero_point, part, lowest, highest)
    return out


def _bounds(dtype: Any, low: Any, high: Any) -> tuple[Any, Any]:
    info = np.iinfo(dtype)
    lowest = info.min if low is None else max(info.min, low)
    highest = info.max if high is None else min(info.max, high)
    return lowest, highest


def _quantized_slab(
    values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, part: Any, lowest: Any, high: Any
) -> np.ndarray:
    """One slab of ``_quantized``: the float result, rounded and clipped (the caller casts)."""
    s = scale[part] if scale.ndim and scale.shape[0] > 1 else scale
    z = zero_point[part] if zero_point.ndim and zero_point.shape[0] > 1 else zero_point
    result: np.ndarray = np.divide(values, s)
    np.round(result, out=result)
    np.add(result, z, out=result)
    np.clip(result, lowest, high, out=result)
    return result


def _quantized_to_store(
    weight: onnx.TensorProto, scale: np.ndarray, zero_point: np.ndarray, quant_type: int, name: str
) -> onnx.TensorProto:
    """``_quantized`` for a float32 weight in inc's store (a model over 2 GB): read, quantized
    and written to a new file of the store a slab at a time, so neither the float weight nor
    its int8 result is ever whole in memory. The same arithmetic per element, the same bytes."""
    dtype = _NP_BY_ONNX[quant_type]
    lowest, highest = _bounds(dtype, None, None)

    def slabs() -> Iterator[np.ndarray]:
        for part, values in model_io.row_slabs(weight, _SLAB_BYTES):
            yield _quantized_slab(values, scale, zero_point, part, lowest, highest).astype(dtype)

    return model_io.stored(name, quant_type, weight.dims, slabs())


def _quantize_nparray(
    qType: Any, arr: Any, scale: Any, zero_point: Any, low: Any = None, high: Any = None
) -> Any:
    """``quant_utils.quantize_nparray`` with int8/uint8 results computed by ``_quantized``
    (onnxruntime's makes three float temporaries of the array's size), the same bytes."""
    dtype = _NP_BY_ONNX.get(qType)
    scale, zero_point = np.asarray(scale), np.asarray(zero_point)
    if (
        dtype is None
        or not isinstance(arr, np.ndarray)
        or arr.dtype != np.float32
        or scale.size != 1
        or zero_point.size != 1
        or np.result_type(np.float32, scale.dtype) != np.float32
        or zero_point.dtype != dtype
    ):
        if _QUANTIZE_NPARRAY is None:  # _vectorized_weights installs this only beside it
            raise RuntimeError("onnxruntime has no quantize_nparray to fall back on")
        return _QUANTIZE_NPARRAY(qType, arr, scale, zero_point, low, high)
    return _quantized(arr, scale.reshape(()), zero_point.reshape(()), dtype, low, high)


#: the float temporary ``_quantize_initializer`` works in
_SLAB_BYTES = 2**26


_NP_BY_ONNX = {QUANT_TYPES[name].tensor_type: np_type for name, np_type in NP_TYPES.items()}
_QUANTIZE_INITIALIZER = getattr(qdq_quantizer, "quantize_onnx_initializer", None)
_QUANTIZE_NPARRAY = getattr(base_quantizer, "quantize_nparray", None)
_TO_ARRAY = getattr(quant_utils, "tensor_proto_to_array", None)


def _tensor_proto_to_array(initializer: onnx.TensorProto) -> Any:
    """``quant_utils.tensor_proto_to_array`` that also reads a tensor of inc's store (a model
    over 2 GB keeps its weights there through quantization): a read-only memory map, so the
    parent reading a weight's shape and dtype reads none of its data."""
    if model_io.in_store(initializer) and initializer.data_type in (
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
    ):
        return model_io.mapped(initializer)
    if _TO_ARRAY is None:  # _vectorized_weights installs this only beside it
        raise RuntimeError("onnxruntime has no tensor_proto_to_array to fall back on")
    return _TO_ARRAY(initializer)


def _store_quantize_initializer(weight: onnx.TensorProto, *args: Any, **kwargs: Any) -> Any:
    """``quantize_onnx_initializer`` as the QOperator quantizer calls it (requantizing a weight
    for its bias): onnxruntime's own, but ``_quantize_initializer`` for a weight of inc's store."""
    if model_io.in_store(weight):
        return _quantize_initializer(weight, *args, **kwargs)
    if _QUANTIZE_INITIALIZER is None:
        raise RuntimeError("onnxruntime has no quantize_onnx_initializer to fall back on")
    return _QUANTIZE_INITIALIZER(weight, *args, **kwargs)


def _patches() -> list[tuple[Any, str, Any, Any]]:
    """(module, name, inc's function, onnxruntime's) for ``_vectorized_weights``."""
    return [
        (module, name, replacement, original)
        for module, name, replacement, original in (
            (
                qdq_quantizer,
                "quantize_onnx_initializer",
                _quantize_initializer,
                _QUANTIZE_INITIALIZER,
            ),
            (
                onnx_quantizer,
                "quantize_onnx_initializer",
                _store_quantize_initializer,
                _QUANTIZE_INITIALIZER,
            ),
            (base_quantizer, "quantize_nparray", _quantize_nparray, _QUANTIZE_NPARRAY),
            *(
                (module, "tensor_proto_to_array", _tensor_proto_to_array, _TO_ARRAY)
                for module in (quant_utils, base_quantizer, qdq_quantizer, onnx_quantizer)
            ),
        )
        # a release without it (or binding another function): nothing to replace
        if original is not None and getattr(module, name, None) is original
    ]


_QLINEAR_WHERE = ort_registry.QLinearOpsRegistry.get("Where")


def _dequantizing_where(parent: type) -> type:
    """onnxruntime's QLinearWhere, dequantizing its inputs where it leaves the Where fp32.

    Without ``ForceQuantizeNoInputCheck`` it appends the Where unchanged and returns, reading a
    tensor that quantizing its producer removed (``MatMul -> Where``, an attention mask: "Invalid
    model with unknown initializers/tensors"); every other op left fp32 gets a
    DequantizeLinear for each quantized input (QuantOperatorBase.quantize), and so does this."""

    class DequantizingWhere(parent):  # type: ignore[misc,valid-type]
        def quantize(self) -> None:
            if not self.quantizer.force_quantize_no_input_check:
                QuantOperatorBase.quantize(self)
                return
            super().quantize()

    return DequantizingWhere


_DEQUANTIZING_WHERE = _dequantizing_where(_QLINEAR_WHERE) if _QLINEAR_WHERE else None


def _registry_swaps() -> list[tuple[dict[str, Any], str, Any, Any]]:
    """(table, key, inc's entry, onnxruntime's) swapped in onnxruntime's operator registry
    while inc's quantizers run, as ``_patches`` swaps functions."""
    table = ort_registry.QLinearOpsRegistry
    if _DEQUANTIZING_WHERE is None or table.get("Where") is not _QLINEAR_WHERE:
        return []  # a release without it, or someone else's entry: left alone
    return [(table, "Where", _DEQUANTIZING_WHERE, _QLINEAR_WHERE)]


_SWAPPED: list[tuple[dict[str, Any], str, Any, Any]] = []
_PATCHED: list[tuple[Any, str, Any, Any]] = []
_PATCH_USERS = 0
_PATCH_LOCK = threading.Lock()


@contextmanager
def _vectorized_weights() -> Iterator[None]:
    """onnxruntime's quantizers with ``_quantize_initializer`` for weights, and reading inc's
    store, while inc's quantizers run: the parent calls the modules' functions, which no method
    can override. Results are identical and other tensors are read as before, so another
    quantization running meanwhile is not affected; the functions stay replaced until the last
    of inc's quantizers running at once is done (a model over 2 GB needs them to be read).
    onnxruntime's QLinearWhere is swapped for one that dequantizes the inputs of a Where it
    leaves fp32 (``_dequantizing_where``) in the same way."""
    global _PATCH_USERS
    with _PATCH_LOCK:
        if not _PATCH_USERS:
            _PATCHED[:] = _patches()
            for module, name, replacement, _ in _PATCHED:
                setattr(module, name, replacement)
            _SWAPPED[:] = _registry_swaps()
            for table, key, replacement, _ in _SWAPPED:
                table[key] = replacement
        _PATCH_USERS += 1
    try:
        yield
    finally:
        with _PATCH_LOCK:
            _PATCH_USERS -= 1
            if not _PATCH_USERS:
                for module, name, _, original in _PATCHED:
                    setattr(module, name, original)
                _PATCHED.clear()
                for table, key, _, original in _SWAPPED:
                    table[key] = original
                _SWAPPED.clear()


def _renamed(values: dict[str, Any], params: Any) -> dict[str, Any]:
    """Keyword arguments for the installed constructor (older releases used other names)."""
    out = {}
    for name, value in values.items():
        if name in params:
            out[name] = value
            continue
        for old in _RENAMED.get(name, ()):
            if old in params:
                out[old] = value
    return out


def tensor_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name ``graph`` and its subgraphs use (defined, read or described)."""
    names = {t.name for t in (*graph.input, *graph.output, *graph.value_info)}
    names.update(i.name for i in graph.initializer)
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for attr in node.attribute:
            for sub in (attr.g,) if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                names |= tensor_names(sub)
    names.discard("")
    return names


def check_single_definitions(graph: onnx.GraphProto, where: str = "the quantized model") -> None:
    """Raise ``ModelError`` when two things define one tensor name (the checker lets an
    initializer and a node output share a name; onnxruntime then fails to load the model or,
    worse, reads the wrong one)."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    clashes: list[str] = []
    for node in graph.node:
        for out in node.output:
            if not out:
                continue
            if out in defined:
                clashes.append(f"{out!r} (output of {node.op_type} {node.name!r})")
            defined.add(out)
    if clashes:
        raise ModelError(
            f"{where} defines tensors twice: {', '.join(clashes[:5])}"
            + (f" and {len(clashes) - 5} more" if len(clashes) > 5 else "")
            + "; every tensor name must have one producer (an initializer, a graph input or one "
            "node output). This is a bug in inc or onnxruntime's quantizer: please report it "
            "with the model"
        )


def run(quantizer: Any) -> onnx.ModelProto:
    """Quantize and return the ModelProto; the quantizer is spent (it holds nothing after)."""
    quantizer.quantize_model()
    quantizer.model.topological_sort()  # the parent sorts only when it saves to a file
    model = compact(quantizer.model.model)
    # a quantizer builds once: let go of what it holds of the model it rewrote (upb frees that
    # model's memory only when nothing refers to any part of it)
    vars(quantizer).clear()
    check_single_definitions(model.graph)
    return model


def check(model: onnx.ModelProto, data: bytes | None = None) -> None:
    """onnx's checker on a built model; ``data`` is its serialized bytes when the caller
    has them (the backend keeps them for the session that runs the model next: the checker
    serializing it again cost MiniLM-L6's guards 0.12 s a build)."""
    if model_io.detached(model):  # weights left fp32 in inc's store (a model over 2 GB)
        model_io.run_checker(model)
    elif data is not None:
        onnx.checker.check_model(data)
    elif model.ByteSize() < PROTOBUF_LIMIT:
        onnx.checker.check_model(model)


def compact(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` holding only what it holds now.

    A protobuf (upb) message frees the memory of a tensor removed or overwritten only with the
    whole message: a quantized model still carries the fp32 weights the quantizer replaced (a
    >2 GB model's weights, loaded for quantization, stayed in memory through the guards and
    the save). The copy allocates only the live fields; the caller drops the original.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
