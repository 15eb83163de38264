"""What a saved model's report shows, read once from its manifest (inc.json's content).

The HTML page, its charts and the terminal tables all read these facts, so they agree.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: files of a save that are not the model itself (they are not counted in its size)
NOT_MODEL = frozenset({"inc.json", "report.html"})


@dataclass(frozen=True)
class Facts:
    """fp32 vs int8 numbers (None where the run did not measure them), trials and ops."""

    backend: str
    versions: dict[str, str]
    fp32_ms: float | None = None
    int8_ms: float | None = None
    latency_batch: int | None = None
    fp32_bytes: int | None = None
    int8_bytes: int | None = None
    fp32_accuracy: float | None = None
    int8_accuracy: float | None = None
    #: the tuning table's rows (inc_core.report.trials.rows), the fp32 baseline first; [] untuned
    trials: list[dict[str, Any]] = field(default_factory=list)
    chosen: int | None = None
    #: QuantizedModel.op_report() rows: op, type, approach, activation, weight, sqnr_db, runs_as
    ops: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _size(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number > 0 else None


def from_manifest(manifest: Mapping[str, Any]) -> Facts:
    """The facts of one save; tolerant of older or partial manifests (missing keys are None)."""
    report = manifest.get("report") or {}
    tuning = report.get("tuning") or {}
    speed = report.get("speed") or {}
    sizes = manifest.get("sizes") or {}
    trials = [row for row in tuning.get("trials") or [] if isinstance(row, dict)]
    chosen = tuning.get("chosen")
    chosen_row = next((r for r in trials if r.get("trial") == chosen), None)
    baseline = tuning.get("baseline") or {}

    # latency: the speed guard times fp32 and int8 in the same rounds, so prefer its pair
    fp32_ms, int8_ms = _number(speed.get("fp32_ms")), _number(speed.get("int8_ms"))
    batch = speed.get("batch") if isinstance(speed.get("batch"), int) else None
    if fp32_ms is None or int8_ms is None:
        base_latency = _number(baseline.get("latency"))
        fp32_ms = None if base_latency is None else base_latency * 1e3
        int8_ms = _number(chosen_row.get("latency_ms")) if chosen_row else None
        batch = None
    return Facts(
        backend=str(manifest.get("backend", "")),
        versions={str(k): str(v) for k, v in (manifest.get("versions") or {}).items()},
        fp32_ms=fp32_ms,
        int8_ms=int8_ms,
        latency_batch=batch,
        fp32_bytes=_size(sizes.get("fp32_bytes")) or _size(baseline.get("size")),
        int8_bytes=_size(sizes.get("int8_bytes")),
        fp32_accuracy=_number(baseline.get("accuracy")),
        int8_accuracy=_number(chosen_row.get("accuracy")) if chosen_row else None,
        trials=trials,
        chosen=chosen if isinstance(chosen, int) else None,
        ops=[row for row in manifest.get("op_report") or [] if isinstance(row, dict)],
        report=dict(report),
    )


def _bytes_under(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def model_sizes(
    directory: str | os.PathLike[str], files: Iterable[str], sources: Iterable[str] = ()
) -> dict[str, int | None]:
    """``{"fp32_bytes", "int8_bytes"}`` for inc.json's ``sizes``: the int8 model is the files a
    backend saved in ``directory`` (``files``, inc.json and report.html left out); the fp32 model
    is the user's files it was made from (``sources``: files or folders), None for a model
    passed as an object (its size on disk is unknown)."""
    root = Path(directory)
    int8 = sum(
        (root / name).stat().st_size
        for name in files
        if name not in NOT_MODEL and (root / name).is_file()
    )
    fp32: int | None = None
    existing = [Path(s) for s in sources if Path(s).exists()]
    if existing:
        fp32 = sum(_bytes_under(p) for p in existing)
    return {"fp32_bytes": fp32, "int8_bytes": int8 or None}
