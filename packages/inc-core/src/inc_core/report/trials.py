"""The trial table a person reads at the end of tuning (and finds again in inc.json)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # model.py imports this package to write report.html; history imports model
    from ..history import Baseline
    from ..trial import Trial

_COLUMNS = (
    ("trial", ">5"),
    ("phase", "<30"),
    ("accuracy", ">9"),
    ("loss", ">8"),
    ("latency_ms", ">10"),
    ("fp32_ops", ">8"),
    ("status", "<7"),
    ("which", "<0"),
)
_WHICH_WIDTH = 60


def _status(trial: Trial) -> str:
    if trial.error:
        return "error"
    if trial.passed:
        return "pass"
    return "slower" if trial.slower else "miss"


def rows(
    baseline: Baseline, trials: Sequence[Trial], chosen: int | None, relative: bool
) -> list[dict[str, Any]]:
    """JSON-ready rows: the baseline, then one per trial; ``chosen`` is the returned trial."""
    out: list[dict[str, Any]] = [
        {
            "trial": "fp32",
            "phase": "baseline",
            "accuracy": baseline.accuracy,
            "loss": 0.0,
            "latency_ms": None if baseline.latency is None else baseline.latency * 1e3,
            "fp32_ops": None,
            "status": "",
            "which": [],
        }
    ]
    for t in trials:
        out.append(
            {
                "trial": t.index,
                "phase": t.phase,
                "accuracy": t.accuracy,
                "loss": None if t.error else t.loss,
                "latency_ms": None if t.latency is None else t.latency * 1e3,
                "fp32_ops": len(t.fp32_ops),
                "status": ("*" if t.index == chosen else "") + _status(t),
                "which": t.fp32_ops,
                "error": t.error,
            }
        )
    for row in out:
        row["loss_unit"] = "relative" if relative else "absolute"
    return out


def cell(name: str, value: Any, relative: bool) -> str:
    if value is None:
        return "-"
    if name == "loss":
        return f"{value * 100:+.2f}%" if relative else f"{value:+.4g}"
    if name == "accuracy":
        return f"{value:.4f}"
    if name == "latency_ms":
        return f"{value:.3f}"
    if name == "phase":
        return str(value)[:30]
    if name == "which":
        text = ", ".join(value)
        return text if len(text) <= _WHICH_WIDTH else text[: _WHICH_WIDTH - 3] + "..."
    return str(value)


def render(table: Sequence[dict[str, Any]]) -> str:
    """A fixed-width text table; ``*`` marks the chosen trial, ``which`` lists fp32 ops."""
    relative = bool(table) and table[0].get("loss_unit") == "relative"
    lines = [" ".join(f"{name:{fmt}}" for name, fmt in _COLUMNS).rstrip()]
    for row in table:
        cells = []
        for name, fmt in _COLUMNS:
            text = cell(name, row.get(name), relative)
            if name == "status" and row.get("error"):
                text = "error"
            cells.append(f"{text:{fmt}}")
        line = " ".join(cells).rstrip()
        if row.get("error"):
            line += f"  ({str(row['error'])[:80]})"
        lines.append(line)
    return "\n".join(lines)
