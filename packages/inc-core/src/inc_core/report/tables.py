"""The report's tables as plain strings: the HTML page and ``python -m inc_core.report`` show
the same ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .facts import Facts
from .trials import cell

_OP_COLUMNS = ("op", "type", "approach", "activation", "weight", "sqnr_db", "runs_as")
_TRIAL_COLUMNS = ("trial", "phase", "accuracy", "loss", "latency_ms", "fp32_ops", "status", "which")


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    #: the row to highlight (the chosen trial), an index into rows
    marked: int | None = None

    def text(self) -> str:
        """Fixed-width columns under an underlined title, for a terminal."""
        widths = [len(c) for c in self.columns]
        for row in self.rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
        line = "  ".join(f"{c:<{w}}" for c, w in zip(self.columns, widths, strict=True))
        out = [self.title, "=" * len(self.title), line.rstrip()]
        for row in self.rows:
            out.append("  ".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=True)).rstrip())
        return "\n".join(out)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.4g} MB"


def _ratio(fp32: float | None, int8: float | None) -> str:
    return "-" if not fp32 or int8 is None else f"{int8 / fp32:.3f}"


def comparison(facts: Facts) -> Table:
    """fp32 against int8: latency, model size and (when tuned) accuracy."""
    latency = "latency (ms" + (f", batch {facts.latency_batch})" if facts.latency_batch else ")")
    rows: list[tuple[str, ...]] = [
        (latency, _ms(facts.fp32_ms), _ms(facts.int8_ms), _ratio(facts.fp32_ms, facts.int8_ms)),
        (
            "model size",
            _mb(facts.fp32_bytes),
            _mb(facts.int8_bytes),
            _ratio(facts.fp32_bytes, facts.int8_bytes),
        ),
    ]
    if facts.fp32_accuracy is not None or facts.int8_accuracy is not None:
        acc = ("-" if v is None else f"{v:.4f}" for v in (facts.fp32_accuracy, facts.int8_accuracy))
        rows.append(("accuracy", *acc, _ratio(facts.fp32_accuracy, facts.int8_accuracy)))
    return Table("fp32 vs int8", ("measure", "fp32", "int8", "int8 / fp32"), tuple(rows))


def _fidelity(fidelity: dict[str, Any]) -> str:
    if "skipped" in fidelity:
        return f"not checked: {fidelity['skipped']}"
    parts = []
    for key, fmt in (("sqnr_db", "SQNR {:.1f} dB"), ("cosine", "cosine {:.4f}")):
        if isinstance(fidelity.get(key), (int, float)):
            parts.append(fmt.format(fidelity[key]))
    if isinstance(fidelity.get("agreement"), (int, float)):
        parts.append(f"argmax agreement {fidelity['agreement']:.3f}")
    if "holds" in fidelity:
        parts.append("holds" if fidelity["holds"] else "does NOT hold")
    return ", ".join(parts) or "-"


def run(facts: Facts) -> Table:
    """How the model was made: backend, versions, ops, the guards' and the tuner's verdicts."""
    report = facts.report
    rows: list[tuple[str, str]] = [("backend", facts.backend)]
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in facts.versions.items()) or "-"))
    quantized = sum(
        1 for op in facts.ops if op.get("activation") != "fp32" or op.get("weight") != "fp32"
    )
    rows.append(("ops", f"{quantized} of {len(facts.ops)} quantized"))
    if isinstance(report.get("fidelity"), dict):
        rows.append(("fidelity (int8 vs fp32)", _fidelity(report["fidelity"])))
    speed = report.get("speed")
    if isinstance(speed, dict):
        rows.append(("speed guard", speed.get("verdict") or speed.get("skipped") or "-"))
    fallback = report.get("fallback")
    if isinstance(fallback, list) and fallback:
        names = [
            f"{f.get('op')} ({f.get('why')})" if isinstance(f, dict) else str(f) for f in fallback
        ]
        rows.append(("kept fp32 by the guards", ", ".join(names)))
    tuning = report.get("tuning")
    if isinstance(tuning, dict):
        rows.append(
            (
                "tuning",
                f"strategy {tuning.get('strategy')}, {tuning.get('trials_used')} trials, "
                f"stopped: {tuning.get('stopped')}, chosen: trial {tuning.get('chosen')}",
            )
        )
    if isinstance(report.get("quantization_seconds"), (int, float)):
        rows.append(("quantization time", f"{report['quantization_seconds']:.2f} s"))
    return Table("run", ("what", "value"), tuple(rows))


def trials(facts: Facts) -> Table | None:
    """The tuning trials (None for a model made without tuning)."""
    if not facts.trials:
        return None
    relative = facts.trials[0].get("loss_unit") == "relative"
    rows = []
    marked = None
    for i, row in enumerate(facts.trials):
        if facts.chosen is not None and row.get("trial") == facts.chosen:
            marked = i
        cells = tuple(cell(name, row.get(name), relative) for name in _TRIAL_COLUMNS)
        rows.append(cells)
    return Table("tuning trials (* = chosen)", _TRIAL_COLUMNS, tuple(rows), marked)


def ops(facts: Facts) -> Table:
    """The per-op plan with each quantized op's SQNR (int8 vs fp32 output on calibration data)."""
    rows = []
    for op in facts.ops:
        cells = []
        for name in _OP_COLUMNS:
            value = op.get(name)
            if name == "sqnr_db":
                cells.append("-" if not isinstance(value, (int, float)) else f"{value:.1f}")
            else:
                cells.append("-" if value in (None, "") else str(value))
        rows.append(tuple(cells))
    return Table("per-op plan", _OP_COLUMNS, tuple(rows))


def weight_only(facts: Facts) -> Table | None:
    """Per op, the weight-only setting that ran (None for an int8 model): bits, group size,
    scheme, algorithm; the first row is the model size against fp32."""
    found = facts.report.get("weight_only")
    if not isinstance(found, dict):
        return None
    columns = ("op", "bits", "group_size", "scheme", "algorithm")
    size = found.get("size") or {}
    rows: list[tuple[str, ...]] = []
    if isinstance(size.get("ratio"), (int, float)):
        shown = (
            f"{_mb(size.get('bytes'))} ({size['ratio']:.3f}x fp32's {_mb(size.get('fp32_bytes'))})"
        )
        rows.append(("model size", shown, "", "", ""))
    for name, op in (found.get("ops") or {}).items():
        rows.append((str(name), *(str(op.get(c, "-")) for c in columns[1:])))
    for name in found.get("fp32_ops") or []:
        rows.append((str(name), "fp32", "-", "-", "-"))
    return Table("weight-only quantization", columns, tuple(rows))


def all_tables(facts: Facts) -> list[Table]:
    """Every table, in the order both the page and the terminal show them."""
    tables = [comparison(facts), run(facts)]
    tuned = trials(facts)
    if tuned is not None:
        tables.append(tuned)
    tables.append(ops(facts))
    woq = weight_only(facts)
    if woq is not None:
        tables.append(woq)
    return tables
