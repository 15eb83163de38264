"""Canonicalise converter-made graphs (tf2onnx, paddle2onnx, torch.onnx) before planning.

``canonicalize(model)`` works on a copy and returns ``(model, report)``. Each report entry is
``{"step": str, "rewrites": int, "nodes": [node names], "skipped": str | None, "seconds": float}``
plus step facts under ``"detail"`` (e.g. which shape inference worked). A step that cannot apply
is skipped with its reason and leaves the model as it was before that step; nothing raises.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .._runtime import onnx
from . import affine, constants, layout, patterns, shapes
from ._graph import Graph, Outcome, Skip

Step = Callable[[Graph], Outcome]

#: (name, function, whether it needs types/ranks first); order matters: constants first so the
#: affine and pattern matchers see them, layout again after folding exposes new pairs
STEPS: tuple[tuple[str, Step, bool], ...] = (
    ("constants_to_initializers", constants.constants_to_initializers, False),
    ("initializers_not_inputs", constants.initializers_not_inputs, False),
    ("fold_constants", constants.fold_constants, False),
    ("identities", layout.identities, False),
    ("casts", layout.casts, True),
    ("transposes", layout.transposes, True),
    ("fold_affine", affine.fold_affine, True),
    ("transposes_after_folding", layout.transposes, False),
    ("layernorm", patterns.layernorm, True),
    ("gelu", patterns.gelu, False),
    ("hard_activations", patterns.hard_activations, False),
    ("shapes", shapes.infer, False),
)  # fmt: skip

__all__ = ["STEPS", "canonicalize"]


def canonicalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """The canonical form of ``model`` (a copy; ``model`` is not touched) and the step report."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    report: list[dict[str, Any]] = []
    typed = False
    for name, step, needs_types in STEPS:
        start = time.perf_counter()
        entry: dict[str, Any] = {"step": name, "rewrites": 0, "nodes": [], "skipped": None}
        snapshot = onnx.ModelProto()
        snapshot.CopyFrom(work)
        try:
            g = Graph(work)
            if needs_types and not typed:
                shapes.types_only(g)
                typed = True
            outcome = step(g)
            g.prune()
            entry["nodes"] = outcome.nodes
            entry["rewrites"] = len(outcome.nodes)
            if outcome.detail:
                entry["detail"] = outcome.detail
            if outcome.nodes:
                typed = False  # rewrites leave stale value_info behind: infer again when needed
        except Skip as exc:
            work.CopyFrom(snapshot)
            entry["skipped"] = str(exc)
        except Exception as exc:  # never crash the user's run on a graph we do not understand
            work.CopyFrom(snapshot)
            entry["skipped"] = f"failed: {type(exc).__name__}: {exc}"
        entry["seconds"] = round(time.perf_counter() - start, 4)
        report.append(entry)
    return work, report
