"""A mutable view of a model's main graph for the canonicaliser's rewrites.

Rewrites mutate nodes in place, mark nodes dead and add initializers; ``commit()`` drops the dead
nodes, sorts the rest topologically (so a rewrite may move work past nodes listed earlier) and
rebuilds the indices. Node references do not survive a commit (protobuf copies on extend).
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._runtime import onnx

numpy_helper = onnx.numpy_helper

#: tensor element types as numpy sees them, for the types the rewrites reason about
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)


def _subgraph_inputs(graph: onnx.GraphProto, into: set[str]) -> None:
    """Every tensor name read by a node of ``graph`` or of its nested subgraphs."""
    for node in graph.node:
        into.update(node.input)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _subgraph_inputs(attr.g, into)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _subgraph_inputs(sub, into)


class Graph:
    """Indices over ``model.graph``: producers, consumers, constants, element types, shapes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self._dead: set[int] = set()
        self._cache: dict[str, np.ndarray] = {}
        self.refresh()

    # ------------------------------------------------------------------ indices

    def refresh(self) -> None:
        g = self.graph
        self.inits = {i.name: i for i in g.initializer}
        self.outputs = {o.name for o in g.output}
        self.inputs = {i.name for i in g.input}
        # Tensors read inside If/Loop/Scan bodies: their outer-scope producers are pinned.
        self.pinned: set[str] = set()
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    _subgraph_inputs(attr.g, self.pinned)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        _subgraph_inputs(sub, self.pinned)
        self.producer: dict[str, onnx.NodeProto] = {}
        self._consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in g.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for name in node.input:
                if name:
                    self._consumers[name].append(node)
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list[int | str | None]] = {}
        for vi in (*g.input, *g.output, *g.value_info):
            tt = vi.type.tensor_type
            if vi.type.HasField("tensor_type") and tt.elem_type:
                self.types[vi.name] = tt.elem_type
                if tt.HasField("shape"):
                    self.shapes[vi.name] = [
                        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                        for d in tt.shape.dim
                    ]
        for init in g.initializer:
            self.types[init.name] = init.data_type
            self.shapes[init.name] = list(init.dims)

    def commit(self) -> None:
        """Drop dead nodes, restore a topological order, rebuild the indices."""
        nodes = [n for n in self.graph.node if id(n) not in self._dead]
        ordered = _topological(nodes, self.known_before())
        del self.graph.node[:]
        self.graph.node.extend(ordered)
        self._dead.clear()
        self.refresh()

    def known_before(self) -> set[str]:
        return {i.name for i in self.graph.input} | set(self.inits) | {""}

    # ------------------------------------------------------------------ queries

    def nodes(self) -> list[onnx.NodeProto]:
        return [n for n in self.graph.node if id(n) not in self._dead]

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        # the index may hold stale or repeated entries after rewrites: check the inputs again
        seen: set[int] = set()
        users = []
        for n in self._consumers.get(name, []):
            if id(n) not in self._dead and id(n) not in seen and name in n.input:
                seen.add(id(n))
                users.append(n)
        return users

    def free(self, name: str) -> bool:
        """Whether ``name`` may disappear or be renamed: no graph output, no subgraph reads it."""
        return name not in self.outputs and name not in self.pinned

    def sole_consumer(self, name: str) -> onnx.NodeProto | None:
        """The one node reading ``name`` when nothing else (output, subgraph, 2nd node) does."""
        users = self.consumers(name)
        if len(users) != 1 or not self.free(name):
            return None
        return users[0]

    def is_dead(self, node: onnx.NodeProto) -> bool:
        return id(node) in self._dead

    def note_reader(self, name: str, node: onnx.NodeProto) -> None:
        """Record that ``node`` now reads ``name`` (after a rewrite changed its input)."""
        self._consumers[name].append(node)

    def is_const(self, name: str) -> bool:
        # an initializer that is also a graph input can be overridden at run time
        return name in self.inits and name not in self.inputs

    def const(self, name: str) -> np.ndarray | None:
        if not self.is_const(name):
            return None
        if name not in self._cache:
            self._cache[name] = numpy_helper.to_array(self.inits[name])
        return self._cache[name]

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    # ------------------------------------------------------------------ edits

    def kill(self, node: onnx.NodeProto) -> None:
        self._dead.add(id(node))

    def unique(self, base: str) -> str:
        taken = set(self.producer) | set(self.inits) | self.inputs
        name, index = base, 0
        while name in taken:
            index += 1
            name = f"{base}_{index}"
        return name

    def add_const(self, base: str, value: np.ndarray) -> str:
        return self.add_const_named(self.unique(base), value)

    def add_const_named(self, name: str, value: np.ndarray) -> str:
        self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        self.inits[name] = self.graph.initializer[-1]
        self._cache[name] = value
        self.types[name] = self.inits[name].data_type
        self.shapes[name] = list(value.shape)
        return name

    def set_const(self, owner: onnx.NodeProto, index: int, value: np.ndarray, base: str) -> None:
        """Give input ``index`` of ``owner`` the constant ``value``: in place when ``owner`` is
        its only reader (the initializer keeps its name), else as a new initializer."""
        name = owner.input[index] if index < len(owner.input) else ""
        readers = self.consumers(name) if name else []
        if name in self.inits and readers == [owner] and name not in self.inputs:
            self.inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))
            self._cache[name] = value
            self.shapes[name] = list(value.shape)
            return
        new = self.add_const(base, value)
        while len(owner.input) <= index:
            owner.input.append("")
        owner.input[index] = new
        self._consumers[new].append(owner)

    def replace_uses(self, old: str, new: str) -> None:
        """Every live node reading ``old`` reads ``new`` instead (main graph only)."""
        for node in self.consumers(old):
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
            self._consumers[new].append(node)
        self._consumers[old] = []

    def bypass(self, node: onnx.NodeProto, source: str) -> bool:
        """Remove ``node`` (one output equal in value to tensor ``source``); its readers read
        ``source``. When the output is a graph output, the producer of ``source`` writes it
        instead. Returns False (and changes nothing) when neither is possible."""
        out = node.output[0]
        if out in self.pinned:
            return False
        if out not in self.outputs:
            self.replace_uses(out, source)
            self.kill(node)
            return True
        producer = self.producer.get(source)
        if producer is None or not self.free(source) or id(producer) in self._dead:
            return False
        index = list(producer.output).index(source)
        producer.output[index] = out
        self.producer[out] = producer
        self.replace_uses(source, out)
        self.kill(node)
        return True

    def prune(self) -> int:
        """Remove nodes whose outputs nobody reads and initializers nothing uses."""
        removed = 0
        while True:
            used = set(self.outputs) | self.pinned
            for node in self.nodes():
                used.update(node.input)
            dead = [n for n in self.nodes() if not any(o in used for o in n.output if o)]
            if not dead:
                break
            for node in dead:
                self.kill(node)
            removed += len(dead)
        used = set(self.outputs) | self.pinned | self.inputs
        for node in self.nodes():
            used.update(node.input)
        keep = [i for i in self.graph.initializer if i.name in used]
        if len(keep) != len(self.graph.initializer):
            kept = list(keep)
            del self.graph.initializer[:]
            self.graph.initializer.extend(kept)
            self._cache = {k: v for k, v in self._cache.items() if k in used}
        self.commit()
        return removed


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def set_attr(node: onnx.NodeProto, name: str, value: object) -> None:
    for i, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[i]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


def label(node: onnx.NodeProto) -> str:
    return node.name or f"<{node.op_type} -> {node.output[0]}>"


def _topological(nodes: Iterable[onnx.NodeProto], known: set[str]) -> list[onnx.NodeProto]:
    """Stable Kahn sort: nodes keep their relative order unless an input forces a move."""
    nodes = list(nodes)
    produced_by = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps: list[set[int]] = []
    for i, node in enumerate(nodes):
        needs = set()
        for name in node.input:
            j = produced_by.get(name)
            if j is not None and name not in known and j != i:
                needs.add(j)
        deps.append(needs)
    waiting = [len(d) for d in deps]
    users: dict[int, list[int]] = defaultdict(list)
    for i, needs in enumerate(deps):
        for j in needs:
            users[j].append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for k in users[i]:
            waiting[k] -= 1
            if waiting[k] == 0:
                heapq.heappush(ready, k)
    if len(order) != len(nodes):  # a cycle cannot come from a rewrite; keep what we had
        return nodes
    return [nodes[i] for i in order]


class Skip(Exception):
    """A step that cannot apply to this model; the message says why (it goes in the report)."""


@dataclass
class Outcome:
    """What one step did: the nodes it rewrote (by name) and step-specific facts."""

    nodes: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
