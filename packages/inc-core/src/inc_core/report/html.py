"""``report.html``: one self-contained page a person opens after ``q.save(dir)``.

No script, no stylesheet or font from elsewhere, nothing fetched: the charts are inline SVG
(matplotlib, the optional ``inc-core[report]``), the tables plain HTML. Without matplotlib the
page has the tables and says how to get the charts.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import charts
from .facts import Facts, from_manifest
from .tables import Table, all_tables

#: the file name ``QuantizedModel.save`` writes next to inc.json
REPORT_HTML = "report.html"

log = logging.getLogger(__name__)

_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } tr.marked td { background: #fff3c4; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.charts svg { max-width: 100%; height: auto; display: block; margin: .5em 0; }
.note { color: #666; }
"""


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("%"))
    except ValueError:
        return False
    return True


def _table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = []
    for i, row in enumerate(table.rows):
        cells = "".join(
            f'<td class="num">{html.escape(c)}</td>'
            if _is_number(c)
            else f"<td>{html.escape(c)}</td>"
            for c in row
        )
        marked = ' class="marked"' if i == table.marked else ""
        body.append(f"<tr{marked}>{cells}</tr>")
    return (
        f"<h2>{html.escape(table.title)}</h2>\n<table>\n<thead><tr>{head}</tr></thead>\n"
        f"<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"
    )


def _charts(facts: Facts) -> str:
    if not charts.available():
        return (
            '<p class="note">Charts need matplotlib: <code>pip install "inc-core[report]"</code>, '
            "then save the model again.</p>"
        )
    try:
        drawn = charts.all_charts(facts)
    except Exception as exc:  # a chart must never cost the user their saved model
        log.warning("report.html: the charts could not be drawn (%s); the tables are there", exc)
        return f'<p class="note">The charts could not be drawn: {html.escape(repr(exc))}.</p>'
    return "\n".join(
        f'<figure class="charts" aria-label="{html.escape(title)}">{svg}</figure>'
        for title, svg in drawn
    )


def render(manifest: Mapping[str, Any]) -> str:
    """The page for one save's manifest (inc.json's content)."""
    facts = from_manifest(manifest)
    title = f"inc int8 report: {facts.backend} backend"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
        _charts(facts),
        *(_table(t) for t in all_tables(facts)),
        '<p class="note">Written by inc_core.report from inc.json; '
        "<code>python -m inc_core.report DIR</code> prints these tables.</p>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


def write(directory: str | os.PathLike[str], manifest: Mapping[str, Any]) -> str:
    """Write ``report.html`` into ``directory``; returns its file name (to add to inc.json's
    ``files``)."""
    (Path(directory) / REPORT_HTML).write_text(render(manifest), encoding="utf-8")
    return REPORT_HTML
