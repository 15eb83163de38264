"""The report's charts as inline SVG, drawn by matplotlib (the optional ``inc-core[report]``).

Without matplotlib ``available()`` is False and the page shows its tables only. Figures are
made with ``matplotlib.figure.Figure`` (no pyplot: no global state, no GUI backend), text is
kept as SVG text, and the SVG is reduced to its ``<svg>`` element with no metadata, so the page
stays self-contained and the same model gives the same bytes.
"""

from __future__ import annotations

import importlib.util
import io
import re
from typing import Any

from .facts import Facts

#: more ops than this get a chart of the lowest-SQNR ones (the table lists them all)
MAX_OP_BARS = 60
_FP32 = "#7f7f7f"
_INT8 = "#1f77b4"
_CHOSEN = "#d62728"


def available() -> bool:
    """Whether matplotlib is installed (``pip install inc-core[report]``)."""
    return importlib.util.find_spec("matplotlib") is not None


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig: Any) -> str:
    import matplotlib

    buffer = io.StringIO()
    # text as <text> (small, searchable); a fixed hash salt makes element ids reproducible
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "inc-report"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    # <metadata> holds RDF namespace URLs; nothing else in it is shown
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    # namespace declarations are not fetched, but an HTML page needs none of them
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)
    return text.strip()


def trials(facts: Facts) -> str | None:
    """Accuracy against latency of every trial; the chosen one and the fp32 baseline marked."""
    points = [
        row
        for row in facts.trials
        if row.get("trial") != "fp32" and isinstance(row.get("accuracy"), (int, float))
    ]
    if not points:
        return None
    timed = all(isinstance(r.get("latency_ms"), (int, float)) for r in points)
    xs = [r["latency_ms"] if timed else r["trial"] for r in points]
    fig = _figure(6.4, 3.6)
    ax = fig.add_subplot()
    ax.scatter(xs, [r["accuracy"] for r in points], color=_INT8, label="trial", zorder=3)
    for x, row in zip(xs, points, strict=True):
        ax.annotate(
            str(row["trial"]),
            (x, row["accuracy"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
        )
    chosen = [(x, r) for x, r in zip(xs, points, strict=True) if r.get("trial") == facts.chosen]
    for x, row in chosen:
        ax.scatter(
            [x],
            [row["accuracy"]],
            s=220,
            marker="*",
            color=_CHOSEN,
            label=f"chosen (trial {row['trial']})",
            zorder=4,
        )
    base = next((r for r in facts.trials if r.get("trial") == "fp32"), None)
    base_acc = base.get("accuracy") if base else None
    if isinstance(base_acc, (int, float)):
        ax.axhline(base_acc, color=_FP32, linestyle="--", label="fp32 accuracy")
        base_ms = base.get("latency_ms") if base else None
        if timed and isinstance(base_ms, (int, float)):
            ax.scatter(
                [base_ms],
                [base_acc],
                s=80,
                marker="D",
                color=_FP32,
                label="fp32 baseline",
                zorder=4,
            )
        goal = _goal(base_acc, facts.report.get("tuning") or {})
        if goal is not None:
            ax.axhline(goal, color=_CHOSEN, linestyle=":", linewidth=1, label="accuracy goal")
    ax.set_xlabel("latency (ms)" if timed else "trial")
    ax.set_ylabel("accuracy")
    ax.set_title("tuning trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _svg(fig)


def _goal(baseline: float, tuning: dict[str, Any]) -> float | None:
    """The lowest (or highest) accuracy the criterion accepts, as tuning computed it."""
    crit = tuning.get("accuracy_criterion") or {}
    loss = crit.get("tolerable_loss")
    if not isinstance(loss, (int, float)):
        return None
    sign = 1.0 if crit.get("higher_is_better", True) else -1.0
    if crit.get("criterion") == "relative":
        return baseline * (1.0 - sign * loss)
    return baseline - sign * loss


def op_sqnr(facts: Facts) -> str | None:
    """Each quantized op's SQNR in dB (higher is closer to fp32), one bar per op."""
    bars = [
        (str(op["op"]), float(op["sqnr_db"]))
        for op in facts.ops
        if isinstance(op.get("sqnr_db"), (int, float))
    ]
    if not bars:
        return None
    title = "per-op SQNR, int8 vs fp32 output (dB)"
    if len(bars) > MAX_OP_BARS:
        keep = {name for name, _ in sorted(bars, key=lambda b: b[1])[:MAX_OP_BARS]}
        bars = [b for b in bars if b[0] in keep]
        title += f": the {MAX_OP_BARS} lowest"
    fig = _figure(6.4, max(1.6, 0.22 * len(bars) + 1.0))
    ax = fig.add_subplot()
    names = [name for name, _ in bars]
    ax.barh(range(len(bars)), [value for _, value in bars], color=_INT8)
    ax.set_yticks(range(len(bars)), names, fontsize=7)
    ax.invert_yaxis()  # plan order, top to bottom, as in the table
    ax.set_xlabel("SQNR (dB)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def comparison(facts: Facts) -> str | None:
    """fp32 against int8: latency and model size side by side (the ones measured)."""
    panels = [
        (label, fp32, int8)
        for label, fp32, int8 in (
            ("latency (ms)", facts.fp32_ms, facts.int8_ms),
            (
                "model size (MB)",
                None if facts.fp32_bytes is None else facts.fp32_bytes / 1e6,
                None if facts.int8_bytes is None else facts.int8_bytes / 1e6,
            ),
        )
        if fp32 is not None or int8 is not None
    ]
    if not panels:
        return None
    fig = _figure(3.2 * len(panels), 2.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, fp32, int8) in zip(axes, panels, strict=True):
        values = [fp32 or 0.0, int8 or 0.0]
        bars = ax.bar(["fp32", "int8"], values, color=[_FP32, _INT8])
        ax.bar_label(
            bars, labels=["-" if v is None else f"{v:.3g}" for v in (fp32, int8)], fontsize=7
        )
        ax.set_title(label)
        ax.margins(y=0.15)
    return _svg(fig)


def all_charts(facts: Facts) -> list[tuple[str, str]]:
    """(title, svg) for every chart the facts allow; [] without matplotlib."""
    if not available():
        return []
    out = []
    for title, draw in (
        ("fp32 vs int8", comparison),
        ("tuning trials", trials),
        ("per-op SQNR", op_sqnr),
    ):
        svg = draw(facts)
        if svg is not None:
            out.append((title, svg))
    return out
