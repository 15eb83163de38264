"""Content digests of models and data, so that a tuning history is resumed only for the same run.

``model_digest`` is ``Backend.fingerprint``'s default: it finds a model's weights by the shapes
frameworks give them (``state_dict()``, ``get_weights()``, ``collect_params()``, an ONNX graph's
initializers, numpy arrays held in dataclasses) without importing any framework. ``data_digest``
digests calibration and evaluation batches (arrays, tensors, and dicts/lists/tuples of them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

# How deep the generic walk looks into plain Python objects for arrays (a dataclass of layers of
# arrays is depth 3); deeper structures are not weights a backend hands the core.
_DEPTH = 6


class _Unknown(Exception):
    """The walk met something it cannot digest by content."""


def _array_bytes(value: Any) -> tuple[str, bytes]:
    """dtype+shape and raw bytes of an array-like (numpy, or a tensor with ``__array__``)."""
    arr = value
    if not isinstance(arr, np.ndarray):
        for convert in (
            lambda v: np.asarray(v),
            lambda v: np.asarray(v.float()),  # torch bfloat16 has no numpy dtype
            lambda v: v.asnumpy(),  # mxnet NDArray
            lambda v: v.numpy(),  # tf.Tensor / Variable
        ):
            try:
                arr = convert(value)
                break
            except Exception:
                continue
        else:
            raise _Unknown(type(value).__qualname__)
    if arr.dtype == object:
        raise _Unknown("object array")
    arr = np.ascontiguousarray(arr)
    return f"{arr.dtype.str}{arr.shape}", arr.tobytes()


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or (
        hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, type)
    )


def _feed(h: Any, value: Any, depth: int = 0) -> None:
    """Hash ``value`` into ``h`` by content and structure; ``_Unknown`` when it cannot."""
    if depth > _DEPTH:
        raise _Unknown("too deep")
    if isinstance(value, (bytes, bytearray)):
        h.update(b"bytes:" + hashlib.sha256(value).digest())
    elif value is None or isinstance(value, (bool, int, float, complex, str, np.generic)):
        h.update(f"{type(value).__name__}:{value!r};".encode())
    elif _is_array(value):
        head, raw = _array_bytes(value)
        h.update(head.encode())
        h.update(hashlib.sha256(raw).digest())
    elif isinstance(value, Mapping):
        h.update(b"{")
        for key in sorted(value, key=repr):
            h.update(repr(key).encode())
            _feed(h, value[key], depth + 1)
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for item in value:
            _feed(h, item, depth + 1)
        h.update(b"]")
    elif dataclasses.is_dataclass(value):
        h.update(type(value).__qualname__.encode())
        for f in dataclasses.fields(value):
            h.update(f.name.encode())
            _feed(h, getattr(value, f.name), depth + 1)
    else:
        raise _Unknown(type(value).__qualname__)


def data_digest(value: Any) -> str | None:
    """A digest of one batch or a list of batches; None when something in it is not data."""
    h = hashlib.sha256()
    try:
        _feed(h, value)
    except _Unknown:
        return None
    return h.hexdigest()[:16]


def _files_digest(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        h.update(file.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _proto_graph(model: Any) -> Any:
    graph = getattr(model, "graph", None)
    return graph if hasattr(graph, "initializer") and hasattr(graph, "node") else None


def _weights(model: Any) -> Any:
    """The model's weights in a form ``_feed`` digests, found by duck typing."""
    graph = _proto_graph(model)
    if graph is not None:  # an ONNX ModelProto: each tensor and node on its own (a whole
        # model above 2 GB cannot be serialised in one piece)
        return {
            "initializers": [t.SerializeToString() for t in graph.initializer],
            "nodes": [n.SerializeToString() for n in graph.node],  # Constant nodes hold weights
        }
    accessors: tuple[tuple[str, Callable[[Any], Any]], ...] = (
        ("state_dict", lambda m: dict(m.state_dict())),  # torch
        ("get_weights", lambda m: list(m.get_weights())),  # keras
        (
            "collect_params",  # mxnet gluon
            lambda m: {k: p.data() for k, p in m.collect_params().items()},
        ),
    )
    for name, read in accessors:
        if callable(getattr(model, name, None)):
            return read(model)
    return model


def model_digest(model: Any) -> str | None:
    """A digest of ``model``'s weights (a path: of its files), or None when none can be found."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        return _files_digest(path) if path.exists() else None
    try:
        weights = _weights(model)
    except Exception:  # an accessor that fails (uninitialised parameters, ...)
        return None
    return data_digest(weights)


def identity(func: Any) -> str | None:
    """Who a user's callable is, by name (``module.qualname``; a callable object by its class)."""
    if func is None:
        return None
    target = func if hasattr(func, "__qualname__") else type(func)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}"
