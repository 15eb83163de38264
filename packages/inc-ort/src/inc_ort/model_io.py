"""Reading and writing ONNX models: paths, ModelProtos, external data; never touching the input."""

from __future__ import annotations

import atexit
import functools
import gc
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from inc_core.errors import ModelError

from ._runtime import onnx, ort

#: protobuf's hard limit; larger models must keep their tensors in external data
PROTOBUF_LIMIT = 2**31 - 1
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
#: models whose tensor data reach this size are held "detached" (see ``load``)
LARGE_MODEL_BYTES = PROTOBUF_LIMIT - 2**26
#: a tensor this big is written to a data file when a model is saved with external data
EXTERNAL_MIN_BYTES = 1024
#: session config key: the folder relative external data locations are read from
_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
_CHUNK = 2**26


def load(model: Any) -> onnx.ModelProto:
    """A private copy of the user's model (a path or a ModelProto), external data loaded.

    A model whose tensor data reach ``LARGE_MODEL_BYTES`` (protobuf cannot serialize a message
    over 2 GB) is returned *detached*: its big tensors stay in files of inc's store (the user's
    data files hard-linked there, or copied where a link cannot be made) and the proto holds
    only references to them, so it serializes, copies and checks in kilobytes. Sessions read
    the store through ``session``; ``materialize`` loads the tensors a step must read.
    """
    if isinstance(model, onnx.ModelProto):
        if data_bytes(model) >= LARGE_MODEL_BYTES and not detached(model):
            return detach(model)
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    path = Path(os.fspath(model))
    if not path.is_file():
        raise ModelError(f"{path} does not exist or is not a file; give the path of a .onnx model")
    try:
        # Reads external data relative to the model's folder; only reads, never writes.
        proto = onnx.load_model(str(path), load_external_data=False)
        if detached(proto) and data_bytes(proto) >= LARGE_MODEL_BYTES:
            _adopt(proto, path.parent)
        else:
            onnx.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise ModelError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}); "
            "give a file written by onnx.save_model or an exporter"
        ) from exc
    if not proto.graph.node:
        raise ModelError(f"{path} is not an ONNX model: it has no graph nodes")
    return proto


#: every onnxruntime release inc-ort supports (>= 1.20) loads opsets up to 21
KNOWN_LOADABLE_OPSET = 21
#: ops that only an already-quantized graph holds (QDQ, QOperator, integer and n-bit kernels)
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "ConvInteger",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "MatMulNBits",
        "QGemm",
        "QAttention",
        "QEmbedLayerNormalization",
    }
)


#: protobuf tag of ModelProto field 1 (ir_version, a varint)
IR_VERSION_TAG = b"\x08"


def is_onnx_file(path: Path) -> bool:
    """Whether ``path`` holds an ONNX model whatever its name (``model.bin``): its graph parses
    and has nodes. Only the graph is read (no external data), nothing is written."""
    try:
        with open(path, "rb") as file:
            if file.read(1) != IR_VERSION_TAG:  # onnx writes ir_version, field 1, first
                return False
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception:
        return False
    return bool(proto.graph.node) and proto.ir_version > 0


def _opset(model: onnx.ModelProto) -> int | None:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return max(versions) if versions else None


@functools.cache
def highest_opset() -> int:
    """The newest default-domain opset both the installed onnx and onnxruntime load."""
    from onnx import TensorProto, helper

    top = onnx.defs.onnx_opset_version()
    for version in range(top, KNOWN_LOADABLE_OPSET, -1):
        value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])], "probe", [value], [out]
        )
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", version)])
        probe.ir_version = min(probe.ir_version, 10)
        try:
            ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:
            continue
        return version
    return KNOWN_LOADABLE_OPSET


def check_opset(model: onnx.ModelProto, where: str = "the model") -> None:
    """A ``ModelError`` naming the supported range when onnxruntime cannot load the opset."""
    # older opsets are converted to 13 on inc's copy (graph.with_quantizable_opset)
    found = _opset(model)
    if found is None or found <= KNOWN_LOADABLE_OPSET:
        return
    top = highest_opset()
    if found <= top:
        return
    raise ModelError(
        f"{where} uses ONNX opset {found}; inc-ort runs opsets up to {top} with onnx "
        f"{onnx.__version__} and onnxruntime {ort.__version__} (opsets below 13 are converted "
        f"to 13 on inc's copy): export it with an opset "
        f"in that range (e.g. torch.onnx.export(..., opset_version={min(17, top)})) or convert "
        f"it: onnx.version_converter.convert_version(model, {min(17, top)})"
    )


def check_not_quantized(model: onnx.ModelProto, where: str = "the model") -> None:
    """A ``ModelError`` when the graph is already int8 (QDQ or QOperator): quantizing it again
    would requantize dequantized values, so inc refuses and says where the fp32 model is needed."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS or node.op_type.startswith("QLinear"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if not counts:
        return
    found = ", ".join(f"{n} {op}" for op, n in sorted(counts.items(), key=lambda kv: -kv[1])[:5])
    raise ModelError(
        f"{where} is already quantized (it holds {found}): inc quantizes fp32 models; give it "
        "the fp32 model the int8 one was made from"
    )


#: float types inc does not quantize from: onnxruntime's quantizer casts such weights to float32
#: at run time (InsertedPrecisionFreeCast), so it finds no constant weight to quantize
HALF_TYPES = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}


def check_float32(model: onnx.ModelProto, where: str = "the model") -> None:
    """A ``ModelError`` when the model computes in float16 or bfloat16: most of its float
    weights are half (or, with no float weights, its float inputs are), naming a few."""
    half: dict[str, tuple[str, int]] = {}
    single = 0
    for tensor in model.graph.initializer:
        size = int(np.prod(tensor.dims)) if tensor.dims else 1
        if tensor.data_type in HALF_TYPES:
            half[tensor.name] = (HALF_TYPES[tensor.data_type], size)
        elif tensor.data_type == onnx.TensorProto.FLOAT:
            single += size
    inputs = {
        i.name: HALF_TYPES.get(i.type.tensor_type.elem_type, "float32")
        for i in model.graph.input
        if i.name not in half
        and i.type.tensor_type.elem_type in (*HALF_TYPES, onnx.TensorProto.FLOAT)
    }
    weights = sum(size for _, size in half.values())
    half_inputs = [name for name, kind in inputs.items() if kind != "float32"]
    only_half_inputs = bool(half_inputs) and len(half_inputs) == len(inputs)
    if weights <= single and not (weights == single == 0 and only_half_inputs):
        return  # mostly float32 weights (a few half constants), or no float weights and inputs
    named = [f"{n} ({t})" for n, (t, _) in sorted(half.items(), key=lambda kv: -kv[1][1])[:3]]
    named += [f"input {n} ({inputs[n]})" for n in half_inputs[:2]]
    kind = next(iter(half.values()))[0] if half else inputs[half_inputs[0]]
    raise ModelError(
        f"{where} computes in {kind} ({', '.join(named)}): inc quantizes float32 models. "
        "Export it in float32 (the framework model before its float16 conversion, e.g. "
        "tf2onnx or torch.onnx.export without .half()); onnxconverter_common's float16 module "
        "converts float32 to float16 (convert_float_to_float16), not back"
    )


def check(model: onnx.ModelProto, where: str = "the model") -> None:
    """Validate the user's input model: a loadable opset, not already int8, float32, and the
    ONNX checker (through a file when the proto is too big to serialize)."""
    check_opset(model, where)
    check_not_quantized(model, where)
    check_float32(model, where)
    try:
        if detached(model):
            _check_detached(model)
        elif data_bytes(model) < LARGE_MODEL_BYTES:
            onnx.checker.check_model(model)
        else:
            _check_detached(detach(model))
    except Exception as exc:
        raise ModelError(f"{where} is not a valid ONNX model: {exc}") from exc


def save(model: onnx.ModelProto, path: Path, external: bool | None = None) -> list[str]:
    """Write ``model`` to ``path``; with external data (``<name>.data`` beside it) when big.

    Returns the file names written, relative to ``path.parent``.
    """
    if detached(model) or data_bytes(model) >= LARGE_MODEL_BYTES:
        return _save_external(model, path)
    if external is None:
        external = model.ByteSize() >= PROTOBUF_LIMIT - 2**26
    if not external:  # onnx.save_model only reads the proto then
        onnx.save_model(model, str(path))
        return [path.name]
    copy = onnx.ModelProto()  # an external-data save rewrites the proto it is given
    copy.CopyFrom(model)
    data_name = f"{path.name}.data"
    onnx.save_model(
        copy,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_name,
        size_threshold=1024,
    )
    return [path.name, data_name]


# ---------------------------------------------------------------- models over 2 GB (detached)


@functools.cache
def store() -> Path:
    """inc's folder for the tensor data of detached models (removed when the process exits)."""
    folder = Path(tempfile.mkdtemp(prefix=f"inc-ort-store-{os.getpid()}-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _external(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def detached(model: onnx.ModelProto) -> bool:
    """Whether some initializer's data lives in a file rather than in the proto."""
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    """The size of a tensor's data, read from its dims (never by serializing it)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        length = _external(tensor).get("length")
        if length:
            return int(length)
    try:
        itemsize: int = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:  # strings and exotic types: small in practice
        itemsize = 1
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def data_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data the model holds or points to (initializers of the main graph)."""
    return sum(tensor_bytes(t) for t in model.graph.initializer)


def model_size(model: onnx.ModelProto) -> int:
    """The model's size in bytes, its external data included, without serializing it whole."""
    if detached(model) or data_bytes(model) >= LARGE_MODEL_BYTES:
        return int(_light(model, lambda t: False).ByteSize()) + data_bytes(model)
    return int(model.ByteSize())


def _linked(source: Path) -> str:
    """The name in ``store()`` of a hard link to (or, across file systems, a copy of) ``source``.

    onnxruntime reads external data only from below one folder and refuses symlinks; a hard
    link costs no space and the user's file is only ever read through it.
    """
    key = source.resolve()
    stat = key.stat()
    cache = _links.setdefault((stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns), "")
    if cache:
        return cache
    name = f"user-{uuid.uuid4().hex}.data"
    try:
        os.link(key, store() / name)
    except OSError:
        shutil.copyfile(key, store() / name)
    _links[(stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)] = name
    return name


_links: dict[tuple[int, int, int, int], str] = {}


def _adopt(model: onnx.ModelProto, folder: Path) -> None:
    """Point ``model``'s external tensors (relative to ``folder``) at links in ``store()``."""
    root = folder.resolve()
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = _external(tensor)
        source = (root / info.get("location", "")).resolve()
        if not source.is_relative_to(root) or not source.is_file():
            raise ModelError(
                f"tensor {tensor.name!r} points to external data {info.get('location')!r}, which "
                f"is not a file inside {root}; keep a model's data files beside it"
            )
        _set_external(tensor, _linked(source), int(info.get("offset", 0)), info.get("length"))


def _set_external(tensor: onnx.TensorProto, location: str, offset: int, length: Any) -> None:
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entries = [("location", location), ("offset", str(offset))]
    if length is not None:
        entries.append(("length", str(length)))
    for key, value in entries:
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def is_repeated(descriptor: Any) -> bool:
    """Whether a protobuf field is repeated (``label`` is gone from protobuf 7's descriptors,
    ``is_repeated`` is new in protobuf 5)."""
    repeated = getattr(descriptor, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return bool(descriptor.label == descriptor.LABEL_REPEATED)


def _light(model: onnx.ModelProto, keep: Any) -> onnx.ModelProto:
    """A copy of ``model`` without the initializers ``keep(tensor)`` rejects (never copying
    the whole proto: that is what a >2 GB model cannot afford)."""
    light = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name == "graph":
            continue
        target = getattr(light, field.name)
        if is_repeated(field):
            target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(light, field.name, value)
    for field, value in model.graph.ListFields():
        if field.name == "initializer":
            continue
        target = getattr(light.graph, field.name)
        if is_repeated(field):
            target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(light.graph, field.name, value)
    light.graph.initializer.extend(t for t in model.graph.initializer if keep(t))
    return light


def for_inference(model: onnx.ModelProto, min_bytes: int = 1024) -> onnx.ModelProto:
    """A copy of ``model`` for ONNX shape/type inference, without the bytes of its tensors of
    ``min_bytes`` or more: each keeps its name, type and dims and is marked external (as
    onnxruntime's quantizer saves a model for inference), so inference types every tensor as on
    the whole model but serializes kilobytes, not the weights (MiniLM-L3: 0.4 s of its fit).
    Smaller tensors, the shapes and axes inference reads the values of, keep their data."""

    def small(tensor: onnx.TensorProto) -> bool:
        return tensor.data_location == onnx.TensorProto.EXTERNAL or tensor_bytes(tensor) < min_bytes

    light = _light(model, small)
    for tensor in model.graph.initializer:
        if not small(tensor):
            stub = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
            _set_external(stub, "inc-inference-only.data", 0, tensor_bytes(tensor))
            light.graph.initializer.append(stub)
    return light


def _raw(tensor: onnx.TensorProto) -> bytes:
    if tensor.HasField("raw_data"):
        raw: bytes = tensor.raw_data
        return raw
    data: bytes = onnx.numpy_helper.to_array(tensor).tobytes()
    return data


def detach(model: onnx.ModelProto, min_bytes: int = 2**20) -> onnx.ModelProto:
    """A detached copy of ``model``: in-proto tensors of ``min_bytes`` or more are written to
    a file of ``store()`` (one tensor at a time) and referenced from there."""
    small = _light(
        model,
        lambda t: t.data_location == onnx.TensorProto.EXTERNAL or tensor_bytes(t) < min_bytes,
    )
    order = [t.name for t in model.graph.initializer]
    kept = {t.name: t for t in small.graph.initializer}
    name = f"inc-{uuid.uuid4().hex}.data"
    out: dict[str, onnx.TensorProto] = {}
    offset = 0
    with open(store() / name, "wb") as file:
        for tensor in model.graph.initializer:
            if tensor.name in kept:
                continue
            data = _raw(tensor)
            ref = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
            _set_external(ref, name, offset, len(data))
            file.write(data)
            offset += len(data)
            pad = -offset % 4096  # page-aligned tensors can be memory-mapped by onnxruntime
            file.write(b"\0" * pad)
            offset += pad
            out[tensor.name] = ref
            del data
    del small.graph.initializer[:]
    for key in order:
        small.graph.initializer.append(kept[key] if key in kept else out[key])
    return small


def _read(tensor: onnx.TensorProto, folder: Path) -> bytes:
    info = _external(tensor)
    with open(folder / info["location"], "rb") as file:
        file.seek(int(info.get("offset", 0)))
        length = info.get("length")
        return file.read(int(length)) if length else file.read()


def materialize(model: onnx.ModelProto, names: set[str]) -> None:
    """Load the data of the detached initializers named ``names`` into ``model`` (in place):
    for steps that read tensor values with onnx (the planner's weight scales, the recipes).

    A loaded tensor keeps its ``external_data`` entries (ignored while its location is
    DEFAULT) as the mark that it still holds the store's bytes: ``unload`` turns it back into
    the reference. Rewriting a tensor (``CopyFrom``, ``numpy_helper.from_array``) drops the
    mark, and ``unload`` writes the new bytes to the store instead.
    """
    # an onnxruntime session of the model that a reference cycle keeps (until the collector
    # runs) holds its weights too (1x their size, prepacked): let it go before loading them
    gc.collect()
    for tensor in model.graph.initializer:
        if tensor.name in names and tensor.data_location == onnx.TensorProto.EXTERNAL:
            data = _read(tensor, store())
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = data
            del data


def _loaded(tensor: onnx.TensorProto) -> bool:
    """Whether ``materialize`` loaded ``tensor`` and nothing rewrote it since."""
    return (
        tensor.data_location != onnx.TensorProto.EXTERNAL
        and len(tensor.external_data) > 0
        and tensor.HasField("raw_data")
    )


def unload(model: onnx.ModelProto) -> onnx.ModelProto:
    """A detached copy of ``model`` after ``materialize``: the tensors it loaded are references
    to the store again, and in-proto tensors of 1 MB or more (a recipe's rewritten weights)
    are written there. The caller drops ``model`` (protobuf frees loaded bytes only with the
    whole message), so only one weight at a time is in memory from then on: onnxruntime's
    quantizer reads them from the store (``inc_ort.quantizer``)."""
    light = _light(model, lambda t: False)
    big = False
    for tensor in model.graph.initializer:
        if _loaded(tensor):
            ref = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
            ref.external_data.extend(tensor.external_data)
            ref.data_location = onnx.TensorProto.EXTERNAL
            light.graph.initializer.append(ref)
            continue
        light.graph.initializer.append(tensor)
        if tensor.data_location != onnx.TensorProto.EXTERNAL and tensor_bytes(tensor) >= 2**20:
            big = True
    return detach(light) if big else light


def in_store(tensor: onnx.TensorProto) -> bool:
    """Whether ``tensor`` is a reference to data in inc's store (a detached model's)."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return False
    location = _external(tensor).get("location", "")
    return bool(location) and "/" not in location and (store() / location).is_file()


def _np_dtype(tensor: onnx.TensorProto) -> np.dtype[Any]:
    dtype: np.dtype[Any] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    return dtype


def mapped(tensor: onnx.TensorProto) -> np.ndarray:
    """A read-only memory map of a store tensor's data (``in_store``): what a step reads of it
    is paged in from the file, nothing is copied (shape and dtype cost no read at all)."""
    info = _external(tensor)
    shape = tuple(int(d) for d in tensor.dims)
    if not int(np.prod(shape, dtype=np.int64)):
        return np.empty(shape, _np_dtype(tensor))
    array: np.ndarray = np.memmap(
        store() / info["location"],
        dtype=_np_dtype(tensor),
        mode="r",
        offset=int(info.get("offset", 0)),
        shape=shape,
    )
    return array


def row_slabs(tensor: onnx.TensorProto, slab_bytes: int) -> Iterator[tuple[slice, np.ndarray]]:
    """A store tensor's data read from its file in slabs of rows (axis 0) of about
    ``slab_bytes``: ``(rows, values)`` pairs, the values in a fresh array each (file reads, no
    memory map, so what was read is freed with the slab)."""
    info = _external(tensor)
    dtype = _np_dtype(tensor)
    shape = tuple(int(d) for d in tensor.dims)
    row_items = int(np.prod(shape[1:], dtype=np.int64)) if shape else 1
    count = shape[0] if shape else 1
    step = max(1, slab_bytes // max(1, row_items * dtype.itemsize))
    with open(store() / info["location"], "rb") as file:
        file.seek(int(info.get("offset", 0)))
        for start in range(0, count, step):
            rows = min(step, count - start)
            values = np.empty((rows, *shape[1:]), dtype)
            if file.readinto(values.data.cast("B")) != values.nbytes:
                raise ModelError(f"the data of tensor {tensor.name!r} in {store()} is cut short")
            yield slice(start, start + rows), values if shape else values.reshape(())


def stored(
    name: str, data_type: int, dims: Iterable[int], slabs: Iterable[np.ndarray]
) -> onnx.TensorProto:
    """A reference to a new file of ``store()`` holding ``slabs`` one after the other (written
    as they come): a tensor made without holding its data whole."""
    location = f"q-{uuid.uuid4().hex}.data"
    length = 0
    with open(store() / location, "wb") as file:
        for slab in slabs:
            data = np.ascontiguousarray(slab)
            file.write(data.data.cast("B"))
            length += data.nbytes
    ref = onnx.TensorProto(name=name, data_type=data_type, dims=list(dims))
    _set_external(ref, location, 0, length)
    return ref


def sessionable(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, or a detached copy when its in-proto data is too big to serialize."""
    inline = sum(
        tensor_bytes(t)
        for t in model.graph.initializer
        if t.data_location != onnx.TensorProto.EXTERNAL
    )
    return detach(model) if inline >= LARGE_MODEL_BYTES else model


def inference_session(
    model: onnx.ModelProto, options: Any, providers: list[str], data: bytes | None = None
) -> ort.InferenceSession:
    """An InferenceSession over ``model``, detached or not (its data read from ``store()``).

    ``data``: ``model``'s serialized bytes when the caller already has them (a model of
    in-proto data under ``LARGE_MODEL_BYTES``)."""
    if data is not None:
        return ort.InferenceSession(data, options, providers=providers)
    model = sessionable(model)
    if detached(model):
        gc.collect()  # sessions of it that reference cycles keep (see ``materialize``)
        options.add_session_config_entry(_FOLDER_KEY, str(store()))
    return ort.InferenceSession(model.SerializeToString(), options, providers=providers)


def optimized_detached(model: onnx.ModelProto, options: Any) -> onnx.ModelProto:
    """The graph onnxruntime optimizes from a detached ``model`` (``options`` set the level),
    detached too: onnxruntime writes its tensors to a new file of ``store()``."""
    tag = uuid.uuid4().hex
    target = store() / f"opt-{tag}.onnx"
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", f"opt-{tag}.data"
    )
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", str(2**20)
    )
    try:
        inference_session(model, options, ["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load the model: {exc}") from exc
    try:
        return onnx.load_model(str(target), load_external_data=False)
    finally:
        target.unlink(missing_ok=True)


def run_checker(model: onnx.ModelProto) -> None:
    """The ONNX checker on ``model``, detached (through a file) or not."""
    if detached(model):
        _check_detached(model)
    else:
        onnx.checker.check_model(model)


def _check_detached(model: onnx.ModelProto) -> None:
    """The ONNX checker on a detached model, through a file: the checker reads the graph, and of
    external data only whether the files exist (it refuses hard links, which the store holds, so
    it is shown empty sparse files of the same sizes)."""
    with tempfile.TemporaryDirectory(prefix="inc-ort-check-") as tmp:
        for name in {_external(t)["location"] for t in model.graph.initializer if _external(t)}:
            with open(Path(tmp) / name, "wb") as file:
                file.truncate((store() / name).stat().st_size)
        path = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(path))
        onnx.checker.check_model(str(path))


def _save_external(model: onnx.ModelProto, path: Path) -> list[str]:
    """Write ``model`` with its tensors of ``EXTERNAL_MIN_BYTES`` or more in ``<name>.data``,
    streaming detached ones from ``store()`` (the whole proto is never serialized)."""
    data_name = f"{path.name}.data"
    light = _light(model, lambda t: False)
    offset = 0
    with open(path.parent / data_name, "wb") as out:
        for tensor in model.graph.initializer:
            if (
                tensor.data_location != onnx.TensorProto.EXTERNAL
                and tensor_bytes(tensor) < EXTERNAL_MIN_BYTES
            ):
                light.graph.initializer.append(tensor)
                continue
            ref = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
            start = offset
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                info = _external(tensor)
                with open(store() / info["location"], "rb") as source:
                    source.seek(int(info.get("offset", 0)))
                    left = int(info["length"]) if info.get("length") else None
                    while left is None or left > 0:
                        chunk = source.read(_CHUNK if left is None else min(_CHUNK, left))
                        if not chunk:
                            break
                        out.write(chunk)
                        offset += len(chunk)
                        left = None if left is None else left - len(chunk)
            else:
                data = _raw(tensor)
                out.write(data)
                offset += len(data)
                del data
            _set_external(ref, data_name, start, offset - start)
            light.graph.initializer.append(ref)
            pad = -offset % 4096
            out.write(b"\0" * pad)
            offset += pad
    onnx.save_model(light, str(path))
    return [path.name, data_name]


def data_digest(model: onnx.ModelProto, seed: str = "") -> str:
    """A sha256 over ``seed`` and the data of ``model``'s detached tensors, read in chunks (the
    proto alone names only files, so equal graphs with other weights would digest the same)."""
    import hashlib

    digest = hashlib.sha256(seed.encode())
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = _external(tensor)
        digest.update(tensor.name.encode())
        with open(store() / info["location"], "rb") as file:
            file.seek(int(info.get("offset", 0)))
            left = int(info["length"]) if info.get("length") else -1
            while left:
                chunk = file.read(_CHUNK if left < 0 else min(_CHUNK, left))
                if not chunk:
                    break
                digest.update(chunk)
                left = left - len(chunk) if left > 0 else left
    return digest.hexdigest()
