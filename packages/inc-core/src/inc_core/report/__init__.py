"""What a person reads about a quantized model.

``trials``: the tuning table printed at the end of tuning (and kept in inc.json);
``html``: ``report.html``, written by ``QuantizedModel.save``; ``python -m inc_core.report DIR``
prints the same tables to a terminal. ``facts`` reads a save's inc.json once for all of them.
"""

from __future__ import annotations

from .facts import model_sizes
from .html import REPORT_HTML
from .html import write as write_html
from .trials import render, rows

__all__ = ["REPORT_HTML", "model_sizes", "render", "rows", "write_html"]
