"""No package imports itself in a circle: module-level and deferred (in-function) imports of
every package under ``packages/`` form an acyclic graph (a deferred import that hides a cycle
counts). Read from the sources with ``ast``, so every plugin is checked without its framework."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGES = sorted((Path(__file__).parents[2] / "packages").glob("*/src/*/__init__.py"))


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            continue  # never executed: annotations only
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        found.extend(_imports(node))
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> modules of the same package it imports (a package's ``__init__`` is named by
    the package; importing a submodule's parent package is not an edge: Python runs it first)."""
    edges: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        module, is_package = _module_name(path, root)
        here = module.split(".") if is_package else module.split(".")[:-1]
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            targets.add(target)
            targets.update(f"{target}.{alias.name}" for alias in node.names)
        edges[module] = targets
    modules = set(edges)
    return {
        m: {t for t in targets if t in modules and t != m and not m.startswith(t + ".")}
        for m, targets in edges.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_packages_are_found():
    names = {p.parent.name for p in PACKAGES}
    assert {"inc_core", "inc_ort", "inc_torch", "inc_tf", "inc_mxnet"} <= names


@pytest.mark.parametrize("init", PACKAGES, ids=[p.parent.name for p in PACKAGES])
def test_no_import_cycle(init: Path):
    assert cycles(import_graph(init.parent)) == []


def test_a_cycle_is_found(tmp_path: Path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")  # deferred: still a cycle
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.b"]]
