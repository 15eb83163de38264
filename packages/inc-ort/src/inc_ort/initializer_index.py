"""Initializers found by name in one dict lookup while onnxruntime's quantizers build.

onnxruntime's quantizers look an initializer up by scanning the graph's list
(``quant_utils.find_by_name``, ``ONNXModel.get_initializer``) and check every initializer again
each time they add one (``ONNXModel.initializer_extend``): once per weight, bias, scale and
zero point, so a build is quadratic in the number of initializers. On YOLOv8n (nudenet) these
scans were 55% of a build, on PicoDet (layout-cdla) 45%, and the guards build several times.

``IndexedInitializers`` is their ``ONNXModel`` with a name -> initializer dict that follows the
list; ``indexed_lookups`` routes ``find_by_name`` on that list to it while a build runs. Every
answer is the one the scan gives (the first initializer of that name), so the bytes built are
the same.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from onnxruntime.quantization import (
    base_quantizer,
    onnx_model,
    onnx_quantizer,
    qdq_quantizer,
    quant_utils,
)
from onnxruntime.quantization.onnx_model import ONNXModel

from ._runtime import onnx


class IndexedInitializers(ONNXModel):  # type: ignore[misc]
    """onnxruntime's ``ONNXModel`` whose initializer lookups use a dict.

    The dict is built at the first lookup and kept in step by the methods through which the
    quantizers add and remove initializers. A change made to the list some other way changes
    its length (onnxruntime only appends and removes), and a lookup after that rebuilds the
    dict from the list.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__(model)
        self._by_name: dict[str, onnx.TensorProto] = {}
        #: how many initializers the dict was made from; -1: to be built at the next lookup
        self._size = -1
        #: names that more than one initializer has (the dict holds the first of them)
        self._repeated: set[str] = set()
        #: whether any initializer is float8 (the only type ``_check_init`` checks)
        self._float8 = False

    # ------------------------------------------------------------------ lookups
    def find_initializer(self, name: str) -> onnx.TensorProto | None:
        """``find_by_name(name, self.initializer())``: the first initializer named ``name``."""
        return self._index().get(name)

    def get_initializer(self, name: str) -> onnx.TensorProto | None:
        return self._index().get(name)

    # ------------------------------------------------------------------ changes
    def add_initializer(self, tensor: onnx.TensorProto) -> None:
        if tensor.name not in self._index():
            self._check_init(tensor)
            self.model.graph.initializer.extend([tensor])
            self._appended(1)

    def initializer_extend(self, inits: Any) -> None:
        if len(inits) == 0:
            raise ValueError("Can add an empty list.")
        self._index()
        if self._float8:  # the parent re-checks every initializer; only float8 ones can fail
            for init in self.initializer():
                self._check_init(init, "gain")
        for init in inits:
            self._check_init(init)
            self.model.graph.initializer.append(init)
            self._appended(1)

    def remove_initializer(self, tensor: onnx.TensorProto) -> None:
        name = tensor.name
        before = len(self.model.graph.initializer)
        super().remove_initializer(tensor)
        after = len(self.model.graph.initializer)
        if after == before:
            return
        if self._size != before or after != before - 1 or name in self._repeated:
            self._size = -1  # rebuilt at the next lookup
            return
        self._by_name.pop(name, None)
        self._size -= 1

    # ------------------------------------------------------------------ the dict
    def _index(self) -> dict[str, onnx.TensorProto]:
        tensors = self.model.graph.initializer
        if len(tensors) != self._size:
            self._by_name, self._repeated, self._float8, self._size = {}, set(), False, 0
            self._note(tensors[:])
        return self._by_name

    def _appended(self, count: int) -> None:
        """Index the last ``count`` initializers, just appended (the list holds copies)."""
        tensors = self.model.graph.initializer
        if self._size < 0 or len(tensors) != self._size + count:
            self._size = -1
            return
        self._note(tensors[self._size :])

    def _note(self, tensors: list[onnx.TensorProto]) -> None:
        for tensor in tensors:
            if tensor.name in self._by_name:
                self._repeated.add(tensor.name)
            else:
                self._by_name[tensor.name] = tensor
            if tensor.data_type == onnx.TensorProto.FLOAT8E4M3FN:
                self._float8 = True
        self._size += len(tensors)


_FIND_BY_NAME = getattr(quant_utils, "find_by_name", None)
#: id(initializer list) -> (that list, its model): the builds running now
_OWNERS: dict[int, tuple[Any, IndexedInitializers]] = {}
#: the modules whose find_by_name is replaced while builds run
_PATCHED: list[Any] = []
_LOCK = threading.Lock()
_MODULES = (quant_utils, base_quantizer, onnx_model, onnx_quantizer, qdq_quantizer)


def find_by_name(item_name: str, item_list: Any) -> Any:
    """``quant_utils.find_by_name``; on the initializer list of a build running now, its
    model's dict answers."""
    owner = _OWNERS.get(id(item_list))
    if owner is not None and owner[0] is item_list:
        return owner[1].find_initializer(item_name)
    return _FIND_BY_NAME(item_name, item_list)  # type: ignore[misc]


@contextmanager
def indexed_lookups(model: Any) -> Iterator[None]:
    """While a build runs: ``find_by_name`` on ``model``'s initializer list answered by its
    dict (when ``model`` is an ``IndexedInitializers``). onnxruntime's modules bind the
    function by name, so it is replaced in each of them, and put back when the last build
    running at once is done; other lists (another quantizer running meanwhile) get the scan."""
    if not isinstance(model, IndexedInitializers) or _FIND_BY_NAME is None:
        yield
        return
    tensors = model.model.graph.initializer
    with _LOCK:
        if not _OWNERS:
            _PATCHED[:] = _modules()
            for module in _PATCHED:
                module.find_by_name = find_by_name
        # the list itself is held: its id stays its own while registered
        _OWNERS[id(tensors)] = (tensors, model)
    try:
        yield
    finally:
        with _LOCK:
            _OWNERS.pop(id(tensors), None)
            if not _OWNERS:
                for module in _PATCHED:
                    module.find_by_name = _FIND_BY_NAME
                _PATCHED.clear()


def _modules() -> list[Any]:
    """onnxruntime's quantization modules that bind its ``find_by_name`` (its operator
    quantizers included)."""
    prefix = "onnxruntime.quantization."
    loaded = [m for name, m in list(sys.modules.items()) if name.startswith(prefix)]
    return [m for m in {*_MODULES, *loaded} if getattr(m, "find_by_name", None) is _FIND_BY_NAME]
